"""Video metrics: dynamics, coherence and text alignment, computed as the field computes them.

One call scores a video, a set of videos, or every run of an attnlab store, and returns an
:class:`xarray.Dataset` in the shared dimension vocabulary (``run``, ``frame``, ``frame_pair``,
``offset``)::

    ds = attnlab.evaluate("analyses/data/organism-none/sigma.zarr")   # every stored video
    ds = attnlab.evaluate(video, prompt="a peony blooming", metrics=["dynamic_degree", "clip_vl"])

Metrics (``metrics=[...]``; each is documented at its function, with source and formula):

``dynamic_degree``       VBench's dynamic degree (per frame pair the mean of the top 5 % of the
                         optical-flow magnitudes, threshold ``6 * short side / 256``, dynamic if
                         ``round(4 F / 16)`` pairs exceed it) and the continuous per-pair
                         magnitude curve. Flow: OpenCV Farneback (no weights) or torchvision RAFT
                         with user-supplied weights.
``temporal_flickering``  VBench's weight-free flickering score ``(255 - MAE) / 255``.
``motion_smoothness``    VBench's frame-interpolation protocol with a weight-free interpolator
                         (flow-based, linear motion) in place of AMT: a proxy, see the function.
``consistency``          VBench's subject/background-consistency formula on the similarity
                         backends of :mod:`attnlab.similarity`, per frame (to the first, to the
                         previous frame) and by frame interval (Fig. S.2).
``clip_vl``              the paper's CLIP-VL score: mean cosine similarity of CLIP frame and text
                         embeddings (open_clip, a user-supplied local checkpoint).
``mtscore``              ChronoMagic-Bench's MTScore through a user-supplied scorer (its
                         InternVideo2 weights are shipped by no package registry).
``attention``            attention-side measures of the store's runs (band concentration,
                         diagonalness, distance to a real reference map), joined by run id.

Frames are ``(F, H, W, 3)`` uint8 RGB, a :class:`attnlab.video.Video`, or anything
:func:`attnlab.video.to_uint8_frames` accepts (e.g. a pipeline's float ``[F, H, W, 3]`` in
[0, 1]). Results for the runs of a store are written beside them under
``evaluation/<run_id>`` (see docs/store-schema.md) and read back with :func:`load_evaluation`;
``attnlab.load`` is unaffected.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from attnlab.core import dims as D

__all__ = [
    "DEFAULT_METRICS",
    "FARNEBACK",
    "METRICS",
    "ClipScorer",
    "ClipWeightsError",
    "EvaluationError",
    "MTScoreUnavailableError",
    "RaftWeightsError",
    "attention_measures",
    "clip_vl",
    "consistency",
    "dynamic_degree",
    "evaluate",
    "flow_magnitude",
    "load_evaluation",
    "motion_smoothness",
    "optical_flow",
    "temporal_flickering",
]

EVALUATION_GROUP = "evaluation"
CLIP_CHECKPOINT_ENV = "ATTNLAB_CLIP_CHECKPOINT"
CLIP_MODEL_ENV = "ATTNLAB_CLIP_MODEL"
RAFT_WEIGHTS_ENV = "ATTNLAB_RAFT_WEIGHTS"

METRICS = (
    "dynamic_degree",
    "temporal_flickering",
    "motion_smoothness",
    "consistency",
    "clip_vl",
    "mtscore",
    "attention",
)
# what runs without any user-supplied weights (clip_vl and mtscore need them)
DEFAULT_METRICS = (
    "dynamic_degree",
    "temporal_flickering",
    "motion_smoothness",
    "consistency",
    "attention",
)
VIDEO_METRICS = tuple(m for m in METRICS if m != "attention")

# OpenCV Farneback settings (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags).
# Four pyramid levels, a 21 px window and poly_n = 7 keep translations of up to 16 px per frame
# within a few percent at 64 x 64 to 320 x 512 (docs/evaluation.md, calibration); OpenCV stops
# adding levels once a level would be smaller than its minimum size.
FARNEBACK: dict[str, float | int] = {
    "pyr_scale": 0.5,
    "levels": 4,
    "winsize": 21,
    "iterations": 5,
    "poly_n": 7,
    "poly_sigma": 1.5,
    "flags": 0,
}
# VBench dynamic degree constants (vbench/dynamic_degree.py)
TOP_FRACTION = 0.05
THRESHOLD_PX_AT_256 = 6.0
COUNT_PER_16_FRAMES = 4.0


class EvaluationError(ValueError):
    """Bad input to an evaluation (the message says what was wrong and what is allowed)."""


class RaftWeightsError(FileNotFoundError):
    """RAFT was asked for without a local weights file; attnlab never downloads it."""


class ClipWeightsError(FileNotFoundError):
    """CLIP-VL was asked for without a local open_clip checkpoint; attnlab never downloads it."""


class MTScoreUnavailableError(EvaluationError):
    """MTScore was asked for without a scorer (its weights are not available offline)."""


# ---------------------------------------------------------------------------- frames


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


def _gray(frames: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB uint8 frames, uint8 ``(F, H, W)`` (OpenCV's RGB2GRAY weights)."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- optical flow


def _farneback(
    gray: np.ndarray, pairs: Sequence[tuple[int, int]], params: Mapping[str, Any]
) -> np.ndarray:
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            f"Farneback optical flow needs OpenCV: pip install opencv-python-headless ({err})"
        ) from err
    p = {**FARNEBACK, **params}
    out = np.empty((len(pairs), *gray.shape[1:], 2), np.float32)
    for k, (i, j) in enumerate(pairs):
        out[k] = cv2.calcOpticalFlowFarneback(
            gray[i],
            gray[j],
            None,
            float(p["pyr_scale"]),
            int(p["levels"]),
            int(p["winsize"]),
            int(p["iterations"]),
            int(p["poly_n"]),
            float(p["poly_sigma"]),
            int(p["flags"]),
        )
    return out


_RAFT_CACHE: dict[tuple[str, str, str], torch.nn.Module] = {}


def load_raft(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """torchvision's RAFT (large or small, told apart by the checkpoint) from a local file.

    ``weights`` (or env ``ATTNLAB_RAFT_WEIGHTS``) is a torchvision RAFT state dict, e.g.
    ``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` or ``raft_small_C_T_V2-01064c6d.pth`` from
    download.pytorch.org (the URLs of ``torchvision.models.optical_flow.Raft_*_Weights``).
    VBench uses princeton-vl's ``raft-things.pth``, whose key names differ: it does not load
    here. Nothing is ever downloaded: a missing file raises :class:`RaftWeightsError`.
    """
    from torchvision.models.optical_flow import raft_large, raft_small

    weights = weights or os.environ.get(RAFT_WEIGHTS_ENV)
    if not weights:
        raise RaftWeightsError(
            "flow='raft' needs a local torchvision RAFT checkpoint: pass raft_weights= (CLI "
            f"--raft-weights) or set ${RAFT_WEIGHTS_ENV}. attnlab never downloads weights; get "
            "raft_large_C_T_SKHT_V2-ff5fadd5.pth (or raft_small_C_T_V2-01064c6d.pth) from "
            "https://download.pytorch.org/models/ on a machine with internet. Without weights "
            "use flow='farneback' (OpenCV, no weights)."
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise RaftWeightsError(f"RAFT weights file {path} does not exist")
    key = (str(path.resolve()), str(path.stat().st_mtime_ns), str(device))
    if key not in _RAFT_CACHE:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        errors = []
        for build in (raft_large, raft_small):
            model = build(weights=None, progress=False)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                errors.append(f"{build.__name__}: {str(err).splitlines()[0]}")
                continue
            _RAFT_CACHE[key] = model.eval().requires_grad_(False).to(device)
            break
        else:
            raise EvaluationError(
                f"{path} is not a torchvision RAFT state dict ({'; '.join(errors)}). "
                "princeton-vl checkpoints (raft-things.pth) use other key names."
            )
    return _RAFT_CACHE[key]


@torch.no_grad()
def _raft(
    frames: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    weights: str | os.PathLike | None,
    device: str | torch.device,
    num_flow_updates: int = 12,
    batch_size: int = 8,
) -> np.ndarray:
    model = load_raft(weights, device)
    if min(frames.shape[1:3]) < 128:
        raise EvaluationError(
            f"RAFT needs frames of at least 128 x 128 pixels (its correlation pyramid works at "
            f"1/8 size), got {frames.shape[1]} x {frames.shape[2]}; use flow='farneback'"
        )
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # RAFT's [-1, 1]
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8  # RAFT needs sides divisible by 8: replicate-pad, as VBench
    x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        a = x[[i for i, _ in chunk]].to(device)
        b = x[[j for _, j in chunk]].to(device)
        flow = model(a, b, num_flow_updates=num_flow_updates)[-1]
        flow = flow[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        out.append(flow.permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(out)


def optical_flow(
    video: Any,
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    method: str = "farneback",
    raft_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    farneback: Mapping[str, Any] | None = None,
    raft_updates: int = 12,
) -> np.ndarray:
    """Dense optical flow ``(P, H, W, 2)`` float32 (x, y displacement in pixels) per frame pair.

    ``pairs`` default to consecutive frames ``(i, i + 1)``; flow maps each pixel of the first
    frame to its position in the second. ``method="farneback"``: OpenCV's
    ``calcOpticalFlowFarneback`` (Farnebaeck, SCIA 2003) on BT.601 luma with
    :data:`FARNEBACK` settings (override with ``farneback={...}``), no weights.
    ``method="raft"``: torchvision's RAFT (Teed & Deng, ECCV 2020) from a local checkpoint
    (:func:`load_raft`), inputs in [-1, 1], replicate-padded to multiples of 8,
    ``raft_updates`` refinement iterations (12, as VBench).
    """
    frames = _frames(video)
    if pairs is None:
        pairs = [(i, i + 1) for i in range(len(frames) - 1)]
    pairs = [(int(i), int(j)) for i, j in pairs]
    if method == "farneback":
        return _farneback(_gray(frames), pairs, farneback or {})
    if method == "raft":
        return _raft(frames, pairs, raft_weights, device, num_flow_updates=raft_updates)
    raise EvaluationError(f"flow method must be 'farneback' or 'raft', got {method!r}")


def flow_magnitude(flow: np.ndarray, top: float = TOP_FRACTION) -> np.ndarray:
    """Per pair, the mean of the largest ``top`` fraction of the flow magnitudes ``(P,)``.

    VBench (``DynamicDegree.get_score``): ``rad = sqrt(u^2 + v^2)``, ``k = int(H W * 0.05)``,
    score = mean of the ``k`` largest ``rad``. For frames under 20 pixels ``k`` would be 0
    (VBench: NaN); here ``k >= 1``. Vectorised over pairs with a partial sort.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise EvaluationError(f"flow must be (P, H, W, 2), got shape {flow.shape}")
    if not 0 < top <= 1:
        raise EvaluationError(f"top must be in (0, 1], got {top}")
    mag = np.hypot(flow[..., 0], flow[..., 1]).reshape(len(flow), -1).astype(np.float64)
    k = max(1, int(mag.shape[1] * top))
    return np.partition(mag, mag.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


# ---------------------------------------------------------------------------- metrics


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
    :func:`attnlab.similarity.similarity_matrix` (``"stlpips"`` offline by default,
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


# ---------------------------------------------------------------------------- CLIP-VL


@dataclass
class ClipScorer:
    """CLIP image/text embeddings from a local open_clip checkpoint (never downloads).

    ``checkpoint`` (or env ``ATTNLAB_CLIP_CHECKPOINT``) is either

    - a folder in open_clip's Hugging Face layout (what ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``
      holds): ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) and
      ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``; loaded with
      ``open_clip.create_model("local-dir:<folder>")``; or
    - one weights file (``.safetensors``, ``.bin``, ``.pt``) of the built-in architecture
      ``model`` (or env ``ATTNLAB_CLIP_MODEL``, e.g. ``ViT-B-32``, ``ViT-L-14``), as
      ``open_clip.create_model(model, pretrained=<file>)`` loads it.

    The weights must cover the model exactly (open_clip loads strictly). Text is tokenised
    with the tokenizer open_clip picks for the model (the bundled BPE for OpenAI-style CLIP).
    Frames are preprocessed as the checkpoint's ``preprocess_cfg`` says (resize the shortest
    side to the input size, centre crop, normalise), with torch's antialiased bicubic
    resize instead of PIL's.
    """

    checkpoint: str | os.PathLike | None = None
    model: str | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 32
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        ckpt = self.checkpoint or os.environ.get(CLIP_CHECKPOINT_ENV)
        if not ckpt:
            raise ClipWeightsError(
                "CLIP-VL needs a local open_clip checkpoint: pass clip_checkpoint= (CLI "
                f"--clip-checkpoint) or set ${CLIP_CHECKPOINT_ENV}. Either a folder with "
                "open_clip_config.json and open_clip_model.safetensors (or "
                "open_clip_pytorch_model.bin), as in the laion/* repositories on the Hugging "
                "Face Hub, or one weights file plus the architecture name (clip_model=, "
                f"${CLIP_MODEL_ENV}, e.g. ViT-B-32). No package registry ships CLIP weights and "
                "attnlab never downloads them."
            )
        path = Path(ckpt).expanduser()
        if path.is_dir():
            missing = []
            if not (path / "open_clip_config.json").is_file():
                missing.append("open_clip_config.json")
            weights = [
                n
                for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                if (path / n).is_file()
            ]
            if not weights:
                missing.append("open_clip_model.safetensors (or open_clip_pytorch_model.bin)")
            if missing:
                raise ClipWeightsError(f"open_clip checkpoint folder {path} lacks {missing}")
        elif path.is_file():
            self.model = self.model or os.environ.get(CLIP_MODEL_ENV)
            if not self.model:
                raise ClipWeightsError(
                    f"{path} is a single weights file: name its architecture with clip_model= "
                    f"(CLI --clip-model, env ${CLIP_MODEL_ENV}), e.g. ViT-B-32"
                )
        else:
            raise ClipWeightsError(f"CLIP checkpoint {path} does not exist")
        self.checkpoint = path

    def settings(self) -> dict[str, Any]:
        path = Path(self.checkpoint)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return {
            "checkpoint": str(path),
            "model": self.model,
            "file_sizes": {p.name: p.stat().st_size for p in files if p.is_file()},
        }

    def load(self) -> tuple[Any, Any]:
        """The open_clip model (eval mode) and its tokenizer, loaded once."""
        if self._model is None:
            import open_clip

            path = Path(self.checkpoint)
            if path.is_dir():
                name = f"local-dir:{path}"
                model = open_clip.create_model(name, device=self.device, pretrained_text=False)
            else:
                name = self.model
                model = open_clip.create_model(
                    name, pretrained=str(path), device=self.device, pretrained_text=False
                )
            self._model = model.eval().requires_grad_(False)
            self._tokenizer = open_clip.get_tokenizer(name)
        return self._model, self._tokenizer

    def _preprocess(self, frames: np.ndarray) -> torch.Tensor:
        model, _ = self.load()
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", model.visual.image_size)
        th, tw = (size, size) if isinstance(size, int) else tuple(size)
        mode = cfg.get("resize_mode", "shortest")
        interp = cfg.get("interpolation", "bicubic")
        if interp not in ("bicubic", "bilinear"):
            raise EvaluationError(f"unsupported CLIP preprocessing interpolation {interp!r}")
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        if mode == "shortest":
            scale = max(th / h, tw / w)
            sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
        elif mode == "squash":
            sh, sw = th, tw
        else:
            raise EvaluationError(f"unsupported CLIP preprocessing resize_mode {mode!r}")
        if (sh, sw) != (h, w):
            x = torch.nn.functional.interpolate(
                x, size=(sh, sw), mode=interp, antialias=True, align_corners=False
            ).clamp(0.0, 1.0)
        top, left = (sh - th) // 2, (sw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
        mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_embeddings(self, frames: Any) -> torch.Tensor:
        """Unit-norm image embeddings ``(F, D)`` float64 of the frames."""
        model, _ = self.load()
        x = self._preprocess(_frames_any(frames))
        out = [
            model.encode_image(x[s : s + self.batch_size].to(self.device)).double().cpu()
            for s in range(0, len(x), self.batch_size)
        ]
        e = torch.cat(out)
        return e / e.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(T, D)`` float64."""
        model, tokenizer = self.load()
        e = model.encode_text(tokenizer(list(texts)).to(self.device)).double().cpu()
        return e / e.norm(dim=-1, keepdim=True)


def _frames_any(video: Any) -> np.ndarray:
    """Like :func:`_frames` but a single frame is allowed (CLIP scores images)."""
    from attnlab.data.video import to_uint8_frames

    return to_uint8_frames(video)


def clip_vl(video: Any, prompt: str, scorer: ClipScorer | None = None, **kw: Any) -> xr.Dataset:
    """The paper's CLIP-VL score (Table 1-2): mean CLIP image-text cosine similarity over frames.

    ``s_i = <e_img(f_i), e_txt(prompt)>`` with both embeddings L2-normalised (no x100, no
    clipping at 0: the paper's values are ~0.21-0.23), ``clip_vl = mean_i s_i``. The paper
    does not name its CLIP model; choose the checkpoint (see :class:`ClipScorer`).

    Variables: ``clip_vl_frame`` (frame), ``clip_vl``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvaluationError("clip_vl needs a non-empty prompt (prompt=, or a run's prompt)")
    scorer = scorer or ClipScorer(**kw)
    frames = _frames(video)
    sims = (scorer.image_embeddings(frames) @ scorer.text_embeddings([prompt]).T)[:, 0].numpy()
    return xr.Dataset(
        {"clip_vl_frame": (D.FRAME, sims), "clip_vl": ((), float(sims.mean()))},
        coords={D.FRAME: np.arange(len(sims))},
    )


def mtscore(video: Any, prompt: str | None, scorer: Callable[..., float] | None) -> xr.Dataset:
    """MTScore (ChronoMagic-Bench, Yuan et al. 2024) through a user-supplied ``scorer``.

    MTScore feeds a video and ten retrieval texts to InternVideo2 and reads the probability of
    the "metamorphic" texts. InternVideo2's weights are shipped by no package registry, so
    attnlab has no implementation of its own and no stand-in: pass
    ``scorer(frames, prompt) -> float`` (frames ``(F, H, W, 3)`` uint8) wrapping
    ChronoMagic-Bench's own code and weights. Variable: ``mtscore``.
    """
    if scorer is None:
        raise MTScoreUnavailableError(
            "MTScore needs InternVideo2 weights (ChronoMagic-Bench), which no package registry "
            "ships; attnlab does not approximate it. Pass mtscore=callable(frames uint8 "
            "(F, H, W, 3), prompt) -> float that wraps ChronoMagic-Bench's evaluation code."
        )
    value = float(scorer(_frames(video), prompt))
    return xr.Dataset({"mtscore": ((), value)})


_mtscore = mtscore  # evaluate() has a parameter of that name


# ---------------------------------------------------------------------------- attention side


def _mean_maps(probs: xr.DataArray, n: int, levels: Sequence[int] | None) -> xr.DataArray:
    """One ``query_frame x key_frame`` map of a run: cond half, mean over the rest, cropped."""
    p = probs
    if levels is not None and D.LEVEL in p.coords:
        p = p.isel({D.LAYER: np.isin(p[D.LEVEL].values, list(levels))})
    if D.CFG in p.dims:
        p = p.sel({D.CFG: D.COND}) if D.COND in p[D.CFG].values else p.mean(D.CFG)
    p = p.isel({D.QUERY: slice(0, n), D.KEY: slice(0, n)})
    over = [d for d in p.dims if d not in (D.QUERY, D.KEY)]
    return p.mean(over, skipna=True).load()


def attention_measures(
    store: str | os.PathLike,
    runs: Iterable[str] | None = None,
    *,
    reference: str | os.PathLike | xr.DataArray | None = None,
    k: int = 1,
    distance: str = "l1",
    levels: Sequence[int] | None = None,
) -> xr.Dataset:
    """Attention-side measures of a store's runs, along ``run`` (for joining with video metrics).

    Per run, the mean map (conditional half; mean over steps, layers or ``levels``, samples,
    heads, positions; cropped to its frame count) is scored with
    :func:`attnlab.metrics.band_concentration` (band ``|i - j| <= k``),
    :func:`attnlab.metrics.diagonalness`, and :func:`attnlab.metrics.map_distance`
    (``distance`` in l1 / js / fro, resampled to the smaller frame count) to a real reference
    map: ``reference`` = a ``(query_frame, key_frame)`` DataArray, or a store whose runs with
    ``source == "real"`` are averaged (per frame count, the one nearest the run's); by default
    the real runs of ``store`` itself. Without real runs the distance is left out.
    Variables: ``attention_band_concentration``, ``attention_diagonalness``,
    ``attention_distance_to_real``.
    """
    from attnlab.core.store import load
    from attnlab.data.metrics import band_concentration, diagonalness, map_distance

    ds = load(store, runs=list(runs) if runs is not None else None)
    probs = ds[D.PROBS]
    ids = [str(r) for r in ds[D.RUN].values]
    n_of = {r: int(ds[D.FRAMES].sel({D.RUN: r})) for r in ids}
    maps = {r: _mean_maps(probs.sel({D.RUN: r}), n_of[r], levels) for r in ids}

    refs: dict[int, xr.DataArray] = {}
    if isinstance(reference, xr.DataArray):
        refs[reference.sizes[D.QUERY]] = reference
    else:
        ref_store = Path(reference) if reference is not None else Path(store)
        rds = ds if reference is None else load(ref_store)
        real = [str(r) for r, s in zip(rds[D.RUN].values, rds[D.SOURCE].values) if s == "real"]
        by_n: dict[int, list[xr.DataArray]] = {}
        for r in real:
            n = int(rds[D.FRAMES].sel({D.RUN: r}))
            m = (
                maps[r]
                if reference is None
                else _mean_maps(rds[D.PROBS].sel({D.RUN: r}), n, levels)
            )
            by_n.setdefault(n, []).append(m.drop_vars([D.QUERY, D.KEY], errors="ignore"))
        refs = {n: sum(v) / len(v) for n, v in by_n.items()}
        if reference is not None and not refs:
            raise EvaluationError(f"reference store {ref_store} holds no real runs")

    rows = {}
    for r in ids:
        m = maps[r]
        row = {
            "attention_band_concentration": float(band_concentration(m, k=k)),
            "attention_diagonalness": float(diagonalness(m)),
        }
        if refs:
            n_ref = min(refs, key=lambda v: (abs(v - n_of[r]), v))
            row["attention_distance_to_real"] = float(
                map_distance(m, refs[n_ref], kind=distance, resample=True)
            )
        rows[r] = row
    names = sorted({k for row in rows.values() for k in row})
    out = xr.Dataset(
        {
            name: (D.RUN, np.array([rows[r].get(name, np.nan) for r in ids], np.float64))
            for name in names
        },
        coords={D.RUN: ids},
    )
    out.attrs["attention_settings"] = json.dumps(
        {"k": k, "distance": distance, "levels": levels, "reference": _describe(reference)}
    )
    return out


def _describe(reference: Any) -> str:
    if reference is None:
        return "real runs of the store"
    if isinstance(reference, xr.DataArray):
        return f"DataArray {dict(reference.sizes)}"
    return str(reference)


# ---------------------------------------------------------------------------- evaluate


def _settings(metric: str, opts: dict[str, Any]) -> dict[str, Any]:
    """What changes a metric's values (stored with it; equal settings reuse stored results)."""
    flow = {"flow": opts["flow"]}
    if opts["flow"] == "raft":
        w = opts["raft_weights"] or os.environ.get(RAFT_WEIGHTS_ENV)
        flow["raft_weights"] = str(w)
    else:
        flow["farneback"] = {**FARNEBACK, **(opts["farneback"] or {})}
    if metric in ("dynamic_degree", "motion_smoothness"):
        return flow
    if metric == "consistency":
        b = opts["similarity"]
        return {"backend": b if isinstance(b, str) else getattr(b, "name", repr(b))}
    if metric == "clip_vl":
        return opts["clip"].settings() if opts.get("clip") else {}
    if metric == "mtscore":
        scorer = opts["mtscore"]
        return {"scorer": getattr(scorer, "__qualname__", type(scorer).__qualname__)}
    return {}


def _digest(frames: np.ndarray) -> str:
    h = hashlib.sha256(f"{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()[:16]


def _score_video(
    frames: np.ndarray, prompt: str | None, metrics: Sequence[str], opts: dict[str, Any], bar: Any
) -> xr.Dataset:
    flow_kw = dict(
        flow=opts["flow"],
        raft_weights=opts["raft_weights"],
        device=opts["device"],
        farneback=opts["farneback"],
    )
    parts = []
    for m in metrics:
        if m == "dynamic_degree":
            parts.append(dynamic_degree(frames, **flow_kw))
        elif m == "temporal_flickering":
            parts.append(temporal_flickering(frames))
        elif m == "motion_smoothness":
            parts.append(motion_smoothness(frames, **flow_kw))
        elif m == "consistency":
            parts.append(consistency(frames, opts["similarity"]))
        elif m == "clip_vl":
            parts.append(clip_vl(frames, prompt or "", opts["clip"]))
        elif m == "mtscore":
            parts.append(_mtscore(frames, prompt, opts["mtscore"]))
        if bar is not None:
            bar.update(1)
    return xr.merge(parts, combine_attrs="drop_conflicts") if parts else xr.Dataset()


def _check_metrics(metrics: Iterable[str] | str | None) -> list[str]:
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(metrics))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise EvaluationError(f"unknown metrics {bad}; available: {', '.join(METRICS)}")
    return metrics


def is_store(obj: Any) -> bool:
    """Whether ``obj`` names an existing zarr group (an attnlab store) rather than a video."""
    if not isinstance(obj, (str, os.PathLike)):
        return False
    p = Path(obj)
    return p.is_dir() and (p / "zarr.json").is_file()


def evaluate(
    video_or_store: Any,
    prompt: str | None = None,
    metrics: Iterable[str] | str | None = None,
    *,
    name: str | None = None,
    runs: Iterable[str] | None = None,
    store: str | os.PathLike | None = None,
    write: bool = True,
    overwrite: bool = False,
    flow: str = "farneback",
    raft_weights: str | os.PathLike | None = None,
    farneback: Mapping[str, Any] | None = None,
    similarity: Any = "stlpips",
    clip_checkpoint: str | os.PathLike | None = None,
    clip_model: str | None = None,
    mtscore: Callable[..., float] | None = None,
    reference: str | os.PathLike | xr.DataArray | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """Score videos with the metrics of this module; one Dataset along ``run``.

    ``video_or_store``:

    - an attnlab store (``.zarr`` folder): every video under ``videos/`` and every run under
      ``runs/`` (or only ``runs=[...]``), joined by run id (a video's name is its run id).
      Video metrics need a stored video; ``"attention"`` needs a recorded run. Results go to
      ``evaluation/<run_id>`` in the same store (``write=False`` to skip); runs whose stored
      results were computed with the same settings are read back, not recomputed, unless
      ``overwrite=True``. CLIP-VL uses each run's own prompt unless ``prompt`` is given.
    - one video: a file, frame folder or sample name (read as is), a
      :class:`attnlab.video.Video`, or frames (``(F, H, W, 3)`` uint8, float in [0, 1] or
      [-1, 1]). Its run id is ``name`` (default the clip id or ``"video"``); with
      ``store=`` the results are written into that existing store.
    - a mapping ``{run id: video}``.

    ``metrics``: names from :data:`METRICS` (default :data:`DEFAULT_METRICS`, which need no
    user-supplied weights). ``flow``: ``"farneback"`` or ``"raft"`` (with ``raft_weights``);
    ``similarity``: backend for ``consistency``; ``clip_checkpoint``/``clip_model``: see
    :class:`ClipScorer`; ``mtscore``: the scorer callable (see :func:`mtscore`);
    ``reference``: for ``attention`` (see :func:`attention_measures`).
    """
    metrics = _check_metrics(metrics)
    opts: dict[str, Any] = dict(
        flow=flow,
        raft_weights=raft_weights,
        farneback=dict(farneback or {}),
        similarity=similarity,
        mtscore=mtscore,
        device=device,
        clip=None,
    )
    if flow not in ("farneback", "raft"):
        raise EvaluationError(f"flow must be 'farneback' or 'raft', got {flow!r}")
    if flow == "raft" and any(m in metrics for m in ("dynamic_degree", "motion_smoothness")):
        load_raft(raft_weights, device)  # a missing file fails before any work
    if "clip_vl" in metrics:
        opts["clip"] = ClipScorer(clip_checkpoint, clip_model, device)
    if "mtscore" in metrics and mtscore is None:
        _mtscore(np.zeros((2, 1, 1, 3), np.uint8), None, None)  # raises the one clear error

    videos: dict[str, Callable[[], Any]]
    prompts: dict[str, str | None] = {}
    store_path: Path | None = None
    run_ids: list[str] = []
    if is_store(video_or_store):
        from attnlab.core.store import list_arrays, list_runs, load_video, open_run

        store_path = Path(video_or_store)
        run_ids = list_runs(store_path)
        names = list_arrays(store_path, "videos")
        if runs is not None:
            wanted = list(runs)
            missing = sorted(set(wanted) - set(run_ids) - set(names))
            if missing:
                raise EvaluationError(f"{store_path} has no run or video named {missing}")
            run_ids = [r for r in run_ids if r in wanted]
            names = [v for v in names if v in wanted]
        ids = list(dict.fromkeys([*run_ids, *names]))
        videos = {v: (lambda v=v: load_video(store_path, v)) for v in names}
        for r in run_ids:
            prompts[r] = open_run(store_path, r).attrs.get("prompt")
        if prompt is not None:
            prompts = dict.fromkeys(ids, prompt)
    else:
        if store is not None:
            store_path = Path(store)
            if not is_store(store_path):
                raise EvaluationError(f"store={store_path} is not an existing attnlab store")
        if isinstance(video_or_store, Mapping):
            given = dict(video_or_store)
        else:
            vid, rid = _read_input(video_or_store)
            given = {name or rid: vid}
        videos = {k: (lambda v=v: v) for k, v in given.items()}
        ids = list(videos)
        prompts = dict.fromkeys(ids, prompt)
    if "attention" in metrics and not run_ids and len(metrics) == 1:
        raise EvaluationError(
            "metric 'attention' needs recorded runs: pass an attnlab store that holds runs"
        )
    video_metrics = [m for m in metrics if m in VIDEO_METRICS]
    settings = {m: _settings(m, opts) for m in metrics}

    from tqdm.auto import tqdm

    with_video = [r for r in ids if r in videos]
    total = len(with_video) * len(video_metrics) + int("attention" in metrics and bool(run_ids))
    bar = tqdm(total=total, desc="evaluate", unit="metric", disable=not progress)
    per_run: dict[str, tuple[xr.Dataset, list[str]]] = {}
    try:
        for rid in ids:
            bar.set_postfix_str(rid[-30:])
            frames = _frames(videos[rid]()) if rid in videos else None
            stored = _stored(store_path, rid) if store_path is not None and not overwrite else None
            if (
                stored is not None
                and frames is not None
                and stored.attrs.get("frames_sha256") != _digest(frames)
            ):
                stored = None  # the stored video changed since it was scored: score it again
            todo, reused = [], []
            for m in video_metrics if rid in videos else []:
                if stored is not None and _same(stored, m, settings[m]):
                    reused.append(m)
                    bar.update(1)
                else:
                    todo.append(m)
            ds = _score_video(frames, prompts.get(rid), todo, opts, bar) if todo else xr.Dataset()
            if reused:
                keep = [v for v in stored.data_vars if stored[v].attrs.get("metric") in reused]
                ds = xr.merge([ds, stored[keep]], combine_attrs="drop_conflicts")
            for m in todo:
                for v in _metric_vars(m, ds):
                    ds[v].attrs["metric"] = m
            if rid in videos:
                ds.attrs.update({"frames": len(frames), "frames_sha256": _digest(frames)})
            per_run[rid] = (ds, todo)
        if "attention" in metrics and run_ids:
            att = attention_measures(store_path, run_ids, reference=reference)
            for rid in run_ids:
                ds, todo = per_run[rid]
                row = att.sel({D.RUN: rid}).drop_vars(D.RUN)
                for v in row.data_vars:
                    row[v].attrs["metric"] = "attention"
                per_run[rid] = (
                    xr.merge([ds, row], combine_attrs="drop_conflicts"),
                    [*todo, "attention"],
                )
            bar.update(1)
    finally:
        bar.close()

    for rid, (ds, todo) in per_run.items():
        ds.attrs["prompt"] = prompts.get(rid) or ""
        ds.attrs["metric_settings"] = json.dumps(
            {m: settings[m] for m in metrics if m in todo or _has_metric(ds, m)}, default=str
        )
        if store_path is not None and write and todo:
            _write(store_path, rid, ds, {m: settings[m] for m in todo})
    out = _concat({rid: ds for rid, (ds, _) in per_run.items()})
    out.attrs["metrics"] = list(metrics)
    return out


def _read_input(obj: Any) -> tuple[Any, str]:
    from attnlab.data.video import Video

    if isinstance(obj, Video):
        return obj, obj.id
    if isinstance(obj, (str, os.PathLike)):
        from attnlab.data.video import read_video
        from attnlab.lab.real import load_clip

        p = Path(obj)
        if p.exists():
            v = read_video(p)
        else:
            v = load_clip(str(obj), frames=None, fps=None)
        return v, v.id
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj, "video"
    raise EvaluationError(
        f"cannot evaluate a {type(obj).__name__}: pass an attnlab store, a video file or frame "
        "folder, a Video, frames (F, H, W, 3), or a mapping of run id -> video"
    )


_METRIC_VARS = {
    "dynamic_degree": (
        "flow_magnitude",
        "flow_magnitude_mean",
        "dynamic_degree",
        "dynamic_pairs",
        "dynamic_threshold",
        "dynamic_count",
    ),
    "temporal_flickering": ("frame_difference", "temporal_flickering"),
    "motion_smoothness": ("interpolation_error", "motion_smoothness"),
    "consistency": (
        "consistency_to_first",
        "consistency_to_previous",
        "consistency",
        "similarity_by_offset",
    ),
    "clip_vl": ("clip_vl_frame", "clip_vl"),
    "mtscore": ("mtscore",),
}


def _metric_vars(metric: str, ds: xr.Dataset) -> list[str]:
    return [v for v in _METRIC_VARS.get(metric, ()) if v in ds]


def _has_metric(ds: xr.Dataset, metric: str) -> bool:
    return any(ds[v].attrs.get("metric") == metric for v in ds.data_vars)


def _run_group(rid: str) -> str:
    return f"{EVALUATION_GROUP}/{rid}"


def _stored(path: Path, rid: str) -> xr.Dataset | None:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        if EVALUATION_GROUP not in root or rid not in root[EVALUATION_GROUP]:
            return None
        return xr.open_zarr(
            path, group=_run_group(rid), consolidated=False, zarr_format=3, chunks=None
        ).load()
    except Exception:
        return None


def _same(stored: xr.Dataset, metric: str, settings: dict[str, Any]) -> bool:
    if not _has_metric(stored, metric):
        return False
    saved = json.loads(stored.attrs.get("metric_settings", "{}"))
    return json.loads(json.dumps(settings, default=str)) == saved.get(metric)


def _write(path: Path, rid: str, ds: xr.Dataset, new_settings: dict[str, Any]) -> None:
    """Merge ``ds`` into ``evaluation/<rid>`` (variables of re-run metrics are replaced)."""
    old = _stored(path, rid)
    settings = json.loads(old.attrs.get("metric_settings", "{}")) if old is not None else {}
    if old is not None:
        stale = [v for v in old.data_vars if v in ds.data_vars]
        keep = old.drop_vars(stale)
        keep = keep.drop_vars([c for c in keep.coords if c in ds.coords], errors="ignore")
        ds = xr.merge([keep, ds], combine_attrs="override")
    settings.update(json.loads(json.dumps(new_settings, default=str)))
    attrs = {
        "run_id": rid,
        "prompt": str(ds.attrs.get("prompt", "")),
        "frames": int(ds.attrs.get("frames", 0)),
        "frames_sha256": str(ds.attrs.get("frames_sha256", "")),
        "metric_settings": json.dumps(settings, default=str),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from attnlab import __version__

    attrs["attnlab_version"] = __version__
    ds = ds.assign_attrs(attrs)
    for v in ds.data_vars:
        ds[v].attrs = {
            k: (a if isinstance(a, (str, int, float)) else json.dumps(a))
            for k, a in ds[v].attrs.items()
        }
    ds.to_zarr(path, group=_run_group(rid), mode="w", zarr_format=3, consolidated=False)


def _concat(parts: Mapping[str, xr.Dataset]) -> xr.Dataset:
    if not parts:
        return xr.Dataset(coords={D.RUN: np.array([], dtype=str)})
    prepared = []
    for rid, ds in parts.items():
        prompt = str(ds.attrs.get("prompt", ""))
        prepared.append(ds.expand_dims({D.RUN: [rid]}).assign_coords({D.PROMPT: (D.RUN, [prompt])}))
    out = xr.concat(
        prepared,
        dim=D.RUN,
        join="outer",
        data_vars="all",
        coords="different",
        compat="equals",
        combine_attrs="drop",
    )
    for ds in parts.values():  # variable attrs (units, metric) survive the concatenation
        for v in ds.data_vars:
            if v in out and not out[v].attrs:
                out[v].attrs = dict(ds[v].attrs)
    return out


def load_evaluation(path: str | os.PathLike, runs: Iterable[str] | None = None) -> xr.Dataset:
    """The stored evaluation results of a store (``evaluation/<run_id>``) along ``run``."""
    from attnlab.core.store import StoreError, list_arrays

    path = Path(path)
    if not is_store(path):
        raise StoreError(f"no attnlab store at {path}")
    have = list_arrays(path, EVALUATION_GROUP)
    wanted = have if runs is None else list(runs)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise StoreError(f"{path} holds no evaluation of {missing}; run attnlab.evaluate first")
    if not wanted:
        raise StoreError(f"{path} holds no evaluation results; run attnlab.evaluate first")
    return _concat({r: _stored(path, r) for r in wanted})


def scalar_table(ds: xr.Dataset) -> Any:
    """The per-run scalars of an evaluation (variables with dims ``(run,)``) as a DataFrame."""
    import pandas as pd

    names = [v for v in ds.data_vars if ds[v].dims == (D.RUN,)]
    df = pd.DataFrame(
        {v: ds[v].values for v in names}, index=pd.Index(ds[D.RUN].values, name=D.RUN)
    )
    return df.reset_index()
