"""The paper's experiments: generation under edits, recorded into zarr stores, and the figures.

Each experiment has ``run(ctx)`` (generates and records what is missing from its store: every
job has a fixed run name, so re-running skips stored work and never loads the model when
nothing is missing) and ``draw(ctx)`` (figures from the store only). The scripts in
``analyses/`` run them; ``attnlab figures --all`` redraws every figure from the stores.
Stores: ``<data>/<model>/<experiment>.zarr``; figures: ``<figures>/<model>/<name>.png|pdf``.

- :class:`GenerationSettings`, :func:`generate_recorded`: one generation, edited and recorded
- :func:`run_probes`: Fig. 4 on any pipeline (``attnlab probe``); :data:`LEVEL_SETS`,
  :func:`probe_jobs`, :func:`parse_level_sets`, :func:`level_set_label`
- :class:`Context`: the settings of one invocation (model, stores, frames, steps, real clip)
- ``run_*`` / ``draw_*``: one pair per figure (maps, probes, transfer, sigma, models,
  similarity, prior), gathered in :data:`EXPERIMENTS`; Fig. 4's runner is
  :func:`run_probe_experiment` (the jobs of :func:`probe_jobs` under fixed run names)
- :func:`run_experiment`, :func:`draw_all`: run and draw one experiment, redraw them all
- :func:`video_metrics`, :func:`frame_change`, :func:`detail`: the numbers beside the figures
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from attnlab.core import dims as D
from attnlab.core.api import edit, record
from attnlab.core.joint_sites import JointSiteTable
from attnlab.core.store import (
    StoreError,
    list_arrays,
    list_runs,
    load,
    load_similarity,
    load_video,
    save_similarity,
    save_video,
)
from attnlab.edits import PRESETS, TAR, Edit, Replace, Transfer, preset_sigma
from attnlab.models.loading import DEFAULT_MODEL, generate
from attnlab.models.organisms import TRAIN_FRAMES

#: experiment runs' guidance unless told (analyses/data's runs, and all stored before it was kept)
GUIDANCE = 7.5


@dataclass
class GenerationSettings:
    """Everything that defines one generation apart from the edits."""

    prompt: str = "a polar bear playing drums in Times Square"
    frames: int = 16
    steps: int = 25
    seed: int = 0
    height: int | None = None
    width: int | None = None
    guidance: float | None = GUIDANCE  # None: the pipeline's own default
    negative_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~attnlab.models.loading.generate` (all but the prompt)."""
        names = ("frames", "steps", "seed", "height", "width", "guidance", "negative_prompt")
        return {**{k: getattr(self, k) for k in names}, **self.extra}


def generate_recorded(
    pipe: Any,
    settings: GenerationSettings,
    edits: Sequence[Edit] = (),
    *,
    store: str | os.PathLike | None = None,
    record_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Generate one video under ``edits``; record it into ``store`` if given. Returns (video, run id)."""
    with contextlib.ExitStack() as stack:
        rec = None
        if store is not None:
            rec = stack.enter_context(record(pipe, store=store, name=name, **(record_kwargs or {})))
        if edits:
            stack.enter_context(edit(pipe, *edits))
        video = generate(pipe, settings.prompt, **settings.kwargs())
    run_id = rec.runs[-1].id if rec is not None and rec.runs else None
    return video, run_id


def level_set_label(levels: Sequence[int]) -> str:
    return "+".join(str(v) for v in levels)


def parse_level_sets(tokens: Sequence[str]) -> list[list[int]]:
    """``["0", "1", "0,1"]`` -> ``[[0], [1], [0, 1]]``."""
    out = []
    for t in tokens:
        try:
            out.append(sorted({int(v) for v in str(t).replace("+", ",").split(",") if v}))
        except ValueError:
            raise ValueError(f"bad level set {t!r}: expected e.g. '0' or '0,1'") from None
    return out


#: the replacement matrices of Fig. 4: I_N (frames independent) and J_N / N (frames averaged)
PROBE_KINDS = ("identity", "ones")
#: the level sets of Fig. 4, one probe per kind and set
LEVEL_SETS = ((0,), (1,), (2,), (3,), (0, 1))


def probe_jobs(
    kinds: Sequence[str] = PROBE_KINDS, level_sets: Sequence[Sequence[int]] = LEVEL_SETS
) -> list[tuple[str, str, list[Edit]]]:
    """Fig. 4's generations in order: ``("baseline", "", [])``, then ``(kind, label,
    [Replace(kind, levels)])`` per kind and level set (``label`` from :func:`level_set_label`)."""
    jobs: list[tuple[str, str, list[Edit]]] = [("baseline", "", [])]
    jobs += [
        (k, level_set_label(ls), [Replace(k, levels=list(ls))]) for k in kinds for ls in level_sets
    ]
    return jobs


def probe_run_name(kind: str, label: str) -> str:
    """A probe's run name in the analysis store: ``baseline``, ``identity-0``, ``ones-0+1``."""
    return "baseline" if kind == "baseline" else f"{kind}-{label}"


