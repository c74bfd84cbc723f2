"""Figures of the VSTAR paper, drawn from stored data (xarray objects), never from a live model.

Every figure function takes xarray data (or plain arrays / mappings of them), draws inside
:func:`style`, and returns a :class:`matplotlib.figure.Figure` that is *not* registered with
pyplot (no global state, nothing to close; notebooks still display it).  Save it with
:func:`save_figure`.

Input conventions (names from :mod:`attnlab.dims`):

* **probs**: attention maps with dims (a subset of, in order) ``run, step, layer, cfg, sample,
  head, query_frame, key_frame[, y, x]`` and the run/layer/step coordinates of the vocabulary.
  Runs with fewer frames than others are NaN-padded; each run is cropped to its ``frames``
  coordinate (or, without one, to its non-NaN rows/columns) before drawing.
* **map**: a 2-D ``(query_frame, key_frame)`` DataArray, a 2-D numpy array, or probs (reduced
  with :func:`reduce_maps`; all runs must then share one frame count).
* **similarity matrix**: a 2-D ``(frame, frame2)`` DataArray or numpy array.
* **video**: ``(frame, height, width, 3)`` array (uint8, or float in [0, 1] or [-1, 1]), a
  ``(frame, channel, height, width)`` array, or a DataArray with dims ``frame, height, width
  [, channel]`` in any order.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attnlab.core.dims import (
    CFG,
    CHANNEL,
    COND,
    EDITS,
    FRAME,
    FRAME2,
    FRAMES,
    HEAD,
    HEIGHT,
    KEY,
    LAYER,
    LAYER_H,
    LAYER_W,
    LEVEL,
    MODEL,
    OFFSET,
    PE,
    PROBS,
    QUERY,
    RUN,
    SAMPLE,
    SOURCE,
    STEP,
    WIDTH,
    X,
    Y,
)
from attnlab.data.metrics import band_profile, gaussian_prior
from attnlab.data.similarity import similarity_by_interval as _similarity_by_interval

__all__ = [
    "MAP_CMAP",
    "RC",
    "SIM_CMAP",
    "condition_labels",
    "fig_attention_maps",
    "fig_band_profile",
    "fig_cross_model",
    "fig_prior",
    "fig_probe_grid",
    "fig_sigma_ablation",
    "fig_similarity",
    "fig_similarity_by_interval",
    "fig_transfer",
    "fig_video_with_maps",
    "frame_strip_figure",
    "interval_table",
    "level_label",
    "reduce_maps",
    "save_figure",
    "sigma_label",
    "style",
]

MapLike = xr.DataArray | np.ndarray
VideoLike = xr.DataArray | np.ndarray

#: colormap of attention maps and of the prior (sequential, dark = low)
MAP_CMAP = "rocket"
#: colormap of inter-frame similarity matrices
SIM_CMAP = "mako"
#: the derived run label used by default for rows: "real", "synthetic", "synthetic+TAR", ...
CONDITION = "condition"

#: rcParams of every attnlab figure (on top of seaborn's "ticks" style and "paper" context)
RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "image.cmap": MAP_CMAP,
    "image.interpolation": "nearest",
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}

# dims averaged by reduce_maps unless told otherwise
_AVERAGED = (STEP, LAYER, SAMPLE, HEAD, Y, X)
_FORMATS = {"png", "pdf", "svg", "jpg", "jpeg", "eps", "tif", "tiff", "webp"}


# --------------------------------------------------------------------------------------------
# style and saving


@contextlib.contextmanager
def style(**overrides: Any) -> Iterator[None]:
    """Context with the attnlab look: seaborn "ticks" + "paper" context + :data:`RC`."""
    rc = {**sns.axes_style("ticks"), **sns.plotting_context("paper"), **RC, **overrides}
    with mpl.rc_context(rc):
        yield


def save_figure(
    fig: Figure,
    path: str | Path,
    formats: Sequence[str] | None = None,
    *,
    dpi: int | None = None,
) -> list[Path]:
    """Save ``fig`` once per format and return the written paths.

    ``path`` is a name without extension (saved as ``formats``, default png and pdf) or with a
    known image extension (saved in that format only, unless ``formats`` is given).  Parent
    folders are created; metadata dates are left out so files are reproducible.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix in _FORMATS:
        stem = path.with_suffix("")
        formats = (suffix,) if formats is None else formats
    else:
        stem = path
        formats = ("png", "pdf") if formats is None else formats
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for fmt in formats:
            fmt = fmt.lower().lstrip(".")
            out = stem.parent / f"{stem.name}.{fmt}"
            meta: dict[str, Any] | None = None
            if fmt == "pdf":
                meta = {"CreationDate": None, "ModDate": None}
            elif fmt == "png":
                meta = {"Software": None}
            fig.savefig(out, format=fmt, dpi=dpi, metadata=meta, bbox_inches="tight")
            written.append(out)
    return written


# --------------------------------------------------------------------------------------------
# labels


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


# --------------------------------------------------------------------------------------------
# data reduction


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


def _minmax(da: xr.DataArray, dims: Sequence[str] = (QUERY, KEY)) -> xr.DataArray:
    lo = da.min(dims, skipna=True)
    hi = da.max(dims, skipna=True)
    span = hi - lo
    return (da - lo) / span.where(span > 0, 1.0)


