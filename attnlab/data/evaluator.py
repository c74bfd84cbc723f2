"""Score any video of the procedural world (:mod:`attnlab.data.world`), real or generated,
from its pixels and caption alone (no ground truth).

Per frame: the background is the median colour of the frame's one-pixel border; the object is
the largest 4-connected region of pixels farther than :data:`FG_DISTANCE` (RGB, in [0, 1]) from
it, *found* if it covers at least :data:`MIN_AREA` of the frame; its colour is the palette colour
(:data:`attnlab.data.world.COLORS`) nearest to the mean of its core pixels; its shape is "square"
when it fills its bounding box (fill >= :data:`SQUARE_FILL`), else "circle"; centroid and area
are those of the region (pixels).

Per video (against the caption's words): caption accuracy (colour, shape, background by
majority over found frames; a recolouring must start in its first colour and end, after
:data:`attnlab.data.world.TRANSITION` frames, in its second), direction (the least-squares
displacement of the centroid over the first 16 frames points the captioned way along the
dominant axis and is at least :data:`MIN_TRAVEL` of the frame), growth (area ratio of the last
and first quarter >= 1.5 or <= 1/1.5), dynamics (mean centroid step per frame, and its ratio to
the world's mean speed for a moving caption), background cleanliness (spatial noise of the
corner patches' background pixels, at most :data:`BACKGROUND_NOISE_MAX`; the world's own clips
read 0), coherence (one object of stable colour and area,
no flicker, no jumps), and all per-frame quantities per frame index, so that where a long video
breaks is visible.

:func:`score_world_video` scores one video (:class:`VideoScore`, per frame :class:`FrameReading`);
:func:`summarize` and :func:`per_frame_rates` aggregate over videos.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from attnlab.data.video import VideoError, to_unit_frames
from attnlab.data.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTION_VECTORS,
    DIRECTIONS,
    SPEED,
    TRANSITION,
    parse_caption,
)

FG_DISTANCE = 0.25  # RGB distance from the background for a foreground pixel
# background cleanliness: spatial std of the four corner patches (each CORNER of the frame
# side) without the object; the world's own clips read 0.000 (flat backgrounds); a video is
# clean when the median over its frames of the median over its corners is at most this
CORNER = 6 / 32
BACKGROUND_NOISE_MAX = 0.03
MIN_AREA = 0.01  # fraction of the frame a found object covers at least
SQUARE_FILL = 0.88  # region area / bounding-box area above which a shape is a square
MIN_TRAVEL = 0.15  # fraction of the frame a moving object travels at least in 16 frames
JUMP = 0.25  # a centroid step larger than this fraction of the frame is a jump
WORLD_SPEED = float(np.mean(SPEED))  # mean speed of moving world objects, fraction per frame
_PALETTE = np.array(list(COLORS.values()))
_PALETTE_NAMES = list(COLORS)
_BACKS = np.array(list(BACKGROUNDS.values()))
_BACK_NAMES = list(BACKGROUNDS)


@dataclass
class FrameReading:
    """What one frame shows (``None`` fields when no object was found)."""

    found: bool
    components: int  # regions of at least MIN_AREA
    color: str | None
    color_distance: float | None  # RGB distance of the object's colour to that palette colour
    shape: str | None
    x: float | None
    y: float | None
    area: float
    background: str
    background_noise: float  # spatial std of the corner patches' background (0: flat)


def read_frame(frame: np.ndarray) -> FrameReading:
    """Background, object, colour, shape, centroid and area of one ``[H, W, 3]`` frame."""
    h, w, _ = frame.shape
    border = np.concatenate([frame[0], frame[-1], frame[1:-1, 0], frame[1:-1, -1]])
    bg = np.median(border, axis=0)
    background = _BACK_NAMES[int(np.argmin(((_BACKS - bg) ** 2).sum(1)))]
    dist = np.sqrt(((frame - bg) ** 2).sum(-1))
    labels, n = ndimage.label(dist > FG_DISTANCE)
    min_px = MIN_AREA * h * w
    sizes = ndimage.sum_labels(np.ones_like(dist), labels, index=np.arange(1, n + 1)) if n else []
    big = [i + 1 for i, s in enumerate(sizes) if s >= min_px]
    if not big:
        noise = background_noise(frame, np.ones((h, w), bool))
        return FrameReading(False, 0, None, None, None, None, None, 0.0, background, noise)
    k = max(big, key=lambda i: sizes[i - 1])
    region = labels == k
    # background: everything but the object and its soft edge (speckle stays in, however bright)
    noise = background_noise(frame, ~ndimage.binary_dilation(region, iterations=2))
    ys, xs = np.nonzero(region)
    core = region & (dist >= 0.5 * dist[region].max())
    mean = frame[core].mean(0)
    d = np.sqrt(((_PALETTE - mean) ** 2).sum(1))
    fill = region.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    return FrameReading(
        found=True,
        components=len(big),
        color=_PALETTE_NAMES[int(np.argmin(d))],
        color_distance=float(d.min()),
        shape="square" if fill >= SQUARE_FILL else "circle",
        x=float(xs.mean() + 0.5),
        y=float(ys.mean() + 0.5),
        area=float(region.sum()),
        background=background,
        background_noise=noise,
    )


def background_noise(frame: np.ndarray, background: np.ndarray) -> float:
    """Spatial noise of a frame's background: in each corner patch (:data:`CORNER` of the
    side), the spatial standard deviation of its ``background`` pixels (the object and its edge
    are left out), per RGB channel and their root mean square; the median over the corners
    with at least 4 such pixels (0.0 if none). Flat backgrounds read 0; speckle reads its
    amplitude."""
    h, w, _ = frame.shape
    ph, pw = max(2, round(CORNER * h)), max(2, round(CORNER * w))
    stds = []
    for ys in (slice(0, ph), slice(h - ph, h)):
        for xs in (slice(0, pw), slice(w - pw, w)):
            px = frame[ys, xs][background[ys, xs]]
            if len(px) >= 4:
                stds.append(float(np.sqrt(px.var(0).mean())))
    return float(np.median(stds)) if stds else 0.0


def _majority(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


@dataclass
class VideoScore:
    """The evaluator's reading of one video against its caption."""

    caption: str
    motion: str
    frames: list[FrameReading] = field(repr=False)
    found_rate: float
    color_ok: bool
    shape_ok: bool
    background_ok: bool
    background_noise: float  # median over frames of FrameReading.background_noise
    background_clean: bool  # background_noise <= BACKGROUND_NOISE_MAX
    motion_ok: bool  # direction, growth or colour change as captioned
    direction_ok: bool | None  # only for moving captions
    displacement: float  # px over the first 16 frames along the captioned direction (0 if none)
    speed: float  # mean centroid step per frame, fraction of the frame size
    dynamics_ratio: float | None  # speed / the world's mean speed, for moving captions
    # mean of four terms in [0, 1]: single_object x the found share of frames,
    # color_stability, area_stability, and no_flicker x the share of steps without a jump
    coherence: float
    single_object: float  # frames with exactly one object / found frames
    color_stability: float  # found frames in their captioned colour
    area_stability: float  # 1 - median relative area change between frames (size-changing: 1)
    no_flicker: float  # 1 - (found <-> lost switches) / (frames - 1)
    jumps: int  # centroid steps larger than JUMP of the frame

    def per_frame(self) -> dict[str, np.ndarray]:
        """Per frame index: found, colour as captioned, x, y, area (NaN where not found)."""
        expected = [self._expected_color(i) for i in range(len(self.frames))]
        nan = float("nan")
        return {
            "found": np.array([f.found for f in self.frames]),
            "color_ok": np.array(
                [f.found and (e is None or f.color in e) for f, e in zip(self.frames, expected)]
            ),
            "x": np.array([f.x if f.found else nan for f in self.frames]),
            "y": np.array([f.y if f.found else nan for f in self.frames]),
            "area": np.array([f.area if f.found else nan for f in self.frames]),
        }

    def _expected_color(self, i: int) -> set[str] | None:
        words = parse_caption(self.caption)
        if words["motion"] != "recolor":
            return {words["color"]}
        if i < TRANSITION // 4:
            return {words["color"]}
        if i >= TRANSITION - TRANSITION // 4:
            return {words["color2"]}
        return None  # mid-transition: any colour


