"""The measurements of docs/organisms.md: run the paper's experiments on the model organisms and
print every number as markdown tables (stores under analyses/data/, figures under figures/).

    python analyses/organisms_report.py [--steps 25] [--copy-figures docs/figures/organisms]

Runs (skipping anything already stored): maps (real held-out `cup` windows vs synthetic, with
and without TAR, at 16 and 48 frames) for organism-none and organism-rope, replacement probes
for organism-none, and the three organisms at 16, 32 and 48 frames. Then reads the stores only.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from attnlab import load
from attnlab.core import dims as D
from attnlab.core.store import load_video
from attnlab.data.metrics import band_concentration, band_profile
from attnlab.lab.experiments import EXPERIMENTS, Context, detail, frame_change, run_experiment


def _maps_table(ctx: Context) -> list[str]:
    """Per run and level: band concentration (k=1), attention at offsets 0..3, frame change."""
    ds = load(ctx.store("maps"))
    out = [
        f"{ctx.model}: cond half, mean over steps, layers of a level and samples",
        "",
        "| run | frames | level | band conc. k=1 | profile d=0 / 1 / 2 / 3 | frame change |",
        "|---|---|---|---|---|---|",
    ]
    for rid in ds[D.RUN].values:
        n = int(ds[D.FRAMES].sel(run=rid))
        p = ds[D.PROBS].sel(run=rid, cfg="cond").isel({D.QUERY: slice(0, n), D.KEY: slice(0, n)})
        change = frame_change(load_video(ctx.store("maps"), str(rid)))
        levels = np.unique(p[D.LEVEL].values)
        for lv in ["all", *levels.tolist()]:
            q = p if lv == "all" else p.where(p[D.LEVEL] == lv, drop=True)
            m = q.mean([D.STEP, D.LAYER, D.SAMPLE])
            prof = band_profile(m).values
            out.append(
                f"| {rid} | {n} | {lv} | {float(band_concentration(m, k=1)):.3f} | "
                + " / ".join(f"{v:.3f}" for v in prof[:4])
                + f" | {change:.4f} |"
            )
    return out


def _probes_table(ctx: Context) -> list[str]:
    store = ctx.store("probes")
    ds = load(store)
    out = [
        f"{ctx.model}: {ctx.frames[0]} frames, replacement at the given levels during all steps",
        "",
        "| run | frame change | detail |",
        "|---|---|---|",
    ]
    for rid in ds[D.RUN].values:
        v = load_video(store, str(rid))
        out.append(f"| {rid} | {frame_change(v):.4f} | {detail(v):.4f} |")
    return out


def _models_table(ctx: Context) -> list[str]:
    store = ctx.store("models")
    ds = load(store)
    out = [
        "| model | frames | band conc. k=1 | frame change (1st / 2nd half) | detail (frames < 16 / >= 16) |",
        "|---|---|---|---|---|",
    ]
    for rid in ds[D.RUN].values:
        n = int(ds[D.FRAMES].sel(run=rid))
        p = ds[D.PROBS].sel(run=rid, cfg="cond").isel({D.QUERY: slice(0, n), D.KEY: slice(0, n)})
        bc = float(band_concentration(p.mean([D.STEP, D.LAYER, D.SAMPLE]), k=1))
        v = load_video(store, str(rid))
        h = n // 2
        late = f"{detail(v[16:]):.4f}" if n > 16 else "-"
        out.append(
            f"| {rid} | {n} | {bc:.3f} | {frame_change(v):.4f} ({frame_change(v[:h]):.4f} / "
            f"{frame_change(v[h:]):.4f}) | {detail(v[:16]):.4f} / {late} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--data", default="analyses/data")
    p.add_argument("--figures", default="figures")
    p.add_argument("--copy-figures", default=None, help="copy the PNGs here (for docs)")
    p.add_argument("--only-report", action="store_true", help="read the stores, run nothing")
    a = p.parse_args(argv)
    common = dict(
        data=Path(a.data),
        figures=Path(a.figures),
        steps=a.steps,
        frames=(16, 48),
        height=32,
        width=32,
    )
    none = Context(model="organism-none", **common)
    rope = Context(model="organism-rope", **common)
    for ctx, experiments in ((none, ("maps", "probes", "models")), (rope, ("maps",))):
        for name in experiments:
            if a.only_report:
                EXPERIMENTS[name][1](ctx)  # redraw from the store
            else:
                run_experiment(name, ctx)
    lines = ["## maps", "", *_maps_table(none), "", *_maps_table(rope), ""]
    lines += ["## probes", "", *_probes_table(none), "", "## models", "", *_models_table(none)]
    print("\n".join(lines))
    if a.copy_figures:
        dest = Path(a.copy_figures)
        dest.mkdir(parents=True, exist_ok=True)
        for ctx in (none, rope):
            for png in sorted(ctx.figure("x").parent.glob("*.png")):
                shutil.copy(png, dest / f"{ctx.slug()}_{png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
