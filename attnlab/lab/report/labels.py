"""What the page says about a run in words: its steps' labels, a FreeNoise run's rows of
each video frame, the latent frame of each video frame where the VAE compresses time, why it
has no video. Plain functions of numbers (no stores read here)."""

from __future__ import annotations

from typing import Any


def step_label(
    position: int,
    count: int,
    index: int,
    denoising: float | None,
    timestep: float | None,
    expert: str = "",
    *,
    real: bool = False,
) -> str:
    """A step as the page names it: which recorded step of how many, the denoising step it
    was (of the run's, where known; a real clip's steps are only its timesteps) and its
    timestep: ``recorded step 2 of 3 · denoising step 5 of 25 · t = 801``."""
    parts = [f"recorded step {position + 1} of {count}"]
    if not real:
        of = f" of {int(denoising)}" if denoising and index < denoising else ""
        parts.append(f"denoising step {index + 1}{of}")
    if timestep is not None:
        parts.append(f"t = {timestep:.6g}")
    if expert:
        parts.append(expert)
    return " · ".join(parts)


def window_rows(starts: list[int], frames: int, video: float | None = None) -> dict[str, Any]:
    """A FreeNoise run's windows as the page marks them: the windows' first frames, their
    length, the video frames they cover and, per video frame, ``[window start, row]`` of each
    window holding it (the shown map is the windows' mean, its rows counted within the
    window: video frame ``f`` is row ``f - start`` of each window with ``start <= f <
    start + frames``); ``video``: the run's frame count, where known."""
    total = max(max(starts) + frames, int(video or 0))
    rows = [[[s, f - s] for s in starts if s <= f < s + frames] for f in range(total)]
    return {"starts": list(starts), "frames": frames, "video_frames": total, "rows": rows}


def latent_rows(video: int, frames: int) -> dict[str, Any]:
    """The map row of each of ``video`` frames when the map is over ``frames`` latent (token)
    frames, fewer than the video's (the VAEs of the 3D transformers compress time): with
    ``video = c (frames - 1) + 1`` the causal VAEs' layout (CogVideoX, Wan, HunyuanVideo,
    LTX-Video), latent frame 0 is video frame 0 and latent frame ``k`` covers video frames
    ``c (k - 1) + 1 .. c k``; any other ratio (a temporal patch over latent frames) is mapped
    in proportion and marked ``exact: False``."""
    c = (video - 1) / (frames - 1) if frames > 1 else 0.0
    exact = frames > 1 and c.is_integer() and c >= 1
    if exact:
        rows = [-(-f // int(c)) for f in range(video)]  # ceil(f / c): frame 0 alone
    else:
        rows = [min(frames - 1, f * frames // video) for f in range(video)]
    return {"rows": rows, "frames": frames, "factor": int(c) if exact else None, "exact": exact}


def video_note(stored: bool, from_store: bool, video_mb: float, max_mb: float | None) -> str:
    """Why a run has no video in the page: left out for the size limit (``stored``: it has one;
    the page's videos take ``video_mb``; ``max_mb`` the limit) and how to include it, or none
    found (``from_store``: the run came from a store, not a Dataset)."""
    if stored:
        limit = f"max_mb {max_mb:g}" if max_mb is not None else "its size limit"
        return (
            f"The video of this run was left out to keep the page under {limit} (the page's "
            f"videos take {video_mb:.1f} MB). To include it, make the report with a larger "
            "max_mb (attnlab report STORE --max-mb MB; attnlab.report(..., max_mb=MB)) or "
            "fewer runs (--runs)."
        )
    if not from_store:
        return (
            "No video: a Dataset has no store to read videos from (report the store itself "
            "to show the videos it keeps)."
        )
    return (
        "No video of this run is stored (attnlab record --video, probe, the demo and the "
        "analyses store it beside the maps)."
    )
