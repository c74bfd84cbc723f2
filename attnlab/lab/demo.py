"""``attnlab demo``: a short version of the whole story on the embedded default, offline.

- :data:`STORY`: the experiments of :mod:`attnlab.lab.experiments` the demo runs, in order
- :func:`run_demo`: run them with small settings (after the organisms' own figures, from
  :mod:`attnlab.lab.organisms`) and print where everything went
- :func:`evaluator_readings`: the world evaluator's reading of each generated video
- :func:`redraw_command`: the ``attnlab figures`` command that redraws the demo's figures
- :func:`front_page`: ``report.html``, the interactive report of the demo's stores
  (:func:`attnlab.lab.report.report`) linking its figures
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from pathlib import Path
from typing import Any

from attnlab.lab.experiments import Context, run_experiment

# the story, in order: real vs synthetic maps (+TAR), probes, transfer, sigma, similarity,
# prior, and the three organisms' positional encodings beyond their training length
STORY = ("maps", "probes", "transfer", "sigma", "similarity", "prior", "models")


def evaluator_readings(ctx: Context, experiment: str) -> dict[str, tuple[dict[str, Any], str]]:
    """The world evaluator's reading (:func:`attnlab.data.evaluator.score_world_video` against
    the runs' prompt) of every generated video in ``experiment``'s store: per video a dict of
    scores and the one-line text of the demo's strips. Real clips (``real-*``, ``reference``)
    are not videos of the world and are left out; so is everything when the prompt is not a
    caption of the world's grammar."""
    from attnlab.core.store import list_arrays, load_video
    from attnlab.data.evaluator import score_world_video
    from attnlab.data.world import parse_caption
    from attnlab.lab.experiments import default_prompt
    from attnlab.lab.organisms import _score_text

    prompt = ctx.prompt or default_prompt(ctx.model)
    try:
        parse_caption(prompt)
    except ValueError:
        return {}
    store = ctx.store(experiment)
    out = {}
    for name in list_arrays(store, "videos"):
        if name.startswith("real") or name == "reference":
            continue
        s = score_world_video(load_video(store, name) / 255.0, prompt)
        scores = {
            "found": s.found_rate,
            "color_ok": s.color_ok,
            "direction_ok": s.direction_ok,
            "speed": round(s.speed, 4),
            "coherence": round(s.coherence, 4),
        }
        out[name] = (scores, _score_text(s))
    return out


def front_page(
    ctx: Context, story: tuple[str, ...], results: dict[str, list[Path]], out: Path
) -> Path:
    """The demo's front page ``out/report.html``: the interactive report of the stores of
    ``story`` (its comparison opens on the short synthetic run against TAR), linking every
    figure and table in ``results`` (relative paths: they stay beside the page)."""
    from attnlab.core.store import StoreError, list_runs
    from attnlab.lab.report import report

    stores = []
    for name in story:
        if name in ("similarity", "prior"):  # the maps store / no store
            continue
        path = ctx.store(name)
        try:
            if list_runs(path):
                stores.append(path)
        except StoreError:
            continue
    if not stores:
        raise ValueError(f"the demo wrote no store to report (story: {', '.join(story)})")
    keys = {f"synthetic-f{ctx.frames[0]}", f"tar-f{ctx.frames[0]}"}
    pair = None
    if "maps" in story and keys <= set(list_runs(ctx.store("maps"))):
        pair = (f"maps/synthetic-f{ctx.frames[0]}", f"maps/tar-f{ctx.frames[0]}")
    files = sorted(
        {p for paths in results.values() for p in paths if p.suffix in (".png", ".json")}
    )
    links = [(str(p.relative_to(out)), p.relative_to(out).as_posix()) for p in files]
    page = report(
        stores,
        out / "report.html",
        compare=pair,
        title=f"attnlab demo: {ctx.model}",
        links=links,
    )
    return page.path or out / "report.html"


def redraw_command(ctx: Context) -> str:
    """The ``attnlab figures`` command that redraws the figures of ``ctx`` from its stores as
    the demo drew them: its model, folders, frame counts and (when not the default ones) the
    models of the cross-model experiment."""
    args = ["attnlab", "figures", "--all", "--model", ctx.model, "--data", str(ctx.data)]
    args += ["--out", str(ctx.figures), "--frames", *(str(n) for n in ctx.frames)]
    default_models = next(f.default for f in dataclasses.fields(Context) if f.name == "models")
    if tuple(ctx.models) != default_models:
        args += ["--models", *ctx.models]
    return shlex.join(args)