def _minmax_np(a: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(a), np.nanmax(a)
    return (a - lo) / (hi - lo) if hi > lo else a - lo


#: colour scales of attention maps: "absolute" probabilities on one scale shared by every
#: panel of a figure (the default), or "minmax" per panel (only on request; it stretches a
#: near-uniform map into a crisp pattern, so the colour bar says so)
SCALES = ("absolute", "minmax")
#: colour of the uniform level 1/N on colour bars
UNIFORM_COLOR = "#35b7ff"


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _display_maps(
    maps: Sequence[np.ndarray], scale: str
) -> tuple[list[np.ndarray], float, float, str]:
    """Maps as drawn, the shared colour range and the colour-bar label for ``scale``."""
    _check_scale(scale)
    if scale == "minmax":
        label = "attention, min-max per panel\n(shapes only: not comparable across panels)"
        return [_minmax_np(m) for m in maps], 0.0, 1.0, label
    finite = [float(np.nanmax(m)) for m in maps if np.isfinite(m).any()]
    vmax = max(finite) if finite else 1.0
    return list(maps), 0.0, vmax if vmax > 0 else 1.0, "attention probability (shared scale)"


def uniform_band(n: int, k: int = 1) -> float:
    """Band concentration of the uniform ``n x n`` map: ``(n (2k+1) - k (k+1)) / n^2``
    (see :func:`attnlab.metrics.band_concentration`)."""
    return (n * (2 * k + 1) - k * (k + 1)) / n**2


def _band_note(ax, m: np.ndarray) -> None:
    """Write the map's band concentration (|i - j| <= 1) and the uniform value into the panel."""
    from attnlab.data.metrics import band_concentration

    if not np.isfinite(m).all() or (m < 0).any() or m.shape[0] != m.shape[1]:
        return
    bc = float(band_concentration(m, k=1))
    ax.text(
        0.03,
        0.03,
        f"band {bc:.3f}\nuniform {uniform_band(m.shape[0]):.3f}",
        transform=ax.transAxes,
        fontsize=5.5,
        color="white",
        ha="left",
        va="bottom",
        bbox={"facecolor": "black", "alpha": 0.5, "linewidth": 0, "pad": 1.0},
    )


def _map_colorbar(fig: Figure, im, axes, maps: Sequence[np.ndarray], scale: str, label: str, **kw):
    """Colour bar of attention maps; on the absolute scale each uniform level 1/N is marked
    with a line and a "1/N" tick."""
    cbar = fig.colorbar(im, ax=axes, label=label, **kw)
    if scale != "absolute":
        return cbar
    vmin, vmax = im.get_clim()
    ns = sorted({int(m.shape[-1]) for m in maps})
    marks = {1.0 / n: f"1/{n}" for n in ns if vmin <= 1.0 / n <= vmax}
    for v in marks:
        cbar.ax.axhline(v, color=UNIFORM_COLOR, linewidth=1.2)
    near = 0.06 * (vmax - vmin)
    ticks = [t for t in cbar.get_ticks() if vmin <= t <= vmax]
    ticks = [t for t in ticks if all(abs(t - v) > near for v in marks)]
    values = sorted([*ticks, *marks])
    cbar.set_ticks(values, labels=[marks.get(v, f"{v:.2g}") for v in values])
    for tick in cbar.ax.get_yticklabels():
        if tick.get_text().startswith("1/"):
            tick.set_color(UNIFORM_COLOR)
    return cbar


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
    averages both), averages over the dims in ``over`` that are present (step, layer, sample,
    head and spatial y/x by default, NaN-aware so padding stays NaN) and, only if
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


# --------------------------------------------------------------------------------------------
# videos


def _as_frames(video: VideoLike) -> np.ndarray:
    """Video -> float array (frame, height, width, 3) in [0, 1]."""
    if isinstance(video, xr.DataArray):
        extra = [d for d in video.dims if d not in (FRAME, HEIGHT, WIDTH, CHANNEL)]
        for d in extra:
            if video.sizes[d] != 1:
                raise ValueError(f"video has extra dim {d!r} of size {video.sizes[d]}")
        video = video.squeeze(extra, drop=True) if extra else video
        order = [d for d in (FRAME, HEIGHT, WIDTH, CHANNEL) if d in video.dims]
        a = np.asarray(video.transpose(*order).values)
    else:
        if not isinstance(video, np.ndarray) and isinstance(
            getattr(video, "frames", None), np.ndarray
        ):
            video = video.frames  # attnlab.video.Video
        if hasattr(video, "detach"):  # a torch tensor
            video = video.detach().cpu().float().numpy()
        a = np.asarray(video)
        while a.ndim == 5 and a.shape[0] == 1:  # (batch=1, frame, ...) pipeline output
            a = a[0]
        if a.ndim == 4 and a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
            a = a.transpose(0, 2, 3, 1)  # (frame, channel, height, width)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"a video must be (frame, height, width[, channel]), got {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if np.nanmax(a) > 1.5:
        a = a / 255.0
    elif np.nanmin(a) < 0:
        a = (a + 1.0) / 2.0
    return np.clip(a, 0.0, 1.0)


def _frame_indices(total: int, n: int) -> np.ndarray:
    n = max(1, min(n, total))
    return np.unique(np.linspace(0, total - 1, n).round().astype(int))


def _montage(frames: np.ndarray, idx: np.ndarray, ncols: int, gap: int) -> np.ndarray:
    """Tile the selected frames row-major with white gaps."""
    _, h, w, c = frames.shape
    nrows = math.ceil(len(idx) / ncols)
    out = np.ones((nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap, c), np.float32)
    for k, i in enumerate(idx):
        r, q = divmod(k, ncols)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = frames[i]
    return out


def _draw_strip(ax, video: VideoLike, n: int, ncols: int | None, ticks: bool = True) -> float:
    """Draw a frame strip in ``ax``; return its width/height aspect."""
    frames = _as_frames(video)
    idx = _frame_indices(len(frames), n)
    ncols = len(idx) if ncols is None else max(1, min(ncols, len(idx)))
    w = frames.shape[2]
    gap = max(1, round(0.04 * w))
    img = _montage(frames, idx, ncols, gap)
    ax.imshow(img, interpolation="antialiased")
    ax.set_yticks([])
    if ticks and ncols == len(idx):
        ax.set_xticks([k * (w + gap) + (w - 1) / 2 for k in range(len(idx))])
        ax.set_xticklabels([str(i) for i in idx])
        ax.tick_params(axis="x", length=0, pad=1)
    else:
        ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return img.shape[1] / img.shape[0]


def _default_ncols(n: int) -> int:
    return n if n <= 4 else math.ceil(n / 2)


# --------------------------------------------------------------------------------------------
# drawing helpers


def _draw_map(ax, m: np.ndarray, cmap: str = MAP_CMAP, vmin: float = 0.0, vmax: float = 1.0):
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    return im


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _map_grid(
    cells: Mapping[tuple[str, str], np.ndarray],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    cmap: str = MAP_CMAP,
    scale: str = "absolute",
    xlabel: str = "key frame",
    ylabel: str = "query frame",
    suptitle: str | None = None,
    panel: float = 1.7,
    given: tuple[float, float, str] | None = None,
) -> Figure:
    """Grid of N x N maps; column headers as top titles, row headers on the left y-labels.

    Attention maps: colours on ``scale`` (see :data:`SCALES`), each panel noting its band
    concentration against the uniform map's. Other matrices (similarities) pass ``given`` =
    (vmin, vmax, colour-bar label) and are drawn as they are.
    """
    raw = dict(cells)
    if given is None:
        keys = list(cells)
        shown, vmin, vmax, cbar_label = _display_maps([cells[k] for k in keys], scale)
        cells = dict(zip(keys, shown))
    else:
        vmin, vmax, cbar_label = given
    fig = _new_figure(panel * len(cols) + 0.9, panel * len(rows) + (0.5 if suptitle else 0.25))
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    im = None
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            m = cells.get((r, c))
            if m is None:
                ax.set_axis_off()
                if i == 0:
                    ax.set_title(c)
                continue
            im = _draw_map(ax, m, cmap, vmin, vmax)
            if given is None:
                _band_note(ax, raw[(r, c)])
            if i == 0:
                ax.set_title(c)
            first = next(cc for cc in cols if cells.get((r, cc)) is not None)
            if c == first:  # row header on the first drawn panel of the row
                ax.set_ylabel(f"{r}\n{ylabel}" if r else ylabel)
            if i == len(rows) - 1 or cells.get((rows[i + 1], c)) is None:
                ax.set_xlabel(xlabel)
    if im is not None and given is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=cbar_label, aspect=25)
    elif im is not None:
        _map_colorbar(fig, im, axes, list(raw.values()), scale, cbar_label, shrink=0.8, aspect=25)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _labels_in_order(labels: Sequence[str], numeric: Sequence[Any] | None) -> list[str]:
    """Unique labels by first appearance, or by increasing ``numeric`` (frame counts)."""
    order = (
        range(len(labels))
        if numeric is None
        else np.argsort([int(v) for v in numeric], kind="stable")
    )
    return list(dict.fromkeys(labels[k] for k in order))


