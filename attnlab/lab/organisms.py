"""The organisms sampled, measured and shown: the evaluator's table and ``attnlab demo``'s figures.

Everything is seeded: the captions of a measurement are those of
:func:`attnlab.data.world.world_clip` for seeds ``EVAL_SEED + i`` (all seven motions equally
likely), and each batch of prompts is sampled with one generator seeded ``seed + batch index``.
Used by ``analyses/organisms_*.py`` (the tables in docs/organisms.md), ``attnlab demo`` and the
behavioural tests.

- :func:`eval_captions`, :func:`moving_seeds`, :func:`moving_captions`: captions to measure on
- :func:`sample`, :func:`score_videos`, :func:`measure`: generate, score, summarise
- :func:`run_organisms`, :func:`fig_organism_strips`, :func:`demo_figure`: per variant, frames
  beside the level-0 temporal attention and the evaluator's reading (the demo's first figure)
- :func:`run_dependence`, :func:`fig_dependence`, :func:`dependence_figure`: each variant plain
  and under the paper's replacement probes at every level (:data:`PROBES`)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.core import dims as D
from attnlab.data.evaluator import VideoScore, score_world_video, summarize
from attnlab.data.world import DIRECTIONS, world_clip

EVAL_SEED = 10_000  # captions of measurements: world clips never drawn in training order


def eval_captions(n: int, offset: int = EVAL_SEED) -> list[str]:
    """``n`` captions over the whole grammar (the captions of world clips ``offset + i``)."""
    return [world_clip(offset + i, frames=1).caption for i in range(n)]


def moving_seeds(n: int, offset: int = EVAL_SEED) -> list[int]:
    """World-clip seeds ``offset + i`` of the first ``n`` moving captions (right / left / up /
    down) of the sequence :func:`eval_captions` draws from."""
    out, i = [], 0
    while len(out) < n:
        if world_clip(offset + i, frames=1).scene.motion in DIRECTIONS:
            out.append(offset + i)
        i += 1
    return out


def moving_captions(n: int, offset: int = EVAL_SEED) -> list[str]:
    """The captions of :func:`moving_seeds`."""
    return [world_clip(s, frames=1).caption for s in moving_seeds(n, offset)]


@torch.no_grad()
def sample(
    pipe: Any,
    captions: list[str],
    *,
    frames: int = 16,
    seed: int = 0,
    batch: int = 8,
    **kwargs: Any,
) -> np.ndarray:
    """Videos ``[N, F, H, W, 3]`` in [0, 1] from the pipeline's own defaults (guidance, steps,
    size) unless ``kwargs`` override them; batch ``b`` uses a generator seeded ``seed + b``."""
    out = []
    for b, i in enumerate(range(0, len(captions), batch)):
        gen = torch.Generator().manual_seed(seed + b)
        res = pipe(
            captions[i : i + batch], num_frames=frames, generator=gen, output_type="np", **kwargs
        )
        v = np.asarray(res.frames)  # [B, F, H, W, 3]
        out.append(v.reshape(-1, *v.shape[-4:]))
    return np.concatenate(out).clip(0, 1)


def score_videos(videos: np.ndarray, captions: list[str]) -> list[VideoScore]:
    """The evaluator's score of each video ``[F, H, W, 3]`` in [0, 1] against its caption."""
    return [score_world_video(v, c) for v, c in zip(videos, captions)]


def measure(
    pipe: Any, n: int = 64, *, frames: int = 16, seed: int = 0, batch: int = 8, **kwargs: Any
) -> tuple[dict[str, Any], list[VideoScore], np.ndarray]:
    """Sample ``n`` grammar captions and summarise the evaluator's scores."""
    captions = eval_captions(n)
    videos = sample(pipe, captions, frames=frames, seed=seed, batch=batch, **kwargs)
    scores = score_videos(videos, captions)
    return summarize(scores), scores, videos


# ---- the demo's figures: frames, maps and readings ----------------------------------------
DEMO_CAPTIONS = (
    "a red circle moving to the right on a black background",
    "a blue square moving up on a gray background",
    "a yellow circle growing on a dark blue background",
    "a square turning from green to white on a black background",
)