def run_demo(
    out: Path,
    model: str | None = None,
    quick: bool = False,
    reference: str | None = None,
    *,
    frames: tuple[int, int] | None = None,
    steps: int | None = None,
    size: int | None = None,
    models: tuple[str, ...] | None = None,
    story: tuple[str, ...] = STORY,
) -> dict[str, list[Path]]:
    """Run every experiment with small settings into ``out`` and print where everything went.

    ``frames`` (short, long), ``steps``, ``size`` (height = width) and ``models`` (those of the
    cross-model experiment; default the three organisms) override the demo's settings (default:
    (16, 32) frames and 6 steps, (8, 16) and 3 with ``quick``; 32 px for organisms, else 64;
    each model's own guidance scale); ``story`` picks experiments of :data:`STORY`. With an organism, the figures of what the
    organisms generate and of the probes at every level come first, always at the organisms'
    own settings (16 frames, 25 steps, where their behaviour is measured; ``quick`` shortens
    the experiments only)."""
    unknown = [name for name in story if name not in STORY]
    if unknown:
        raise ValueError(f"unknown demo experiments {unknown}; available: {', '.join(STORY)}")
    from attnlab.core.sites import sites
    from attnlab.models import DEFAULT_MODEL

    t0 = time.time()
    organism = model is None or str(model).startswith("organism-")
    size = size or (32 if organism else 64)  # the organisms are trained at 32 x 32
    ctx = Context(
        reference=reference,
        model=model or DEFAULT_MODEL,
        data=out / "data",
        figures=out / "figures",
        frames=frames or ((8, 16) if quick else (16, 32)),
        steps=steps or (3 if quick else 6),
        height=size,
        width=size,
        guidance=None,  # each model's own (the organisms': 3.0, where their behaviour is measured)
    )
    if models is not None:
        ctx.models = tuple(models)
    table = sites(ctx.pipe(), height=ctx.height, width=ctx.width)
    levels = sorted({s.level for s in table})
    counts = ", ".join(f"level {lv}: {sum(s.level == lv for s in table)}" for lv in levels)
    print(
        f"{ctx.model}: {len(table)} temporal self-attention layers ({counts}), frame PE "
        f"{table[0].pe}; the full table: attnlab sites {ctx.model}"
    )
    results: dict[str, list[Path]] = {}
    if organism:
        # first what the organisms generate: frames, maps and the evaluator's reading
        from attnlab.lab.organisms import demo_figure

        paths, strips = demo_figure(ctx.figures / "organisms_strips")
        results["organisms"] = paths
        for r in strips:
            from attnlab.data.evaluator import summarize

            summ = summarize(r["scores"])
            print(
                f"{r['model']}: found {summ['found_frames']:.0%} of frames, colour "
                f"{summ['color_acc']:.0%}, direction {summ['direction_acc']:.0%} "
                f"({len(r['scores'])} videos)"
            )
        # then where their motion lives: the paper's probes at every level
        from attnlab.lab.organisms import dependence_figure

        paths, probed = dependence_figure(ctx.figures / "organisms_dependence")
        results["organisms"] += paths
        print("the probes at every level (direction as captioned, mean speed in frame/frame):")
        for r in probed:
            ok = sum(bool(s.direction_ok) for s in r["scores"])
            speed = sum(s.speed for s in r["scores"]) / len(r["scores"])
            print(
                f"  {r['model']:<20} {r['probe']:<9} direction {ok}/{len(r['scores'])}, "
                f"speed {speed:.3f}"
            )
    results.update({name: run_experiment(name, ctx) for name in story})
    readings: dict[str, dict[str, str]] = {}
    if organism:  # the world evaluator's reading of every generated video beside its figures
        for name in story:
            if name in ("prior", "similarity"):  # no store / the maps store
                continue
            found = evaluator_readings(ctx, name)
            path = ctx.figure(f"{name}_evaluator.json")
            path.write_text(json.dumps({k: v for k, (v, _) in found.items()}, indent=1))
            results[name].append(path)
            readings[name] = {k: text for k, (_, text) in found.items()}
    print("\nattnlab demo: what went where")
    for name, paths in results.items():
        store = "maps" if name == "similarity" else name
        where = ctx.store(store) if name not in ("prior", "organisms") else "-"
        print(f"  {name:<10} store {where}")
        for p in paths:
            print(f"  {'':<10} {p}")
        for run, text in readings.get(name, {}).items():
            print(f"  {'':<10}   {run}: {text}")
    page = front_page(ctx, story, results, out)
    print(f"done in {time.time() - t0:.0f} s. Redraw with: {redraw_command(ctx)}")
    print(f"front page (open it in a browser): {page}")
    return results
