"""Length extrapolation: the methods side by side against the length ratio, one figure per PE
kind (docs/extrapolation.md).

For each model, each length ratio ``r`` (video frames ``round(r * train)``; on a DiT whose VAE
compresses ``c`` frames into one, the nearest ``c k + 1``, the counts its pipeline takes), seed
and method,
one generation recorded into ``<data>/extrapolation/<model>.zarr`` (run ``<method>-x<r>-s<seed>``,
its video under ``videos/``; runs already stored are skipped), then per run:

* from the maps (conditional half, mean over steps, layers and samples): ``mass_beyond``
  (attention mass beyond the training window, :func:`attnlab.metrics.dispersion`),
  ``echo_period`` (:func:`attnlab.metrics.echo_period`), ``sink_score`` (mass on frame 0);
* from the video: ``dynamic_degree`` and ``temporal_flickering`` (VBench, farneback flow,
  :func:`attnlab.evaluate`), ``repetition_score`` (:func:`attnlab.metrics.repetition_score`
  at lags >= the training length; NaN at ratio <= 1, where no such lag exists).

Methods (each at the run's frame count ``N``, training length ``L`` in latent frames):
``plain``; ``tar`` (``TAR()``); ``riflex`` (``RIFLEx()``); ``ntk`` / ``pi``
(``RopeScale(.., N / L)``); ``window_decay`` (``WindowDecay(L, 0.9)``); ``sliding_window``
(``SlidingWindow(L, 4)``); ``spectral_blend`` (``SpectralBlend(L, 0.25)``). A model whose frame
table is shorter than ``N`` (sinusoidal tables) gets ``FramePositions("extend", N)`` with every
method; a method its model cannot take (RIFLEx without a RoPE) is logged and left out.
SpectralBlend's recorded maps are signed (a high-pass of a distribution): the map metrics that
need probabilities (mass beyond, sink) are NaN for it.

The table (``<figures>/extrapolation/metrics.csv``, one row per run) and one figure per PE kind
(``<figures>/extrapolation/<pe>.png``: each metric against the length ratio, one line per
method, the mean over that kind's models and seeds) are drawn from the stores only
(``--draw-only`` skips generation). Example (the organisms, 16 -> 64 frames)::

    python analyses/extrapolation.py --models organism-rope organism-sinusoidal organism-none \\
        --train 16 --lengths 1 2 4 --steps 25 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

METHODS = (
    "plain",
    "tar",
    "riflex",
    "ntk",
    "pi",
    "window_decay",
    "sliding_window",
    "spectral_blend",
)
METRICS = (
    "mass_beyond",
    "echo_period",
    "sink_score",
    "dynamic_degree",
    "temporal_flickering",
    "repetition_score",
)


def run_name(method: str, ratio: float, seed: int) -> str:
    return f"{method}-x{ratio:g}-s{seed}"


def method_edits(method: str, train_latent: int, frames: int, latent: int) -> list[Any]:
    """The edits of ``method`` for a run of ``frames`` video (``latent`` latent) frames."""
    from attnlab.edits import (
        TAR,
        RIFLEx,
        RopeScale,
        SlidingWindow,
        SpectralBlend,
        WindowDecay,
    )

    factor = max(latent / train_latent, 1.0)
    return {
        "plain": [],
        "tar": [TAR()],
        "riflex": [RIFLEx(frames=frames)],
        "ntk": [RopeScale("ntk", factor)],
        "pi": [RopeScale("pi", factor)],
        "window_decay": [WindowDecay(train_latent, 0.9)],
        "sliding_window": [SlidingWindow(train_latent, min(4, train_latent))],
        "spectral_blend": [SpectralBlend(train_latent, 0.25)],
    }[method]


def slug(model: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(model).strip("/")).strip("_")[-60:]


def generate_model(
    model: str,
    store: Path,
    *,
    train: int,
    ratios: Sequence[float],
    seeds: Sequence[int],
    methods: Sequence[str],
    settings: Callable[[int, int], Any],
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Every run of one model into ``store`` (skipping stored ones); returns its PE kind."""
    import attnlab
    from attnlab.core.store import StoreError, list_runs, save_video
    from attnlab.edits import EditError, EditInactiveWarning, FramePositions
    from attnlab.lab.experiments import generate_recorded
    from attnlab.models.loading import default_device, load_pipeline

    pipe = load_pipeline(model, device=device or default_device(), progress=False)
    report = attnlab.pe_report(pipe, train_frames=train)
    pe = str(report[report.axis == "t"].pe.iloc[0])
    compression = int(report.attrs.get("temporal_compression", 1))
    train_latent = int(report.attrs.get("train_latent") or train)
    table = attnlab.sites(pipe)
    try:
        done = set(list_runs(store))
    except StoreError:
        done = set()
    for ratio in ratios:
        # a frame count the model takes (a DiT compressing c frames: c k + 1, as its pipeline
        # would round it, with a warning, to)
        frames = round(ratio * train)
        if compression > 1:
            frames = round((ratio * train - 1) / compression) * compression + 1
        latent = (frames - 1) // compression + 1
        for seed in seeds:
            for method in methods:
                name = run_name(method, ratio, seed)
                if name in done:
                    continue
                edits = method_edits(method, train_latent, frames, latent)
                if table.max_frames is not None and latent > table.max_frames:
                    edits.insert(0, FramePositions("extend", latent))
                meta = {"model": model, "method": method, "ratio": ratio, "train_frames": train}
                meta.update(pe_kind=pe, train_latent=train_latent)
                try:
                    with warnings.catch_warnings():
                        # at ratios <= 1 the window methods are the identity by design
                        if ratio <= 1:
                            warnings.simplefilter("ignore", EditInactiveWarning)
                        video, _ = generate_recorded(
                            pipe,
                            settings(frames, seed),
                            edits,
                            store=store,
                            name=name,
                            record_kwargs={"meta": meta},
                        )
                except EditError as err:
                    log(f"  {model} {name}: {method} does not apply ({err})")
                    continue
                save_video(store, name, video)
                log(f"  {model} {name}: {frames} frames")
    return pe


