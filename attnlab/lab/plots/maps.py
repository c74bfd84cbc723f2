"""Figure inputs as arrays: attention maps and similarity matrices (video frames go through
:func:`attnlab.data.video.to_unit_frames`, the one rule for frames).

* :func:`reduce_maps`: select and average stored attention maps for display
* private helpers: the ``probs`` of a Dataset, selection, min-max scaling, cropping of NaN
  padding, and the conversion of a map or a similarity matrix to a numpy array
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from attnlab.core.dims import (
    CFG,
    COND,
    FRAME,
    FRAME2,
    FRAMES,
    HEAD,
    KEY,
    LAYER,
    LEVEL,
    PROBS,
    QUERY,
    RUN,
    SAMPLE,
    STEP,
    WINDOW,
    X,
    Y,
)
from attnlab.lab.plots.labels import _check_one_setting

#: what the figures accept as a map and as a video (see :mod:`attnlab.lab.plots`)
MapLike = xr.DataArray | np.ndarray
VideoLike = xr.DataArray | np.ndarray

# dims averaged by reduce_maps unless told otherwise
# (a windowed run's windows too: their maps count frames within the window, so their mean is
# the mean window map)
_AVERAGED = (STEP, LAYER, WINDOW, SAMPLE, HEAD, Y, X)


def _probs(x: Any) -> Any:
    """The ``probs`` variable of a Dataset (as stored by attnlab); anything else unchanged."""
    if isinstance(x, xr.Dataset):
        if PROBS not in x.data_vars:
            raise KeyError(f"dataset has no {PROBS!r} variable; it has {list(x.data_vars)}")
        return x[PROBS]
    if isinstance(x, Mapping):
        return {k: _probs(v) for k, v in x.items()}
    return x


def _select(
    probs: xr.DataArray,
    *,
    steps: Any = None,
    layers: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
) -> xr.DataArray:
    da = probs
    if cfg is not None and CFG in da.dims:
        if CFG in da.coords and cfg not in list(da[CFG].values):
            raise KeyError(f"cfg {cfg!r} not recorded; available: {list(da[CFG].values)}")
        da = da.sel({CFG: [cfg]}) if CFG in da.coords else da.isel({CFG: [-1]})
    if steps is not None and STEP in da.dims:
        sel = [steps] if np.isscalar(steps) else steps
        da = da.sel({STEP: sel}) if STEP in da.indexes else da.isel({STEP: sel})
    if layers is not None and LAYER in da.dims:
        sel = [layers] if np.isscalar(layers) else layers
        da = da.sel({LAYER: sel}) if LAYER in da.indexes else da.isel({LAYER: sel})
    if levels is not None and LAYER in da.dims:
        if LEVEL not in da.coords:
            raise KeyError(f"cannot select levels: no {LEVEL!r} coordinate along {LAYER!r}")
        wanted = [levels] if np.isscalar(levels) else list(levels)
        mask = np.isin(da[LEVEL].values, wanted)
        if not mask.any():
            raise ValueError(
                f"no layer at level(s) {wanted}; available: {sorted(set(da[LEVEL].values))}"
            )
        da = da.isel({LAYER: mask})
    return da


def reduce_maps(
    probs: xr.DataArray,
    *,
    steps: Any = None,
    layers: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    over: Sequence[str] = _AVERAGED,
    normalize: bool = False,
) -> xr.DataArray:
    """Average attention maps for display, as the paper's reference code does.

    Selects ``steps`` (labels of the ``step`` coordinate, or positions without one),
    ``layers`` (labels along ``layer``) and/or ``levels`` (values of the ``level`` coord),
    keeps the ``cfg`` branch ("cond" by default, drops the unconditional half; ``None``
    averages both), averages over the dims in ``over`` that are present (step, layer, window,
    sample, head and spatial y/x by default, NaN-aware so padding stays NaN) and, only if
    ``normalize``, min-max normalises each remaining ``(query_frame, key_frame)`` panel to
    [0, 1] (by default the maps stay probabilities).
    The result keeps ``run`` and its coordinates.
    """
    probs = _probs(probs)
    da = _select(probs, steps=steps, layers=layers, levels=levels, cfg=cfg)
    dims = [d for d in over if d in da.dims]
    if CFG in da.dims:
        dims.append(CFG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN padding
        out = da.mean(dims, skipna=True, keep_attrs=True)
        if normalize:
            out = _minmax(out)
    out.name = probs.name
    return out


def _minmax(da: xr.DataArray, dims: Sequence[str] = (QUERY, KEY)) -> xr.DataArray:
    lo = da.min(dims, skipna=True)
    hi = da.max(dims, skipna=True)
    span = hi - lo
    return (da - lo) / span.where(span > 0, 1.0)


def _minmax_np(a: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(a), np.nanmax(a)
    return (a - lo) / (hi - lo) if hi > lo else a - lo


def _joint_range(mats: Sequence[np.ndarray]) -> tuple[float, float]:
    lo = min(float(np.nanmin(m)) for m in mats)
    hi = max(float(np.nanmax(m)) for m in mats)
    return lo, (hi if hi > lo else lo + 1.0)


def _crop(m: np.ndarray, n: int | None = None) -> np.ndarray:
    """Drop NaN padding: keep the first ``n`` frames, or the rows/columns not all NaN."""
    if n is not None:
        return m[:n, :n]
    keep_r = ~np.all(np.isnan(m), axis=1)
    keep_c = ~np.all(np.isnan(m), axis=0)
    return m[np.ix_(keep_r, keep_c)]


def _frames_of(da: xr.DataArray) -> int | None:
    """The single frame count of the runs in ``da`` (error if they differ).

    Read from the ``frames`` coordinate, else from the query frames that hold any finite
    value in each run; ``None`` when neither applies (no run dim, no coordinate).
    """
    if FRAMES in da.coords:
        vals = sorted({int(v) for v in np.ravel(da[FRAMES].values)})
    elif RUN in da.dims and QUERY in da.dims:
        other = [d for d in da.dims if d not in (RUN, QUERY)]
        vals = sorted({int(v) for v in da.notnull().any(other).sum(QUERY).values})
    else:
        return None
    if len(vals) > 1:
        raise ValueError(
            f"runs with different frame counts {vals} would be averaged into one panel; "
            f"facet by {FRAMES!r} or select runs first"
        )
    return vals[0]


def _cell_map(sub: xr.DataArray, reduce_kw: Mapping[str, Any], normalize: bool = False):
    """One display map from runs that share a panel: reduce, average runs, crop, normalise."""
    n = _frames_of(sub)
    _check_one_setting(sub)
    r = reduce_maps(sub, normalize=False, **reduce_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if RUN in r.dims:
            r = r.mean(RUN, skipna=True)
    extra = [d for d in r.dims if d not in (QUERY, KEY)]
    if extra:
        raise ValueError(f"maps still have dims {extra} after reduction; select or average them")
    m = _crop(r.transpose(QUERY, KEY).values.astype(float), n)
    return _minmax_np(m) if normalize else m


def _as_map(x: MapLike, reduce_kw: Mapping[str, Any], normalize: bool = False) -> np.ndarray:
    """A 2-D map (cropped; min-max normalised only if ``normalize``) from any map-like input."""
    x = _probs(x)
    if isinstance(x, xr.DataArray):
        if x.ndim == 2:
            m = _crop(x.values.astype(float))
            return _minmax_np(m) if normalize else m
        if QUERY in x.dims and KEY in x.dims:
            return _cell_map(x, reduce_kw, normalize)
        raise ValueError(f"cannot draw a map from dims {x.dims}")
    m = np.asarray(x, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {m.shape}")
    m = _crop(m)
    return _minmax_np(m) if normalize else m


def _as_matrix(x: MapLike) -> np.ndarray:
    """A 2-D similarity matrix with NaN padding dropped (not normalised)."""
    if isinstance(x, xr.DataArray):
        if x.ndim != 2:
            raise ValueError(f"a similarity matrix must be 2-D, got dims {x.dims}")
        if FRAME in x.dims and FRAME2 in x.dims:
            x = x.transpose(FRAME, FRAME2)
        if FRAMES in x.coords and np.ndim(x[FRAMES].values) == 0:
            return x.values.astype(float)[: int(x[FRAMES].values), : int(x[FRAMES].values)]
        x = x.values
    m = np.asarray(x, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"a similarity matrix must be 2-D, got shape {m.shape}")
    return _crop(m)
