"""Figures of attention edits: replacement probes, transfer, the TAR prior and its ablation.

* :func:`fig_probe_grid`: Fig. 4, videos generated with attention replaced by I_N / J_N
* :func:`fig_transfer`: Fig. 8, a reference video's dynamics transferred by TAR
* :func:`fig_sigma_ablation`: Fig. 9, one row per TAR setting (σ per level)
* :func:`fig_prior`: Fig. S.13, the Gaussian prior ΔA and its decay
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure

from attnlab.core.dims import COND
from attnlab.data.metrics import gaussian_prior
from attnlab.data.video import to_unit_frames
from attnlab.lab.plots.draw import (
    _band_note,
    _check_scale,
    _default_ncols,
    _display_maps,
    _draw_map,
    _draw_strip,
    _facet_cells,
    _frame_indices,
    _map_colorbar,
    _new_figure,
    _order,
)
from attnlab.lab.plots.labels import CONDITION, _num, _selection_title, _wrap
from attnlab.lab.plots.maps import (
    MapLike,
    VideoLike,
    _as_map,
    _as_matrix,
    _joint_range,
    _minmax_np,
    _probs,
    _select,
)
from attnlab.lab.plots.style import MAP_CMAP, SIM_CMAP, style

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
    probe = to_unit_frames(next(iter(videos.values())))
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
        v0 = to_unit_frames(next(v for v in vids if v is not None))
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
    stored: list[xr.DataArray] = []  # maps with their coordinates: the title names the selection
    if isinstance(maps, xr.DataArray):
        found, rows, _ = _facet_cells(maps, by, None, reduce_kw)
        cells = {r: m for (r, _), m in found.items()}
        stored = [maps]
    elif maps is not None:
        cells = {str(k): _as_map(v, reduce_kw) for k, v in maps.items()}
        stored = [v for v in maps.values() if isinstance(v, xr.DataArray) and v.ndim > 2]
    if title and stored:
        selection = _selection_title([_select(v, **reduce_kw) for v in stored], cfg)
        title = f"{title}\n{selection}" if selection else title
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
        v0 = to_unit_frames(next(iter(videos.values())))
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
                    ax.set_ylabel(f"{_wrap(r)}\nquery frame")
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
                        ax.set_ylabel(_wrap(r))
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
