"""Does an organism's motion live in its temporal attention? Replacement probes at every level
and at each level alone, with intervals over seeds.

    python analyses/organisms_dependence.py --model organism-sinusoidal [--seeds 4] [--n 8]

For each model and condition (plain; ``Replace("identity")`` and ``Replace("ones")`` at every
level; each of the two at one level alone): ``--seeds`` draws of ``--n`` moving captions over
the grammar (draw ``s`` takes the moving captions of world clips ``EVAL_SEED + s * 1000 + i``
and a generator seeded ``s``), sampled from pure noise with the pipeline's defaults (32 x 32,
16 frames, 25 DDIM steps, its guidance) and scored by :mod:`attnlab.data.evaluator`. Per draw:
direction rate over the moving videos, mean speed, its ratio to the plain draw's speed (same
captions and noise), mean coherence and the share of clean backgrounds; per condition: their
mean over draws with a 95 % t interval. The plain runs are recorded (conditional branch, maps
averaged over positions and heads): the plain row's ``map_distance`` per level is the maps' mean
row total-variation distance from uniform, ``0.5 sum_j |A_ij - 1/N|`` (0 for all-ones, at most
``1 - 1/N``), averaged over steps, layers, videos and query frames: how much all-ones can
change. The two dependence targets of issue 27 are checked on the every-level conditions:
identity drops the direction to <= 50 % (or coherence by >= 0.15), all-ones slows the object to
<= 0.5 x its plain speed (or drops the direction to <= 50 %).

Writes ``analyses/data/organisms_dependence/<model>.json`` (a folder's path with ``_`` for
``/``, as ``organisms_eval.py`` names it) and prints a markdown table.
``--model`` also takes a folder saved by ``train_organisms.py --finetune --save`` (its
``pipeline`` subfolder) to check a checkpoint before it is committed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import attnlab
from attnlab import metrics
from attnlab.core import dims as D
from attnlab.lab.organisms import EVAL_SEED, moving_captions, sample, score_videos
from attnlab.models import load_pipeline

TARGET_DIRECTION = 0.5  # identity / all-ones everywhere: direction at most this share
TARGET_COHERENCE_DROP = 0.15  # or identity everywhere: coherence down by at least this
TARGET_SLOWDOWN = 0.5  # or all-ones everywhere: speed at most this ratio of the plain speed


def conditions(levels: list[int], alone: bool = True) -> dict[str, attnlab.Edit | None]:
    """Plain, identity / all-ones at every level, and (``alone``) each at one level alone."""
    out: dict[str, attnlab.Edit | None] = {"plain": None}
    for kind in ("identity", "ones"):
        out[f"{kind} every level"] = attnlab.Replace(kind, levels=levels)
    for kind in ("identity", "ones") if alone else ():
        for lv in levels:
            out[f"{kind} level {lv}"] = attnlab.Replace(kind, levels=[lv])
    return out


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95 % t interval over draws (the interval is the mean when there is one draw)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "lo": mean, "hi": mean}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def uniform_distance(probs) -> dict[int, float]:
    """Per level: the mean row total-variation distance of ``probs`` (a recording's maps) from
    uniform, over every other dimension."""
    uniform = probs * 0 + 1.0 / probs.sizes[D.KEY]
    tv = 0.5 * metrics.map_distance(probs, uniform, "l1")
    return {int(lv): float(t.mean()) for lv, t in tv.groupby(D.LEVEL)}


def record_name(model: str) -> str:
    """The record's file name (no suffix) for ``--model``: an organism's name, or a folder's
    whole path with ``_`` for ``/`` (two checkpoints' ``.../pipeline`` folders stay apart)."""
    return model.strip("/").replace("/", "_")


def measure(pipe, n: int, seeds: int, frames: int = 16, alone: bool = True) -> dict[str, dict]:
    """Per condition: per-draw metrics and their intervals (see the module docstring)."""
    levels = sorted({s.level for s in attnlab.sites(pipe)})
    per: dict[str, dict[str, list[float]]] = {}
    for draw in range(seeds):
        captions = moving_captions(n, EVAL_SEED + 1000 * draw)
        plain_speed = None
        for name, edit in conditions(levels, alone).items():
            if edit is None:
                with attnlab.record(pipe, cfg="cond", reduce="mean") as rec:
                    videos = sample(pipe, captions, frames=frames, seed=draw)
                for lv, d in uniform_distance(rec.to_xarray()[D.PROBS]).items():
                    per.setdefault("map_distance", {}).setdefault(f"level {lv}", []).append(d)
            else:
                with attnlab.edit(pipe, edit):
                    videos = sample(pipe, captions, frames=frames, seed=draw)
            scores = score_videos(videos, captions)
            speed = float(np.mean([s.speed for s in scores]))
            if plain_speed is None:
                plain_speed = speed
            row = per.setdefault(name, {})
            for key, value in (
                ("direction", float(np.mean([bool(s.direction_ok) for s in scores]))),
                ("speed", speed),
                ("speed_ratio", speed / max(plain_speed, 1e-9)),
                ("coherence", float(np.mean([s.coherence for s in scores]))),
                ("found", float(np.mean([s.found_rate for s in scores]))),
                ("background_clean", float(np.mean([s.background_clean for s in scores]))),
            ):
                row.setdefault(key, []).append(value)
    out = {name: {"draws": m, **{k: interval(v) for k, v in m.items()}} for name, m in per.items()}
    out["plain"]["map_distance"] = out.pop("map_distance")
    return out


def verdict(res: dict[str, dict]) -> dict[str, bool]:
    """The issue's two dependence targets, on the every-level conditions (means over draws)."""
    plain, ident, ones = res["plain"], res["identity every level"], res["ones every level"]
    return {
        "identity_breaks": ident["direction"]["mean"] <= TARGET_DIRECTION
        or plain["coherence"]["mean"] - ident["coherence"]["mean"] >= TARGET_COHERENCE_DROP,
        "ones_breaks": ones["speed_ratio"]["mean"] <= TARGET_SLOWDOWN
        or ones["direction"]["mean"] <= TARGET_DIRECTION,
    }


def _fmt(d: dict[str, float], digits: int = 2) -> str:
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="organism name or folder")
    p.add_argument("--seeds", type=int, default=4, help="draws of captions and noise")
    p.add_argument("--n", type=int, default=8, help="moving captions per draw")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--every-level-only", action="store_true", help="skip the one-level-alone conditions"
    )
    p.add_argument("--out", default="analyses/data/organisms_dependence")
    a = p.parse_args(argv)
    if a.seeds < 1 or a.n < 1:
        p.error(f"--seeds {a.seeds} --n {a.n}: both must be at least 1")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in a.model:
        pipe = load_pipeline(model, progress=False)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.time()
        res = measure(pipe, a.n, a.seeds, alone=not a.every_level_only)
        ok = verdict(res)
        name = record_name(model)
        record = {
            "model": model,
            "seeds": a.seeds,
            "captions_per_draw": a.n,
            "frames": 16,
            "conditions": res,
            "targets": ok,
            "wall_s": round(time.time() - t0, 1),
            "command": "python analyses/organisms_dependence.py " + " ".join(argv or sys.argv[1:]),
        }
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        print(f"\n{model} ({a.seeds} draws x {a.n} moving captions, mean [95% t interval])")
        print("| condition | direction | speed ratio | coherence | found | clean bg |")
        print("|---|---|---|---|---|---|")
        for cond, r in res.items():
            print(
                f"| {cond} | {_fmt(r['direction'])} | {_fmt(r['speed_ratio'])} | "
                f"{_fmt(r['coherence'])} | {_fmt(r['found'])} | {_fmt(r['background_clean'])} |"
            )
        dist = res["plain"]["map_distance"]
        print(
            "plain maps' distance from uniform: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in dist.items() if k != "draws")
        )
        print(f"targets: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
