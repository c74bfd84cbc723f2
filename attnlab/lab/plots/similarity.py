"""Figures of inter-frame similarity.

* :func:`fig_similarity`: Fig. S.1, similarity matrices of several videos on one colour scale
* :func:`interval_table`: similarity vs. frame interval in long format (Fig. S.2 data)
* :func:`fig_similarity_by_interval`: Fig. S.2, similarity distributions per frame interval
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from attnlab.core.dims import FRAME, FRAME2, OFFSET, RUN, SOURCE
from attnlab.data.similarity import similarity_by_interval as _similarity_by_interval
from attnlab.lab.plots.draw import _map_grid, _new_figure
from attnlab.lab.plots.labels import _run_labels
from attnlab.lab.plots.maps import MapLike, _as_matrix, _joint_range, _minmax_np
from attnlab.lab.plots.style import SIM_CMAP, style


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
    expanded by :func:`attnlab.data.similarity.similarity_by_interval` (all pairs ``(i, i + d)``,
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
    max_offsets: int = 8,
    hue: str = SOURCE,
    hue_order: Sequence[str] | None = None,
    title: str | None = "similarity vs. frame interval",
) -> Figure:
    """Fig. S.2: distributions of inter-frame similarity per interval, one hue per source.

    ``data``: long DataFrame with columns ``offset, similarity`` and ``hue`` (``source``), or
    what :func:`interval_table` takes.  ``offsets`` selects intervals (default: all
    if at most ``max_offsets``, else that many evenly spaced, and the figure says how many of
    how many it shows).  ``kind``: "violin" (one axes,
    x = interval) or "kde" (one axes per interval, x = similarity).
    """
    df = data if isinstance(data, pd.DataFrame) else interval_table(data)
    missing = {OFFSET, "similarity", hue} - set(df.columns)
    if missing:
        raise KeyError(f"data lacks columns {sorted(missing)}")
    avail = np.sort(df[OFFSET].unique())
    shown = ""  # said on the axis when not every interval is drawn
    if offsets is None:
        if len(avail) > max_offsets:
            pick = np.linspace(0, len(avail) - 1, max_offsets).round().astype(int)
            offsets = [int(avail[k]) for k in np.unique(pick)]
            shown = f" ({len(offsets)} of {len(avail)} intervals)"
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
            ax.set_xlabel(f"frame interval d = j − i{shown}")
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
            if shown:
                fig.supxlabel(f"similarity at {len(offsets)} of {len(avail)} intervals", fontsize=8)
            sns.despine(fig=fig)
        else:
            raise ValueError("kind must be 'violin' or 'kde'")
        if title:
            fig.suptitle(title)
    return fig
