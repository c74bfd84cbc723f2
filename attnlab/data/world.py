"""A procedural video world with ground truth: captioned clips of any length, deterministic by seed.

Each clip shows one soft-edged circle or square of a palette colour on a plain background. It
moves (to the right, to the left, up, down) at constant speed and bounces off the borders, grows
or shrinks (bouncing between a smallest and a largest radius), or turns from one colour to another
(linearly over :data:`TRANSITION` frames, then it keeps the new colour). Because positions, radii
and colours are functions of the frame index, a clip continues naturally past the 16 frames the
organisms were trained on: 48- and 128-frame *real* clips exist for the long-video comparisons.

Captions follow one grammar::

    a {red|green|blue|yellow|white} {circle|square} moving {to the right|to the left|up|down}
        on a {black|gray|dark blue} background
    a {colour} {shape} {growing|shrinking} on a {background} background
    a {shape} turning from {colour} to {colour} on a {background} background

Every clip comes with its per-frame ground truth (:class:`Truth`: centroid, radius, area in
pixels, RGB colour); :mod:`attnlab.data.evaluator` scores any video of this world *without* it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from attnlab.data.video import Video

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.02, 0.02, 0.02),
    "gray": (0.45, 0.45, 0.45),
    "dark blue": (0.05, 0.05, 0.3),
}
SHAPES = ("circle", "square")
DIRECTIONS = ("right", "left", "up", "down")
MOTIONS = (*DIRECTIONS, "grow", "shrink", "recolor")
DIRECTION_WORDS = {"right": "to the right", "left": "to the left", "up": "up", "down": "down"}
# unit vectors in image coordinates (x to the right, y downwards)
DIRECTION_VECTORS = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
TRANSITION = 16  # frames over which a recolouring clip changes colour
EDGE = 0.7  # soft-edge width in pixels (logistic)
# ranges as fractions of the frame size (per frame where a rate)
RADIUS = (0.1, 0.16)
RADIUS_LIMITS = (0.08, 0.28)  # growing / shrinking bounce between these
SPEED = (0.025, 0.04)  # per frame: 16 frames travel 0.4-0.64 of the frame
GROWTH = 0.01  # radius change per frame for growing / shrinking


@dataclass(frozen=True)
class Scene:
    """Everything that defines a clip; positions and radii are fractions of the frame size."""

    shape: str
    color: str
    background: str
    motion: str
    x0: float
    y0: float
    radius0: float
    speed: float = 0.0
    color2: str | None = None

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"),
            (self.color, COLORS, "color"),
            (self.background, BACKGROUNDS, "background"),
            (self.motion, MOTIONS, "motion"),
        ):
            if value not in allowed:
                raise ValueError(f"{what}={value!r}; allowed: {', '.join(allowed)}")
        if self.motion == "recolor" and (self.color2 not in COLORS or self.color2 == self.color):
            raise ValueError(f"a recolouring scene needs color2 in {list(COLORS)} != color")

    @property
    def caption(self) -> str:
        bg = f"on a {self.background} background"
        if self.motion == "recolor":
            return f"a {self.shape} turning from {self.color} to {self.color2} {bg}"
        if self.motion in ("grow", "shrink"):
            verb = "growing" if self.motion == "grow" else "shrinking"
            return f"a {self.color} {self.shape} {verb} {bg}"
        return f"a {self.color} {self.shape} moving {DIRECTION_WORDS[self.motion]} {bg}"


@dataclass
class Truth:
    """Per-frame ground truth of a rendered clip (pixels; x to the right, y downwards)."""

    x: np.ndarray  # [F] centroid
    y: np.ndarray  # [F]
    radius: np.ndarray  # [F] half the side of a square, radius of a circle
    area: np.ndarray  # [F] sum of the object's opacity
    color: np.ndarray  # [F, 3] RGB in [0, 1]


@dataclass
class Clip:
    """A rendered clip: ``video`` ``[F, 3, H, W]`` in [-1, 1], its caption and ground truth."""

    video: torch.Tensor
    caption: str
    scene: Scene
    truth: Truth

    def frames01(self) -> np.ndarray:
        """The video as ``[F, H, W, 3]`` in [0, 1] (the evaluator's and plots' layout)."""
        return ((self.video.permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)

    def to_video(self, name: str) -> Video:
        """The clip as an attnlab :class:`~attnlab.data.video.Video` named ``name``."""
        return video_of(self.frames01(), name)


def video_of(frames01: np.ndarray, name: str) -> Video:
    """World frames ``[F, H, W, 3]`` in [0, 1] as an attnlab ``Video`` (uint8, 8 fps)."""
    from attnlab.data.video import Video

    u8 = (np.asarray(frames01) * 255).round().clip(0, 255).astype(np.uint8)
    return Video(u8, fps=8.0, source_fps=8.0, indices=np.arange(len(u8)), id=name)


def _reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold ``v`` into [lo, hi] as a point bouncing between two walls (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(v, (lo + hi) / 2)
    s = np.mod(v - lo, 2 * span)
    return lo + np.where(s <= span, s, 2 * span - s)


def sample_scene(
    rng: np.random.Generator,
    motions: tuple[str, ...] | None = None,
    motion_weights: tuple[float, ...] | None = None,
) -> Scene:
    """A random scene of the grammar. A moving object starts on the side it moves away from, so
    it crosses the frame without bouncing in its first 16 frames; a growing or shrinking one does
    not reach its radius limit before frame 16 either (so the first 16 frames played backwards
    are the clip of the opposite caption)."""
    motions = motions or MOTIONS
    p = None if motion_weights is None else np.asarray(motion_weights) / np.sum(motion_weights)
    motion = str(motions[rng.choice(len(motions), p=p)])
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLORS)
    color = names[rng.integers(len(names))]
    color2 = names[(names.index(color) + 1 + rng.integers(len(names) - 1)) % len(names)]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    radius = float(rng.uniform(*RADIUS))
    x0, y0 = (float(v) for v in rng.uniform(0.3, 0.7, 2))
    speed = 0.0
    if motion in DIRECTIONS:
        speed = float(rng.uniform(*SPEED))
        dx, dy = DIRECTION_VECTORS[motion]
        travel = 15 * speed
        # start so that the 16-frame path is centred with some jitter and stays inside
        along = 0.5 - travel / 2 + float(rng.uniform(-0.05, 0.05))
        along = min(max(along, radius), 1 - radius - travel)
        start = along if (dx + dy) > 0 else 1 - along
        if dx:
            x0 = start
        else:
            y0 = start
    elif motion == "grow":
        radius = float(rng.uniform(RADIUS_LIMITS[0], RADIUS_LIMITS[1] - 15 * GROWTH))
    elif motion == "shrink":
        radius = float(rng.uniform(RADIUS_LIMITS[0] + 15 * GROWTH, RADIUS_LIMITS[1]))
    return Scene(
        shape=shape,
        color=color,
        background=background,
        motion=motion,
        x0=x0,
        y0=y0,
        radius0=radius,
        speed=speed,
        color2=color2 if motion == "recolor" else None,
    )


def trajectory(scene: Scene, frames: int, size: int) -> tuple[np.ndarray, ...]:
    """Per-frame centre x, y, radius (pixels) and colour ``[F, 3]`` of ``scene``."""
    t = np.arange(frames, dtype=np.float64)
    r = np.full(frames, scene.radius0 * size)
    x = np.full(frames, scene.x0 * size)
    y = np.full(frames, scene.y0 * size)
    if scene.motion in DIRECTIONS:
        dx, dy = DIRECTION_VECTORS[scene.motion]
        lo, hi = r[0], size - r[0]
        x = _reflect(x + dx * scene.speed * size * t, lo, hi)
        y = _reflect(y + dy * scene.speed * size * t, lo, hi)
    elif scene.motion in ("grow", "shrink"):
        sign = 1.0 if scene.motion == "grow" else -1.0
        lo, hi = (v * size for v in RADIUS_LIMITS)
        r = _reflect(r + sign * GROWTH * size * t, lo, hi)
    c1 = np.asarray(COLORS[scene.color])
    color = np.tile(c1, (frames, 1))
    if scene.motion == "recolor":
        u = np.clip(t / (TRANSITION - 1), 0, 1)[:, None]
        color = c1 + (np.asarray(COLORS[scene.color2]) - c1) * u
    return x, y, r, color


def render(scene: Scene, frames: int = 16, size: int = 32, only: int | None = None) -> Clip:
    """Draw ``scene`` for ``frames`` frames at ``size`` x ``size`` pixels (``only``: just that
    frame index, a one-frame clip)."""
    if frames < 1 or size < 8:
        raise ValueError(f"need frames >= 1 and size >= 8, got frames={frames}, size={size}")
    x, y, r, color = trajectory(scene, frames, size)
    if only is not None:
        x, y, r, color = (
            x[only : only + 1],
            y[only : only + 1],
            r[only : only + 1],
            color[only : only + 1],
        )
    grid = np.arange(size) + 0.5
    xx, yy = grid[None, None, :], grid[None, :, None]
    cx, cy, rr = x[:, None, None], y[:, None, None], r[:, None, None]
    if scene.shape == "circle":
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) - rr
    else:
        dist = np.maximum(np.abs(xx - cx), np.abs(yy - cy)) - rr
    alpha = 1 / (1 + np.exp(np.clip(dist / EDGE, -60, 60)))  # [F, H, W]
    back = np.asarray(BACKGROUNDS[scene.background])
    video = back * (1 - alpha[..., None]) + color[:, None, None, :] * alpha[..., None]
    area = alpha.sum((1, 2))
    wx = (alpha * xx).sum((1, 2)) / np.maximum(area, 1e-9)
    wy = (alpha * yy).sum((1, 2)) / np.maximum(area, 1e-9)
    tensor = torch.from_numpy(video.astype(np.float32)).permute(0, 3, 1, 2) * 2 - 1
    truth = Truth(x=wx, y=wy, radius=r, area=area, color=color)
    return Clip(video=tensor.contiguous(), caption=scene.caption, scene=scene, truth=truth)


def world_clip(seed: int, frames: int = 16, size: int = 32, **scene_kwargs: Any) -> Clip:
    """The clip of ``seed``: the same scene (and so the same first frames) for any length."""
    return render(sample_scene(np.random.default_rng(seed), **scene_kwargs), frames, size)


def scene_for_caption(caption: str, seed: int = 0) -> Scene:
    """A scene of ``caption`` (a caption of the grammar): its words as the caption says, its
    geometry (start, radius, speed) drawn from ``seed`` as :func:`sample_scene` draws it."""
    words = parse_caption(caption)
    scene = sample_scene(np.random.default_rng(seed), motions=(words["motion"],))
    return replace(
        scene,
        shape=words["shape"],
        color=words["color"],
        background=words["background"],
        color2=words["color2"] if words["motion"] == "recolor" else None,
    )


WORLD_PREFIX = "world:"


def is_world_spec(ref: str) -> bool:
    """``ref`` names a world clip (``world:<caption>`` / ``world:<seed>``), not a file."""
    from pathlib import Path

    return ref.startswith(WORLD_PREFIX) and not Path(ref).exists()


def world_video(spec: str, frames: int = 16, size: int = 64) -> Video:
    """A real world clip as an :class:`attnlab.data.video.Video` (8 fps), named by ``spec``:
    ``"world:<seed>"`` (the clip of :func:`world_clip`) or ``"world:<caption>"`` (a clip of
    that caption, seed 0); ``frames`` of any length (objects bounce off the borders)."""
    if not spec.startswith(WORLD_PREFIX):
        raise ValueError(f"a world clip is named 'world:<seed>' or 'world:<caption>', got {spec!r}")
    rest = spec[len(WORLD_PREFIX) :].strip()
    if rest.isdigit():
        clip = world_clip(int(rest), frames, size)
    else:
        clip = render(scene_for_caption(rest), frames, size)
    return clip.to_video(spec)


_CAPTION = re.compile(
    r"^a (?:(?P<color>\w+) )?(?P<shape>circle|square) "
    r"(?:moving (?P<dir>to the right|to the left|up|down)|(?P<size>growing|shrinking)|"
    r"turning from (?P<c1>\w+) to (?P<c2>\w+)) on an? (?P<bg>[\w ]+) background$"
)


def parse_caption(caption: str) -> dict[str, Any]:
    """The scene words of a caption of the grammar: shape, colour (``color2`` for a recolouring),
    background and motion (one of :data:`MOTIONS`)."""
    m = _CAPTION.match(caption.strip())
    if m is None:
        raise ValueError(f"not a caption of the world's grammar: {caption!r}")
    g = m.groupdict()
    if g["dir"]:
        motion = {v: k for k, v in DIRECTION_WORDS.items()}[g["dir"]]
    elif g["size"]:
        motion = "grow" if g["size"] == "growing" else "shrink"
    else:
        motion = "recolor"
    color = g["c1"] if motion == "recolor" else g["color"]
    out = dict(shape=g["shape"], color=color, color2=g["c2"], background=g["bg"], motion=motion)
    for key, table in (("color", COLORS), ("color2", COLORS), ("background", BACKGROUNDS)):
        if out[key] is not None and out[key] not in table:
            raise ValueError(f"unknown {key} {out[key]!r} in {caption!r}; allowed: {list(table)}")
    if (color is None) != (motion == "recolor") and motion != "recolor":
        raise ValueError(f"caption without a colour: {caption!r}")
    return out


def flip_direction(caption: str) -> str:
    """The caption with its direction word swapped (right <-> left, up <-> down): the
    caption-flip probe's counterfactual."""
    swaps = {"to the right": "to the left", "to the left": "to the right", "up": "down"}
    swaps["down"] = "up"
    m = re.search(r"moving (to the right|to the left|up|down) ", caption)
    if m is None:
        raise ValueError(f"no direction in {caption!r}")
    return caption[: m.start(1)] + swaps[m.group(1)] + caption[m.end(1) :]


def grammar(motions: tuple[str, ...] = MOTIONS) -> list[str]:
    """Every caption of the grammar with the given motions (recolourings: every colour pair)."""
    out = []
    for bg in BACKGROUNDS:
        for shape in SHAPES:
            for c in COLORS:
                for m in motions:
                    if m == "recolor":
                        out += [
                            Scene(shape, c, bg, m, 0.5, 0.5, 0.1, color2=c2).caption
                            for c2 in COLORS
                            if c2 != c
                        ]
                    else:
                        out.append(Scene(shape, c, bg, m, 0.5, 0.5, 0.1).caption)
    return out


def scene_dict(scene: Scene) -> dict[str, Any]:
    return asdict(scene)


__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "MOTIONS",
    "SHAPES",
    "Clip",
    "Scene",
    "Truth",
    "flip_direction",
    "grammar",
    "parse_caption",
    "render",
    "sample_scene",
    "trajectory",
    "world_clip",
]
