"""Figures of video metrics (:mod:`attnlab.lab.evaluation`): curves per frame (pair) and summaries.

Scales are absolute: flow magnitudes in pixels from 0 with VBench's threshold drawn, similarities
on their own axis including 0 and 1 where the data reach them.

* :func:`fig_metric_curves`: one panel per variable, one line per run along the frame (pair) axis
* :func:`fig_metric_bars`: one panel per per-run scalar, one bar per run
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attnlab.core import dims as D
from attnlab.lab.plots.draw import _new_figure
from attnlab.lab.plots.style import style

_LABELS = {
    "flow_magnitude": "optical flow, top-5 % mean (px)",
    "frame_difference": "mean |frame difference| (0-255)",
    "consistency_to_first": "similarity to frame 0",
    "consistency_to_previous": "similarity to previous frame",
    "similarity_by_offset": "mean similarity",
    "flow_magnitude_mean": "mean flow magnitude (px)",
    "temporal_flickering": "temporal flickering score",
    "consistency": "consistency (VBench formula)",
}


def _axis_of(da: xr.DataArray) -> str:
    for d in (D.FRAME_PAIR, D.FRAME, D.OFFSET):
        if d in da.dims:
            return d
    raise ValueError(f"{da.name} has no frame axis: {da.dims}")


def _threshold(ev: xr.Dataset, rid: str) -> float:
    """A run's VBench dynamic-degree threshold (px; it scales with the run's min(h, w))."""
    thr = ev["dynamic_threshold"]
    return float(thr.sel({D.RUN: rid}) if D.RUN in thr.dims else thr)


def _thresholds(ax, values: Sequence[float]) -> None:
    """VBench thresholds on a bar panel: one line across all bars when the runs agree, else a
    short line over each run's own bar."""
    label = "VBench threshold"
    if len(set(values)) == 1:
        ax.axhline(values[0], color="C3", ls="--", lw=0.9, label=label)
    else:
        x = np.arange(len(values))
        ax.hlines(
            values, x - 0.45, x + 0.45, color="C3", ls="--", lw=0.9, label=f"{label} (per run)"
        )
    ax.set_ylim(top=1.25 * ax.get_ylim()[1])  # room for the legend above the lines
    ax.legend(fontsize=6, frameon=False, loc="upper left")


def fig_metric_curves(
    ev: xr.Dataset,
    runs: Mapping[str, str],
    variables: Sequence[str] = ("flow_magnitude", "consistency_to_first"),
    *,
    colors: Mapping[str, object] | None = None,
    linestyles: Mapping[str, str] | None = None,
    mark_frame: int | None = None,
    mark_label: str = "training length",
    title: str | None = None,
) -> Figure:
    """One panel per variable, one line per ``label -> run id``; x is the frame (pair) index.

    ``flow_magnitude`` panels draw each run's VBench threshold (dotted, in the run's colour:
    it scales with the run's min(h, w)); a
    vertical line at ``mark_frame`` marks e.g. a model's training length.
    """
    variables = [v for v in variables if v in ev]
    with style():
        fig = _new_figure(3.6 * len(variables) + 1.2, 2.8)
        axes = fig.subplots(1, len(variables), squeeze=False)
        palette = mpl.colormaps["tab10"]
        for ax, var in zip(axes[0], variables):
            x_dim = _axis_of(ev[var])
            lo = 0.0
            for k, (label, rid) in enumerate(runs.items()):
                y = ev[var].sel({D.RUN: rid}).values.astype(float)
                x = ev[x_dim].values
                keep = ~np.isnan(y)
                c = (colors or {}).get(label, palette(k % 10))
                ls = (linestyles or {}).get(label, "-")
                ax.plot(x[keep], y[keep], color=c, ls=ls, lw=1.3, label=label)
                if var == "flow_magnitude" and "dynamic_threshold" in ev:
                    ax.axhline(_threshold(ev, rid), color=c, ls=":", lw=0.8, alpha=0.8)
                if keep.any():
                    lo = min(lo, float(np.nanmin(y)))
            if mark_frame is not None:
                ax.axvline(mark_frame - 0.5, color="0.4", lw=0.8, ls="--")
                ax.text(mark_frame - 0.3, 0.98, mark_label, transform=ax.get_xaxis_transform(),
                        va="top", fontsize=6, color="0.3")  # fmt: skip
            ax.set_xlabel({D.FRAME_PAIR: "frame pair (i, i+1)", D.FRAME: "frame", D.OFFSET:
                           "frame interval"}[x_dim])  # fmt: skip
            ax.set_ylabel(_LABELS.get(var, var))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if var.startswith(("consistency", "similarity")):
                ax.set_ylim(min(lo, 0.0) - 0.02, 1.02)
            else:
                ax.set_ylim(bottom=0.0)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=6, frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def fig_metric_bars(
    ev: xr.Dataset,
    runs: Mapping[str, str],
    variables: Sequence[str] = ("flow_magnitude_mean", "temporal_flickering"),
    *,
    title: str | None = None,
) -> Figure:
    """One panel per per-run scalar, one bar per ``label -> run id`` (in the given order).

    ``flow_magnitude_mean`` panels draw VBench's dynamic-degree threshold, which scales with
    each run's min(h, w): one line when every run's threshold is the same, else a line over
    each run's own bar."""
    variables = [v for v in variables if v in ev]
    labels = list(runs)
    if not labels or not variables:
        raise ValueError("fig_metric_bars needs at least one run and one variable present in ev")
    with style():
        fig = _new_figure(max(3.0, 0.45 * len(labels) + 1.2) * len(variables), 3.0)
        axes = fig.subplots(1, len(variables), squeeze=False)
        for ax, var in zip(axes[0], variables):
            vals = [float(ev[var].sel({D.RUN: runs[k]})) for k in labels]
            ax.bar(range(len(labels)), vals, color="0.35")
            if var == "flow_magnitude_mean" and "dynamic_threshold" in ev:
                _thresholds(ax, [_threshold(ev, runs[k]) for k in labels])
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=6)
            ax.set_ylabel(_LABELS.get(var, var))
            ax.set_ylim(bottom=0.0, top=1.0 if var == "temporal_flickering" else None)
        if title:
            fig.suptitle(title)
    return fig
