"""``attnlab demo``: a short version of the whole story on the embedded default, offline."""

from __future__ import annotations

import time
from pathlib import Path

from attnlab.lab.analysis import Context, run_experiment

# the story, in order: real vs synthetic maps (+TAR), probes, transfer, sigma, similarity,
# prior, and the three organisms' positional encodings beyond their training length
STORY = ("maps", "probes", "transfer", "sigma", "similarity", "prior", "models")


def run_demo(
    out: Path, model: str | None = None, quick: bool = False, reference: str | None = None
) -> dict[str, list[Path]]:
    """Run every experiment with small settings into ``out`` and print where everything went."""
    from attnlab.core.sites import sites
    from attnlab.lab.analysis import REFERENCE_CLIP
    from attnlab.models.loading import DEFAULT_MODEL

    t0 = time.time()
    organism = model is None or str(model).startswith("organism-")
    size = 32 if organism else 64  # the organisms are trained at 32 x 32
    ctx = Context(
        reference=reference or REFERENCE_CLIP,
        model=model or DEFAULT_MODEL,
        data=out / "data",
        figures=out / "figures",
        frames=(8, 16) if quick else (16, 32),
        steps=3 if quick else 6,
        height=size,
        width=size,
    )
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
        from attnlab.lab.organism_demo import demo_figure

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
    results.update({name: run_experiment(name, ctx) for name in STORY})
    print("\nattnlab demo: what went where")
    for name, paths in results.items():
        store = "maps" if name == "similarity" else name
        where = ctx.store(store) if name not in ("prior", "organisms") else "-"
        print(f"  {name:<10} store {where}")
        for p in paths:
            print(f"  {'':<10} {p}")
    print(
        f"done in {time.time() - t0:.0f} s. Redraw with: attnlab figures --all --model {ctx.model} --data {ctx.data} --out {ctx.figures}"
    )
    return results