def run_probes(
    pipe: Any,
    settings: GenerationSettings,
    *,
    kinds: Sequence[str] = PROBE_KINDS,
    level_sets: Sequence[Sequence[int]] = LEVEL_SETS,
    store: str | os.PathLike | None = None,
    videos_dir: str | os.PathLike | None = None,
    record_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Paper Fig. 4: one video per (probe kind, level set), plus the unedited baseline.

    Returns ``{"baseline": video, "videos": {(kind, label): video}, "runs": {key: run id}}``.
    """
    jobs = probe_jobs(kinds, level_sets)
    videos: dict[tuple[str, str], torch.Tensor] = {}
    runs: dict[tuple[str, str], str | None] = {}
    baseline = None
    for kind, label, edits in tqdm(jobs, desc="probes", unit="video"):
        video, run_id = generate_recorded(
            pipe, settings, edits, store=store, record_kwargs=record_kwargs
        )
        if videos_dir is not None:
            from attnlab.data.video import write_video

            name = "baseline" if kind == "baseline" else f"{kind}_levels{label}"
            write_video(video, Path(videos_dir) / f"{name}.gif", fps=8)
        if kind == "baseline":
            baseline = video
        else:
            videos[(kind, label)] = video
        runs[(kind, label)] = run_id
    return {"baseline": baseline, "videos": videos, "runs": runs}


# real clip (Debian opencv-doc, fetched on first use), held out from the organisms' training
REFERENCE_CLIP = "cup"
# a caption of the procedural world the organisms were trained on (attnlab.data.world)
ORGANISM_PROMPT = "a red circle moving to the right on a black background"
SIMILARITY_BACKEND = "stlpips"  # offline, real weights (DreamSim needs user-supplied weights)


@dataclass
class Context:
    """Settings shared by the experiments of one invocation."""

    model: str = DEFAULT_MODEL
    data: Path = Path("analyses/data")
    figures: Path = Path("figures")
    frames: tuple[int, int] = (16, 48)
    steps: int = 25
    height: int = 64  # the organisms are 32 x 32: their runs pass height=width=32
    width: int = 64
    prompt: str | None = None  # None: a caption the organisms know, else the paper's example
    seed: int = 0
    guidance: float | None = GUIDANCE  # None: each model's own (its pipeline's default)
    device: str | None = None
    models: tuple[str, ...] = ("organism-none", "organism-sinusoidal", "organism-rope")
    # the real clip of the maps, similarity and transfer runs (None: default_reference)
    reference: str | None = None
    log: Callable[[str], None] = print
    _pipes: dict[str, Any] = field(default_factory=dict, repr=False)

    def slug(self, model: str | None = None) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", (model or self.model).strip("/")).strip("_")[-60:]

    def store(self, experiment: str) -> Path:
        path = Path(self.data) / self.slug() / f"{experiment}.zarr"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def figure(self, name: str) -> Path:
        return Path(self.figures) / self.slug() / name

    def pipe(self, model: str | None = None):
        model = model or self.model
        if model not in self._pipes:
            from attnlab.models.loading import default_device, load_pipeline

            self._pipes[model] = load_pipeline(
                model, device=self.device or default_device(), progress=False
            )
        return self._pipes[model]

    def real_clip(self) -> str:
        """The real clip of this context: ``reference`` or :func:`default_reference`."""
        return self.reference or default_reference(self.model, self.prompt)

    def settings(self, frames: int, **kw: Any) -> GenerationSettings:
        return GenerationSettings(
            prompt=kw.pop("prompt", self.prompt or default_prompt(self.model)),
            frames=frames,
            steps=self.steps,
            seed=self.seed,
            guidance=self.guidance,
            height=self.height,
            width=self.width,
            **kw,
        )


def default_prompt(model: str) -> str:
    """A training caption for attnlab's organisms (they know little else); the paper's example
    prompt for every other model."""
    if str(model).startswith("organism-"):
        return ORGANISM_PROMPT
    return "a polar bear playing drums in Times Square"


def default_reference(model: str, prompt: str | None = None) -> str:
    """The real clip an experiment compares ``model`` with: for the organisms a clip of their
    own world showing the prompt's caption (``"world:<caption>"``: in their training
    distribution, any length); for every other model the natural sample clip ``cup``."""
    if not str(model).startswith("organism-"):
        return REFERENCE_CLIP
    from attnlab.data.world import parse_caption

    caption = prompt or ORGANISM_PROMPT
    try:
        parse_caption(caption)
    except ValueError:
        caption = ORGANISM_PROMPT
    return f"world:{caption}"


def _done(store: Path) -> set[str]:
    try:
        return set(list_runs(store))
    except StoreError:
        return set()


#: provenance key of the settings an experiment made a run with (a re-run reuses a run only
#: when they are the same)
SETTINGS_KEY = "experiment_settings"


def _fingerprint(ctx: Context, model: str | None, **what: Any) -> str:
    """The settings that make a run of an experiment, as sorted JSON."""
    model = model or ctx.model
    base = {
        "model": model,
        "prompt": ctx.prompt or default_prompt(model),
        "steps": ctx.steps,
        "seed": ctx.seed,
        "height": ctx.height,
        "width": ctx.width,
    }
    return json.dumps({**base, **what}, sort_keys=True, default=str)


def _generation_fingerprint(ctx: Context, model: str | None, **what: Any) -> str:
    """The fingerprint of a generated run: :func:`_fingerprint` with its guidance."""
    guidance = ctx.guidance if ctx.guidance is not None else "the model's default"
    return _fingerprint(ctx, model, guidance=guidance, **what)


def _setting_differences(have: str, settings: str) -> str:
    """What differs between a stored run's settings and these, in words ("" if nothing); a
    generated run stored before guidance was part of its settings was made at :data:`GUIDANCE`."""
    old, new = json.loads(have), json.loads(settings)
    if "guidance" in new:  # (only a generated run's settings name it)
        old.setdefault("guidance", GUIDANCE)
    return ", ".join(
        f"{k} {old.get(k)!r} (now {new.get(k)!r})"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    )


def _reuse(ctx: Context, stores: Sequence[Path], name: str, settings: str) -> bool:
    """Whether run ``name`` is stored already with ``settings`` (then it is reused). Stored
    with other settings is an error: a re-run into the same folder with other settings would
    otherwise mix the old runs into the new figures."""
    for store in stores:
        if name not in _done(store):
            continue
        from attnlab.core.store import open_run

        have = open_run(store, name).attrs.get(SETTINGS_KEY)
        if have is None:
            ctx.log(f"  {name}: stored (its settings were not kept then: not checked), skipped")
            return True
        diff = _setting_differences(have, settings)
        if diff:
            raise ValueError(
                f"{store} holds run {name!r} made with other settings: {diff}; write to "
                f"another folder, or remove {store} to make it anew"
            )
        ctx.log(f"  {name}: stored, skipped")
        return True
    return False


def _synthetic(
    ctx: Context,
    store: Path,
    name: str,
    frames: int,
    edits=(),
    model: str | None = None,
    settings: str | None = None,
) -> None:
    """``settings``: the run's fingerprint (default: these frames and edits)."""
    specs = [e.spec() for e in edits]
    settings = settings or _generation_fingerprint(ctx, model, frames=frames, edits=specs)
    if _reuse(ctx, [store], name, settings):
        return
    t0 = time.time()
    prompt = ctx.prompt or default_prompt(model or ctx.model)
    video, _ = generate_recorded(
        ctx.pipe(model), ctx.settings(frames, prompt=prompt), edits, store=store, name=name,
        record_kwargs={"meta": {SETTINGS_KEY: settings}},
    )  # fmt: skip
    save_video(store, name, video)
    ctx.log(f"  {name}: {frames} frames in {time.time() - t0:.1f} s")