def _facet_cells(
    probs: xr.DataArray,
    row: str | None,
    col: str | None,
    reduce_kw: Mapping[str, Any],
    row_label: str | None = None,
) -> tuple[dict[tuple[str, str], np.ndarray], list[str], list[str]]:
    """Group runs by row/col run coordinates; one averaged, cropped, normalised map per cell."""
    if RUN not in probs.dims:
        probs = probs.expand_dims(RUN)
    nrun = probs.sizes[RUN]
    rvals = None
    if row_label is not None:
        rlab = [row_label] * nrun
    elif row:
        rvals = _run_labels(probs, row)
        rlab = [_fmt_facet(row, v) for v in rvals]
    else:
        rlab = [""] * nrun
    cvals = _run_labels(probs, col) if col else np.array([None] * nrun, dtype=object)
    clab = [_fmt_facet(col, v) for v in cvals]
    rows = _labels_in_order(rlab, rvals if row == FRAMES and row_label is None else None)
    cols = _labels_in_order(clab, cvals if col == FRAMES else None)
    cells = {}
    for r in rows:
        for c in cols:
            idx = [k for k in range(nrun) if rlab[k] == r and clab[k] == c]
            if idx:
                cells[(r, c)] = _cell_map(probs.isel({RUN: idx}), reduce_kw)
    return cells, rows, cols


def _order(found: Sequence[str], order: Sequence[str] | None) -> list[str]:
    if order is None:
        return list(found)
    order = [str(o) for o in order]
    return [o for o in order if o in found] + [f for f in found if f not in order]


# --------------------------------------------------------------------------------------------
# Fig. 3 / Fig. 10: attention maps per condition and frame count


def fig_attention_maps(
    probs: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    row: str | None = CONDITION,
    col: str | None = FRAMES,
    row_order: Sequence[str] | None = None,
    col_order: Sequence[str] | None = None,
    steps: Any = None,
    layers: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    title: str | None = None,
    panel: float = 1.7,
    scale: str = "absolute",
) -> Figure:
    """Fig. 3: grid of N x N temporal-attention maps, rows = condition, columns = frame count.

    ``probs`` is one DataArray whose runs are grouped by the run coordinates ``row`` and
    ``col`` ("condition" is derived from ``source`` and ``edits`` when no such coordinate
    exists, giving "real", "synthetic", "synthetic+TAR"), or a dict ``label -> DataArray``
    whose keys are the rows.  Runs sharing a cell are averaged; each panel is cropped to its
    run's frame count. Colours show probabilities on one scale for every panel, with the
    uniform level 1/N marked on the colour bar (``scale="minmax"``: per-panel min-max, said in
    the colour-bar label); each panel prints its band concentration (mass on ``|i - j| <= 1``)
    next to the uniform map's. Selection arguments go to :func:`reduce_maps`.
    """
    reduce_kw = {"steps": steps, "layers": layers, "levels": levels, "cfg": cfg}
    probs = _probs(probs)
    if isinstance(probs, Mapping):
        cells: dict[tuple[str, str], np.ndarray] = {}
        rows: list[str] = []
        cols: list[str] = []
        first = None
        for label, da in probs.items():
            c, _, cs = _facet_cells(da, None, col, reduce_kw, row_label=str(label))
            cells.update(c)
            rows.append(str(label))
            cols.extend(x for x in cs if x not in cols)
            first = da if first is None else first
        if col == FRAMES:
            cols.sort(key=lambda s: int(s.split()[0]))
        ref = first
    else:
        cells, rows, cols = _facet_cells(probs, row, col, reduce_kw)
        ref = probs
    if title is None and ref is not None:
        title = _selection_title(_select(ref, **reduce_kw), cfg)
    with style():
        return _map_grid(
            cells,
            _order(rows, row_order),
            _order(cols, col_order),
            suptitle=title or None,
            panel=panel,
            scale=scale,
        )


def _join(values: Any) -> str:
    return str(values) if np.isscalar(values) else ", ".join(str(v) for v in values)


def _pe_text(da: xr.DataArray) -> str | None:
    if PE not in da.coords:
        return None
    vals = list(dict.fromkeys(str(v) for v in np.ravel(da[PE].values)))
    return "/".join(vals)


def fig_cross_model(
    probs: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    col: str | None = FRAMES,
    row_order: Sequence[str] | None = None,
    col_order: Sequence[str] | None = None,
    steps: Any = None,
    layers: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    title: str | None = None,
    panel: float = 1.7,
    scale: str = "absolute",
    by_pe: bool = True,
) -> Figure:
    """Fig. 10: attention maps per model (rows) and frame count (columns), PE type annotated.

    ``probs`` is a dict ``model label -> DataArray`` (models have different layer sets, so
    they are usually stored apart) or one DataArray with a run coordinate ``model``.  Each
    row label reads "<model>\\nPE: <pe>" from the ``pe`` coordinate of the selected layers.
    ``by_pe``: the PE kind is a facet -- rows grouped by kind (in the order of
    ``attnlab.sites.PE_KINDS``; models keep their order within a kind) unless ``row_order``
    is given. Full-3D attention DiTs (PE kinds ending in "3d") sit beside the UNets: their
    maps are frame-level maps of joint attention over latent frames (:mod:`attnlab.joint`),
    and their row label says so; their column is their latent frame count.
    Colours and panel notes as in :func:`fig_attention_maps` (``scale``).
    """
    reduce_kw = {"steps": steps, "layers": layers, "levels": levels, "cfg": cfg}
    probs = _probs(probs)
    if not isinstance(probs, Mapping):
        labels = _run_labels(probs if RUN in probs.dims else probs.expand_dims(RUN), MODEL)
        probs = {
            _fmt_facet(MODEL, m): probs.isel({RUN: np.flatnonzero(labels == m)})
            for m in dict.fromkeys(labels)
        }
    cells: dict[tuple[str, str], np.ndarray] = {}
    rows: list[str] = []
    cols: list[str] = []
    names: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for label, da in probs.items():
        pe = _pe_text(_select(da, **reduce_kw))
        rlab = f"{label}\nPE: {pe}" if pe else str(label)
        if pe and pe.endswith("3d"):
            rlab += "\n(joint 3D attn., latent frames)"
        names[str(label)] = rlab
        kinds[rlab] = pe or ""
        c, _, cs = _facet_cells(da, None, col, reduce_kw, row_label=rlab)
        cells.update(c)
        rows.append(rlab)
        cols.extend(x for x in cs if x not in cols)
    if by_pe and row_order is None:
        from attnlab.core.sites import PE_KINDS

        def rank(r: str) -> int:
            first = kinds[r].split("/")[0]
            return PE_KINDS.index(first) if first in PE_KINDS else len(PE_KINDS)

        rows = sorted(rows, key=rank)
    if col == FRAMES:
        cols.sort(key=lambda s: int(s.split()[0]))
    rows = _order(rows, [names.get(str(r), str(r)) for r in row_order] if row_order else None)
    if title is None:
        parts = ["temporal attention across models"]
        if levels is not None:
            parts.append(("level " if np.isscalar(levels) else "levels ") + _join(levels))
        parts.append(cfg if cfg is not None else "cfg mean")
        title = " · ".join(parts)
    with style():
        return _map_grid(
            cells, rows, _order(cols, col_order), suptitle=title, panel=panel, scale=scale
        )