def run_organisms(
    models: tuple[str, ...] = ("organism-none", "organism-sinusoidal", "organism-rope"),
    captions: tuple[str, ...] = DEMO_CAPTIONS,
    seed: int = 0,
    frames: int = 16,
) -> list[dict[str, Any]]:
    """Generate ``captions`` with each organism (its own defaults: 32 x 32, 25 DDIM steps, its
    default guidance; one generator seeded ``seed`` for the batch) while recording level-0
    temporal attention; returns per model the videos, the cond-half map averaged over steps,
    layers and samples, and the evaluator's scores."""
    from attnlab.core.api import record
    from attnlab.models.loading import load_pipeline

    out = []
    for model in models:
        pipe = load_pipeline(model, progress=False)
        with record(pipe, levels=[0], cfg="cond") as rec:
            videos = sample(  # one batch: one generator for all the captions
                pipe, list(captions), frames=frames, seed=seed, batch=len(captions)
            )
        probs = rec.to_xarray()[D.PROBS]
        keep = (D.QUERY, D.KEY)
        amap = probs.mean([d for d in probs.dims if d not in keep]).values
        scores = score_videos(videos, captions)
        out.append(dict(model=model, videos=videos, map=amap, scores=scores, captions=captions))
    return out


def _score_text(s: VideoScore) -> str:
    parts = [
        f"found {s.found_rate:.0%}",
        f"colour {'ok' if s.color_ok else 'WRONG'}",
        f"shape {'ok' if s.shape_ok else 'wrong'}",
    ]
    if s.direction_ok is not None:
        parts.append(f"direction {'ok' if s.direction_ok else 'WRONG'} ({s.displacement:+.0f} px)")
    else:
        parts.append(f"{s.motion} {'ok' if s.motion_ok else 'wrong'}")
    parts.append(f"coherence {s.coherence:.2f}")
    return ", ".join(parts)