def _real(ctx: Context, store: Path, name: str, frames: int, timesteps=(600, 400, 200)) -> None:
    settings = _fingerprint(
        ctx, None, frames=frames, clip=ctx.real_clip(), timesteps=list(timesteps), prompt=None
    )
    if _reuse(ctx, [store], name, settings):
        return
    from attnlab.lab.real import load_clip, record_real

    clip = load_clip(ctx.real_clip(), frames=frames, fps=8.0, if_short="spread")
    record_real(
        ctx.pipe(),
        clip,
        frames=frames,
        height=ctx.height,
        width=ctx.width,
        timesteps=timesteps,
        seed=ctx.seed,
        name=name,
        progress=False,
        store=store,
        meta={SETTINGS_KEY: settings},
    )
    save_video(store, name, clip.frames)
    ctx.log(f"  {name}: real clip {clip.id}, {frames} frames, t = {list(timesteps)}")


def video_metrics(
    store: Path, metrics: tuple[str, ...] = ("dynamic_degree", "temporal_flickering")
) -> xr.Dataset:
    """VBench-style video metrics of every video in ``store``
    (:func:`attnlab.lab.evaluation.evaluate`).

    Results are written beside the runs (``evaluation/<run>``) and reused on the next call;
    consistency uses the analyses' offline similarity backend."""
    from attnlab.lab.evaluation import evaluate

    return evaluate(store, metrics=list(metrics), similarity=SIMILARITY_BACKEND, progress=False)