# --------------------------------------------------------------------------------------------
# Fig. 4: replacement probes


_PROBE_NAMES = {"identity": "identity $I_N$", "ones": "all-ones $J_N$"}


def _levels_header(label: str) -> str:
    s = str(label)
    if s.replace("+", "").replace(" ", "").isdigit():
        return ("levels " if "+" in s else "level ") + s
    return s


def fig_probe_grid(
    videos: Mapping[tuple[str, str], VideoLike],
    maps: Mapping[tuple[str, str], MapLike] | None = None,
    *,
    baseline: VideoLike | None = None,
    n: int = 8,
    ncols: int | None = None,
    row_order: Sequence[str] | None = None,
    col_order: Sequence[str] | None = None,
    title: str | None = "attention replacement probes",
    cell_height: float = 0.9,
    max_width: float = 7.0,
    scale: str = "absolute",
) -> Figure:
    """Fig. 4: videos generated with attention replaced by I_N / J_N at some levels.

    ``videos`` maps ``(probe kind, levels label)``, e.g. ``("identity", "0+1")``, to a video;
    columns are probe kinds ("identity" / "ones" get the paper's names, ``row_order`` orders
    them), rows level sets ("0" -> "level 0", "0+1" -> "levels 0+1"; ``col_order``).  Each
    cell shows ``n`` evenly spaced frames tiled ``ncols`` per row (default: two rows).
    ``maps`` (same keys) adds the cell's recorded attention map to the right of its strip, on
    one colour scale with 1/N marked (``scale``) and its band concentration noted;
    ``baseline`` (the unedited video) adds a top row. The figure is at most ``max_width``
    inches wide (a page); cells shrink to fit.
    """
    _check_scale(scale)
    kinds = _order(list(dict.fromkeys(str(k) for k, _ in videos)), row_order)
    levs = _order(list(dict.fromkeys(str(lv) for _, lv in videos)), col_order)
    videos = {(str(k), str(lv)): v for (k, lv), v in videos.items()}
    raw = {(str(k), str(lv)): _as_map(v, {}) for (k, lv), v in (maps or {}).items()}
    keys = list(raw)
    shown, vmin, vmax, cbar_label = _display_maps([raw[k] for k in keys], scale)
    disp = dict(zip(keys, shown))
    nc = _default_ncols(n) if ncols is None else ncols
    probe = _as_frames(next(iter(videos.values())))
    h, w = probe.shape[1:3]
    nshow = len(_frame_indices(len(probe), n))
    nr = math.ceil(nshow / min(nc, nshow))
    aspect = (min(nc, nshow) * w) / (nr * h)
    sub = 2 if disp else 1
    ratios = ([aspect, 1.0] if disp else [aspect]) * len(kinds)
    nrows = len(levs) + (baseline is not None)
    margin = 0.5 * len(kinds) + 1.3  # row labels, gaps and the colour bar
    cell = min(cell_height, (max_width - margin) / sum(ratios))
    with style():
        fig = _new_figure(
            cell * sum(ratios) + margin,
            cell * nrows + 0.3 * nrows + (0.4 if title else 0),
        )
        gs = fig.add_gridspec(nrows, sub * len(kinds), width_ratios=ratios)
        r0 = 0
        if baseline is not None:
            ax = fig.add_subplot(gs[0, :])
            _draw_strip(ax, baseline, n, None)
            ax.set_title("original (no replacement)")
            r0 = 1
        im = None
        map_axes = []
        for i, lev in enumerate(levs):
            for j, kind in enumerate(kinds):
                ax = fig.add_subplot(gs[r0 + i, sub * j])
                if (kind, lev) not in videos:
                    ax.set_axis_off()
                    continue
                _draw_strip(ax, videos[(kind, lev)], n, nc, ticks=False)
                if i == 0:
                    ax.set_title(_PROBE_NAMES.get(kind, kind))
                if j == 0:
                    ax.set_ylabel(_levels_header(lev))
                if disp and (kind, lev) in disp:
                    axm = fig.add_subplot(gs[r0 + i, sub * j + 1])
                    im = _draw_map(axm, disp[(kind, lev)], vmin=vmin, vmax=vmax)
                    _band_note(axm, raw[(kind, lev)])
                    axm.set_xticks([])
                    axm.set_yticks([])
                    if i == 0:
                        axm.set_title("attention", fontsize="small")
                    map_axes.append(axm)
        if im is not None:
            _map_colorbar(
                fig, im, map_axes, shown, scale, cbar_label.replace(" (", "\n("), shrink=0.5
            )
        if title:
            fig.suptitle(title)
    return fig


def _joint_range(mats: Sequence[np.ndarray]) -> tuple[float, float]:
    lo = min(float(np.nanmin(m)) for m in mats)
    hi = max(float(np.nanmax(m)) for m in mats)
    return lo, (hi if hi > lo else lo + 1.0)