def fig_organism_strips(results: list[dict[str, Any]], n_frames: int = 8):
    """One row per (model, caption): ``n_frames`` evenly spaced frames, the evaluator's reading;
    one level-0 attention map per model (absolute colour scale 0..max of all maps)."""
    import matplotlib.pyplot as plt

    rows = sum(len(r["captions"]) for r in results)
    height = 1.1 * rows + 1.2  # inches; the title and the bottom tick labels get ~0.5 in each
    fig = plt.figure(figsize=(14, height))
    grid = fig.add_gridspec(
        rows,
        3,
        width_ratios=[6.2, 3.0, 1.8],
        wspace=0.08,
        hspace=0.7,
        top=1 - 0.6 / height,
        bottom=0.4 / height,
    )
    vmax = max(float(r["map"].max()) for r in results)
    row = 0
    for r in results:
        n = len(r["captions"])
        for i, (video, cap, score) in enumerate(zip(r["videos"], r["captions"], r["scores"])):
            ax = fig.add_subplot(grid[row + i, 0])
            idx = np.linspace(0, len(video) - 1, n_frames).round().astype(int)
            gap = np.ones((video.shape[1], 2, 3))
            strip = np.concatenate([x for k in idx for x in (video[k], gap)][:-1], axis=1)
            ax.imshow(strip, interpolation="nearest")
            ax.set_xticks([(k + 0.5) * (video.shape[2] + 2) - 1 for k in range(n_frames)])
            ax.set_xticklabels([str(k) for k in idx], fontsize=6)
            ax.set_yticks([])
            ax.set_ylabel(r["model"].removeprefix("organism-") if i == 0 else "", fontsize=8)
            ax.set_title(f'"{cap}"', fontsize=7, loc="left", pad=2)
            tx = fig.add_subplot(grid[row + i, 1])
            tx.axis("off")
            tx.text(0, 0.5, _score_text(score).replace(", ", "\n", 2), fontsize=6.5, va="center")
        mx = fig.add_subplot(grid[row : row + n, 2])
        im = mx.imshow(r["map"], vmin=0, vmax=vmax, cmap="magma", interpolation="nearest")
        mx.set_title(f"{r['model']}\nlevel-0 temporal attention", fontsize=7)
        mx.set_xlabel("key frame", fontsize=6)
        mx.set_ylabel("query frame", fontsize=6)
        mx.tick_params(labelsize=5)
        fig.colorbar(im, ax=mx, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
        summ = summarize(r["scores"])
        mx.text(
            0,
            -0.35,
            f"found {summ['found_frames']:.0%}, colour {summ['color_acc']:.0%}, "
            f"direction {summ['direction_acc']:.0%}",
            transform=mx.transAxes,
            fontsize=6,
        )
        row += n
    fig.suptitle(
        "Organisms, 16 frames from pure noise (DDIM 25, default guidance); frame index below each "
        "frame; evaluator reading (no ground truth) beside each video",
        fontsize=9,
    )
    return fig


PROBES = ("plain", "identity", "ones")


def run_dependence(
    models: tuple[str, ...] = ("organism-none", "organism-sinusoidal", "organism-rope"),
    captions: tuple[str, ...] = DEMO_CAPTIONS[:2],
    seed: int = 0,
    frames: int = 16,
) -> list[dict[str, Any]]:
    """Does the motion live in the temporal attention? Per model, ``captions`` generated plain
    and with the paper's replacement probes at every level (``Replace("identity")``: frames
    independent; ``Replace("ones")``: uniform attention over frames), from the same noise."""
    import contextlib

    from attnlab.core.api import edit
    from attnlab.core.sites import sites
    from attnlab.edits import Replace
    from attnlab.models.loading import load_pipeline

    out = []
    for model in models:
        pipe = load_pipeline(model, progress=False)
        levels = sorted({s.level for s in sites(pipe)})
        for probe in PROBES:
            probed = (
                contextlib.nullcontext()
                if probe == "plain"
                else edit(pipe, Replace(probe, levels=levels))
            )
            with probed:
                videos = sample(  # one batch: one generator for all the captions
                    pipe, list(captions), frames=frames, seed=seed, batch=len(captions)
                )
            scores = score_videos(videos, captions)
            out.append(
                dict(model=model, probe=probe, videos=videos, scores=scores, captions=captions)
            )
    return out


def fig_dependence(results: list[dict[str, Any]], n_frames: int = 8):
    """One row per (model, probe, caption): frames and the evaluator's reading."""
    import matplotlib.pyplot as plt

    rows = [(r, i) for r in results for i in range(len(r["captions"]))]
    height = 0.75 * len(rows) + 1.0
    fig = plt.figure(figsize=(11, height))
    grid = fig.add_gridspec(
        len(rows),
        2,
        width_ratios=[6.2, 3.2],
        wspace=0.05,
        hspace=0.75,
        top=1 - 0.6 / height,
        bottom=0.2 / height,
    )
    for k, (r, i) in enumerate(rows):
        video, score = r["videos"][i], r["scores"][i]
        ax = fig.add_subplot(grid[k, 0])
        idx = np.linspace(0, len(video) - 1, n_frames).round().astype(int)
        gap = np.ones((video.shape[1], 2, 3))
        ax.imshow(
            np.concatenate([x for j in idx for x in (video[j], gap)][:-1], axis=1),
            interpolation="nearest",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        label = r["model"].removeprefix("organism-") + "\n" + r["probe"]
        ax.set_ylabel(label if i == 0 else "", fontsize=7, rotation=0, ha="right", va="center")
        ax.set_title(f'"{r["captions"][i]}"', fontsize=6.5, loc="left", pad=2)
        tx = fig.add_subplot(grid[k, 1])
        tx.axis("off")
        tx.text(0, 0.5, _score_text(score).replace(", ", "\n", 2), fontsize=6, va="center")
    fig.suptitle(
        "Where the motion lives: each organism plain, with identity attention at every level "
        "(frames independent) and with all-ones attention at every level (frames averaged); "
        "same noise per caption",
        fontsize=8,
    )
    return fig


def demo_figure(
    out: Path, labels: dict[str, str] | None = None, **kwargs: Any
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Generate, draw and save the strips figure to ``out`` (png); returns paths and results.
    ``labels`` names models in the figure (e.g. a pipeline folder by a short label)."""
    from attnlab.lab.plots import save_figure

    results = run_organisms(**kwargs)
    for r in results:
        r["model"] = (labels or {}).get(r["model"], r["model"])
    fig = fig_organism_strips(results)
    return save_figure(fig, out, formats=("png",), dpi=150), results


def dependence_figure(out: Path, **kwargs: Any) -> tuple[list[Path], list[dict[str, Any]]]:
    """Generate, draw and save the probes-everywhere figure (:func:`run_dependence`)."""
    from attnlab.lab.plots import save_figure

    results = run_dependence(**kwargs)
    return save_figure(fig_dependence(results), out, formats=("png",), dpi=150), results


__all__ = [
    "DEMO_CAPTIONS",
    "EVAL_SEED",
    "PROBES",
    "demo_figure",
    "dependence_figure",
    "eval_captions",
    "fig_dependence",
    "fig_organism_strips",
    "measure",
    "moving_captions",
    "moving_seeds",
    "run_dependence",
    "run_organisms",
    "sample",
    "score_videos",
]