def _scalars(ev: xr.Dataset, rid: str, names: tuple[str, ...]) -> dict[str, float]:
    return {n: float(ev[n].sel({D.RUN: rid})) for n in names if n in ev}


DYNAMICS = ("flow_magnitude_mean", "dynamic_degree", "dynamic_pairs", "temporal_flickering")


def _run_ids(ds: xr.Dataset, prefix: str) -> list[str]:
    return [str(r) for r in ds[D.RUN].values if str(r).startswith(prefix)]


# ---- Fig. 3: real vs synthetic maps, with and without TAR ---------------------------------
def run_maps(ctx: Context) -> None:
    store = ctx.store("maps")
    for n in ctx.frames:
        _real(ctx, store, f"real-f{n}", n)
        _synthetic(ctx, store, f"synthetic-f{n}", n)
        _synthetic(ctx, store, f"tar-f{n}", n, [TAR()])


def draw_maps(ctx: Context) -> list[Path]:
    from attnlab.data.metrics import band_concentration, diagonalness
    from attnlab.lab.plots import fig_attention_maps, fig_band_profile, save_figure

    ds = load(ctx.store("maps"))
    probs = ds[D.PROBS]
    paths = save_figure(
        fig_attention_maps(
            probs, title=f"{ctx.model}: temporal attention (mean over steps and layers)"
        ),
        ctx.figure("fig3_attention_maps"),
    )
    paths += save_figure(fig_band_profile(probs), ctx.figure("band_profile"))
    # numbers behind the figure: per run, mean over steps/layers/cond half
    rows = []
    ev = video_metrics(ctx.store("maps"))
    for rid in ds[D.RUN].values:
        p = probs.sel(run=rid, cfg="cond")
        n = int(ds[D.FRAMES].sel(run=rid))
        p = p.isel({D.QUERY: slice(0, n), D.KEY: slice(0, n)}).mean([D.STEP, D.LAYER, D.SAMPLE])
        rows.append(
            {
                "run": str(rid),
                "frames": n,
                "band_concentration_k1": float(band_concentration(p, k=1)),
                "diagonalness": float(diagonalness(p)),
                **_scalars(ev, str(rid), DYNAMICS),
            }
        )
    path = ctx.figure("fig3_metrics.json")
    path.write_text(json.dumps(rows, indent=1))
    return [*paths, path]


# ---- Fig. 4: replacement probes ------------------------------------------------------------
def run_probe_experiment(ctx: Context) -> None:
    """The jobs of :func:`probe_jobs` at the short length, each under its fixed run name."""
    store = ctx.store("probes")
    n = ctx.frames[0]
    for kind, label, edits in probe_jobs():
        _synthetic(ctx, store, probe_run_name(kind, label), n, edits)


