"""One entry point for every metric: :func:`evaluate` a video, a set of videos or a store.

- :func:`evaluate`         score with the chosen metrics; one Dataset along ``run``; a store's
                           results are written beside its runs and reused while unchanged
- :data:`METRICS`          every metric name; :data:`DEFAULT_METRICS` those that need no weights
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from attnlab.core import dims as D
from attnlab.lab.evaluation.attention import attention_measures
from attnlab.lab.evaluation.base import EvaluationError, _frames
from attnlab.lab.evaluation.clip import ClipScorer, clip_vl
from attnlab.lab.evaluation.clip import mtscore as _mtscore  # evaluate() has a parameter mtscore
from attnlab.lab.evaluation.flow import FARNEBACK, RAFT_WEIGHTS_ENV, load_raft
from attnlab.lab.evaluation.results import (
    _concat,
    _has_metric,
    _metric_vars,
    _same,
    _stored,
    _write,
    is_store,
)
from attnlab.lab.evaluation.vbench import (
    consistency,
    dynamic_degree,
    motion_smoothness,
    temporal_flickering,
)

__all__ = ["DEFAULT_METRICS", "METRICS", "VIDEO_METRICS", "evaluate"]

METRICS = (
    "dynamic_degree",
    "temporal_flickering",
    "motion_smoothness",
    "consistency",
    "clip_vl",
    "mtscore",
    "attention",
)
# what runs without any user-supplied weights (clip_vl and mtscore need them)
DEFAULT_METRICS = (
    "dynamic_degree",
    "temporal_flickering",
    "motion_smoothness",
    "consistency",
    "attention",
)
VIDEO_METRICS = tuple(m for m in METRICS if m != "attention")
#: the metrics that score a video against its prompt (the prompt is one of their settings)
TEXT_METRICS = ("clip_vl", "mtscore")


def _settings(metric: str, opts: dict[str, Any]) -> dict[str, Any]:
    """What changes a metric's values (stored with it; equal settings reuse stored results)."""
    flow = {"flow": opts["flow"]}
    if opts["flow"] == "raft":
        w = opts["raft_weights"] or os.environ.get(RAFT_WEIGHTS_ENV)
        flow["raft_weights"] = str(w)
    else:
        flow["farneback"] = {**FARNEBACK, **(opts["farneback"] or {})}
    if metric in ("dynamic_degree", "motion_smoothness"):
        return flow
    if metric == "consistency":
        b = opts["similarity"]
        if isinstance(b, str):
            return {"backend": b}
        settings = getattr(b, "settings", None)  # an instance: its settings change the values
        return {
            "backend": getattr(b, "name", repr(b)),
            **(settings() if callable(settings) else {}),
        }
    if metric == "clip_vl":
        return opts["clip"].settings() if opts.get("clip") else {}
    if metric == "mtscore":
        scorer = opts["mtscore"]
        return {"scorer": getattr(scorer, "__qualname__", type(scorer).__qualname__)}
    return {}