def fig_transfer(
    reference_similarity: MapLike,
    before_map: MapLike,
    after_map: MapLike,
    before_similarity: MapLike,
    after_similarity: MapLike,
    *,
    reference_map: MapLike | None = None,
    reference_video: VideoLike | None = None,
    before_video: VideoLike | None = None,
    after_video: VideoLike | None = None,
    labels: Sequence[str] = ("reference (real)", "synthetic", "synthetic + TAR (ref. ΔA)"),
    normalize_similarity: str = "joint",
    n: int = 8,
    steps: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    title: str | None = "transferring dynamics from a reference video",
    scale: str = "absolute",
) -> Figure:
    """Fig. 8: reference video vs. generation before / after TAR with the reference's
    similarity matrix as ΔA.

    Rows: reference, before, after.  Columns: frames (if any video is given), temporal
    attention map (probs reduced with :func:`reduce_maps`, or ready 2-D maps; the reference
    map is optional), inter-frame similarity ``(frame, frame2)``.  Similarities share one
    colour scale (``normalize_similarity="joint"``: min-max over all three, as in the paper;
    "each": per matrix; "none": raw values). Attention maps share one probability scale with
    1/N marked (``scale="minmax"``: per map, on request) and note their band concentration.
    """
    reduce_kw = {"steps": steps, "levels": levels, "cfg": cfg}
    raw_maps = [
        None if reference_map is None else _as_map(reference_map, reduce_kw),
        _as_map(before_map, reduce_kw),
        _as_map(after_map, reduce_kw),
    ]
    present = [m for m in raw_maps if m is not None]
    shown, mlo, mhi, mlabel = _display_maps(present, scale)
    it = iter(shown)
    maps = [None if m is None else next(it) for m in raw_maps]
    sims = [_as_matrix(s) for s in (reference_similarity, before_similarity, after_similarity)]
    if normalize_similarity == "joint":
        lo, hi = _joint_range(sims)
        sims = [(s - lo) / (hi - lo) for s in sims]
        slo, shi, slabel = 0.0, 1.0, "similarity (normalised jointly)"
    elif normalize_similarity == "each":
        sims = [_minmax_np(s) for s in sims]
        slo, shi, slabel = 0.0, 1.0, "similarity (min-max)"
    elif normalize_similarity == "none":
        slo, shi = _joint_range(sims)
        slabel = "similarity"
    else:
        raise ValueError("normalize_similarity must be 'joint', 'each' or 'none'")
    vids = [reference_video, before_video, after_video]
    has_video = any(v is not None for v in vids)
    strip_aspect = 1.0
    if has_video:
        v0 = _as_frames(next(v for v in vids if v is not None))
        k = len(_frame_indices(len(v0), n))
        nc = _default_ncols(k)
        strip_aspect = (nc * v0.shape[2]) / (math.ceil(k / nc) * v0.shape[1])
    with style():
        ncol = 2 + has_video
        ratios = ([strip_aspect] if has_video else []) + [1.0, 1.0]
        fig = _new_figure(1.7 * sum(ratios) + 1.6, 1.8 * 3 + (0.4 if title else 0))
        gs = fig.add_gridspec(3, ncol, width_ratios=ratios)
        im_map = im_sim = None
        for i in range(3):
            c = 0
            labelled = False  # the row label goes on the first drawn panel of the row
            if has_video:
                ax = fig.add_subplot(gs[i, 0])
                if vids[i] is None:
                    ax.set_axis_off()
                else:
                    _draw_strip(ax, vids[i], n, _default_ncols(n), ticks=False)
                    ax.set_ylabel(labels[i])
                    labelled = True
                if i == 0:
                    ax.set_title("frames")
                c = 1
            ax = fig.add_subplot(gs[i, c])
            if maps[i] is None:
                ax.set_axis_off()
            else:
                im_map = _draw_map(ax, maps[i], vmin=mlo, vmax=mhi)
                _band_note(ax, raw_maps[i])
                ax.set_xlabel("key frame")
                ax.set_ylabel("query frame" if labelled else f"{labels[i]}\nquery frame")
                labelled = True
            if i == 0 or (i == 1 and maps[0] is None):
                ax.set_title("temporal attention")
            ax = fig.add_subplot(gs[i, c + 1])
            im_sim = _draw_map(ax, sims[i], SIM_CMAP, slo, shi)
            ax.set_xlabel("frame")
            ax.set_ylabel("frame" if labelled else f"{labels[i]}\nframe")
            if i == 0:
                ax.set_title("inter-frame similarity")
        axes = fig.axes
        map_axes = [a for a in axes if a.images and a.images[0].get_cmap().name == MAP_CMAP]
        sim_axes = [a for a in axes if a.images and a.images[0].get_cmap().name == SIM_CMAP]
        if im_map is not None:
            _map_colorbar(fig, im_map, map_axes, shown, scale, mlabel, shrink=0.6)
        fig.colorbar(im_sim, ax=sim_axes, shrink=0.6, label=slabel)
        if title:
            fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 9: sigma ablation


def fig_sigma_ablation(
    maps: Mapping[str, MapLike] | xr.DataArray | None = None,
    videos: Mapping[str, VideoLike] | None = None,
    *,
    by: str = CONDITION,
    order: Sequence[str] | None = None,
    n: int = 8,
    ncols: int | None = None,
    steps: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    title: str | None = "ablation of the regularisation matrix ΔA",
    cell_height: float = 1.3,
    scale: str = "absolute",
) -> Figure:
    """Fig. 9: one row per TAR setting (labels like "σ64=1", "σ64=1,σ32=8", see
    :func:`sigma_label`) with its attention map and/or generated frames.

    ``maps``: dict ``label -> map`` (probs are reduced with :func:`reduce_maps`), or one
    probs DataArray whose runs are grouped by the run coordinate ``by``.  ``videos``: dict
    ``label -> video``.  Rows follow ``order`` or first appearance. Maps share one
    probability scale with 1/N marked (``scale="minmax"`` on request) and note their band
    concentration.
    """
    reduce_kw = {"steps": steps, "levels": levels, "cfg": cfg}
    cells: dict[str, np.ndarray] = {}
    maps = _probs(maps)
    if isinstance(maps, xr.DataArray):
        found, rows, _ = _facet_cells(maps, by, None, reduce_kw)
        cells = {r: m for (r, _), m in found.items()}
    elif maps is not None:
        cells = {str(k): _as_map(v, reduce_kw) for k, v in maps.items()}
    videos = {str(k): v for k, v in (videos or {}).items()}
    if not cells and not videos:
        raise ValueError("give maps and/or videos")
    rows = _order(list(dict.fromkeys([*cells, *videos])), order)
    raw = cells
    shown, mlo, mhi, mlabel = _display_maps(list(raw.values()), scale)
    cells = dict(zip(raw, shown))
    has_map, has_vid = bool(cells), bool(videos)
    aspect = 1.0
    if has_vid:
        v0 = _as_frames(next(iter(videos.values())))
        k = len(_frame_indices(len(v0), n))
        ncols = _default_ncols(k) if ncols is None else min(ncols, k)
        aspect = (ncols * v0.shape[2]) / (math.ceil(k / ncols) * v0.shape[1])
    ratios = ([1.0] if has_map else []) + ([aspect] if has_vid else [])
    with style():
        fig = _new_figure(cell_height * sum(ratios) + 1.5, (cell_height + 0.3) * len(rows) + 0.5)
        gs = fig.add_gridspec(len(rows), len(ratios), width_ratios=ratios)
        im = None
        for i, r in enumerate(rows):
            c = 0
            if has_map:
                ax = fig.add_subplot(gs[i, 0])
                if r in cells:
                    im = _draw_map(ax, cells[r], vmin=mlo, vmax=mhi)
                    _band_note(ax, raw[r])
                    ax.set_ylabel(f"{r}\nquery frame")
                    ax.set_xlabel("key frame" if i == len(rows) - 1 else "")
                else:
                    ax.set_axis_off()
                if i == 0:
                    ax.set_title("temporal attention")
                c = 1
            if has_vid:
                ax = fig.add_subplot(gs[i, c])
                if r in videos:
                    _draw_strip(ax, videos[r], n, ncols, ticks=False)
                    if not has_map:
                        ax.set_ylabel(r)
                else:
                    ax.set_axis_off()
                if i == 0:
                    ax.set_title(f"generated frames ({r})" if not has_map else "frames")
                if has_map and r in videos:
                    ax.set_title(r, loc="left", fontsize="small")
        if im is not None:
            map_axes = [a for a in fig.axes if a.images and a.images[0].get_cmap().name == MAP_CMAP]
            _map_colorbar(fig, im, map_axes, shown, scale, mlabel, shrink=0.5, aspect=25)
        if title:
            fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. S.1 / S.2: inter-frame similarity


