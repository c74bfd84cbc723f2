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
