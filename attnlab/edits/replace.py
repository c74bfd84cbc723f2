"""Replacement probes (paper Sec. 3.2, Fig. 4): fixed attention probabilities I_N or J_N/N."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attnlab.core.protocol import CallContext, Stage, Target, target_matrix
from attnlab.core.sites import Site
from attnlab.edits.base import Edit, EditError, register


@register
class Replace(Edit):
    """Replace the attention probabilities of the selected layers with a fixed N x N matrix.

    ``"identity"``: I_N, every frame attends only to itself (frames independent: more dynamic).
    ``"ones"``: the all-ones matrix J_N normalised so each row sums to 1, i.e. every entry 1/N
    (uniform attention over frames: full correlation, a quasi-static video).
    A matrix: any N x N array, finite and non-negative with positive row sums; its rows are
    normalised to sum to 1. Its N must equal the frame count of the run.

    The matrix replaces the ``[F, F]`` probabilities of every head and spatial position of the
    selected layers after the softmax (and after the bias edits), for the selected steps and CFG
    halves; recorders then see it as ``probs``. Default targeting: every block at every level,
    all steps, both CFG halves.

    Args:
        matrix (``str | np.ndarray | Sequence[Sequence[float]]``, default ``"identity"``):
            ``"identity"``, ``"ones"`` or an ``N x N`` array (``N`` = the run's latent
            frames), stored row-normalised.
        levels (``int | list[int] | None``, default None): resolution levels (0 = full latent
            resolution); None: all.
        blocks (``str | list[str] | None``, default None): blocks among ``"in"``, ``"down"``,
            ``"mid"``, ``"up"``, ``"transformer"``; None: all.
        names (``str | list[str] | None``, default None): regexes searched in module paths.
        steps (default None): sampler-step indices (int, list, ``range``, ``slice``); None: all.
        t_min (``float | None``, default None): act only while ``t >= t_min * T``.
        t_max (``float | None``, default None): act only while ``t <= t_max * T``.
        cfg (``str``, default ``"both"``): ``"both"``, ``"cond"`` or ``"uncond"``.

    Raises:
        EditError: at construction, for a string other than ``"identity"``/``"ones"``, a
            matrix that is not square, has NaN/inf or negative entries or a row summing to 0,
            or bad targeting; during a run, for a matrix whose N is not the run's frame count.

    Example::

        from attnlab import Replace
        with attnlab.edit(pipe, Replace("identity", levels=[0, 1])):    # Fig. 4 probe
            video = pipe("a polar bear playing drums", num_frames=16).frames
        Replace("ones", levels=[3], steps=range(0, 10))                # uniform, first 10 steps
        Replace([[1, 0], [1, 1]])        # a 2-frame matrix, stored as [[1, 0], [0.5, 0.5]]
    """

    kind = "replace"
    stage = Stage.REPLACE

    def __init__(
        self, matrix: str | np.ndarray | Sequence[Sequence[float]] = "identity", **target: Any
    ):
        super().__init__(**target)
        if isinstance(matrix, str):
            if matrix not in ("identity", "ones"):
                raise EditError(
                    f"Replace matrix must be 'identity', 'ones' or an N x N array; got {matrix!r}"
                )
            self.matrix: str | np.ndarray = matrix
        else:
            m = np.asarray(matrix, dtype=np.float64)
            if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
                raise EditError(f"Replace matrix must be square N x N, got shape {m.shape}")
            if not np.isfinite(m).all():
                raise EditError("Replace matrix has NaN or infinite entries")
            if (m < 0).any():
                raise EditError(
                    "Replace matrix has negative entries; attention probabilities are >= 0"
                )
            rows = m.sum(1)
            if (rows <= 0).any():
                raise EditError(
                    f"Replace matrix rows {np.flatnonzero(rows <= 0).tolist()} sum to 0; cannot normalise"
                )
            self.matrix = m / rows[:, None]
        self._cache: dict[tuple, torch.Tensor] = {}

    def params(self) -> dict[str, Any]:
        return {"matrix": self.matrix if isinstance(self.matrix, str) else self.matrix.tolist()}

    def target_matrix(self, frames: int) -> np.ndarray:
        if not isinstance(self.matrix, str) and self.matrix.shape[0] != frames:
            raise EditError(
                f"Replace matrix is {self.matrix.shape[0]} x {self.matrix.shape[0]} but the run has {frames} frames"
            )
        return target_matrix(self.matrix, frames)

    def row_local(self, ctx: CallContext) -> bool:
        """A fixed matrix per map: row-local unless only one CFG half is replaced."""
        return self.halves(ctx) is None

    def target(self, ctx: CallContext) -> Target:
        """The probabilities it sets: "identity", "ones" or the ``[F, F]`` matrix."""
        return self.matrix if isinstance(self.matrix, str) else self.target_matrix(ctx.frames)

    def replace(self, site: Site, ctx: CallContext, probs: torch.Tensor) -> torch.Tensor:
        key = (ctx.frames, probs.device, probs.dtype)
        target = self._cache.get(key)
        if target is None:
            target = self._cache[key] = torch.as_tensor(
                self.target_matrix(ctx.frames), dtype=probs.dtype, device=probs.device
            )
        return self._apply(probs, ctx, site, lambda p: target.expand_as(p))
