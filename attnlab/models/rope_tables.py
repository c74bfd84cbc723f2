"""Frequencies read from cos/sin tables, and copies of the tables with their temporal columns
recomputed: the two operations every positional-encoding reader and edit of
:mod:`attnlab.models.positions` and :mod:`attnlab.models.joint_positions` shares.

A table holds positions along rows (dim -2) and one column (or a pair of columns) per
frequency. :func:`measure_frequencies` measures the angular frequency of each column;
:func:`rewrite_columns` recomputes the columns of changed frequencies in float64, leaving
every other column the model's own, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attnlab.edits.positions import Retune

#: positions probed to measure frequencies from a cos/sin table (powers of two up to this)
PROBE_POSITIONS = 1025


# ---- measuring frequencies ---------------------------------------------------------------
def measure_frequencies(cos: torch.Tensor, sin: torch.Tensor) -> np.ndarray:
    """The angular frequency of each column of a cos/sin table over positions ``0 .. P-1``
    (rows): the angle at position 1, refined by unwrapping at positions 2, 4, 8, ... (each
    step's prediction is far closer than pi), so the result has the table's precision divided
    by the largest position used. Frequencies up to pi per position."""
    c = cos.detach().to(torch.float64).cpu().numpy()
    s = sin.detach().to(torch.float64).cpu().numpy()
    w = np.arctan2(s[1], c[1])
    p = 2
    while p < c.shape[0]:
        a = np.arctan2(s[p], c[p])
        a = a + 2 * math.pi * np.round((w * p - a) / (2 * math.pi))
        w = a / p
        p *= 2
    return w


def probe_len(limit: int | None = None) -> int:
    return min(PROBE_POSITIONS, limit) if limit else PROBE_POSITIONS


# ---- rewriting the temporal columns of a cos/sin table ------------------------------------
def rewrite_columns(
    cos: torch.Tensor,
    sin: torch.Tensor,
    columns: list[tuple[int, ...]],
    pos: torch.Tensor,
    old: np.ndarray,
    new: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``cos``/``sin`` (positions along dim -2, broadcast against ``pos`` [..., S])
    with the columns of every frequency ``j`` where ``new[j] != old[j]`` set to
    ``cos/sin(pos * new[j])`` (float64, then the table's dtype)."""
    cos, sin = cos.clone(), sin.clone()
    p = pos.to(torch.float64)
    for j in np.flatnonzero(new != old):
        ang = p * float(new[j])
        for col in columns[j]:
            cos[..., col] = ang.cos().to(cos.dtype)
            sin[..., col] = ang.sin().to(sin.dtype)
    return cos, sin


def interleaved(n: int, offset: int = 0, stride: int = 2) -> list[tuple[int, ...]]:
    """Columns of frequency ``j`` in an interleaved (``repeat_interleave``) table."""
    return [(offset + stride * j, offset + stride * j + 1) for j in range(n)]


def undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    def undo() -> None:
        errors = []
        for u in reversed(undos):
            try:
                u()
            except Exception as err:  # restore everything, then report
                errors.append(err)
        if errors:
            raise RuntimeError(f"attnlab could not fully restore the positional encoding: {errors}")

    return undo


def hooks(*handles: Any) -> Callable[[], None]:
    return undo_all([h.remove for h in handles])


def retuned(retune: Retune, freqs: np.ndarray, length: int) -> np.ndarray | None:
    new = retune(freqs, int(length))
    if new is None or np.array_equal(new, freqs):
        return None
    return np.asarray(new, dtype=np.float64)