def _items(data: Any, by: str | None) -> list[tuple[str, Any]]:
    """(label, matrix) pairs from a dict or a DataArray with one extra dim ``by``."""
    if isinstance(data, Mapping):
        return [(str(k), v) for k, v in data.items()]
    if isinstance(data, xr.DataArray):
        if data.ndim == 2:
            return [(str(data.name or "video"), data)]
        dim = by or next(d for d in data.dims if d not in (FRAME, FRAME2))
        labels = _run_labels(data, by) if by and by not in data.dims else None
        if labels is not None:
            dim = RUN
        out = []
        for k in range(data.sizes[dim]):
            sub = data.isel({dim: k})
            if labels is not None:
                lab = labels[k]
            else:
                lab = sub[dim].values.item() if dim in data.coords else k
            out.append((str(lab if lab is not None else k), sub))
        return out
    raise TypeError(f"expected a dict or DataArray, got {type(data).__name__}")


def fig_similarity(
    sims: Mapping[str, MapLike] | xr.DataArray,
    *,
    by: str | None = None,
    normalize: str = "joint",
    ncols: int | None = None,
    title: str | None = "inter-frame similarity",
    panel: float = 1.7,
) -> Figure:
    """Fig. S.1: inter-frame similarity matrices of several videos on one colour scale.

    ``sims``: dict ``label -> (frame, frame2) matrix``, or a DataArray with one more dim
    (``by``, or a run coordinate named ``by`` to label panels).  ``normalize="joint"``
    min-max normalises across *all* matrices (as the paper), "each" per matrix, "none" keeps
    raw values.  NaN padding is dropped per matrix.
    """
    items = [(lab, _as_matrix(m)) for lab, m in _items(sims, by)]
    mats = [m for _, m in items]
    if normalize == "joint":
        lo, hi = _joint_range(mats)
        mats = [(m - lo) / (hi - lo) for m in mats]
        vmin, vmax, label = 0.0, 1.0, "similarity (normalised across all)"
    elif normalize == "each":
        mats = [_minmax_np(m) for m in mats]
        vmin, vmax, label = 0.0, 1.0, "similarity (min-max)"
    elif normalize == "none":
        (vmin, vmax), label = _joint_range(mats), "similarity"
    else:
        raise ValueError("normalize must be 'joint', 'each' or 'none'")
    k = len(items)
    nc = min(k, ncols or min(k, 4))
    nr = math.ceil(k / nc)
    cells = {}
    rows, cols = [f"r{i}" for i in range(nr)], [f"c{j}" for j in range(nc)]
    for idx, m in enumerate(mats):
        cells[(rows[idx // nc], cols[idx % nc])] = m
    with style():
        fig = _map_grid(
            cells,
            rows,
            cols,
            cmap=SIM_CMAP,
            xlabel="frame",
            ylabel="frame",
            suptitle=title,
            panel=panel,
            given=(vmin, vmax, label),
        )
        grid = np.array(fig.axes[: nr * nc]).reshape(nr, nc)
        for idx, (lab, m) in enumerate(items):
            ax = grid[idx // nc, idx % nc]
            ax.set_title(f"{lab} ({m.shape[0]} frames)")
            if idx % nc == 0:
                ax.set_ylabel("frame")
    return fig


def interval_table(
    sims: Mapping[str, MapLike | Sequence[MapLike]] | xr.DataArray,
    *,
    by: str | None = None,
) -> pd.DataFrame:
    """Long format of similarity vs. frame interval for several sources (Fig. S.2 data).

    ``sims``: dict ``source -> matrix or list of matrices`` (several videos per source), or a
    DataArray as for :func:`fig_similarity`.  Each matrix is cropped of NaN padding and
    expanded by :func:`attnlab.similarity.similarity_by_interval` (all pairs ``(i, i + d)``,
    ``d >= 1``).  Returns columns ``source, video, frame, frame2, offset, similarity``.
    """
    if isinstance(sims, xr.DataArray):
        groups: list[tuple[str, list]] = [(lab, [m]) for lab, m in _items(sims, by)]
    else:
        groups = []
        for src, v in sims.items():
            many = isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 3)
            groups.append((str(src), list(v) if many else [v]))
    parts = []
    for src, mats in groups:
        for vid, m in enumerate(mats):
            df = _similarity_by_interval(_as_matrix(m))
            parts.append(df.assign(**{SOURCE: src, "video": vid}))
    cols = [SOURCE, "video", FRAME, FRAME2, OFFSET, "similarity"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    return out.dropna(subset=["similarity"])[cols].reset_index(drop=True)


def fig_similarity_by_interval(
    data: pd.DataFrame | Mapping[str, MapLike | Sequence[MapLike]],
    *,
    kind: str = "violin",
    offsets: Sequence[int] | None = None,
    max_offsets: int = 6,
    hue: str = SOURCE,
    hue_order: Sequence[str] | None = None,
    title: str | None = "similarity vs. frame interval",
) -> Figure:
    """Fig. S.2: distributions of inter-frame similarity per interval, one hue per source.

    ``data``: long DataFrame with columns ``offset, similarity`` and ``hue`` (``source``), or
    what :func:`interval_table` takes.  ``offsets`` selects intervals (default: all
    if at most ``max_offsets``, else that many evenly spaced).  ``kind``: "violin" (one axes,
    x = interval) or "kde" (one axes per interval, x = similarity).
    """
    df = data if isinstance(data, pd.DataFrame) else interval_table(data)
    missing = {OFFSET, "similarity", hue} - set(df.columns)
    if missing:
        raise KeyError(f"data lacks columns {sorted(missing)}")
    avail = np.sort(df[OFFSET].unique())
    if offsets is None:
        if len(avail) > max_offsets:
            pick = np.linspace(0, len(avail) - 1, max_offsets).round().astype(int)
            offsets = [int(avail[k]) for k in np.unique(pick)]
        else:
            offsets = [int(o) for o in avail]
    df = df[df[OFFSET].isin(offsets)].copy()
    df[OFFSET] = df[OFFSET].astype(int)
    hues = list(hue_order) if hue_order else list(dict.fromkeys(df[hue]))
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues))))
    with style():
        if kind == "violin":
            fig = _new_figure(max(3.5, 0.9 * len(offsets) + 1.5), 2.6)
            ax = fig.subplots()
            sns.violinplot(
                data=df,
                x=OFFSET,
                y="similarity",
                hue=hue,
                hue_order=hues,
                order=list(offsets),
                palette=palette,
                cut=0,
                inner="quart",
                linewidth=0.6,
                density_norm="width",
                ax=ax,
            )
            ax.set_xlabel("frame interval d = j − i")
            ax.set_ylabel("similarity")
            ax.legend(title=hue, frameon=False, loc="best")
            sns.despine(fig=fig)
        elif kind == "kde":
            fig = _new_figure(1.8 * len(offsets) + 0.8, 2.2)
            axes = fig.subplots(1, len(offsets), sharex=True, sharey=False, squeeze=False)[0]
            for ax, off in zip(axes, offsets):
                sub = df[df[OFFSET] == off]
                sns.kdeplot(
                    data=sub,
                    x="similarity",
                    hue=hue,
                    hue_order=hues,
                    palette=palette,
                    common_norm=False,
                    fill=True,
                    alpha=0.3,
                    warn_singular=False,
                    legend=ax is axes[-1],
                    ax=ax,
                )
                ax.set_title(f"d = {off}")
                ax.set_ylabel("density" if ax is axes[0] else "")
            sns.despine(fig=fig)
        else:
            raise ValueError("kind must be 'violin' or 'kde'")
        if title:
            fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. S.13: the Gaussian prior