def score_world_video(video: Any, caption: str) -> VideoScore:
    """Score ``video`` (``[F, H, W, 3]`` in [0, 1]) against a caption of the world's grammar.

    ``video`` is anything :func:`attnlab.data.video.to_unit_frames` accepts (uint8 frames,
    floats in [0, 1] or [-1, 1], tensors, either channel layout); it is read in float64.
    """
    frames = to_unit_frames(video, dtype=np.float64)
    words = parse_caption(caption)
    n, size = len(frames), frames.shape[1]
    if n < 2:
        raise VideoError(f"a video of {n} frame(s): scoring needs at least 2 frames")
    if words["motion"] == "recolor" and n < TRANSITION:
        raise VideoError(
            f"{caption!r} recolours over {TRANSITION} frames: scoring it needs at least "
            f"{TRANSITION} frames, got {n}"
        )
    reads = [read_frame(f) for f in frames]
    found = [r for r in reads if r.found]
    found_rate = len(found) / n
    motion = words["motion"]
    shape_ok = _majority([r.shape for r in found]) == words["shape"]
    background_ok = _majority([r.background for r in reads]) == words["background"]
    noise = float(np.median([r.background_noise for r in reads]))
    q = max(1, min(n, TRANSITION) // 4)
    if motion == "recolor":
        first = _majority([r.color for r in reads[:q]])
        last = _majority([r.color for r in reads[TRANSITION - q : TRANSITION]])
        color_ok = first == words["color"] and last == words["color2"]
    else:
        color_ok = _majority([r.color for r in found]) == words["color"]
    # motion over the first 16 frames (the training length)
    head = [(i, r) for i, r in enumerate(reads[:16]) if r.found]
    displacement, direction_ok = 0.0, None
    growth_ok = False
    if len(head) >= 3:
        t = np.array([i for i, _ in head], dtype=float)
        xs = np.array([r.x for _, r in head])
        ys = np.array([r.y for _, r in head])
        span = min(n, 16) - 1
        dx = np.polyfit(t, xs, 1)[0] * span
        dy = np.polyfit(t, ys, 1)[0] * span
        if motion in DIRECTIONS:
            ux, uy = DIRECTION_VECTORS[motion]
            displacement = float(dx * ux + dy * uy)
            along_axis = abs(dx) >= abs(dy) if ux else abs(dy) >= abs(dx)
            direction_ok = bool(along_axis and displacement >= MIN_TRAVEL * size)
        areas = np.array([r.area for _, r in head])
        k = max(1, len(areas) // 4)
        ratio = areas[-k:].mean() / max(areas[:k].mean(), 1e-9)
        growth_ok = ratio >= 1.5 if motion == "grow" else ratio <= 1 / 1.5
    elif motion in DIRECTIONS:
        direction_ok = False
    if motion in DIRECTIONS:
        motion_ok = bool(direction_ok)
    elif motion in ("grow", "shrink"):
        motion_ok = bool(growth_ok)
    else:
        motion_ok = color_ok
    # dynamics and coherence over the whole video
    steps = [
        np.hypot(b.x - a.x, b.y - a.y) / size
        for a, b in itertools.pairwise(reads)
        if a.found and b.found
    ]
    speed = float(np.mean(steps)) if steps else 0.0
    dynamics_ratio = speed / WORLD_SPEED if motion in DIRECTIONS else None
    single = np.mean([r.components == 1 for r in found]) if found else 0.0
    score = VideoScore(
        caption=caption,
        motion=motion,
        frames=reads,
        found_rate=found_rate,
        color_ok=bool(color_ok),
        shape_ok=bool(shape_ok),
        background_ok=bool(background_ok),
        background_noise=noise,
        background_clean=noise <= BACKGROUND_NOISE_MAX,
        motion_ok=motion_ok,
        direction_ok=direction_ok,
        displacement=displacement,
        speed=speed,
        dynamics_ratio=dynamics_ratio,
        coherence=0.0,
        single_object=float(single),
        color_stability=0.0,
        area_stability=1.0,
        no_flicker=1.0
        - sum(a.found != b.found for a, b in itertools.pairwise(reads)) / max(n - 1, 1),
        jumps=int(sum(s > JUMP for s in steps)),
    )
    pf = score.per_frame()
    exp_known = [i for i in range(n) if reads[i].found and score._expected_color(i) is not None]
    score.color_stability = (
        float(np.mean([pf["color_ok"][i] for i in exp_known])) if exp_known else 0.0
    )
    if motion not in ("grow", "shrink") and len(found) >= 2:
        areas = [(a.area, b.area) for a, b in itertools.pairwise(reads) if a.found and b.found]
        rel = [abs(b - a) / max(a, b) for a, b in areas]
        score.area_stability = float(1 - np.median(rel)) if rel else 0.0
    elif len(found) < 2:
        score.area_stability = 0.0
    jump_free = 1.0 - score.jumps / max(len(steps), 1)
    parts = [score.single_object * found_rate, score.color_stability, score.area_stability]
    score.coherence = float(np.mean([*parts, score.no_flicker * jump_free]))
    return score


def evaluate(video: Any, caption: str) -> VideoScore:
    """Deprecated alias of :func:`score_world_video`, removed in attnlab 0.3.0."""
    warnings.warn(
        "`evaluate` is deprecated and will be removed in version 0.3.0. Use "
        "`attnlab.data.evaluator.score_world_video` instead; `attnlab.evaluate` is the "
        "unrelated video-metrics function.",
        FutureWarning,
        stacklevel=2,
    )
    return score_world_video(video, caption)


def summarize(scores: list[VideoScore]) -> dict[str, float | int | None]:
    """Rates over videos: found frames, colour / shape / background / motion accuracy, direction
    accuracy over moving captions, mean dynamics ratio, mean coherence, clean backgrounds."""
    moving = [s for s in scores if s.direction_ok is not None]
    return {
        "videos": len(scores),
        "found_frames": float(np.mean([s.found_rate for s in scores])),
        "color_acc": float(np.mean([s.color_ok for s in scores])),
        "shape_acc": float(np.mean([s.shape_ok for s in scores])),
        "background_acc": float(np.mean([s.background_ok for s in scores])),
        "background_clean": float(np.mean([s.background_clean for s in scores])),
        "motion_acc": float(np.mean([s.motion_ok for s in scores])),
        "moving_videos": len(moving),
        "direction_acc": float(np.mean([s.direction_ok for s in moving])) if moving else None,
        "dynamics_ratio": float(np.mean([s.dynamics_ratio for s in moving])) if moving else None,
        "coherence": float(np.mean([s.coherence for s in scores])),
    }


def per_frame_rates(scores: list[VideoScore]) -> dict[str, np.ndarray]:
    """Per frame index over videos of one length: object found, colour as captioned."""
    pfs = [s.per_frame() for s in scores]
    return {k: np.mean([p[k] for p in pfs], axis=0) for k in ("found", "color_ok")}


__all__ = [
    "BACKGROUND_NOISE_MAX",
    "FrameReading",
    "VideoScore",
    "background_noise",
    "evaluate",
    "per_frame_rates",
    "read_frame",
    "score_world_video",
    "summarize",
]
