"""Dense optical flow between video frames and VBench's per-pair flow magnitude.

- :func:`optical_flow`    flow ``(P, H, W, 2)`` per frame pair: OpenCV Farneback (no weights)
                          or torchvision RAFT (a local checkpoint)
- :func:`flow_magnitude`  per pair, the mean of the top 5 % of the flow magnitudes (VBench)
- :func:`load_raft`       torchvision's RAFT from a local file, cached per file and device
- :data:`FARNEBACK`       the Farneback settings; :class:`RaftWeightsError` for missing weights
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.lab.evaluation.base import EvaluationError, _frames

__all__ = [
    "FARNEBACK",
    "RAFT_WEIGHTS_ENV",
    "TOP_FRACTION",
    "RaftWeightsError",
    "flow_magnitude",
    "load_raft",
    "optical_flow",
]

RAFT_WEIGHTS_ENV = "ATTNLAB_RAFT_WEIGHTS"

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


class RaftWeightsError(FileNotFoundError):
    """RAFT was asked for without a local weights file; attnlab never downloads it."""


def _gray(frames: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB uint8 frames, uint8 ``(F, H, W)`` (OpenCV's RGB2GRAY weights)."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


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
