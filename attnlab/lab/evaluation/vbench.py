"""VBench's video metrics, computed as VBench computes them (or a named, weight-free proxy).

- :func:`dynamic_degree`       dynamic or not (flow above a threshold), with the per-pair curve
- :func:`temporal_flickering`  ``(255 - MAE) / 255`` of consecutive frames
- :func:`motion_smoothness`    VBench's interpolation protocol with a flow-based interpolator
- :func:`interpolate_middle`   that interpolator: odd frames re-made from their neighbours
- :func:`consistency`          subject/background consistency on attnlab's similarity backends
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from attnlab.core import dims as D
from attnlab.lab.evaluation.base import EvaluationError, _frames
from attnlab.lab.evaluation.flow import flow_magnitude, optical_flow

__all__ = [
    "consistency",
    "dynamic_degree",
    "interpolate_middle",
    "motion_smoothness",
    "temporal_flickering",
]

# VBench dynamic degree constants (vbench/dynamic_degree.py)
THRESHOLD_PX_AT_256 = 6.0
COUNT_PER_16_FRAMES = 4.0


def _pair_coords(n_pairs: int) -> dict[str, Any]:
    return {D.FRAME_PAIR: np.arange(n_pairs)}


def dynamic_degree(
    video: Any,
    *,
    flow: str = "farneback",
    raft_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    farneback: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """VBench dynamic degree of one video, with its continuous per-pair curve.

    Source: VBench (Huang et al., CVPR 2024), ``vbench/dynamic_degree.py``. For consecutive
    frames ``(i, i + 1)``, ``m_i`` = mean of the top 5 % flow magnitudes
    (:func:`flow_magnitude`); ``thres = 6 * min(H, W) / 256`` pixels;
    ``count = round(4 * F / 16)`` with ``F`` the number of frames. The video is dynamic
    (``dynamic_degree = 1``) if at least ``count`` pairs have ``m_i > thres``; VBench reports
    the mean of this verdict over videos. VBench samples videos at about 8 fps before
    (``interval = round(fps / 8)``): pass frames at that rate to reproduce it. VBench uses
    RAFT; Farneback's magnitudes agree with the true motion within a few percent up to 16 px
    per frame (calibration in docs/evaluation.md), fall short beyond, and are inflated where
    new content enters the frame (no occlusion handling; the top 5 % picks those vectors).

    Variables: ``flow_magnitude`` (frame_pair; pixels), ``flow_magnitude_mean`` (mean of the
    curve), ``dynamic_degree`` (0 or 1), ``dynamic_pairs`` (pairs above the threshold),
    ``dynamic_threshold`` (pixels), ``dynamic_count`` (pairs needed).
    """
    frames = _frames(video)
    n, h, w = frames.shape[:3]
    mags = flow_magnitude(
        optical_flow(
            frames, method=flow, raft_weights=raft_weights, device=device, farneback=farneback
        )
    )
    thres = THRESHOLD_PX_AT_256 * min(h, w) / 256.0
    count = round(COUNT_PER_16_FRAMES * n / 16.0)
    above = int((mags > thres).sum())
    return xr.Dataset(
        {
            "flow_magnitude": (D.FRAME_PAIR, mags, {"units": "pixels", "flow": flow}),
            "flow_magnitude_mean": ((), float(mags.mean()), {"units": "pixels"}),
            "dynamic_degree": ((), float(above >= count)),
            "dynamic_pairs": ((), above),
            "dynamic_threshold": ((), thres, {"units": "pixels"}),
            "dynamic_count": ((), count),
        },
        coords=_pair_coords(n - 1),
    )


def temporal_flickering(video: Any) -> xr.Dataset:
    """VBench temporal flickering of one video (no weights).

    Source: VBench ``vbench/temporal_flickering.py``: per consecutive pair the mean absolute
    difference ``MAE_i = mean |I_{i+1} - I_i|`` over pixels and RGB channels, in [0, 255]
    (``cv2.absdiff`` on float32); score ``(255 - mean_i MAE_i) / 255`` in [0, 1], 1 = no
    change at all. VBench applies it to static-scene prompts, where any change is flicker;
    on moving content it measures change as such. Vectorised over all pairs at once.

    Variables: ``frame_difference`` (frame_pair; 0-255), ``temporal_flickering``.
    """
    frames = _frames(video).astype(np.float32)
    mae = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3), dtype=np.float64)
    return xr.Dataset(
        {
            "frame_difference": (D.FRAME_PAIR, mae, {"units": "0-255"}),
            "temporal_flickering": ((), float((255.0 - mae.mean()) / 255.0)),
        },
        coords=_pair_coords(len(mae)),
    )


def _warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out(x) = I(x + flow(x))`` bilinear, border replicated; batched.

    ``images`` ``(B, C, H, W)`` float, ``flow`` ``(B, H, W, 2)`` in pixels (x, y).
    """
    h, w = images.shape[-2:]
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij"
    )
    x = (xx + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    y = (yy + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([x, y], dim=-1)
    return torch.nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=True
    )


def interpolate_middle(
    video: Any,
    *,
    flow: str = "farneback",
    raft_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    farneback: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Odd frames re-synthesised from their even neighbours; returns ``(indices, frames)``.

    For every odd ``i`` with ``i + 1 < F``: ``I0 = f[i-1]``, ``I1 = f[i+1]``, flows ``F01``,
    ``F10`` between them, and the linear-motion approximation of Super SloMo (Jiang et al.,
    CVPR 2018, Eq. 4) at ``t = 1/2``: ``F_t0 = -F01/4 + F10/4``, ``F_t1 = F01/4 - F10/4``,
    ``I_t = (warp(I0, F_t0) + warp(I1, F_t1)) / 2`` (bilinear backward warps). Frames come
    back as float32 ``(K, H, W, 3)`` in [0, 255].
    """
    frames = _frames(video)
    mids = np.arange(1, len(frames) - 1, 2)
    if len(mids) == 0:
        raise EvaluationError("motion smoothness needs at least 3 frames")
    pairs = [(i - 1, i + 1) for i in mids] + [(i + 1, i - 1) for i in mids]
    flows = optical_flow(
        frames, pairs, method=flow, raft_weights=raft_weights, device=device, farneback=farneback
    )
    f01 = torch.from_numpy(flows[: len(mids)]).double()
    f10 = torch.from_numpy(flows[len(mids) :]).double()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    i0, i1 = x[mids - 1], x[mids + 1]
    ft0 = -0.25 * f01 + 0.25 * f10
    ft1 = 0.25 * f01 - 0.25 * f10
    mid = 0.5 * (_warp(i0, ft0) + _warp(i1, ft1))
    return mids, mid.permute(0, 2, 3, 1).float().numpy()


def motion_smoothness(
    video: Any,
    *,
    flow: str = "farneback",
    raft_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    farneback: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Weight-free proxy of VBench's motion smoothness.

    VBench (``vbench/motion_smoothness.py``) drops the odd frames, re-creates them with the AMT
    frame interpolator from the even ones, and scores ``(255 - MAE) / 255`` with ``MAE`` the
    mean absolute difference between re-created and real odd frames (0-255): motion that a
    smooth interpolation predicts scores near 1. AMT needs downloaded weights; here the
    interpolator is :func:`interpolate_middle` (optical flow + linear motion), so the values
    are not VBench's, but the protocol and scale are. Constant-velocity motion scores near 1;
    jerky or shuffled motion and flicker lower it.

    Variables: ``interpolation_error`` (frame, at odd frames, NaN elsewhere; 0-255),
    ``motion_smoothness``.
    """
    frames = _frames(video)
    mids, pred = interpolate_middle(
        frames, flow=flow, raft_weights=raft_weights, device=device, farneback=farneback
    )
    err = np.abs(pred.astype(np.float64) - frames[mids].astype(np.float64)).mean(axis=(1, 2, 3))
    per_frame = np.full(len(frames), np.nan)
    per_frame[mids] = err
    return xr.Dataset(
        {
            "interpolation_error": (D.FRAME, per_frame, {"units": "0-255", "flow": flow}),
            "motion_smoothness": ((), float((255.0 - err.mean()) / 255.0)),
        },
        coords={D.FRAME: np.arange(len(frames))},
    )


def consistency(video: Any, backend: Any = "stlpips", **backend_kwargs: Any) -> xr.Dataset:
    """Subject/background consistency of one video with an attnlab similarity backend.

    ``S`` = the ``(frame, frame2)`` similarity matrix of
    :func:`attnlab.data.similarity.similarity_matrix` (``"stlpips"`` offline by default,
    ``"dreamsim"`` with local weights, ``"pixel"``, or a backend instance). VBench
    (``vbench/subject_consistency.py``, ``background_consistency.py``) scores
    ``mean_{i >= 1} (max(0, S[i, i-1]) + max(0, S[i, 0])) / 2`` with DINO (subject) or CLIP
    (background) features; the formula is the same here, the features are the backend's.

    Variables: ``consistency_to_first`` (frame; ``S[i, 0]``), ``consistency_to_previous``
    (frame; ``S[i, i-1]``, NaN at 0), ``consistency``, and ``similarity_by_offset`` (offset;
    mean ``S[i, j]`` over ``|i - j| = d``: the similarity-vs-interval curve of Fig. S.2).
    """
    from attnlab.data.metrics import band_profile
    from attnlab.data.similarity import similarity_matrix

    frames = _frames(video)
    sim = similarity_matrix(frames, backend, **backend_kwargs)
    s = sim.values
    n = len(s)
    to_first = s[:, 0].copy()
    to_prev = np.full(n, np.nan)
    to_prev[1:] = np.diagonal(s, offset=-1)
    score = 0.5 * (np.maximum(0.0, to_prev[1:]) + np.maximum(0.0, to_first[1:]))
    profile = band_profile(sim, row_dim=D.FRAME, col_dim=D.FRAME2)
    attrs = {"backend": sim.attrs["backend"], "backend_settings": sim.attrs["backend_settings"]}
    return xr.Dataset(
        {
            "consistency_to_first": (D.FRAME, to_first, attrs),
            "consistency_to_previous": (D.FRAME, to_prev, attrs),
            "consistency": ((), float(score.mean()), attrs),
            "similarity_by_offset": (D.OFFSET, profile.values, attrs),
        },
        coords={D.FRAME: np.arange(n), D.OFFSET: np.arange(n)},
    )
