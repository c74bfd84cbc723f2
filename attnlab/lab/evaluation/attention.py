"""Attention-side measures of a store's runs, along ``run`` to join with the video metrics.

- :func:`attention_measures`  band concentration, diagonalness and distance to a real
                              reference map of each run's mean attention map
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from attnlab.core import dims as D
from attnlab.lab.evaluation.base import EvaluationError

__all__ = ["attention_measures"]


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
    :func:`attnlab.data.metrics.band_concentration` (band ``|i - j| <= k``),
    :func:`attnlab.data.metrics.diagonalness`, and :func:`attnlab.data.metrics.map_distance`
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
        # the real runs of the whole store, whichever runs are scored
        rds = ds if reference is None and runs is None else load(ref_store)
        real = [str(r) for r, s in zip(rds[D.RUN].values, rds[D.SOURCE].values) if s == "real"]
        by_n: dict[int, list[xr.DataArray]] = {}
        for r in real:
            n = int(rds[D.FRAMES].sel({D.RUN: r}))
            m = (
                maps[r]
                if reference is None and r in maps
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