def _map_metric(fn: Callable[[], Any]) -> float:
    try:
        return float(fn())
    except ValueError:  # signed maps (SpectralBlend): not probabilities
        return math.nan


def measure(store: Path, model: str, pe: str, train: int, train_latent: int) -> list[dict]:
    """One row per run of ``store``: the map and video metrics of the module docstring."""
    import attnlab
    from attnlab import metrics as M
    from attnlab.core import dims as D
    from attnlab.core.store import load_video
    from attnlab.lab.experiments import video_metrics

    ds = attnlab.load(store)
    ev = video_metrics(store)
    probs = ds[D.PROBS]
    rows = []
    for rid in (str(r) for r in ds[D.RUN].values):
        method, ratio_text, seed_text = rid.rsplit("-", 2)
        n = int(ds[D.FRAMES].sel(run=rid))
        p = probs.sel(run=rid)
        if D.CFG in p.dims:
            p = p.sel(cfg="cond") if "cond" in p[D.CFG].values else p.isel({D.CFG: 0})
        p = p.isel({D.QUERY: slice(0, n), D.KEY: slice(0, n)})
        p = p.mean([D.STEP, D.LAYER, D.SAMPLE]).load()  # band_spectrum needs it in memory
        ratio = float(ratio_text[1:])
        video = load_video(store, rid)
        frames = video.shape[0]
        row = {
            "model": model,
            "pe": pe,
            "method": method,
            "ratio": ratio,
            "seed": int(seed_text[1:]),
            "frames": frames,
            "latent": n,
            "mass_beyond": _map_metric(
                lambda p=p, n=n: M.dispersion(p, min(train_latent, n - 1))["mass_beyond"]
            ),
            "echo_period": _map_metric(lambda p=p: M.echo_period(p)) if n >= 4 else math.nan,
            "sink_score": _map_metric(lambda p=p: M.sink_score(p)),
            "repetition_score": (
                float(M.repetition_score(video, train)) if frames > train else math.nan
            ),
        }
        for k in ("dynamic_degree", "temporal_flickering"):
            row[k] = float(ev[k].sel({D.RUN: rid})) if k in ev else math.nan
        rows.append(row)
    return rows


def draw(rows: list[dict], out: Path) -> list[Path]:
    """The table (``metrics.csv``) and one figure per PE kind (``<pe>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from attnlab.lab.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    table = out / "metrics.csv"
    df.sort_values(["pe", "model", "method", "ratio", "seed"]).to_csv(table, index=False)
    paths = [table]
    for pe, part in df.groupby("pe"):
        mean = part.groupby(["method", "ratio"])[list(METRICS)].mean().reset_index()
        fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
        for ax, metric in zip(axes.flat, METRICS, strict=True):
            for method in (m for m in METHODS if m in set(mean.method)):
                line = mean[mean.method == method].sort_values("ratio")
                ax.plot(line.ratio, line[metric], marker="o", label=method)
            ax.set_xlabel("length ratio (frames / training length)")
            ax.set_title(metric)
        axes.flat[0].legend(fontsize=7)
        models = ", ".join(sorted(set(part.model)))
        fig.suptitle(f"length extrapolation, PE {pe} ({models})")
        paths += save_figure(fig, out / f"{pe}.png")
        plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["organism-rope"])
    ap.add_argument("--train", type=int, default=16, help="training length (video frames)")
    ap.add_argument("--lengths", type=float, nargs="+", default=[1, 2, 4], help="ratios")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--data", type=Path, default=Path("analyses/data"))
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    ap.add_argument("--draw-only", action="store_true", help="measure and draw stored runs")
    args = ap.parse_args(argv)

    from attnlab.lab.experiments import GenerationSettings, default_prompt

    rows: list[dict] = []
    for model in args.models:
        store = args.data / "extrapolation" / f"{slug(model)}.zarr"
        store.parent.mkdir(parents=True, exist_ok=True)
        organism = str(model).startswith("organism-")
        size = 32 if organism else 64

        def settings(frames: int, seed: int, model: str = model, size: int = size):
            return GenerationSettings(
                prompt=args.prompt or default_prompt(model),
                frames=frames,
                steps=args.steps,
                seed=seed,
                height=args.height or size,
                width=args.width or size,
            )

        if not args.draw_only:
            generate_model(
                model,
                store,
                train=args.train,
                ratios=args.lengths,
                seeds=args.seeds,
                methods=args.methods,
                settings=settings,
                device=args.device,
            )
        import attnlab

        ds = attnlab.load(store)
        meta = _provenance(ds)
        rows += measure(store, model, meta["pe_kind"], args.train, int(meta["train_latent"]))
    paths = draw(rows, args.figures / "extrapolation")
    for p in paths:
        print(p)
    return paths


def _provenance(ds: Any) -> dict:
    """The provenance of the store's first run, with the ``meta`` it was recorded with (PE
    kind ``pe_kind``, training length in latent frames ``train_latent``)."""
    import json

    from attnlab.core import dims as D

    return json.loads(str(ds["provenance"].isel({D.RUN: 0}).values))


if __name__ == "__main__":
    main(sys.argv[1:])