def fig_prior(
    n: int = 16,
    sigmas: Sequence[float] = (1, 2, 4, 8),
    *,
    profile: bool = True,
    title: str | None = None,
    panel: float = 1.7,
) -> Figure:
    """Fig. S.13: the TAR regularisation matrix ΔA for several σ at N frames, plus (if
    ``profile``) its off-diagonal decay ΔA(j − i) per σ."""
    mats = [gaussian_prior(n, s) for s in sigmas]
    with style():
        fig = _new_figure(panel * (len(sigmas) + profile) + 0.9, panel + 0.6)
        axes = fig.subplots(1, len(sigmas) + profile, squeeze=False)[0]
        im = None
        for ax, s, m in zip(axes, sigmas, mats):
            im = _draw_map(ax, m)
            ax.set_title(f"σ={_num(s)}")
            ax.set_xlabel("key frame j")
            if ax is axes[0]:
                ax.set_ylabel("query frame i")
        fig.colorbar(im, ax=list(axes[: len(sigmas)]), shrink=0.8, label="ΔA")
        if profile:
            ax = axes[-1]
            d = np.arange(n)
            colors = sns.color_palette("rocket", len(sigmas) + 1)
            for c, s, m in zip(colors, sigmas, mats):
                ax.plot(d, m[0], marker=".", ms=3, lw=1, color=c, label=f"σ={_num(s)}")
            ax.set_xlabel("offset j − i")
            ax.set_ylabel("ΔA")
            ax.set_title("decay")
            ax.legend(frameon=False)
            ax.set_box_aspect(1)
            sns.despine(ax=ax)
        fig.suptitle(title or f"Gaussian prior ΔA, N = {n} frames")
    return fig


# --------------------------------------------------------------------------------------------
# band profile


def _band_profiles_per_run(maps: xr.DataArray) -> xr.DataArray:
    """Band profile of each run cropped to its own frame count (padding would poison it)."""
    if RUN not in maps.dims:
        return band_profile(maps)
    parts = []
    for k in range(maps.sizes[RUN]):
        sub = maps.isel({RUN: [k]})
        n = _frames_of(sub)
        parts.append(band_profile(sub.isel({QUERY: slice(0, n), KEY: slice(0, n)})))
    return xr.concat(parts, dim=RUN, join="outer")


