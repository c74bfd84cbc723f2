"""Attention-side length extrapolation: :class:`WindowDecay`, UltraViCo's decay of the logits
between frames farther apart than the training window (Zhao et al., ICLR 2026, arXiv
2511.20123).

UltraViCo traces both failures of a video model run past its training length (quality loss
and periodic repetition) to attention dispersion: keys beyond the window the model was trained
on take attention mass from the ones within it, and a rotary encoding's harmonics turn that
dispersion into echoes at multiples of its period. Its fix multiplies the *positive*
pre-softmax logits between query and key frames farther apart than the window by a constant
``alpha < 1`` (negative logits are left alone: shrinking them would raise their weight), with a
stronger factor near multiples of a period on HunyuanVideo.

attnlab applies it as a bias-stage edit, before the softmax and after the logits of the
model's own ``q k^T`` (with its position terms), in the order given with TAR and Transfer; the
softmax that follows keeps every row of the maps a distribution. On joint space-time
attention (DiTs) it acts on the video-token logits by the latent frames of query and key, as a
frame-level logit function (:class:`~attnlab.core.joint_math.BiasOp`'s ``fn``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from attnlab.core.joint_math import FrameLogitFn
from attnlab.core.protocol import CallContext, LogitPrior, Stage
from attnlab.core.sites import Site
from attnlab.edits.base import EditError, FrameWindowEdit, _positive, register

#: what happens to the positive logits beyond the window: ``"constant"`` (``alpha``
#: everywhere), ``"periodic"`` (``beta`` near multiples of ``period``, ``alpha`` elsewhere)
BEYOND = ("constant", "periodic")
#: UltraViCo's factors: alpha beyond the window, beta near multiples of the period (HunyuanVideo)
ULTRAVICO_ALPHA = 0.9
ULTRAVICO_BETA = 0.6


def _fraction(name: str, value: Any) -> float:
    """A decay factor in [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EditError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise EditError(f"{name} must be a number in [0, 1] (1: no decay), got {value!r}")
    return v


def decay_factors(
    frames: int,
    window: int,
    alpha: float,
    beyond: str = "constant",
    period: float | None = None,
    beta: float = ULTRAVICO_BETA,
    width: float = 1.0,
) -> np.ndarray:
    """``[frames, frames]`` float64 factors ``D[i, j]`` on the positive logits.

    ``D = 1`` where ``|i - j| <= window``; beyond it ``alpha``, or with ``beyond="periodic"``
    ``beta`` where ``|i - j|`` lies within ``width`` frames of a multiple ``m * period``
    (``m >= 1``).
    """
    d = np.abs(np.subtract.outer(np.arange(frames), np.arange(frames))).astype(np.float64)
    out = np.where(d > window, alpha, 1.0)
    if beyond == "periodic":
        assert period is not None
        m = np.maximum(np.round(d / period), 1.0)
        near = np.abs(d - m * period) <= width
        out = np.where((d > window) & near, beta, out)
    return out


@register
class WindowDecay(FrameWindowEdit):
    """UltraViCo's decay of attention beyond the training window (arXiv 2511.20123).

    For query frame ``i`` and key frame ``j`` with logit ``L_ij`` (before the softmax)::

        L'_ij = D_ij * L_ij   where L_ij > 0,     L'_ij = L_ij   elsewhere
        D_ij  = 1 (|i - j| <= window),  alpha (beyond it),
                beta  (beyond it and within `width` frames of a multiple of `period`,
                       with beyond="periodic")

    then the softmax, so rows stay distributions. ``window`` is in the frames the attention
    sees (latent frames; the training length, or less: UltraViCo's Wan code keeps half the
    training length of 21 latent frames, in tokens); ``alpha`` 0.9 and ``beta`` 0.6 are the
    paper's (beta on HunyuanVideo, whose temporal RoPE period is 50 latent frames: ``period=50``).
    On UNets every temporal layer's ``F x F`` logits are decayed the same way, every head and
    spatial position alike. On joint space-time attention (DiTs: CogVideoX, Wan,
    HunyuanVideo, ...) the frame distance is that of the latent frames of the query and key
    tokens: the video-query x video-key logits are decayed (every head and token of a frame
    alike), text queries and text keys are untouched (:meth:`frame_bias`).

    Identity limits (bit-exact: the layer is not touched): ``alpha = 1`` (and ``beta = 1`` with
    ``beyond="periodic"``), or a call with ``frames <= window + 1``.

    Args:
        window (``int``): frame offsets ``|i - j| <= window`` keep their logits (>= 0).
        alpha (``float``, default 0.9): factor on positive logits beyond the window, in [0, 1].
        beyond (``str``, default ``"constant"``): ``"constant"`` or ``"periodic"``.
        period (``float | None``): latent frames between the stronger decays; required with
            ``beyond="periodic"`` (e.g. ``attnlab.pe_report``'s ``period_latent`` of the
            intrinsic frequency), not allowed otherwise.
        beta (``float``, default 0.6): factor near multiples of ``period``, in [0, 1].
        width (``float``, default 1.0): how close (frames) to a multiple counts as near.
        **target: ``levels``, ``blocks``, ``names``, ``steps``, ``t_min``, ``t_max``, ``cfg``
            as every edit (default: every temporal layer, every step, both CFG halves).

    Raises:
        EditError: a ``window`` that is not an int >= 0, ``alpha``/``beta`` outside [0, 1], a
            ``beyond`` not in ``("constant", "periodic")``, a ``period`` missing with
            ``"periodic"`` or given without it, a negative ``width``.

    Example::

        from attnlab import TAR, WindowDecay
        with attnlab.edit(pipe, WindowDecay(16, 0.9)):              # trained on 16 frames
            video = pipe(prompt, num_frames=64).frames
        with attnlab.edit(pipe, TAR(1.0), WindowDecay(16, 0.9, beyond="periodic", period=20)):
            ...
    """

    kind = "window_decay"
    stage = Stage.BIAS

    def __init__(
        self,
        window: int,
        alpha: float = ULTRAVICO_ALPHA,
        *,
        beyond: str = "constant",
        period: float | None = None,
        beta: float = ULTRAVICO_BETA,
        width: float = 1.0,
        **target: Any,
    ):
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
            raise EditError(f"window must be an int >= 0 (frame offsets kept), got {window!r}")
        if beyond not in BEYOND:
            raise EditError(f"beyond must be one of {', '.join(BEYOND)}; got {beyond!r}")
        if beyond == "periodic" and period is None:
            raise EditError("beyond='periodic' needs a period (latent frames), e.g. period=50")
        if beyond != "periodic" and period is not None:
            raise EditError(
                f"period={period!r} applies with beyond='periodic' only; got beyond={beyond!r}"
            )
        try:
            w = float(width)
        except (TypeError, ValueError):
            raise EditError(f"width must be a number >= 0, got {width!r}") from None
        if not math.isfinite(w) or w < 0:
            raise EditError(f"width must be a number >= 0, got {width!r}")
        super().__init__(**target)
        self.window = int(window)
        self.alpha = _fraction("alpha", alpha)
        self.beyond = beyond
        self.period = None if period is None else _positive("period", period)
        self.beta = _fraction("beta", beta)
        self.width = w
        self._factors: dict[tuple, torch.Tensor] = {}

    # ---- serialisation -------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "alpha": self.alpha,
            "beyond": self.beyond,
            "period": self.period,
            "beta": self.beta,
            "width": self.width,
        }

    # ---- the factors -----------------------------------------------------------------------
    def factors(self, frames: int) -> np.ndarray:
        """``D``, ``[frames, frames]`` float64 (see the class docstring)."""
        return decay_factors(
            frames, self.window, self.alpha, self.beyond, self.period, self.beta, self.width
        )

    def covers(self, frames: int) -> bool:
        return frames <= self.window + 1  # no two frames farther apart than the window

    def identity_at(self, frames: int) -> bool:
        """Whether the edit changes nothing for a call of ``frames`` frames."""
        if self.covers(frames):
            return True
        return self.alpha == 1.0 and (self.beyond != "periodic" or self.beta == 1.0)

    def _table(self, frames: int, like: torch.Tensor) -> torch.Tensor:
        """:meth:`factors` as a tensor of ``like``'s dtype and device (cached)."""
        key = (frames, like.device, like.dtype)
        D = self._factors.get(key)
        if D is None:
            D = self._factors[key] = torch.as_tensor(
                self.factors(frames), dtype=like.dtype, device=like.device
            )
        return D

    def decay(
        self,
        logits: torch.Tensor,
        query_frame: torch.Tensor,
        key_frame: torch.Tensor,
        frames: int,
    ) -> torch.Tensor:
        """The edit on logits whose last two axes are query and key *tokens*, given the latent
        frame of each (``query_frame [rows]``, ``key_frame [cols]``, integer tensors in
        ``0..frames-1``): the positive entries times ``D[frame(q), frame(k)]``. A temporal
        layer's tokens are its frames; joint attention has ``h * w`` tokens per frame."""
        D = self._table(frames, logits)
        D = D[query_frame.to(D.device)][:, key_frame.to(D.device)]
        return torch.where(logits > 0, logits * D, logits)

    # ---- client protocol -----------------------------------------------------------------
    def frame_bias(self, site: Site, ctx: CallContext) -> FrameLogitFn:
        """The decay as a frame-level logit function for joint space-time attention (DiTs):
        ``fn(logits, query_frame, key_frame)`` on the video-query x video-key logits of one
        block of queries, given each token's latent frame (:meth:`decay` at this call's frame
        count). The joint processor applies it through
        :class:`~attnlab.core.joint_math.BiasOp` (``fn``); text queries and text keys are left
        alone, and the softmax runs over every key, text included."""
        frames = ctx.frames

        def fn(logits: torch.Tensor, qf: torch.Tensor, kf: torch.Tensor) -> torch.Tensor:
            return self.decay(logits, qf, kf, frames)

        return fn

    def row_local(self, ctx: CallContext) -> bool:
        """Entry by entry on each map: row-local unless one CFG half is edited alone."""
        return self.halves(ctx) is None

    def logit_prior(self, site: Site, ctx: CallContext) -> LogitPrior | None:
        return None  # not an additive prior: a frame-level logit function (frame_bias)

    def bias(self, site: Site, ctx: CallContext, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[rows, heads, F, F]`` (or a block ``[rows, F, F]`` of one head)."""
        D = self._table(logits.shape[-1], logits)
        return self._apply(logits, ctx, site, lambda x: torch.where(x > 0, x * D, x))
