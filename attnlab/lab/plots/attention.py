"""Figures of recorded temporal attention.

* :func:`fig_attention_maps`: Fig. 3, maps per condition (rows) and frame count (columns)
* :func:`fig_cross_model`: Fig. 10, maps per model with its positional encoding
* :func:`fig_band_profile`: mean attention vs. frame offset |j - i|
* :func:`frame_strip_figure`: a strip of evenly spaced frames of a video
* :func:`fig_video_with_maps`: a video's frames next to its attention map(s)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import seaborn as sns
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attnlab.core.dims import (
    COND,
    FRAMES,
    KEY,
    LAYER,
    LAYER_H,
    LAYER_W,
    LEVEL,
    MODEL,
    OFFSET,
    PE,
    QUERY,
    RUN,
)
from attnlab.data.metrics import band_profile
from attnlab.data.video import to_unit_frames
from attnlab.lab.plots.draw import (
    _band_note,
    _default_ncols,
    _display_maps,
    _draw_map,
    _draw_strip,
    _facet_cells,
    _frame_indices,
    _map_colorbar,
    _map_grid,
    _new_figure,
    _order,
)
from attnlab.lab.plots.labels import (
    CONDITION,
    _check_one_setting,
    _fmt_facet,
    _run_labels,
    _selection_title,
    _steps_text,
    condition_labels,
    level_label,
)
from attnlab.lab.plots.maps import (
    _AVERAGED,
    MapLike,
    VideoLike,
    _as_map,
    _frames_of,
    _probs,
    _select,
    reduce_maps,
)
from attnlab.lab.plots.style import style


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
    exists, giving "real", "synthetic", "synthetic+TAR 64D1": one row per edit setting), or a
    dict ``label -> DataArray`` whose keys are the rows.  Runs sharing a cell are averaged
    (never runs of different edits: that is an error); each panel is cropped to its run's
    frame count. The default title names the model, levels, steps and cfg branch that all
    rows share. Colours show probabilities on one scale for every panel, with the
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
        for label, da in probs.items():
            c, _, cs = _facet_cells(da, None, col, reduce_kw, row_label=str(label))
            cells.update(c)
            rows.append(str(label))
            cols.extend(x for x in cs if x not in cols)
        if col == FRAMES:
            cols.sort(key=lambda s: int(s.split()[0]))
        refs = list(probs.values())
    else:
        cells, rows, cols = _facet_cells(probs, row, col, reduce_kw)
        refs = [probs]
    if title is None and refs:  # of a dict: what all its entries share
        title = _selection_title([_select(r, **reduce_kw) for r in refs], cfg)
    with style():
        return _map_grid(
            cells,
            _order(rows, row_order),
            _order(cols, col_order),
            suptitle=title or None,
            panel=panel,
            scale=scale,
            wrap=24,
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
    ``attnlab.core.sites.PE_KINDS``; models keep their order within a kind) unless ``row_order``
    is given. Full-3D attention DiTs (PE kinds ending in "3d") sit beside the UNets: their
    maps are frame-level maps of joint attention over latent frames (:mod:`attnlab.core.joint`),
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
        else:
            parts.append("mean over all levels")
        selected = [_select(da, **reduce_kw) for da in probs.values()]
        steps_text = {_steps_text(da) for da in selected}
        if len(steps_text) == 1 and None not in steps_text:
            parts.append(steps_text.pop() or "")
        elif steps is None:
            parts.append("mean over all steps")
        parts.append(cfg if cfg is not None else "cfg mean")
        title = " · ".join(parts)
    with style():
        return _map_grid(
            cells, rows, _order(cols, col_order), suptitle=title, panel=panel, scale=scale
        )


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

    ``profile``: the output of ``attnlab.data.metrics.band_profile`` (dim ``offset`` plus any of
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
    if RUN in df.columns:  # a line averages its runs: never runs of different edit settings
        keys = [c for c in (hue, col, FRAMES if by_frames else None) if c in df.columns]
        groups = df.groupby(keys, dropna=False)[RUN] if keys else [(None, df[RUN])]
        runs = list(da[RUN].values)
        for _, ids in groups:
            idx = sorted({runs.index(r) for r in ids.unique()})
            _check_one_setting(da.isel({RUN: idx}), "one line")
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
        v = to_unit_frames(frames)
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
    v = to_unit_frames(frames)
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
