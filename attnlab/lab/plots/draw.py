"""Drawing blocks shared by the figures: map panels, grids of facets, colour bars, frame strips.

* :data:`SCALES`: colour scales of attention maps ("absolute", "minmax")
* :func:`uniform_band`: band concentration of the uniform map (the reference each panel notes)
* private helpers: colour ranges, the colour bar with 1/N marked, one map panel, the grid of
  facets (runs grouped by run coordinates), and strips of evenly spaced video frames
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attnlab.core.dims import FRAMES, RUN
from attnlab.data.video import to_unit_frames
from attnlab.lab.plots.labels import _fmt_facet, _run_labels, _wrap
from attnlab.lab.plots.maps import VideoLike, _cell_map, _minmax_np
from attnlab.lab.plots.style import MAP_CMAP

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
    (see :func:`attnlab.data.metrics.band_concentration`)."""
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
    wrap: int | None = None,
) -> Figure:
    """Grid of N x N maps; column headers as top titles, row headers on the left y-labels
    (broken into lines of about ``wrap`` characters, if given).

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
                head = _wrap(r, wrap) if wrap else r
                ax.set_ylabel(f"{head}\n{ylabel}" if r else ylabel)
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
    frames = to_unit_frames(video)
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
