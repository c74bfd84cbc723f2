"""Text of figures, read from the coordinates of stored runs: titles, facet and row labels.

* :func:`sigma_label`: ``{64: 1, 32: 8}`` -> ``"σ64=1,σ32=8"`` (Fig. 9)
* :func:`level_label`: ``"level 0 (40x64)"``
* :func:`condition_labels`: one label per run ("real", "synthetic", "synthetic+TAR", ...)
* private helpers: per-run coordinate values, facet labels and suptitles from the selection
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from attnlab.core.dims import (
    CFG,
    EDITS,
    FRAMES,
    LAYER,
    LAYER_H,
    LAYER_W,
    LEVEL,
    MODEL,
    QUERY,
    RUN,
    SOURCE,
    STEP,
)

#: the derived run label used by default for rows: "real", "synthetic", "synthetic+TAR", ...
CONDITION = "condition"


def sigma_label(sigmas: Mapping[int | str, float]) -> str:
    """``{64: 1, 32: 8}`` -> ``"σ64=1,σ32=8"`` (the paper's Fig. 9 labels)."""
    return ",".join(f"σ{res}={_num(s)}" for res, s in sigmas.items())


def _num(x: Any) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:g}"


def level_label(level: int, h: int | None = None, w: int | None = None) -> str:
    """``level_label(0, 40, 64)`` -> ``"level 0 (40x64)"``."""
    size = f" ({int(h)}x{int(w)})" if h is not None and w is not None else ""
    return f"level {int(level)}{size}"


def _levels_text(da: xr.DataArray) -> str | None:
    """'level 0 (40x64)' / 'levels 0 (40x64), 1 (20x32)' from the layer coords of ``da``."""
    if LEVEL not in da.coords or LAYER not in da[LEVEL].dims:
        return None
    seen: dict[int, str] = {}
    hs, ws = _layer_size(da, LAYER_H), _layer_size(da, LAYER_W)
    for lev, h, w in zip(da[LEVEL].values, hs, ws):
        if int(lev) not in seen:
            seen[int(lev)] = level_label(lev, h, w)[len("level ") :]
    parts = [seen[k] for k in sorted(seen)]
    return ("level " if len(parts) == 1 else "levels ") + ", ".join(parts)


def _layer_size(da: xr.DataArray, coord: str) -> list[Any]:
    """Per-layer feature size; ``h``/``w`` may be ``(run, layer)`` (the store's layout): the
    largest finite value over runs is used."""
    n = da.sizes[LAYER]
    if coord not in da.coords:
        return [None] * n
    c = da[coord]
    extra = [d for d in c.dims if d != LAYER]
    if extra:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c = c.max(extra, skipna=True)
    return [None if not np.isfinite(v) else int(v) for v in c.values.astype(float)]


def _steps_text(da: xr.DataArray) -> str | None:
    if STEP not in da.dims:
        return None
    vals = da[STEP].values if STEP in da.coords else np.arange(da.sizes[STEP])
    try:
        ints = [int(v) for v in vals]
    except (TypeError, ValueError):
        return f"{len(vals)} steps"
    if len(ints) == 1:
        return f"step {ints[0]}"
    if ints == list(range(ints[0], ints[0] + len(ints))):
        return f"steps {ints[0]}–{ints[-1]}"
    return f"{len(ints)} steps"


def _unique_run_value(da: xr.DataArray, coord: str) -> Any | None:
    if coord not in da.coords:
        return None
    vals = pd.unique(np.ravel(da[coord].values))
    return vals[0] if len(vals) == 1 else None


def _selection_title(da: xr.DataArray, cfg: str | None) -> str:
    """Suptitle from coordinates: model, levels, steps, cfg branch."""
    parts = []
    model = _unique_run_value(da, MODEL)
    if model is not None and str(model):
        parts.append(str(model))
    for text in (_levels_text(da), _steps_text(da)):
        if text:
            parts.append(text)
    if CFG in da.dims or cfg is None:
        parts.append(cfg if cfg is not None else "cfg mean")
    return " · ".join(parts)


def _edit_name(edit: Any) -> str:
    if isinstance(edit, Mapping):
        for key in ("label", "name", "kind", "type", "edit"):
            if key in edit and isinstance(edit[key], str):
                name = edit[key]
                break
        else:
            name = "edit"
    else:
        name = str(edit)
    return name.upper() if name.lower() in {"tar", "vsp"} else name


def _condition_of(source: Any, edits: Any) -> str:
    label = str(source) if source is not None else "run"
    try:
        spec = json.loads(edits) if isinstance(edits, str) else (edits or [])
    except json.JSONDecodeError:
        spec = [edits]
    if isinstance(spec, Mapping):
        spec = [spec]
    names = list(dict.fromkeys(_edit_name(e) for e in spec))
    return "+".join([label, *names])


def condition_labels(probs: xr.DataArray) -> np.ndarray:
    """One label per run: the ``condition`` coordinate if present, else ``source`` plus the
    names of its edits, e.g. "real", "synthetic", "synthetic+TAR"."""
    n = probs.sizes.get(RUN, 1)
    if CONDITION in probs.coords:
        return np.broadcast_to(np.asarray(probs[CONDITION].values, dtype=object), (n,))
    src = _run_values(probs, SOURCE, n)
    eds = _run_values(probs, EDITS, n)
    return np.array([_condition_of(s, e) for s, e in zip(src, eds)], dtype=object)


def _run_values(da: xr.DataArray, coord: str, n: int | None = None) -> np.ndarray:
    n = da.sizes.get(RUN, 1) if n is None else n
    if coord not in da.coords:
        return np.array([None] * n, dtype=object)
    vals = np.asarray(da[coord].values)
    if vals.ndim == 0:
        return np.array([vals.item()] * n, dtype=object)
    if da[coord].dims != (RUN,):
        raise ValueError(f"coordinate {coord!r} must lie along {RUN!r}, not {da[coord].dims}")
    return vals.astype(object)


def _run_labels(da: xr.DataArray, coord: str) -> np.ndarray:
    if coord == CONDITION:
        return condition_labels(da)
    if coord == FRAMES and coord not in da.coords and QUERY in da.dims:
        # no frames coordinate: count the query frames holding any finite value, per run
        other = [d for d in da.dims if d not in (RUN, QUERY)]
        counts = da.notnull().any(other).sum(QUERY).values
        return np.broadcast_to(np.asarray(counts, dtype=object), (da.sizes.get(RUN, 1),))
    if coord not in da.coords:
        available = sorted(str(c) for c in da.coords if RUN in da[c].dims)
        raise KeyError(f"no run coordinate {coord!r}; available: {available}")
    return _run_values(da, coord)


def _fmt_facet(coord: str | None, value: Any) -> str:
    if coord is None:
        return ""
    if coord == FRAMES:
        return f"{int(value)} frames"
    if coord == MODEL:
        return str(value).split("/")[-1] or "(model not recorded)"
    return str(value)
