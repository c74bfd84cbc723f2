"""What every metric module shares: the error type and the frame input.

- :class:`EvaluationError`  bad input to an evaluation (a ``ValueError``)
- ``_frames``               any video input as ``(F, H, W, 3)`` uint8, at least two frames
- ``_frames_any``           the same, one frame allowed (CLIP scores images)

Both follow :func:`attnlab.data.video.to_uint8_frames`, the one frame-coercion rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad input to an evaluation (the message says what was wrong and what is allowed)."""


def _frames(video: Any) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames of any accepted video input (at least two frames)."""
    from attnlab.data.video import VideoError, to_uint8_frames

    try:
        frames = to_uint8_frames(video)
    except VideoError as err:
        raise EvaluationError(f"not a video: {err}") from None
    if frames.shape[0] < 2:
        raise EvaluationError(f"a video needs at least 2 frames, got {frames.shape[0]}")
    return frames


def _frames_any(video: Any) -> np.ndarray:
    """Like :func:`_frames` but a single frame is allowed (CLIP scores images)."""
    from attnlab.data.video import to_uint8_frames

    return to_uint8_frames(video)
