"""Evaluation results in a store: the ``evaluation/<run_id>`` groups beside the runs.

- :func:`load_evaluation`  the stored results of a store along ``run``
- :func:`scalar_table`     the per-run scalars of an evaluation as a DataFrame
- :func:`is_store`         whether a path is an attnlab store (rather than a video)
- ``_stored``, ``_write``, ``_same``, ``_concat``  read, merge-write, compare settings, join runs
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from attnlab.core import dims as D
from attnlab.core.store import checksum_encoding, write_group

__all__ = ["EVALUATION_GROUP", "is_store", "load_evaluation", "scalar_table"]

EVALUATION_GROUP = "evaluation"


def is_store(obj: Any) -> bool:
    """Whether ``obj`` names an existing zarr group (an attnlab store) rather than a video."""
    if not isinstance(obj, (str, os.PathLike)):
        return False
    p = Path(obj)
    return p.is_dir() and (p / "zarr.json").is_file()


_METRIC_VARS = {
    "dynamic_degree": (
        "flow_magnitude",
        "flow_magnitude_mean",
        "dynamic_degree",
        "dynamic_pairs",
        "dynamic_threshold",
        "dynamic_count",
    ),
    "temporal_flickering": ("frame_difference", "temporal_flickering"),
    "motion_smoothness": ("interpolation_error", "motion_smoothness"),
    "consistency": (
        "consistency_to_first",
        "consistency_to_previous",
        "consistency",
        "similarity_by_offset",
    ),
    "clip_vl": ("clip_vl_frame", "clip_vl"),
    "mtscore": ("mtscore",),
}


def _metric_vars(metric: str, ds: xr.Dataset) -> list[str]:
    return [v for v in _METRIC_VARS.get(metric, ()) if v in ds]


def _has_metric(ds: xr.Dataset, metric: str) -> bool:
    return any(ds[v].attrs.get("metric") == metric for v in ds.data_vars)


def _run_group(rid: str) -> str:
    return f"{EVALUATION_GROUP}/{rid}"


def _stored(path: Path, rid: str) -> xr.Dataset | None:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        if EVALUATION_GROUP not in root or rid not in root[EVALUATION_GROUP]:
            return None
        return xr.open_zarr(
            path, group=_run_group(rid), consolidated=False, zarr_format=3, chunks=None
        ).load()
    except Exception:
        return None


def _same(stored: xr.Dataset, metric: str, settings: dict[str, Any]) -> bool:
    if not _has_metric(stored, metric):
        return False
    saved = json.loads(stored.attrs.get("metric_settings", "{}"))
    return json.loads(json.dumps(settings, default=str)) == saved.get(metric)


def _write(path: Path, rid: str, ds: xr.Dataset, new_settings: dict[str, Any]) -> None:
    """Merge ``ds`` into ``evaluation/<rid>`` (variables of re-run metrics are replaced)."""
    old = _stored(path, rid)
    new_sha = ds.attrs.get("frames_sha256")
    if old is not None and new_sha and old.attrs.get("frames_sha256") not in (None, "", new_sha):
        old = None  # the video changed: none of its earlier scores hold for it
    settings = json.loads(old.attrs.get("metric_settings", "{}")) if old is not None else {}
    if old is not None:
        stale = [v for v in old.data_vars if v in ds.data_vars]
        keep = old.drop_vars(stale)
        keep = keep.drop_vars([c for c in keep.coords if c in ds.coords], errors="ignore")
        # the new scores' attributes (frames, their digest, prompt) over the old ones
        ds = xr.merge([keep, ds], combine_attrs="drop").assign_attrs({**old.attrs, **ds.attrs})
    settings.update(json.loads(json.dumps(new_settings, default=str)))
    attrs = {
        "run_id": rid,
        "prompt": str(ds.attrs.get("prompt", "")),
        "frames": int(ds.attrs.get("frames", 0)),
        "frames_sha256": str(ds.attrs.get("frames_sha256", "")),
        "metric_settings": json.dumps(settings, default=str),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from attnlab._version import __version__

    attrs["attnlab_version"] = __version__
    ds = ds.assign_attrs(attrs)
    for v in ds.data_vars:
        ds[v].attrs = {
            k: (a if isinstance(a, (str, int, float)) else json.dumps(a))
            for k, a in ds[v].attrs.items()
        }
    write_group(ds, path, _run_group(rid), mode="w", encoding=checksum_encoding(ds))


def _concat(parts: Mapping[str, xr.Dataset]) -> xr.Dataset:
    if not parts:
        return xr.Dataset(coords={D.RUN: np.array([], dtype=str)})
    prepared = []
    for rid, ds in parts.items():
        prompt = str(ds.attrs.get("prompt", ""))
        prepared.append(ds.expand_dims({D.RUN: [rid]}).assign_coords({D.PROMPT: (D.RUN, [prompt])}))
    out = xr.concat(
        prepared,
        dim=D.RUN,
        join="outer",
        data_vars="all",
        coords="different",
        compat="equals",
        combine_attrs="drop",
    )
    for ds in parts.values():  # variable attrs (units, metric) survive the concatenation
        for v in ds.data_vars:
            if v in out and not out[v].attrs:
                out[v].attrs = dict(ds[v].attrs)
    return out


def load_evaluation(path: str | os.PathLike, runs: Iterable[str] | None = None) -> xr.Dataset:
    """The stored evaluation results of a store (``evaluation/<run_id>``) along ``run``."""
    from attnlab.core.store import StoreError, list_arrays

    path = Path(path)
    if not is_store(path):
        raise StoreError(f"no attnlab store at {path}")
    have = list_arrays(path, EVALUATION_GROUP)
    wanted = have if runs is None else list(runs)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise StoreError(f"{path} holds no evaluation of {missing}; run attnlab.evaluate first")
    if not wanted:
        raise StoreError(f"{path} holds no evaluation results; run attnlab.evaluate first")
    return _concat({r: _stored(path, r) for r in wanted})


def scalar_table(ds: xr.Dataset) -> Any:
    """The per-run scalars of an evaluation (variables with dims ``(run,)``) as a DataFrame."""
    import pandas as pd

    names = [v for v in ds.data_vars if ds[v].dims == (D.RUN,)]
    df = pd.DataFrame(
        {v: ds[v].values for v in names}, index=pd.Index(ds[D.RUN].values, name=D.RUN)
    )
    return df.reset_index()
