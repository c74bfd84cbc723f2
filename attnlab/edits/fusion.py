"""Attention-side length extrapolation by windows: :class:`SlidingWindow` (FreeNoise's window
fusion, Qiu et al., ICLR 2024, arXiv 2310.15169) and :class:`SpectralBlend` (FreeLong's blend of
global and local attention, Lu et al., NeurIPS 2024, arXiv 2407.19918), on temporal attention
(UNets) and on joint space-time attention (DiTs).

Both mix softmaxes taken over subsets of the key frames. A softmax restricted to a window ``w``
of key frames is the full softmax renormalised over ``w`` (``exp(L_ij) / sum_{j' in w}
exp(L_ij')`` = ``P_ij / sum_{j' in w} P_ij'``), and both methods' outputs are linear in those
window softmaxes, so each is one ``F x F`` matrix ``M`` (the *effective map*) applied to the
values: ``out = M @ v``. attnlab applies them as replacement-stage edits: the model's logits
(with its position terms and any bias edit: TAR, WindowDecay) -> softmax -> ``M`` from those
probabilities -> ``M @ v``; recorders see ``M``. Every row of ``M`` sums to 1.

On joint attention a video query attends to every video token and the text: there a window is
its frames' video tokens plus the text tokens, the window softmax is the row's attention
renormalised over them, and the mixture acts on each row's mass per key frame (and on text)
without changing the distribution within a frame (:meth:`_MapEdit.frame_mixture`, applied by
``attnlab.core.joint_math`` on both joint paths); SpectralBlend's filter runs over the query
frames at each token position. ``window`` counts latent frames there.

* :func:`sliding_windows`, :func:`window_weights` - FreeNoise's windows and fusion weights;
* :func:`fusion_coefficients` - per query frame, the weight of each window containing it;
* :func:`local_windows` - FreeLong's local window of each query frame;
* :func:`lowpass_matrix` - FreeLong's temporal low-pass filter as an ``F x F`` matrix;
* :func:`fused_map`, :func:`blended_map` - the effective maps from probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from attnlab.core.protocol import CallContext, Stage, Target
from attnlab.core.sites import Site
from attnlab.edits.base import EditError, FrameWindowEdit, register

#: FreeNoise's fusion weights (diffusers' ``FreeNoiseTransformerBlock._get_frame_weights``)
WEIGHTINGS = ("pyramid", "flat")
#: FreeLong's low-pass filter over frames: a Gaussian (its ``gaussian_low_pass_filter``, temporal
#: factor) or an ideal box
FILTERS = ("gaussian", "box")
#: FreeLong's defaults: a local window of 16 frames, a Gaussian cut-off of 0.25 (``d_t``)
FREELONG_WINDOW = 16
FREELONG_CUTOFF = 0.25


def _window_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EditError(f"{name} must be an int >= {minimum} (frames), got {value!r}")
    return int(value)


# ---- FreeNoise: windows and fusion ------------------------------------------------------------
def sliding_windows(frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """FreeNoise's windows ``[(start, end), ...]`` over ``frames`` frames, as diffusers'
    ``FreeNoiseTransformerBlock._get_frame_indices`` (starts ``0, stride, ...`` while the window
    fits) followed by its tail window ``(frames - window, frames)`` when the last one stops
    short of the end. ``frames <= window``: one window, every frame."""
    if frames <= window:
        return [(0, frames)]
    out = [(s, s + window) for s in range(0, frames - window + 1, stride)]
    if out[-1][1] != frames:
        out.append((frames - window, frames))
    return out


def window_weights(length: int, weighting: str = "pyramid") -> np.ndarray:
    """The fusion weight of each position of a window of ``length`` frames (diffusers'
    ``_get_frame_weights``): ``"pyramid"`` ``1, 2, ..., 2, 1`` (4: ``[1, 2, 2, 1]``; 5:
    ``[1, 2, 3, 2, 1]``, FreeNoise's Eq. 9), ``"flat"`` all ones."""
    if weighting == "flat":
        return np.ones(length)
    half = np.arange(1, (length + 1) // 2 + 1, dtype=np.float64)
    return np.concatenate([half, half[: length // 2][::-1]])


def fusion_coefficients(
    frames: int, window: int, stride: int, weighting: str = "pyramid"
) -> tuple[np.ndarray, np.ndarray]:
    """``(C [windows, frames], K [windows, frames])``: ``C[w, i]`` the weight of window ``w``'s
    output at query frame ``i`` normalised over the windows that contribute to ``i`` (rows of
    ``C.T`` sum to 1), ``K[w, j]`` whether key frame ``j`` lies in window ``w``.

    As diffusers' FreeNoise block accumulates them: window ``w`` contributes
    ``weights[i - start_w]`` times its output to each of its frames, except the tail window
    (added when the strided windows stop short of the end), which contributes to the frames
    after the last strided window only. The fused output is the weighted mean. (diffusers
    divides the tail frames by the weight of their first position instead of each one's own,
    ``num_times_accumulated[:, -n:] += weights[:, -n]``, which scales them by
    ``weights[j] / weights[-n]``; attnlab takes the weighted mean there too, so that the
    tail is a distribution.)"""
    if frames <= window:
        return np.ones((1, frames)), np.ones((1, frames), dtype=bool)
    wins = sliding_windows(frames, window, stride)
    w = window_weights(window, weighting)
    C = np.zeros((len(wins), frames))
    K = np.zeros((len(wins), frames), dtype=bool)
    strided_end = (frames - window) // stride * stride + window  # the last strided window's end
    tail = len(wins) - 1 if strided_end != frames else -1
    for n, (a, b) in enumerate(wins):
        K[n, a:b] = True
        lo = strided_end if n == tail else a  # the tail: only the frames no strided one covers
        C[n, lo:b] = w[lo - a :]
    return C / C.sum(0, keepdims=True), K


def _renormalised_mix(probs: torch.Tensor, coef: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``sum_w coef[i, w] * softmax over keys[w]`` from the full softmax ``probs [..., F, F]``:
    ``M_ij = P_ij * sum_w coef[i, w] keys[w, j] / S_iw`` with ``S_iw = sum_{j in w} P_ij``
    (the window softmax is the full one renormalised over the window). A window whose whole
    mass underflows (``S = 0``, every key in it ``e^-104`` below the row's best) gets the
    uniform distribution over it, the limit of equal logits there. Computed in float32 (or
    float64 for float64 maps)."""
    dtype = probs.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    P = probs.to(work)
    Kf = keys.to(work)  # [W, F]
    coef = coef.to(work)  # [F(query), W]
    S = P @ Kf.T  # [..., F, W]
    empty = S <= 0
    c = torch.where(empty, torch.zeros((), dtype=work), coef / torch.where(empty, 1, S))
    M = P * (c @ Kf)
    if bool(empty.any()):
        u = torch.where(empty, coef, torch.zeros((), dtype=work))
        M = M + u @ (Kf / Kf.sum(-1, keepdim=True))
    return M.to(dtype)


def fused_map(
    probs: torch.Tensor, window: int, stride: int, weighting: str = "pyramid"
) -> torch.Tensor:
    """SlidingWindow's effective map from the full softmax ``probs [..., F, F]``: per query
    frame ``i``, ``sum_w C[w, i] * softmax_w(i)`` over the windows of
    :func:`fusion_coefficients`, each window's softmax placed at its key frames (zero
    elsewhere). Rows sum to 1."""
    C, K = fusion_coefficients(probs.shape[-1], window, stride, weighting)
    dev = probs.device
    return _renormalised_mix(
        probs, torch.as_tensor(C.T, device=dev), torch.as_tensor(K, device=dev)
    )


# ---- FreeLong: local windows and the spectral blend ------------------------------------------
def local_windows(frames: int, window: int) -> np.ndarray:
    """``[frames, frames]`` bool: the key frames of each query frame's local attention, as
    FreeLong's ``get_adjusted_local_mask``: ``i - window // 2 .. i + window // 2``, clipped to
    the video and shifted inward at its ends to hold ``window`` frames."""
    out = np.zeros((frames, frames), dtype=bool)
    for i in range(frames):
        a, b = max(0, i - window // 2), min(frames, i + window // 2 + 1)
        if b - a < window:
            if a == 0:
                b = min(frames, window)
            else:
                a = max(0, b - window)
        out[i, a:b] = True
    return out


def lowpass_response(frames: int, cutoff: float, filter: str = "gaussian") -> np.ndarray:
    """The filter's gain at each FFT bin over ``frames`` frames (``np.fft`` order): at the
    normalised frequency ``f = 2 k / frames`` (``k`` the signed bin, ``|f| <= 1``; FreeLong's
    ``t`` coordinate after ``fftshift`` for even ``frames``: for odd ones FreeLong's is off
    centre by ``1 / frames``), ``exp(-f^2 / (2 cutoff^2))`` (``"gaussian"``,
    FreeLong's temporal factor with ``d_t = cutoff``) or ``|f| <= cutoff`` (``"box"``). The
    gain at ``f = 0`` is 1: the mean over frames passes whole."""
    f = 2.0 * np.fft.fftfreq(frames)
    if filter == "box":
        return (np.abs(f) <= cutoff).astype(np.float64)
    return np.exp(-0.5 * (f / cutoff) ** 2)


def lowpass_matrix(frames: int, cutoff: float, filter: str = "gaussian") -> np.ndarray:
    """``[frames, frames]`` float64 ``Lo`` with ``Lo @ x`` = ``real(ifft(H * fft(x)))`` over
    the frame axis (:func:`lowpass_response`); ``I - Lo`` is the high-pass (``1 - H``). Each row
    sums to 1 (``H(0) = 1``)."""
    H = lowpass_response(frames, cutoff, filter)
    eye = np.eye(frames)
    return np.real(np.fft.ifft(H[:, None] * np.fft.fft(eye, axis=0), axis=0))


def blended_map(
    probs: torch.Tensor, window: int, cutoff: float, filter: str = "gaussian"
) -> torch.Tensor:
    """SpectralBlend's effective map from the full softmax ``probs [..., F, F]``:
    ``Lo @ P + (I - Lo) @ P_local`` over the query-frame axis, ``P_local`` the softmax over
    each query's :func:`local_windows`. Rows sum to 1; entries may be negative (a high-pass
    of a distribution)."""
    frames = probs.shape[-1]
    dev = probs.device
    local = torch.as_tensor(local_windows(frames, window), device=dev)  # [F(query), F(key)]
    # one window per query frame: coefficient 1 for its own window
    P_local = _renormalised_mix(probs, torch.eye(frames, device=dev), local)
    work = torch.float64 if probs.dtype == torch.float64 else torch.float32
    Lo = torch.as_tensor(lowpass_matrix(frames, cutoff, filter), dtype=work, device=dev)
    Pg, Pl = probs.to(work), P_local.to(work)
    return (Pl + Lo @ (Pg - Pl)).to(probs.dtype)


# ---- the edits -------------------------------------------------------------------------------
class _MapEdit(FrameWindowEdit):
    """A replacement-stage edit whose map depends on the probabilities: on temporal layers
    (UNets) the effective map from the softmax (:meth:`effective`); on joint space-time layers
    (DiTs) the same mixture of window softmaxes over the latent frames, the text tokens in every
    window (:meth:`frame_mixture`, applied by ``attnlab.core.joint_math``)."""

    stage = Stage.REPLACE

    def row_local(self, ctx: CallContext) -> bool:
        """Each ``F x F`` map from itself alone, unless one CFG half is edited alone."""
        return self.halves(ctx) is None

    def target(self, ctx: CallContext) -> Target | None:
        return None  # depends on the input

    def effective(self, probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def frame_mixture(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """For joint attention over ``frames`` latent frames: ``(coef [F, W], keys [W, F] bool,
        lowpass [F, F] or None)``, a :class:`~attnlab.core.joint_math.MixOp`'s data."""
        raise NotImplementedError

    def replace(self, site: Site, ctx: CallContext, probs: torch.Tensor) -> torch.Tensor:
        """``probs [rows, heads, F, F]`` (or a block ``[rows, F, F]`` of one head)."""
        return self._apply(probs, ctx, site, self.effective)


@register
class SlidingWindow(_MapEdit):
    """FreeNoise's window fusion on the attention side of temporal attention (arXiv 2310.15169).

    Windows of ``window`` frames start every ``stride`` frames (plus a tail window ending at the
    last frame, as diffusers' ``FreeNoiseTransformerBlock``); within each window every query
    frame attends to the window's key frames only (the softmax over the window); a query frame's
    output is the mean of the outputs of the windows containing it, weighted by its position in
    each (``weighting="pyramid"``: ``1, 2, ..., 2, 1``, FreeNoise's Eq. 9; the weights and windows
    of diffusers' ``FreeNoiseTransformerBlock._get_frame_indices`` / ``_get_frame_weights``).
    FreeNoise runs the whole transformer block (norms, attention, cross-attention) per window;
    this edit is its attention part, for any UNet's temporal layers (diffusers' own FreeNoise,
    ``pipe.enable_free_noise()``, exists for the AnimateDiff pipelines only).

    The effective map (what recorders see and what multiplies the values)::

        M_ij = sum_{w ∋ i} C_w(i) * P_ij [j in w] / sum_{j' in w} P_ij'

    ``P`` the softmax over all frames (after bias edits), ``C_w(i)`` window ``w``'s weight at
    frame ``i`` normalised over the windows containing ``i`` (:func:`fusion_coefficients`).
    Each term is window ``w``'s softmax, so ``M`` is a mixture of distributions: rows sum to 1,
    entries are >= 0, and ``M_ij = 0`` for key frames that share no window with ``i``.

    Identity limit (bit-exact: the layer is not touched): ``window >= F``.

    Args:
        window (``int``): frames per window (FreeNoise: the training length, 16; latent
            frames on a DiT), >= 1.
        stride (``int``, default 4): frames between window starts (FreeNoise: 4), >= 1.
        weighting (``str``, default ``"pyramid"``): ``"pyramid"`` or ``"flat"``.
        **target: ``levels``, ``blocks``, ``names``, ``steps``, ``t_min``, ``t_max``, ``cfg``
            as every edit (default: every temporal layer, every step, both CFG halves).

    Raises:
        EditError: a ``window`` or ``stride`` that is not an int >= 1, a ``stride`` larger
            than ``window`` (frames no window covers), an unknown ``weighting``.

    Example::

        with attnlab.edit(pipe, attnlab.SlidingWindow(16, 4)):      # trained on 16 frames
            video = pipe(prompt, num_frames=64).frames
    """

    kind = "sliding_window"

    def __init__(self, window: int, stride: int = 4, *, weighting: str = "pyramid", **target: Any):
        self.window = _window_int("window", window, 1)
        self.stride = _window_int("stride", stride, 1)
        if self.stride > self.window:
            raise EditError(
                f"stride ({stride}) must be <= window ({window}): frames between windows "
                "would belong to none"
            )
        if weighting not in WEIGHTINGS:
            raise EditError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
        self.weighting = weighting
        super().__init__(**target)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "weighting": self.weighting}

    def identity_at(self, frames: int) -> bool:
        return self.covers(frames)

    def frame_mixture(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        C, K = fusion_coefficients(frames, self.window, self.stride, self.weighting)
        return C.T, K, None

    def effective(self, probs: torch.Tensor) -> torch.Tensor:
        frames = probs.shape[-1]
        key = (frames, probs.device)
        t = self._tables.get(key)
        if t is None:
            C, K = fusion_coefficients(frames, self.window, self.stride, self.weighting)
            t = self._tables[key] = (
                torch.as_tensor(C.T, device=probs.device),
                torch.as_tensor(K, device=probs.device),
            )
        return _renormalised_mix(probs, *t)


@register
class SpectralBlend(_MapEdit):
    """FreeLong's SpectralBlend of global and local temporal attention (arXiv 2407.19918).

    FreeLong runs each temporal layer twice, over all frames (global) and within a local window
    of ``window`` frames around each query frame (its ``get_adjusted_local_mask``:
    :func:`local_windows`), and keeps the low frequencies over frames of the global output and
    the high frequencies of the local one::

        out = lowpass_frames(global_out) + highpass_frames(local_out)

    with an FFT over the frame axis and the gain ``H(f)`` at the normalised frequency
    ``f = 2k / F`` (:func:`lowpass_response`): ``exp(-f^2 / (2 cutoff^2))`` (``filter=
    "gaussian"``, the temporal factor of FreeLong's Gaussian with ``d_t = cutoff``; its spatial
    factor is not applied: temporal attention acts on each spatial position alone) or
    ``|f| <= cutoff`` (``"box"``); the high-pass is ``1 - H``. The filters are linear over frames
    and pass the mean whole, so the blend of the outputs is the blend of the maps, and it
    commutes with the layer's output projection (FreeLong blends after it).

    The effective map (what recorders see and what multiplies the values)::

        M = Lo @ P + (I - Lo) @ P_local          (over the query-frame axis)

    ``P`` the softmax over all frames (after bias edits), ``P_local`` the softmax within each
    query frame's local window, ``Lo`` the ``F x F`` low-pass (:func:`lowpass_matrix`). Rows of
    ``M`` sum to 1 (``Lo`` and ``I - Lo`` map constants to 1 and 0); entries can be negative and
    above 1 (a high-pass of a distribution is signed), so ``M`` is a signed mixing matrix, not
    a distribution; with ``filter="box"`` and ``cutoff >= 1`` it is ``P``.

    Identity limits (bit-exact: the layer is not touched): ``filter="box"`` with ``cutoff >= 1``
    (only the global branch), or ``F <= window`` (the local window is every frame).

    Args:
        window (``int``): the local window in frames (FreeLong: 16, the training length;
            latent frames on a DiT), >= 1.
        cutoff (``float``, default 0.25): the low-pass cut-off as a fraction of the highest
            frequency (``F / 2`` cycles per video), > 0 (FreeLong: 0.25).
        filter (``str``, default ``"gaussian"``): ``"gaussian"`` or ``"box"``.
        **target: ``levels``, ``blocks``, ``names``, ``steps``, ``t_min``, ``t_max``, ``cfg``
            as every edit (default: every temporal layer, every step, both CFG halves).

    Raises:
        EditError: a ``window`` that is not an int >= 1, a ``cutoff`` that is not a positive
            number, an unknown ``filter``.

    Example::

        with attnlab.edit(pipe, attnlab.SpectralBlend(16, 0.25)):    # FreeLong, 16 -> 64
            video = pipe(prompt, num_frames=64).frames
    """

    kind = "spectral_blend"

    def __init__(
        self,
        window: int,
        cutoff: float = FREELONG_CUTOFF,
        *,
        filter: str = "gaussian",
        **target: Any,
    ):
        self.window = _window_int("window", window, 1)
        try:
            c = float(cutoff)
        except (TypeError, ValueError):
            raise EditError(f"cutoff must be a positive number, got {cutoff!r}") from None
        if not math.isfinite(c) or c <= 0:
            raise EditError(
                f"cutoff must be a positive number (a fraction of the highest frequency), "
                f"got {cutoff!r}"
            )
        if filter not in FILTERS:
            raise EditError(f"filter must be one of {', '.join(FILTERS)}; got {filter!r}")
        self.cutoff = c
        self.filter = filter
        super().__init__(**target)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "cutoff": self.cutoff, "filter": self.filter}

    def identity_at(self, frames: int) -> bool:
        return self.covers(frames) or (self.filter == "box" and self.cutoff >= 1.0)

    def frame_mixture(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        lo = lowpass_matrix(frames, self.cutoff, self.filter)
        return np.eye(frames), local_windows(frames, self.window), lo

    def effective(self, probs: torch.Tensor) -> torch.Tensor:
        return blended_map(probs, self.window, self.cutoff, self.filter)