def _digest(frames: np.ndarray) -> str:
    h = hashlib.sha256(f"{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()[:16]


def _score_video(
    frames: np.ndarray, prompt: str | None, metrics: Sequence[str], opts: dict[str, Any], bar: Any
) -> xr.Dataset:
    flow_kw = dict(
        flow=opts["flow"],
        raft_weights=opts["raft_weights"],
        device=opts["device"],
        farneback=opts["farneback"],
    )
    parts = []
    for m in metrics:
        if m == "dynamic_degree":
            parts.append(dynamic_degree(frames, **flow_kw))
        elif m == "temporal_flickering":
            parts.append(temporal_flickering(frames))
        elif m == "motion_smoothness":
            parts.append(motion_smoothness(frames, **flow_kw))
        elif m == "consistency":
            parts.append(consistency(frames, opts["similarity"]))
        elif m == "clip_vl":
            parts.append(clip_vl(frames, prompt or "", opts["clip"]))
        elif m == "mtscore":
            parts.append(_mtscore(frames, prompt, opts["mtscore"]))
        if bar is not None:
            bar.update(1)
    return xr.merge(parts, combine_attrs="drop_conflicts") if parts else xr.Dataset()


def _check_metrics(metrics: Iterable[str] | str | None) -> list[str]:
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        raise EvaluationError(f"metrics is empty; give one or more of {', '.join(METRICS)}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise EvaluationError(f"unknown metrics {bad}; available: {', '.join(METRICS)}")
    return metrics


def evaluate(
    video_or_store: Any,
    prompt: str | None = None,
    metrics: Iterable[str] | str | None = None,
    *,
    name: str | None = None,
    runs: Iterable[str] | None = None,
    store: str | os.PathLike | None = None,
    write: bool = True,
    overwrite: bool = False,
    flow: str = "farneback",
    raft_weights: str | os.PathLike | None = None,
    farneback: Mapping[str, Any] | None = None,
    similarity: Any = "stlpips",
    clip_checkpoint: str | os.PathLike | None = None,
    clip_model: str | None = None,
    mtscore: Callable[..., float] | None = None,
    reference: str | os.PathLike | xr.DataArray | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """Score videos with the metrics of this module; one Dataset along ``run``.

    ``video_or_store``:

    - an attnlab store (``.zarr`` folder): every video under ``videos/`` and every run under
      ``runs/`` (or only ``runs=[...]``), joined by run id (a video's name is its run id).
      Video metrics need a stored video; ``"attention"`` needs a recorded run. Results go to
      ``evaluation/<run_id>`` in the same store (``write=False`` to skip); runs whose stored
      results were computed with the same settings are read back, not recomputed, unless
      ``overwrite=True``. CLIP-VL uses each run's own prompt unless ``prompt`` is given.
    - one video: a file, frame folder or sample name (read as is), a
      :class:`attnlab.data.video.Video`, or frames (``(F, H, W, 3)`` uint8, float in [0, 1] or
      [-1, 1]). Its run id is ``name`` (default the clip id or ``"video"``); with
      ``store=`` the results are written into that existing store.
    - a mapping ``{run id: video}``.

    ``metrics``: names from :data:`METRICS` (default :data:`DEFAULT_METRICS`, which need no
    user-supplied weights). ``flow``: ``"farneback"`` or ``"raft"`` (with ``raft_weights``);
    ``similarity``: backend for ``consistency``; ``clip_checkpoint``/``clip_model``: see
    :class:`ClipScorer`; ``mtscore``: the scorer callable (see :func:`mtscore`);
    ``reference``: for ``attention`` (see :func:`attention_measures`).

    Args:
        video_or_store: an attnlab store path, one video (file, frame folder, sample name,
            ``Video``, ``(F, H, W, 3)`` array / tensor / DataArray) or ``{run id: video}``;
            every video needs at least 2 frames.
        prompt (``str | None``, default None): the text of ``clip_vl`` and ``mtscore``; for a
            store it replaces every run's own prompt.
        metrics (``Iterable[str] | str | None``, default None): names from :data:`METRICS`:
            ``"dynamic_degree"``, ``"temporal_flickering"``, ``"motion_smoothness"``,
            ``"consistency"``, ``"clip_vl"``, ``"mtscore"``, ``"attention"``; None:
            :data:`DEFAULT_METRICS` (all but ``clip_vl`` and ``mtscore``).
        name (``str | None``, default None): run id of a single video (ignored for stores and
            mappings).
        runs (``Iterable[str] | None``, default None): with a store, the run / video ids to
            score; None: all complete runs and every stored video.
        store (``str | os.PathLike | None``, default None): an existing attnlab store to write
            the results of a video or mapping into (a store input writes into itself).
        write (``bool``, default True): write new results to ``evaluation/<run_id>``.
        overwrite (``bool``, default False): recompute results already stored with the same
            settings.
        flow (``str``, default ``"farneback"``): optical flow of ``dynamic_degree`` and
            ``motion_smoothness``: ``"farneback"`` or ``"raft"``.
        raft_weights (``str | os.PathLike | None``, default None): torchvision RAFT weights
            file (else ``$ATTNLAB_RAFT_WEIGHTS``), for ``flow="raft"``.
        farneback (``Mapping | None``, default None): overrides of the Farneback settings
            (``attnlab.lab.evaluation.FARNEBACK``).
        similarity (default ``"stlpips"``): backend of ``consistency``: a name
            (``"stlpips"``, ``"dreamsim"``, ``"pixel"``) or a backend instance.
        clip_checkpoint (``str | os.PathLike | None``, default None): local open_clip
            checkpoint for ``clip_vl`` (else ``$ATTNLAB_CLIP_CHECKPOINT``).
        clip_model (``str | None``, default None): open_clip architecture of a single weights
            file, e.g. ``"ViT-B-32"`` (else ``$ATTNLAB_CLIP_MODEL``).
        mtscore (``Callable[..., float] | None``, default None): ``scorer(frames, prompt) ->
            float``, frames ``(F, H, W, 3)`` uint8; required by the ``mtscore`` metric.
        reference (``str | os.PathLike | xr.DataArray | None``, default None): the real
            reference of ``attention_distance_to_real``: a store with real runs or a
            ``(query_frame, key_frame)`` map; None: the real runs of the store itself.
        device (``str | torch.device``, default ``"cpu"``): device of RAFT and CLIP.
        progress (``bool``, default True): show a progress bar.

    Returns:
        :class:`xarray.Dataset` along ``run`` (run ids; a single video: ``name``, its clip id
        or ``"video"``), NaN-padded across runs of different lengths, with coordinate
        ``prompt`` ``(run,)``, attribute ``metrics`` and, per metric, the variables
        (``docs/evaluation.md``):

        - ``dynamic_degree``: ``flow_magnitude`` ``(run, frame_pair)`` in px,
          ``flow_magnitude_mean``, ``dynamic_degree`` (0/1), ``dynamic_pairs``,
          ``dynamic_threshold`` (px), ``dynamic_count`` ``(run,)``;
        - ``temporal_flickering``: ``frame_difference`` ``(run, frame_pair)`` (0-255),
          ``temporal_flickering`` ``(run,)``;
        - ``motion_smoothness``: ``interpolation_error`` ``(run, frame)`` (odd frames; NaN
          elsewhere), ``motion_smoothness`` ``(run,)``;
        - ``consistency``: ``consistency_to_first``, ``consistency_to_previous``
          ``(run, frame)``, ``similarity_by_offset`` ``(run, offset)``, ``consistency``
          ``(run,)``;
        - ``clip_vl``: ``clip_vl_frame`` ``(run, frame)``, ``clip_vl`` ``(run,)``;
        - ``mtscore``: ``mtscore`` ``(run,)``;
        - ``attention``: ``attention_band_concentration``, ``attention_diagonalness`` and,
          when there is a real reference, ``attention_distance_to_real`` ``(run,)``.

        A run without a stored video has no video variables; a video without a recorded run
        no ``attention`` variables (NaN after the join).

    Raises:
        EvaluationError: an unknown or empty metric list, ``flow`` not ``"farneback"`` /
            ``"raft"``, ``runs`` naming no run or video of the store, ``store=`` that is not
            an existing attnlab store, an input that is not a video (or under 2 frames),
            ``metrics=["attention"]`` without recorded runs, or ``mtscore`` requested
            without a scorer (``MTScoreUnavailableError``).
        RaftWeightsError: ``flow="raft"`` without a readable weights file.
        ClipWeightsError: ``clip_vl`` without a complete local CLIP checkpoint.
        FileNotFoundError: a single video given by a name that is no file, frame folder,
            sample clip or world clip.

    Example::

        ds = attnlab.evaluate("run.zarr")   # every run and video of a store, default metrics
        ds = attnlab.evaluate(frames, prompt="a peony blooming",
                              metrics=["dynamic_degree", "temporal_flickering"], progress=False)
        ds.flow_magnitude.dims              # ('run', 'frame_pair')
        float(ds.dynamic_degree.sel(run="video"))
        ds = attnlab.evaluate({"tar": video_a, "base": video_b}, metrics="consistency")
    """
    metrics = _check_metrics(metrics)
    opts: dict[str, Any] = dict(
        flow=flow,
        raft_weights=raft_weights,
        farneback=dict(farneback or {}),
        similarity=similarity,
        mtscore=mtscore,
        device=device,
        clip=None,
    )
    if flow not in ("farneback", "raft"):
        raise EvaluationError(f"flow must be 'farneback' or 'raft', got {flow!r}")
    if flow == "raft" and any(m in metrics for m in ("dynamic_degree", "motion_smoothness")):
        load_raft(raft_weights, device)  # a missing file fails before any work
    if "clip_vl" in metrics:
        opts["clip"] = ClipScorer(clip_checkpoint, clip_model, device)
    if "mtscore" in metrics and mtscore is None:
        _mtscore(np.zeros((2, 1, 1, 3), np.uint8), None, None)  # raises the one clear error

    videos: dict[str, Callable[[], Any]]
    prompts: dict[str, str | None] = {}
    store_path: Path | None = None
    run_ids: list[str] = []
    if is_store(video_or_store):
        from attnlab.core.store import list_arrays, list_runs, load_video, open_run

        store_path = Path(video_or_store)
        run_ids = list_runs(store_path)
        names = list_arrays(store_path, "videos")
        if runs is not None:
            wanted = list(runs)
            missing = sorted(set(wanted) - set(run_ids) - set(names))
            if missing:
                raise EvaluationError(f"{store_path} has no run or video named {missing}")
            run_ids = [r for r in run_ids if r in wanted]
            names = [v for v in names if v in wanted]
        ids = list(dict.fromkeys([*run_ids, *names]))
        videos = {v: (lambda v=v: load_video(store_path, v)) for v in names}
        for r in run_ids:
            prompts[r] = open_run(store_path, r).attrs.get("prompt")
        if prompt is not None:
            prompts = dict.fromkeys(ids, prompt)
    else:
        if store is not None:
            store_path = Path(store)
            if not is_store(store_path):
                raise EvaluationError(f"store={store_path} is not an existing attnlab store")
        if isinstance(video_or_store, Mapping):
            given = dict(video_or_store)
        else:
            vid, rid = _read_input(video_or_store)
            given = {name or rid: vid}
        videos = {k: (lambda v=v: v) for k, v in given.items()}
        ids = list(videos)
        prompts = dict.fromkeys(ids, prompt)
    if "attention" in metrics and not run_ids and len(metrics) == 1:
        raise EvaluationError(
            "metric 'attention' needs recorded runs: pass an attnlab store that holds runs"
        )
    video_metrics = [m for m in metrics if m in VIDEO_METRICS]
    settings = {m: _settings(m, opts) for m in metrics}

    from tqdm.auto import tqdm

    with_video = [r for r in ids if r in videos]
    total = len(with_video) * len(video_metrics) + int("attention" in metrics and bool(run_ids))
    bar = tqdm(total=total, desc="evaluate", unit="metric", disable=not progress)
    per_run: dict[str, tuple[xr.Dataset, list[str]]] = {}
    own_settings: dict[str, dict[str, Any]] = {}  # per run (the text metrics: with its prompt)
    try:
        for rid in ids:
            bar.set_postfix_str(rid[-30:])
            frames = _frames(videos[rid]()) if rid in videos else None
            stored = _stored(store_path, rid) if store_path is not None and not overwrite else None
            if (
                stored is not None
                and frames is not None
                and stored.attrs.get("frames_sha256") != _digest(frames)
            ):
                stored = None  # the stored video changed since it was scored: score it again
            todo, reused = [], []
            # the text metrics score the video against its prompt: the prompt is a setting
            own = own_settings[rid] = {
                m: {**settings[m], "prompt": prompts.get(rid)} if m in TEXT_METRICS else settings[m]
                for m in metrics
            }
            for m in video_metrics if rid in videos else []:
                if stored is not None and _same(stored, m, own[m]):
                    reused.append(m)
                    bar.update(1)
                else:
                    todo.append(m)
            ds = _score_video(frames, prompts.get(rid), todo, opts, bar) if todo else xr.Dataset()
            if reused:
                keep = [v for v in stored.data_vars if stored[v].attrs.get("metric") in reused]
                ds = xr.merge([ds, stored[keep]], combine_attrs="drop_conflicts")
            for m in todo:
                for v in _metric_vars(m, ds):
                    ds[v].attrs["metric"] = m
            if rid in videos:
                ds.attrs.update({"frames": len(frames), "frames_sha256": _digest(frames)})
            per_run[rid] = (ds, todo)
        if "attention" in metrics and run_ids:
            att = attention_measures(store_path, run_ids, reference=reference)
            for rid in run_ids:
                ds, todo = per_run[rid]
                row = att.sel({D.RUN: rid}).drop_vars(D.RUN)
                for v in row.data_vars:
                    row[v].attrs["metric"] = "attention"
                per_run[rid] = (
                    xr.merge([ds, row], combine_attrs="drop_conflicts"),
                    [*todo, "attention"],
                )
            bar.update(1)
    finally:
        bar.close()

    for rid, (ds, todo) in per_run.items():
        ds.attrs["prompt"] = prompts.get(rid) or ""
        ds.attrs["metric_settings"] = json.dumps(
            {
                m: own_settings.get(rid, settings)[m]
                for m in metrics
                if m in todo or _has_metric(ds, m)
            },
            default=str,
        )
        if store_path is not None and write and todo:
            _write(store_path, rid, ds, {m: own_settings[rid][m] for m in todo})
    out = _concat({rid: ds for rid, (ds, _) in per_run.items()})
    out.attrs["metrics"] = list(metrics)
    return out


def _read_input(obj: Any) -> tuple[Any, str]:
    from attnlab.data.video import Video

    if isinstance(obj, Video):
        return obj, obj.id
    if isinstance(obj, (str, os.PathLike)):
        from attnlab.data.video import read_video
        from attnlab.lab.real import load_clip

        p = Path(obj)
        if p.exists():
            v = read_video(p)
        else:
            v = load_clip(str(obj), frames=None, fps=None)
        return v, v.id
    if isinstance(obj, (np.ndarray, torch.Tensor, xr.DataArray)):
        return obj, "video"
    raise EvaluationError(
        f"cannot evaluate a {type(obj).__name__}: pass an attnlab store, a video file or frame "
        "folder, a Video, frames (F, H, W, 3) as an array, tensor or DataArray, or a mapping of "
        "run id -> video"
    )
