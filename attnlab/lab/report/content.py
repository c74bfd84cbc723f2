"""What a report shows: every run of the stores read into arrays the page indexes.

- :class:`Source`: one store (or Dataset) and the label the page gives it
- :class:`RunContent`: one run's maps (with the means over steps, layers and heads), band
  profiles and metrics of every map, its video, provenance and evaluation
- :func:`collect`: read the sources, choose how much detail fits the size budget
  (:data:`DETAIL_LADDER`) and say what was left out

Maps are cut to each run's own steps, layers and frames (``attnlab.load`` pads runs of
different sizes with NaN). Every number the page shows is computed here, with
:mod:`attnlab.data.metrics`; the page only indexes.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from attnlab.core import dims as D
from attnlab.core.store import StoreError
from attnlab.lab.report.labels import latent_rows, step_label, video_note, window_rows


class ReportError(ValueError):
    """A report that cannot be made as asked (nothing was written)."""


# ---- sources ----------------------------------------------------------------------------------


@dataclass
class Source:
    """One store of the report: its label on the page, its runs (``attnlab.load``'s Dataset)
    and, when it is a store on disk, its path (videos and evaluations are read from it)."""

    label: str
    ds: xr.Dataset
    path: Path | None = None


def open_sources(
    stores: Sequence[str | os.PathLike | xr.Dataset], runs: Sequence[str] | None = None
) -> list[Source]:
    """Each store (a path) or Dataset as a :class:`Source`, with only the runs in ``runs``
    (run ids, or ``label/run id`` where several stores hold the same id)."""
    import attnlab

    if not stores:
        raise ReportError("no store to report: give at least one attnlab store")
    sources = []
    for s in stores:
        if isinstance(s, xr.Dataset):
            if D.PROBS not in s or D.RUN not in s.dims:
                raise ReportError(
                    "a Dataset to report must be attnlab.load's: a 'probs' variable with a "
                    f"'run' dimension (got variables {sorted(map(str, s.data_vars))}, dims "
                    f"{dict(s.sizes)})"
                )
            label = str(s.attrs.get("store", "")).split(",")[0].strip()
            sources.append(Source(Path(label).stem if label else "dataset", s, None))
            continue
        path = Path(s)
        if not path.exists():
            raise StoreError(f"no store at {path}: give the path of an attnlab zarr store")
        if any(o.path is not None and o.path.resolve() == path.resolve() for o in sources):
            continue  # the same store named twice: its runs once
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # incomplete runs: the page says which were skipped
            ds = attnlab.load(path)
        sources.append(Source(path.name.removesuffix(".zarr") or path.name, ds, path))
    for source, label in zip(sources, _labels(sources)):
        source.label = label
    if runs is not None:
        sources = _select(sources, list(runs))
    return sources


def _labels(sources: list[Source]) -> list[str]:
    """One label per source, all different: the store's folder name without ``.zarr``; where
    two are alike, as many parent folders as tell them apart; then (Datasets, one store given
    twice) numbered ``#1``, ``#2``. Runs are told apart by ``label/run id``, so two sources must
    never share a label."""
    out = [s.label for s in sources]
    parts = [s.path.resolve().parts if s.path is not None else () for s in sources]
    for depth in range(2, max(map(len, parts), default=0) + 1):
        alike = {label for label in out if out.count(label) > 1}
        if not alike:
            return out
        for i, label in enumerate(out):
            if label in alike and len(parts[i]) >= depth:
                out[i] = "/".join([*parts[i][-depth:-1], sources[i].label])
    counts: dict[str, int] = {}
    for i, label in enumerate(list(out)):
        if out.count(label) > 1:
            counts[label] = counts.get(label, 0) + 1
            out[i] = f"{label}#{counts[label]}"
    return out


def run_keys(sources: Sequence[Source]) -> dict[str, tuple[int, str]]:
    """Page key of every run -> (source index, run id): the run id, or ``label/run id`` where
    several sources hold the same id."""
    ids = [(i, str(r)) for i, s in enumerate(sources) for r in s.ds[D.RUN].values]
    counts: dict[str, int] = {}
    for _, r in ids:
        counts[r] = counts.get(r, 0) + 1
    return {(r if counts[r] == 1 else f"{sources[i].label}/{r}"): (i, r) for i, r in ids}


def resolve_run(name: str, sources: Sequence[Source]) -> str:
    """The page key of the run named ``name`` (a run id, or ``label/run id``); one clear
    error otherwise."""
    keys = run_keys(sources)
    matches = [k for k, (i, rid) in keys.items() if name in (k, rid, f"{sources[i].label}/{rid}")]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReportError(f"run {name!r} is in several stores: name one of {matches}")
    raise ReportError(f"no run {name!r} in the report's stores; the runs are: {', '.join(keys)}")


def _select(sources: list[Source], runs: list[str]) -> list[Source]:
    """The sources with only ``runs`` (each once: a run named twice, or by its id and by
    ``label/id``, is one run of the page)."""
    keys = run_keys(sources)
    wanted = list(dict.fromkeys(resolve_run(r, sources) for r in runs))
    out = []
    for i, s in enumerate(sources):
        ids = [keys[k][1] for k in wanted if keys[k][0] == i]
        if ids:
            out.append(Source(s.label, s.ds.sel({D.RUN: ids}), s.path))
    return out


# ---- the detail that fits --------------------------------------------------------------------


@dataclass(frozen=True)
class Detail:
    """How much of each run goes into the page."""

    #: most steps per run (evenly spaced, first and last kept); None: all; 0: the mean only
    steps: int | None = None
    #: every layer (True) or only the means over each level and over all layers (False)
    layers: bool = True
    #: both guidance halves (True) or only ``cond`` (False)
    halves: bool = True
    #: every head (True) or only their mean (False; stores reduced with ``head``)
    heads: bool = True

    def describe(self, shape: RunShape | None = None) -> list[str]:
        """What this detail leaves out of a run of ``shape`` (None: of any run), one phrase
        each (empty: nothing)."""
        out = []
        steps = len(shape.steps) if shape is not None else None
        if self.steps is not None and (steps is None or self.steps < steps):
            out.append(
                "the per-step maps (the mean over all steps is kept)"
                if self.steps == 0
                else f"steps beyond {self.steps} evenly spaced ones (first and last included; "
                "the mean is over all steps)"
            )
        if not self.layers:
            out.append("single layers (the means over each level and over all layers are kept)")
        if not self.halves and (shape is None or len(shape.halves) > 1):
            out.append("the unconditional guidance half (cond is kept)")
        if not self.heads and (shape is None or shape.heads):
            out.append("single heads (their mean is kept)")
        return out


def detail_ladder(max_steps: int) -> list[Detail]:
    """The details a run steps down through until the page fits its budget: everything; then
    without the unconditional half; then fewer steps; then the mean over heads; then level
    means only, again with fewer steps; last the mean over steps at each level."""
    thinned = list(range(max_steps - 1, 1, -1))
    ladder = [Detail(), Detail(halves=False)]
    ladder += [Detail(steps=k, halves=False) for k in thinned]
    ladder += [Detail(steps=2, halves=False, heads=False)]
    ladder += [Detail(steps=None, halves=False, heads=False, layers=False)]
    ladder += [Detail(steps=k, halves=False, heads=False, layers=False) for k in thinned]
    ladder += [Detail(steps=0, halves=False, heads=False, layers=False)]
    return ladder


# ---- one run -------------------------------------------------------------------------------------


@dataclass
class RunShape:
    """A run's own extent inside a loaded Dataset (which pads runs to the largest)."""

    steps: np.ndarray  # indices along `step`
    layers: np.ndarray  # indices along `layer`
    frames: int
    halves: list[str]
    heads: int  # 0: no head dimension
    samples: int
    spatial: bool
    #: the first frames of the run's own FreeNoise windows (empty: not windowed)
    windows: list[int] = field(default_factory=list)
    #: the spatial grid's (y, x) sizes (stores reduced with ``spatial``)
    grid: tuple[int, int] | None = None


@dataclass
class RunContent:
    """One run as the page holds it (see :func:`build_run`).

    ``maps`` has dims ``(step_entry, layer_entry, cfg, head_entry, sample, query_frame,
    key_frame)``: step entry 0 is the mean over every recorded step, then the kept steps;
    layer entries are the mean over all layers, the mean over each level (with more than one
    level), then the kept layers; head entry 0 is the mean over heads, then each head (one
    entry without a head dimension). ``profiles`` (offset) and ``metrics`` (diagonalness,
    band mass ``|i - j| <= 1``, mean normalised row entropy) are of each map.

    ``recorded`` lists every recorded step (index, timestep), kept or not; ``layer_names`` and
    ``layer_levels`` every recorded layer (the means are over them); ``windows`` a FreeNoise
    run's windows and, per video frame, the rows of the shown map that hold it."""

    key: str
    source: str
    run_id: str
    attrs: dict[str, Any]
    frames: int
    steps: list[dict[str, Any]]  # kept steps: index, position, timestep, expert, label
    total_steps: int
    layers: list[dict[str, Any]]  # entries: key, label, level, kind ("all", "level", "layer")
    total_layers: int
    halves: list[str]
    heads: list[str]
    samples: int
    maps: np.ndarray
    profiles: np.ndarray
    metrics: np.ndarray
    summary: dict[str, float]
    evaluation: dict[str, float] = field(default_factory=dict)
    video: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    recorded: list[dict[str, Any]] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    layer_levels: list[int] = field(default_factory=list)
    windows: dict[str, Any] | None = None
    #: why the run has no video in the page (None: it has one)
    video_note: str | None = None
    #: the map row of each video frame where the map is over fewer (latent) frames
    latent: dict[str, Any] | None = None


METRICS = ("diagonalness", "band_mass", "entropy")


def run_shape(ds: xr.Dataset, run_id: str) -> RunShape:
    """Where run ``run_id`` of ``ds`` has data: steps with a timestep, layers it holds (its
    ``h`` coordinate, else its ``ran`` mask or values), its frame count."""
    sub = ds.sel({D.RUN: run_id})
    probs = sub[D.PROBS]
    others = [d for d in probs.dims if d not in (D.STEP, D.LAYER)]
    finite = probs.notnull().any(others).values  # (step, layer)
    if D.TIMESTEP in sub.coords:
        steps = np.flatnonzero(np.isfinite(np.asarray(sub[D.TIMESTEP].values, dtype=float)))
    else:
        steps = np.flatnonzero(finite.any(1))
    if D.LAYER_H in sub.coords:
        layers = np.flatnonzero(np.isfinite(np.asarray(sub[D.LAYER_H].values, dtype=float)))
    elif D.RAN in sub:
        layers = np.flatnonzero(sub[D.RAN].values.any((0, 2)))
    else:
        layers = np.flatnonzero(finite.any(0))
    n = _frames(sub, probs)
    halves = [str(c) for c in probs[D.CFG].values]
    if D.RAN in sub:  # a half this run did not record at all (padding of another run's)
        ran = sub[D.RAN].values
        halves = [h for j, h in enumerate(halves) if ran[:, :, j].any()] or halves
    heads = 0
    if D.HEAD in probs.dims:
        counts = sub[D.HEADS].values if D.HEADS in sub.coords else [probs.sizes[D.HEAD]]
        heads = int(np.nanmax(np.asarray(counts, dtype=float)))
    windows: list[int] = []
    if D.WINDOW in probs.dims:  # the run's own windows (a Dataset pads to every run's)
        held = probs.notnull().any([d for d in probs.dims if d != D.WINDOW]).values
        windows = [int(w) for w, h in zip(probs[D.WINDOW].values, held) if h]
        windows = [] if windows == [0] else windows  # one window at 0: not windowed
    spatial = D.Y in probs.dims
    return RunShape(
        steps=steps,
        layers=layers,
        frames=n,
        halves=halves,
        heads=heads,
        samples=int(probs.sizes[D.SAMPLE]),
        spatial=spatial,
        windows=windows,
        grid=(int(probs.sizes[D.Y]), int(probs.sizes[D.X])) if spatial else None,
    )


def _frames(sub: xr.Dataset, probs: xr.DataArray) -> int:
    """The run's own frame count in its maps: the query frames that hold values (``frames``
    counts video frames, more than the latent ones of a model that compresses time)."""
    rows = probs.notnull().any([d for d in probs.dims if d != D.QUERY]).values
    return int(rows.nonzero()[0].max()) + 1 if rows.any() else probs.sizes[D.QUERY]


def entry_count(shape: RunShape, levels: int, detail: Detail) -> tuple[int, int, int, int]:
    """Step, layer, half and head entries of a run at ``detail``."""
    n_steps = len(shape.steps)
    kept = n_steps if detail.steps is None else min(detail.steps, n_steps)
    level_entries = levels if levels > 1 else 0
    layers = 1 + level_entries + (len(shape.layers) if detail.layers else 0)
    halves = len(shape.halves) if detail.halves or "cond" not in shape.halves else 1
    heads = 1 + (shape.heads if detail.heads and shape.heads else 0)
    return 1 + kept, layers, halves, heads


def run_bytes(shape: RunShape, levels: int, detail: Detail) -> int:
    """Bytes of a run's arrays in the page (float32, base64) at ``detail``."""
    s, la, c, h = entry_count(shape, levels, detail)
    n = shape.frames
    cells = s * la * c * h * shape.samples
    return math.ceil(cells * (n * n + n + len(METRICS)) * 4 * 4 / 3)


def _meta_bytes(source: Source, run_id: str, shape: RunShape) -> int:
    """About the bytes of a run's description in the page (provenance, layer and step
    entries), beside its arrays."""
    attrs = json.dumps(_provenance(source.ds.sel({D.RUN: run_id})), default=str)
    names = source.ds[D.LAYER].values[shape.layers]
    windows = 0
    if shape.windows:  # the rows of each video frame
        windows = 12 * len(shape.windows) * (max(shape.windows) + shape.frames)
    return (
        2 * len(attrs)
        + sum(2 * len(str(n)) + 90 for n in names)
        + 200 * len(shape.steps)
        + windows
        + 1500
    )


def _kept_steps(n: int, most: int | None) -> np.ndarray:
    """Positions of the steps kept: all, or ``most`` evenly spaced with first and last."""
    if most is None or most >= n:
        return np.arange(n)
    if most <= 0:
        return np.arange(0)
    if most == 1:
        return np.array([0])
    return np.unique(np.round(np.linspace(0, n - 1, most)).astype(int))


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(a, axis=axis, keepdims=True)


def build_run(key: str, source: Source, run_id: str, shape: RunShape, detail: Detail) -> RunContent:
    """A run's maps at ``detail``, with the means over steps, levels, all layers and heads
    taken over everything recorded (before anything is left out), and each map's metrics."""
    from attnlab.data.metrics import band_concentration, band_profile, diagonalness, row_entropy

    ds = source.ds
    sub = ds.sel({D.RUN: run_id}).isel({D.STEP: shape.steps, D.LAYER: shape.layers})
    n = shape.frames
    probs = sub[D.PROBS].isel({D.QUERY: slice(0, n), D.KEY: slice(0, n)})
    probs = probs.sel({D.CFG: shape.halves})
    notes = []
    if shape.spatial:
        probs = probs.mean([D.Y, D.X], skipna=True)
        grid = " x ".join(map(str, shape.grid)) + " " if shape.grid else ""
        notes.append(
            f"the maps of each position of the {grid}spatial grid (the maps are their mean)"
        )
    windows = None
    if shape.windows:  # FreeNoise: one map per window of frames, counted within it
        probs = probs.sel({D.WINDOW: shape.windows}).mean(D.WINDOW, skipna=True)
        starts = ", ".join(map(str, shape.windows))
        notes.append(
            f"the maps of each window of frames (FreeNoise windows starting at frames {starts}; "
            "the maps are their mean, frames counted within the window)"
        )
        windows = window_rows(
            shape.windows, n, _num(sub[D.FRAMES].values) if D.FRAMES in sub.coords else None
        )
    elif D.WINDOW in probs.dims:  # not windowed, in a Dataset with windowed runs: window 0
        probs = probs.mean(D.WINDOW, skipna=True)
    order = [D.STEP, D.LAYER, D.CFG, D.HEAD, D.SAMPLE, D.QUERY, D.KEY]
    if D.HEAD not in probs.dims:
        probs = probs.expand_dims(D.HEAD, axis=probs.dims.index(D.QUERY))
    arr = np.asarray(probs.transpose(*order).values, dtype=np.float32)

    # heads: their mean first
    if shape.heads:
        arr = np.concatenate([_nanmean(arr, 3), arr[:, :, :, : shape.heads]], axis=3)
        if not detail.heads:
            arr = arr[:, :, :, :1]
    heads = ["mean"] + ([str(h) for h in range(shape.heads)] if detail.heads else [])
    heads = heads if shape.heads else ["-"]
    # layers: the mean over all, over each level, then each layer
    names = [str(v) for v in sub[D.LAYER].values]
    levels = [int(v) for v in sub[D.LEVEL].values] if D.LEVEL in sub.coords else [0] * len(names)
    entries: list[dict[str, Any]] = [
        {"key": "all", "label": f"all {len(names)} layers (mean)", "kind": "all", "level": None}
    ]
    parts = [_nanmean(arr, 1)]
    distinct = sorted(set(levels))
    if len(distinct) > 1:
        for lv in distinct:
            idx = [i for i, v in enumerate(levels) if v == lv]
            parts.append(_nanmean(arr[:, idx], 1))
            entries.append(
                {
                    "key": f"level:{lv}",
                    "label": f"level {lv} (mean of {len(idx)})",
                    "kind": "level",
                    "level": lv,
                }
            )
    if detail.layers:
        parts.append(arr)
        entries += [
            {"key": name, "label": name, "kind": "layer", "level": lv}
            for name, lv in zip(names, levels)
        ]
    arr = np.concatenate(parts, axis=1)
    # steps: the mean over all first, then the kept ones
    kept = _kept_steps(arr.shape[0], detail.steps)
    arr = np.concatenate([_nanmean(arr, 0), arr[kept]], axis=0)
    # halves
    halves = list(shape.halves)
    if not detail.halves and D.COND in halves and len(halves) > 1:
        arr = arr[:, :, [halves.index(D.COND)]]
        halves = [D.COND]
    arr = np.ascontiguousarray(arr, dtype=np.float32)

    count = len(shape.steps)
    timesteps = sub[D.TIMESTEP].values if D.TIMESTEP in sub.coords else [math.nan] * count
    experts = sub[D.EXPERT].values if D.EXPERT in sub.coords else [""] * count
    attrs = _provenance(sub)
    recorded = [
        {"index": int(sub[D.STEP].values[i]), "timestep": _num(timesteps[i])} for i in range(count)
    ]
    denoising = _num(attrs.get("num_steps"))
    real = str(attrs.get("source", "")) == "real"  # a clip's steps are only timesteps
    # the expert (Wan 2.2's two denoisers), where a run has more than one
    named = len({str(e) for e in experts}) > 1 or len(attrs.get("experts") or []) > 1
    steps = []
    for i in kept:
        at = recorded[i]
        expert = str(experts[i]) if named else ""
        label = step_label(i, count, at["index"], denoising, at["timestep"], expert, real=real)
        steps.append({**at, "position": int(i), "expert": str(experts[i]), "label": label})
    maps = xr.DataArray(arr, dims=["s", "l", "c", "h", "k", D.QUERY, D.KEY])
    metrics = np.stack(
        [
            diagonalness(maps).values,
            band_concentration(maps, k=1).values,
            row_entropy(maps).mean(D.QUERY).values,
        ],
        axis=-1,
    ).astype(np.float32)
    profiles = band_profile(maps).values.astype(np.float32)
    summary_map = arr[0, 0, [halves.index(D.COND)] if D.COND in halves else [0], 0].mean(
        axis=(0, 1)
    )
    return RunContent(
        key=key,
        source=source.label,
        run_id=run_id,
        attrs=attrs,
        frames=n,
        steps=steps,
        total_steps=len(shape.steps),
        layers=entries,
        total_layers=len(names),
        halves=halves,
        heads=heads,
        samples=shape.samples,
        maps=arr,
        profiles=profiles,
        metrics=metrics,
        summary={
            "diagonalness": float(diagonalness(summary_map)),
            "band_mass": float(band_concentration(summary_map, k=1)),
            "entropy": float(row_entropy(summary_map).mean()),
        },
        notes=notes,
        recorded=recorded,
        layer_names=names,
        layer_levels=levels,
        windows=windows,
    )


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _provenance(sub: xr.Dataset) -> dict[str, Any]:
    if D.PROVENANCE in sub.coords:
        try:
            return dict(json.loads(str(sub[D.PROVENANCE].values)))
        except ValueError:
            pass
    keys = (D.SOURCE, D.MODEL, D.PROMPT, D.SEED, D.FRAMES, D.VIDEO, D.PE, D.EDITS)
    return {k: sub[k].values.item() for k in keys if k in sub.coords}


# ---- videos and evaluations ---------------------------------------------------------------------

#: longest side of a video frame in the page, in pixels (larger videos are scaled down)
VIDEO_SIDE = 160


def find_video(source: Source, run_id: str, attrs: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    """The run's video ``[F, H, W, 3]`` uint8 and where it came from: the store's
    ``videos/<run_id>``, else (a real clip) its ``video_path`` at ``frame_indices`` or the
    world clip it names; None where there is none."""
    from attnlab.core.store import list_arrays, load_video

    if source.path is not None and run_id in list_arrays(source.path, "videos"):
        return load_video(source.path, run_id), f"videos/{run_id} of the store"
    indices = attrs.get("frame_indices")
    if not indices:
        return None
    indices = [int(i) for i in indices]
    name = str(attrs.get("video_path") or "")
    try:
        if name and Path(name).exists():
            from attnlab.data.video import read_video

            frames = read_video(name, source_fps=attrs.get("source_fps")).frames
            if max(indices) < len(frames):
                return frames[indices], name
            return None
        spec = str(attrs.get("video") or "")
        from attnlab.data.world import is_world_spec, world_video

        if is_world_spec(spec):
            return world_video(spec, frames=max(indices) + 1).frames[indices], spec
    except (OSError, ValueError) as err:  # an unreadable file: the page says so
        warnings.warn(
            f"run {run_id}: its video {name or attrs.get('video')} unreadable: {err}", stacklevel=2
        )
    return None


def video_strip(frames: np.ndarray, side: int = VIDEO_SIDE) -> tuple[bytes, str, int, int]:
    """The frames side by side in one image (PNG for small frames, else JPEG), scaled so that
    the longest side is at most ``side``: (bytes, mime type, frame width, frame height)."""
    from PIL import Image

    f, h, w, _ = frames.shape
    scale = min(1.0, side / max(h, w))
    fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
    strip = Image.new("RGB", (fw * f, fh))
    for i in range(f):
        img = Image.fromarray(np.ascontiguousarray(frames[i]))
        if (fw, fh) != (w, h):
            img = img.resize((fw, fh), Image.Resampling.LANCZOS)
        strip.paste(img, (i * fw, 0))
    buf = io.BytesIO()
    if max(fw, fh) <= 64:
        strip.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        strip.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    return buf.getvalue(), mime, fw, fh


def evaluations(source: Source) -> dict[str, dict[str, float]]:
    """The stored video metrics of each run of a store (scalars only; empty without any)."""
    from attnlab.core.store import list_arrays

    if source.path is None or not list_arrays(source.path, "evaluation"):
        return {}
    from attnlab.lab.evaluation import load_evaluation, scalar_table

    ids = [str(r) for r in source.ds[D.RUN].values]
    have = [r for r in ids if r in set(list_arrays(source.path, "evaluation"))]
    if not have:
        return {}
    table = scalar_table(load_evaluation(source.path, runs=have))
    out: dict[str, dict[str, float]] = {}
    for row in table.to_dict(orient="records"):
        rid = str(row.pop(D.RUN))
        out[rid] = {k: float(v) for k, v in row.items() if _num(v) is not None}
    return out


# ---- everything --------------------------------------------------------------------------------


@dataclass
class Content:
    """Everything a page shows: its runs and what was left out of them (each run's
    ``notes`` say what it lost)."""

    sources: list[Source]
    runs: list[RunContent]
    left_out: list[str]
    incomplete: dict[str, list[str]]
    #: whether the size limit left anything out
    limited: bool = False
    #: what the page shows as a mean of what was recorded (spatial grids, FreeNoise windows),
    #: one line each with the count of runs
    reduced: list[str] = field(default_factory=list)


def _run_strip(src: Source, rid: str) -> dict[str, Any] | None:
    """The page's strip of a run's video (:func:`find_video`); None when it has none."""
    attrs = _provenance(src.ds.sel({D.RUN: rid}))
    found = find_video(src, rid, attrs)
    if found is None:
        return None
    frames, origin = found
    data, mime, fw, fh = video_strip(frames)
    return {
        "data": data,
        "mime": mime,
        "width": fw,
        "height": fh,
        "frames": int(frames.shape[0]),
        "origin": origin,
        "fps": _num(attrs.get("fps")) or 8.0,
    }


def _strip_bytes(strip: dict[str, Any]) -> int:
    """Bytes of a video strip in the page (base64)."""
    return math.ceil(len(strip["data"]) * 4 / 3)


def collect(
    sources: Sequence[Source],
    budget: int,
    *,
    videos: bool = True,
    strips: dict[str, dict[str, Any] | None] | None = None,
    max_mb: float | None = None,
) -> Content:
    """Every run of ``sources`` with as much detail as fits in ``budget`` bytes with the
    videos (:func:`fit`); ``videos=False``: without them (the page says so, and each run
    whose video was left out says how to include it; ``max_mb``: the limit it names).
    ``strips``: the runs' video strips by page key, filled here where missing (a caller
    fitting several budgets decodes each video once)."""
    shapes: list[tuple[str, Source, str, RunShape, int]] = []
    for key, (i, rid) in run_keys(sources).items():
        src = sources[i]
        shape = run_shape(src.ds, rid)
        levels = (
            len(set(src.ds[D.LEVEL].values[shape.layers].tolist()))
            if D.LEVEL in src.ds.coords
            else 1
        )
        shapes.append((key, src, rid, shape, levels))
    every = {} if strips is None else strips
    for key, src, rid, _, _ in shapes:
        if key not in every:
            every[key] = _run_strip(src, rid)
    with_video = sum(every[key] is not None for key, *_ in shapes)
    shown: dict[str, dict[str, Any]] = {
        key: strip for key, *_ in shapes if videos and (strip := every[key]) is not None
    }
    video_bytes = sum(_strip_bytes(v) for v in shown.values())
    video_bytes += sum(_meta_bytes(src, rid, shape) for _, src, rid, shape, _ in shapes)
    left = budget - video_bytes
    most = max((len(s.steps) for _, _, _, s, _ in shapes), default=1)
    rungs = fit(detail_ladder(most), [(s, lv) for _, _, _, s, lv in shapes], left)
    ladder = detail_ladder(most)
    evals = {src.label: evaluations(src) for src in sources}
    all_video_mb = sum(_strip_bytes(v) for key, *_ in shapes if (v := every[key])) / 1e6
    runs = []
    for (key, src, rid, shape, _), rung in zip(shapes, rungs):
        content = build_run(key, src, rid, shape, ladder[rung])
        content.notes = ladder[rung].describe(shape) + content.notes
        content.evaluation = evals[src.label].get(rid, {})
        content.video = shown.get(key)
        if content.video is None:
            content.video_note = video_note(
                every[key] is not None, src.path is not None, all_video_mb, max_mb
            )
        elif content.video["frames"] > shape.frames and not shape.windows:
            content.latent = latent_rows(content.video["frames"], shape.frames)
        runs.append(content)
    incomplete = {}
    for src in sources:
        if src.path is not None:
            from attnlab.core.store import list_runs

            done = set(list_runs(src.path))
            rest = [r for r in list_runs(src.path, include_incomplete=True) if r not in done]
            if rest:
                incomplete[src.label] = rest
    lost: dict[str, int] = {}
    for (_, _, _, shape, _), rung in zip(shapes, rungs):
        for phrase in ladder[rung].describe(shape):
            lost[phrase] = lost.get(phrase, 0) + 1
    left_out = [f"{phrase}: in {n} of {len(shapes)} runs" for phrase, n in lost.items()]
    if with_video and not videos:
        left_out.append(
            f"the videos (they do not fit in the size limit): {with_video} runs have one"
        )
    for src in sources:  # variables the page does not show
        other = [v for v in (D.LOGITS, D.TEXT_MASS) if v in src.ds.data_vars]
        if other:
            left_out.append(f"{' and '.join(other)} of {src.label} (the page shows probs)")
    limited = bool(lost) or (with_video > 0 and not videos)
    reduced = []
    for what, count in (
        (
            "the maps of each position of the spatial grid (stores recorded with "
            "reduce='spatial'; the page shows their mean over the grid)",
            sum(s.spatial for _, _, _, s, _ in shapes),
        ),
        (
            "the maps of each window of frames of FreeNoise runs (the page shows their mean "
            "over the windows, frames counted within the window; each run names its windows)",
            sum(bool(s.windows) for _, _, _, s, _ in shapes),
        ),
    ):
        if count:
            reduced.append(f"{what}: in {count} of {len(shapes)} runs")
    return Content(list(sources), runs, left_out, incomplete, limited=limited, reduced=reduced)


def fit(ladder: list[Detail], shapes: list[tuple[RunShape, int]], budget: int) -> list[int]:
    """The rung of ``ladder`` of each run (shape, level count) so that their maps fit in
    ``budget`` bytes: while they do not, the runs that take the most bytes (all that take as
    many: runs alike stay alike) step down to their next rung that takes fewer; the largest
    runs give up detail first, small ones keep it. At the last rung a run stays. Then what is
    left free goes back, a rung at a time, to the smallest runs that fit it."""
    rungs = [0] * len(shapes)
    sizes = [run_bytes(s, lv, ladder[0]) for s, lv in shapes]
    while sum(sizes) > budget:
        movable = [i for i in range(len(shapes)) if rungs[i] < len(ladder) - 1]
        if not movable:
            break
        largest = max(sizes[i] for i in movable)
        for i in [i for i in movable if sizes[i] == largest]:
            shape, levels = shapes[i]
            while rungs[i] < len(ladder) - 1:
                rungs[i] += 1
                smaller = run_bytes(shape, levels, ladder[rungs[i]])
                if smaller < sizes[i]:
                    sizes[i] = smaller
                    break
    # what the last step left free goes back to the smallest runs (again alike together)
    changed = True
    while changed:
        changed = False
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (shape, levels) in enumerate(shapes):
            groups.setdefault((run_bytes(shape, levels, ladder[0]), rungs[i]), []).append(i)
        for members in sorted(groups.values(), key=lambda m: sizes[m[0]]):
            shape, levels = shapes[members[0]]
            up = rungs[members[0]] - 1
            while up >= 0 and run_bytes(shape, levels, ladder[up]) <= sizes[members[0]]:
                up -= 1
            if up < 0:
                continue
            bigger = run_bytes(shape, levels, ladder[up])
            if sum(sizes) + len(members) * (bigger - sizes[members[0]]) <= budget:
                for i in members:
                    rungs[i], sizes[i] = up, bigger
                changed = True
                break
    return rungs