def fig_band_profile(
    profile: xr.DataArray,
    *,
    hue: str | None = CONDITION,
    col: str | None = LEVEL,
    hue_order: Sequence[str] | None = None,
    errorbar: Any = "sd",
    steps: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    title: str | None = "attention vs. frame offset",
    panel: float = 2.2,
) -> Figure:
    """Mean attention vs. frame offset |j - i|: one line per ``hue``, one panel per ``col``.

    ``profile``: the output of ``attnlab.metrics.band_profile`` (dim ``offset`` plus any of
    run/layer/...), or probs (``query_frame, key_frame``): these are reduced with
    :func:`reduce_maps` keeping ``layer`` (``steps``/``levels``/``cfg`` select) and profiled
    per run after cropping to the run's frame count.  Lines are averaged by seaborn over all
    but ``offset``, ``hue`` (a run coordinate; "condition" is derived from source and edits)
    and ``col`` (e.g. ``level``, facets titled "level 0 (40x64)").  NaN offsets beyond a
    run's length are dropped; a run that is NaN everywhere (``band_profile`` of NaN-padded
    maps) triggers a warning. Runs of different frame counts are never pooled into one line
    (an N-frame run has offsets up to N - 1 only; pooling would put a false step at N): they
    get their own lines, told apart by line style. Within one frame count each ``hue`` has its
    own dash pattern, so coinciding lines stay visible.
    """
    if isinstance(profile, xr.Dataset):
        profile = _probs(profile)
    if OFFSET not in profile.dims:
        if QUERY not in profile.dims or KEY not in profile.dims:
            raise ValueError(f"need an {OFFSET!r} dim or query/key maps, got {profile.dims}")
        over = tuple(d for d in _AVERAGED if d != LAYER)
        maps = reduce_maps(profile, steps=steps, levels=levels, cfg=cfg, over=over, normalize=False)
        profile = _band_profiles_per_run(maps)
    if RUN in profile.dims:
        empty = profile.isnull().all([d for d in profile.dims if d != RUN]).values
        if empty.any():
            warnings.warn(
                f"{int(empty.sum())} run(s) have no finite profile values and are not drawn "
                "(band_profile of NaN-padded maps? pass the maps to fig_band_profile instead)",
                stacklevel=2,
            )
    da = profile.rename("value")
    df = da.to_dataframe().reset_index()
    if hue == CONDITION and CONDITION not in df.columns:
        if RUN in da.dims:
            labels = dict(zip(da[RUN].values, condition_labels(da)))
            df[CONDITION] = df[RUN].map(labels)
        else:
            df[CONDITION] = condition_labels(da)[0]
    if hue is not None and hue not in df.columns:
        raise KeyError(f"no coordinate {hue!r} for hue; columns: {list(df.columns)}")
    df = df.dropna(subset=["value"])
    if FRAMES not in df.columns and RUN in df.columns:  # frame count from each run's extent
        df[FRAMES] = df.groupby(RUN)[OFFSET].transform("max") + 1
    by_frames = FRAMES in df.columns and df[FRAMES].nunique() > 1
    style_col: str | None = None
    if by_frames:
        style_col = "frames "
        df[style_col] = [f"{int(v)} frames" for v in df[FRAMES]]
        style_order = [f"{v} frames" for v in sorted({int(v) for v in df[FRAMES]})]
    elif hue is not None:
        style_col, style_order = hue, None
    facets: list[Any] = [None]
    if col is not None and col in df.columns:
        facets = sorted(df[col].dropna().unique())
    hues = (list(hue_order) if hue_order else list(dict.fromkeys(df[hue]))) if hue else None
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues)))) if hues else None
    with style():
        fig = _new_figure(panel * len(facets) + 1.2, panel + 0.5)
        axes = fig.subplots(1, len(facets), sharey=True, squeeze=False)[0]
        for ax, f in zip(axes, facets):
            sub = df if f is None else df[df[col] == f]
            sns.lineplot(
                data=sub,
                x=OFFSET,
                y="value",
                hue=hue,
                hue_order=hues,
                palette=palette,
                style=style_col,
                style_order=style_order if by_frames else hues,
                dashes=True,
                errorbar=errorbar,
                markers=by_frames,
                markersize=4,
                legend=ax is axes[-1] and hue is not None,
                ax=ax,
            )
            if hues and palette:  # earlier hues wider underneath: coinciding lines stay visible
                widths = dict(zip(hues, np.linspace(2.6, 1.0, len(hues))))
                for line in ax.get_lines():
                    for h in hues:
                        if np.allclose(mpl.colors.to_rgb(line.get_color()), palette[h]):
                            line.set_linewidth(widths[h])
                            line.set_zorder(3 + hues.index(h))
            if f is not None:
                if col == LEVEL and {LAYER_H, LAYER_W} <= set(sub.columns):
                    ax.set_title(level_label(f, sub[LAYER_H].iloc[0], sub[LAYER_W].iloc[0]))
                else:
                    ax.set_title(f"{col} {f}")
            ax.set_xlabel("frame offset |j − i|")
            ax.set_ylabel("mean attention")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            sns.despine(ax=ax)
        if hue is not None and axes[-1].get_legend() is not None:
            # with a second variable seaborn heads each section itself
            sns.move_legend(
                axes[-1], "upper right", title=None if by_frames else hue, frameon=False
            )
        if title:
            fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# videos next to maps


def frame_strip_figure(
    frames: VideoLike,
    n: int = 8,
    title: str | None = None,
    *,
    ncols: int | None = None,
    height: float = 1.3,
) -> Figure:
    """A strip of ``n`` evenly spaced frames of a video (frame indices as ticks)."""
    with style():
        v = _as_frames(frames)
        k = len(_frame_indices(len(v), n))
        nc = k if ncols is None else min(ncols, k)
        nr = math.ceil(k / nc)
        aspect = (nc * v.shape[2]) / (nr * v.shape[1])
        fig = _new_figure(height * aspect / nr * nr + 0.3, height * nr + (0.4 if title else 0.2))
        ax = fig.subplots()
        _draw_strip(ax, v, n, nc)
        if nc == k:
            ax.set_xlabel("frame")
        if title:
            ax.set_title(title)
    return fig


def fig_video_with_maps(
    frames: VideoLike,
    maps: MapLike | Mapping[str, MapLike],
    *,
    n: int = 8,
    ncols: int | None = None,
    title: str | None = None,
    steps: Any = None,
    levels: int | Sequence[int] | None = None,
    cfg: str | None = COND,
    height: float = 1.8,
    scale: str = "absolute",
) -> Figure:
    """Frames of a video next to its temporal-attention map(s).

    ``maps``: one map or a dict ``label -> map`` (e.g. one per level); probs are reduced with
    :func:`reduce_maps`.  Frames are tiled ``ncols`` per row (default: two rows). Maps share
    one probability scale with 1/N marked (``scale="minmax"`` on request).
    """
    reduce_kw = {"steps": steps, "levels": levels, "cfg": cfg}
    items = (
        [(str(k), _as_map(m, reduce_kw)) for k, m in maps.items()]
        if isinstance(maps, Mapping)
        else [(None, _as_map(maps, reduce_kw))]
    )
    v = _as_frames(frames)
    sizes = sorted({m.shape[0] for _, m in items})
    if sizes != [len(v)]:
        warnings.warn(
            f"the video has {len(v)} frames but the maps are {sizes} frames wide", stacklevel=2
        )
    k = len(_frame_indices(len(v), n))
    nc = _default_ncols(k) if ncols is None else min(ncols, k)
    aspect = (nc * v.shape[2]) / (math.ceil(k / nc) * v.shape[1])
    with style():
        ratios = [aspect] + [1.0] * len(items)
        fig = _new_figure(height * sum(ratios) + 1.2, height + 0.7)
        axes = fig.subplots(1, len(ratios), width_ratios=ratios, squeeze=False)[0]
        _draw_strip(axes[0], v, n, nc, ticks=nc == k)
        axes[0].set_title(f"frames ({len(v)} total)")
        im = None
        shown, mlo, mhi, mlabel = _display_maps([m for _, m in items], scale)
        for ax, (lab, m), d in zip(axes[1:], items, shown):
            im = _draw_map(ax, d, vmin=mlo, vmax=mhi)
            _band_note(ax, m)
            ax.set_title(lab if lab is not None else f"attention ({m.shape[0]} frames)")
            ax.set_xlabel("key frame")
            ax.set_ylabel("query frame" if ax is axes[1] else "")
        _map_colorbar(fig, im, list(axes[1:]), shown, scale, mlabel, shrink=0.8)
        if title:
            fig.suptitle(title)
    return fig