def frame_change(video: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames, in [0, 1] (how much a video moves)."""
    v = np.asarray(video, dtype=np.float64) / 255.0
    return float(np.abs(np.diff(v, axis=0)).mean())


def detail(video: np.ndarray) -> float:
    """Mean absolute difference between each frame and its 3x3 box blur, in [0, 1]: fine detail
    (or noise) per frame, to see whether frames past a model's training length fall apart."""
    v = np.asarray(video, dtype=np.float64) / 255.0
    pad = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = v.shape[1:3]
    blur = sum(pad[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    return float(np.abs(v - blur).mean())


def draw_probes(ctx: Context) -> list[Path]:
    from attnlab.lab.plots import fig_metric_bars, fig_probe_grid, reduce_maps, save_figure

    store = ctx.store("probes")
    ds = load(store)
    videos, maps = {}, {}
    for rid in ds[D.RUN].values:
        rid = str(rid)
        if rid == "baseline":
            continue
        kind, label = rid.split("-", 1)
        videos[(kind, label)] = load_video(store, rid)
        maps[(kind, label)] = reduce_maps(
            ds[D.PROBS].sel(run=rid), levels=[int(v) for v in label.split("+")]
        )
    paths = save_figure(
        fig_probe_grid(videos, maps, baseline=load_video(store, "baseline")),
        ctx.figure("fig4_probes"),
    )
    # dynamics per probe and level set (VBench dynamic degree, flickering; attnlab.lab.evaluation)
    ev = video_metrics(store)
    order = ["baseline"] + [
        f"{k}-{level_set_label(ls)}" for k in ("identity", "ones") for ls in LEVEL_SETS
    ]
    order = [r for r in order if r in set(ev[D.RUN].values.tolist())]
    paths += save_figure(
        fig_metric_bars(
            ev, {r: r for r in order}, title=f"{ctx.model}: dynamics per probe and level set"
        ),
        ctx.figure("fig4_dynamics"),
    )
    path = ctx.figure("fig4_dynamics.json")
    path.write_text(json.dumps({r: _scalars(ev, r, DYNAMICS) for r in order}, indent=1))
    return [*paths, path]


# ---- Fig. 8: reference transfer ------------------------------------------------------------
def run_transfer(ctx: Context) -> None:
    from attnlab.data.similarity import similarity_matrix
    from attnlab.lab.real import load_clip

    store = ctx.store("transfer")
    n = ctx.frames[0]
    _real(ctx, store, "reference", n)
    _synthetic(ctx, store, "before", n)
    clip = load_clip(ctx.real_clip(), frames=n, fps=8.0, if_short="spread")
    _synthetic(
        ctx, store, "after", n, [Transfer(clip.frames, similarity=SIMILARITY_BACKEND, levels=[0])]
    )
    for name in ("reference", "before", "after"):
        if name not in list_arrays(store, "similarity"):
            save_similarity(
                store, name, similarity_matrix(load_video(store, name), SIMILARITY_BACKEND)
            )


def draw_transfer(ctx: Context) -> list[Path]:
    from attnlab.lab.plots import fig_transfer, reduce_maps, save_figure

    store = ctx.store("transfer")
    ds = load(store)
    m = {
        r: reduce_maps(ds[D.PROBS].sel(run=r), levels=[0]) for r in ("reference", "before", "after")
    }
    s = {r: load_similarity(store, r) for r in ("reference", "before", "after")}
    fig = fig_transfer(
        s["reference"], m["before"], m["after"], s["before"], s["after"],
        reference_map=m["reference"], reference_video=load_video(store, "reference"),
        before_video=load_video(store, "before"), after_video=load_video(store, "after"),
    )  # fmt: skip
    return save_figure(fig, ctx.figure("fig8_transfer"))


# ---- Fig. 9: sigma ablation ----------------------------------------------------------------
def run_sigma(ctx: Context) -> None:
    store = ctx.store("sigma")
    n = ctx.frames[-1]
    _synthetic(ctx, store, "none", n)
    for preset in PRESETS:
        _synthetic(ctx, store, preset, n, [TAR(preset)])


def draw_sigma(ctx: Context) -> list[Path]:
    from attnlab.lab.plots import fig_sigma_ablation, save_figure, sigma_label

    store = ctx.store("sigma")
    ds = load(store)
    labels = {"none": "no TAR"} | {
        p: sigma_label({64 // 2**lv: s for lv, s in preset_sigma(p).items()}) for p in PRESETS
    }
    runs = [r for r in labels if r in set(ds[D.RUN].values.tolist())]
    maps = {labels[r]: ds[D.PROBS].sel(run=r) for r in runs}
    videos = {labels[r]: load_video(store, r) for r in runs}
    fig = fig_sigma_ablation(maps, videos, order=[labels[r] for r in runs], levels=[0])
    paths = save_figure(fig, ctx.figure("fig9_sigma"))
    # dynamics vs sigma: flow per frame pair and similarity to frame 0 (attnlab.lab.evaluation)
    from attnlab.lab.plots import fig_metric_curves

    ev = video_metrics(store, ("dynamic_degree", "temporal_flickering", "consistency"))
    named = {labels[r].replace("\n", " "): r for r in runs}
    paths += save_figure(
        fig_metric_curves(
            ev, named, ("flow_magnitude", "consistency_to_first"),
            title=f"{ctx.model}: dynamics vs TAR sigma",
        ),
        ctx.figure("fig9_dynamics"),
    )  # fmt: skip
    path = ctx.figure("fig9_dynamics.json")
    path.write_text(
        json.dumps(
            {k: _scalars(ev, r, (*DYNAMICS, "consistency")) for k, r in named.items()}, indent=1
        )
    )
    return [*paths, path]


# ---- Fig. 10: models with different positional encodings -------------------------------------
def run_models(ctx: Context) -> None:
    """Each model at 1x, 2x and 3x the short length. A bounded sinusoidal table is extended
    (naive extrapolation) on attnlab's organisms; other models are skipped past their limit.

    Full-3D attention DiTs (CogVideoX, Wan, ...) run beside the UNets: their VAE compresses
    time ``c_t``-fold, so a length of ``n`` frames becomes the pipeline's frame grid
    ``c_t * ceil((n - 1) / c_t) + 1`` (16 -> 17 with ``c_t = 4``), and their maps are over
    latent frames (:mod:`attnlab.core.joint`). DiTs with the text in the attention sequence also
    record its text mass, so their runs go to a store of their own (``models-text``)."""
    from attnlab.core.sites import sites
    from attnlab.models.organisms import extend_frame_positions, is_organism_unet

    for model in ctx.models:
        for n in (ctx.frames[0], 2 * ctx.frames[0], 3 * ctx.frames[0]):
            name = f"{ctx.slug(model)}-f{n}"
            settings = _generation_fingerprint(ctx, model, length=n)  # (before loading it)
            if _reuse(ctx, _model_stores(ctx), name, settings):
                continue
            table = sites(ctx.pipe(model))
            limit = table.max_frames
            store = ctx.store(MODELS_TEXT if table.text != "cross" else "models")
            if isinstance(table, JointSiteTable):
                tc = table.temporal_compression
                video = tc * -(-(n - 1) // tc) + 1
                token_frames = table.token_frames((video - 1) // tc + 1)
                if limit is not None and token_frames > limit:
                    ctx.log(
                        f"  {name}: skipped, {token_frames} latent frames exceed the PE ({limit})"
                    )
                    continue
                _synthetic(ctx, store, name, video, model=model, settings=settings)
                continue
            if limit is not None and n > limit:
                unet = ctx.pipe(model).unet
                if not is_organism_unet(unet):
                    ctx.log(f"  {name}: skipped, {n} frames exceed the model's PE ({limit})")
                    continue
                extend_frame_positions(unet, n)  # positions < limit are unchanged
            _synthetic(ctx, store, name, n, model=model, settings=settings)


#: the models experiment's store for DiTs whose text is in the attention sequence (they also
#: record ``text_mass``, a store layout of its own)
MODELS_TEXT = "models-text"


def _model_stores(ctx: Context) -> list[Path]:
    return [ctx.store("models"), ctx.store(MODELS_TEXT)]


def draw_models(ctx: Context) -> list[Path]:
    from attnlab.data.metrics import band_concentration
    from attnlab.lab.plots import fig_cross_model, save_figure

    stores = [s for s in _model_stores(ctx) if s.exists()] or [ctx.store("models")]
    parts = [
        (load(s), video_metrics(s, ("dynamic_degree", "temporal_flickering", "consistency")))
        for s in stores
    ]
    ev = xr.concat([e for _, e in parts], dim=D.RUN, join="outer") if len(parts) > 1 else parts[0][1]  # fmt: skip
    by_model, rows, curves = {}, [], {}
    for model in ctx.models:
        found = [(k, _run_ids(d, f"{ctx.slug(model)}-f")) for k, (d, _) in enumerate(parts)]
        k, ids = next(((k, i) for k, i in found if i), (0, []))
        ds, store = parts[k][0], stores[k]
        if ids:
            by_model[model] = ds[D.PROBS].sel(run=ids)
        for rid in ids:
            m = int(ds[D.FRAMES].sel(run=rid))  # map frames (latent frames for DiTs)
            p = ds[D.PROBS].sel(run=rid, cfg="cond")
            p = p.isel({D.QUERY: slice(0, m), D.KEY: slice(0, m)})
            video = load_video(store, rid)
            n = len(video)  # video frames (= map frames for UNets)
            half = n // 2
            curves[f"{model} f{n}"] = rid
            flow = ev["flow_magnitude"].sel({D.RUN: rid}).values[: n - 1]
            rows.append(
                {
                    "model": model,
                    "frames": n,
                    "map_frames": m,
                    "band_concentration_k1": float(
                        band_concentration(p.mean([D.STEP, D.LAYER, D.SAMPLE]), k=1)
                    ),
                    **_scalars(ev, rid, (*DYNAMICS, "consistency")),
                    "flow_magnitude_first_half": float(flow[: half - 1].mean()),
                    "flow_magnitude_second_half": float(flow[half:].mean()),
                    "detail_first_16": detail(video[:TRAIN_FRAMES]),
                    "detail_after_16": detail(video[TRAIN_FRAMES:]) if n > TRAIN_FRAMES else None,
                }
            )
    path = ctx.figure("fig10_metrics.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    # where a model breaks past its training length: dynamics and consistency per frame index
    from attnlab.lab.plots import fig_metric_curves

    palette = dict(zip(ctx.models, ("C0", "C1", "C2", "C3", "C4", "C5")))
    lengths = sorted({int(k.rsplit(" f", 1)[1]) for k in curves})
    # line style: 1x, 2x, 3x length within each model (DiTs run on their own frame grid)
    styles = ("-", "--", ":", "-.")
    split = {k: (k.rsplit(" f", 1)[0], int(k.rsplit(" f", 1)[1])) for k in curves}
    rank = {k: sorted(n for m, n in split.values() if m == split[k][0]).index(split[k][1]) for k in curves}  # fmt: skip
    fig = fig_metric_curves(
        ev, curves, ("flow_magnitude", "consistency_to_first", "consistency_to_previous"),
        colors={k: palette.get(k.rsplit(" f", 1)[0], "0.3") for k in curves},
        linestyles={k: styles[rank[k] % len(styles)] for k in curves},
        mark_frame=TRAIN_FRAMES if any(n > TRAIN_FRAMES for n in lengths) else None,
        title="dynamics and consistency per frame index (dashed line: organisms' training length)",
    )  # fmt: skip
    paths = save_figure(fig_cross_model(by_model), ctx.figure("fig10_models"))
    return [*paths, *save_figure(fig, ctx.figure("fig10_dynamics")), path]


# ---- Fig. S.1 / S.2: inter-frame similarity ----------------------------------------------------
def run_similarity(ctx: Context) -> None:
    from attnlab.data.similarity import similarity_matrix
    from attnlab.lab.real import load_clip

    run_maps(ctx)  # the generated videos come from the maps experiment
    store = ctx.store("maps")
    n = ctx.frames[0]
    have = set(list_arrays(store, "similarity"))
    for name in (f"real-f{n}", f"synthetic-f{n}", f"tar-f{n}"):
        if name not in have:
            save_similarity(
                store, name, similarity_matrix(load_video(store, name), SIMILARITY_BACKEND)
            )
    for clip_name in ("bikes_shot2", "bikes_shot3"):  # more real single-shot clips
        if clip_name not in have:
            clip = load_clip(clip_name, frames=n, fps=8.0, if_short="spread")
            save_similarity(store, clip_name, similarity_matrix(clip.frames, SIMILARITY_BACKEND))


def draw_similarity(ctx: Context) -> list[Path]:
    from attnlab.lab.plots import fig_similarity, fig_similarity_by_interval, save_figure

    store = ctx.store("maps")
    n = ctx.frames[0]
    names = list_arrays(store, "similarity")
    sims = {name: load_similarity(store, name) for name in names}
    paths = save_figure(fig_similarity(sims), ctx.figure("figS1_similarity"))
    groups = {
        "real": [sims[k] for k in names if k.startswith(("real", "bikes"))],
        "synthetic": [sims[k] for k in names if k == f"synthetic-f{n}"],
        "synthetic+TAR": [sims[k] for k in names if k == f"tar-f{n}"],
    }
    paths += save_figure(
        fig_similarity_by_interval({k: v for k, v in groups.items() if v}),
        ctx.figure("figS2_similarity_by_interval"),
    )
    return paths


# ---- Fig. S.13: the prior itself -------------------------------------------------------------
def run_prior(ctx: Context) -> None:
    """Nothing to compute: the prior is a formula."""


def draw_prior(ctx: Context) -> list[Path]:
    from attnlab.lab.plots import fig_prior, save_figure

    return save_figure(fig_prior(ctx.frames[0], (1, 2, 4, 8)), ctx.figure("figS13_prior"))


EXPERIMENTS: dict[str, tuple[Callable[[Context], None], Callable[[Context], list[Path]]]] = {
    "maps": (run_maps, draw_maps),
    "probes": (run_probe_experiment, draw_probes),
    "transfer": (run_transfer, draw_transfer),
    "sigma": (run_sigma, draw_sigma),
    "models": (run_models, draw_models),
    "similarity": (run_similarity, draw_similarity),
    "prior": (run_prior, draw_prior),
}


def run_experiment(name: str, ctx: Context, draw: bool = True) -> list[Path]:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    run, drawer = EXPERIMENTS[name]
    ctx.log(f"[{name}] running into {ctx.data}/{ctx.slug()}")
    run(ctx)
    return drawer(ctx) if draw else []


def stored_frames(ctx: Context) -> tuple[int, int] | None:
    """The (short, long) frame counts the stores of ``ctx`` were run with: from the maps
    store's runs (``synthetic-f<N>``, one per length), else the probes' (short) and the sigma
    ablation's (long) runs; None when no store tells."""
    folder = Path(ctx.data) / ctx.slug()

    def stored(name: str) -> list[int]:
        path = folder / f"{name}.zarr"
        if not path.exists():
            return []
        if name == "maps":
            found = (re.fullmatch(r"synthetic-f(\d+)", r) for r in list_runs(path))
            return sorted({int(m.group(1)) for m in found if m})
        return sorted({int(n) for n in load(path)[D.FRAMES].values})

    maps = stored("maps")
    if maps:
        return maps[0], maps[-1]
    short, long = stored("probes"), stored("sigma")
    if not short and not long:
        return None
    return min(short or long), max(long or short)


def draw_all(ctx: Context, names: list[str] | None = None) -> dict[str, list[Path] | str]:
    """Redraw figures of every experiment whose store exists (no model is loaded).

    Raises FileNotFoundError, creating nothing, when ``ctx.data`` holds no stores of the model.
    """
    folder = Path(ctx.data) / ctx.slug()
    if not folder.is_dir() or not any(folder.glob("*.zarr")):
        raise FileNotFoundError(
            f"no analysis stores of {ctx.model} in {folder} (looked for {folder}/*.zarr): run "
            "the analyses first (python analyses/<name>.py) or pass --data FOLDER"
        )
    out: dict[str, list[Path] | str] = {}
    for name in names or list(EXPERIMENTS):
        store_name = "maps" if name == "similarity" else name
        extra = [f"{MODELS_TEXT}.zarr"] if name == "models" else []
        if name != "prior" and not any(
            (folder / f).exists() for f in [f"{store_name}.zarr", *extra]
        ):
            out[name] = "no store (run the analysis first)"
            continue
        out[name] = EXPERIMENTS[name][1](ctx)
    return out
