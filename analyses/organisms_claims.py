"""The paper's five claims measured on the three committed organisms, with an interval for
every number (docs/organisms.md, "The paper's claims on the organisms").

    OMP_NUM_THREADS=1 nice -n 19 python analyses/organisms_claims.py [--model organism-rope] \
        [--seeds 8] [--steps 10] [--only maps probes tar transfer]

Claims 1, 2, 3 and 5 are measured on one organism (``--model``, default organism-none); claim 4
compares the PE variants and is the same whichever ``--model`` runs it.

Every cell uses the same ``seeds`` moving captions of the world's grammar (the first moving
captions of ``attnlab.lab.organisms.eval_captions``: world clips ``EVAL_SEED + i``), sampled as
one batch with one generator seeded 0, so that video ``i`` of every condition of one length
starts from the same noise under the same caption: differences between conditions are paired
by video. Intervals are 95% percentile bootstraps over the videos (2000 resamples; of the
paired differences where a difference is given). Scores come from ``attnlab.data.evaluator`` (speed:
mean centroid step per frame as a fraction of the frame; coherence) and maps from
``attnlab.data.metrics`` (band concentration, band profile).

1. maps: temporal attention of noised real world clips (``record_real``, t = 600/400/200, the
   caption as prompt) against the organism's own generations (cond half, mean over steps), at
   16 and 48 frames, per level: band concentration (k = 1) and the decay profile, each against
   uniform attention.
2. probes: ``Replace("identity" | "ones")`` at each level set of the paper (16 frames).
3. tar: ``TAR(preset)`` for every sigma preset at 48 frames against plain sampling.
4. pe: the three organisms at 16, 24, 32, 48 and 64 frames (the sinusoidal table extended with
   ``extend_frame_positions``, and, as a fourth variant, interpolated over the length with
   ``interpolate_frame_positions``): scores per frame index and per 16-frame window.
5. transfer: ``Transfer`` with a real world clip as the reference: for each caption, a slow
   and a fast clip of the same scene; does the generated speed follow the reference's?

Writes analyses/data/organisms_claims/<model>/<claim>.json (skipped when present unless
--force) and the figures docs/figures/organisms/<model>/claims_maps_pe.png (where claims 1 and
4 are both there) and claims_edits.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.core import dims as D
from attnlab.core.api import edit, record
from attnlab.data.evaluator import WORLD_SPEED, per_frame_rates, score_world_video
from attnlab.data.metrics import band_concentration, band_profile
from attnlab.data.world import render, sample_scene, video_of, world_clip
from attnlab.edits import PRESETS, TAR, Replace, Transfer
from attnlab.lab.experiments import LEVEL_SETS, SIMILARITY_BACKEND, frame_change, level_set_label
from attnlab.lab.organisms import moving_seeds, sample
from attnlab.lab.real import record_real
from attnlab.models import load_pipeline
from attnlab.models.organisms import (
    TRAIN_FRAMES,
    extend_frame_positions,
    frame_pe_of,
    interpolate_frame_positions,
)

MODELS = ("organism-none", "organism-sinusoidal", "organism-rope")
# claim 4 also runs the sinusoidal organism with its table interpolated to each length
INTERPOLATED = "organism-sinusoidal:interpolated"
PE_MODELS = (*MODELS, INTERPOLATED)
PE_LENGTHS = (16, 24, 32, 48, 64)
CLAIMS = ("maps", "probes", "tar", "pe", "transfer")
REAL_TIMESTEPS = (600, 400, 200)
SLOW, FAST = 0.01, 0.06  # reference speeds, fraction of the frame per frame (world: 0.025-0.04)
PROFILE_OFFSETS = 6
BOOT = 2000


# ---- statistics ------------------------------------------------------------------------------
def ci(values: Any, seed: int = 0) -> dict[str, float | int]:
    """Mean and 95% percentile-bootstrap interval over the finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (BOOT, len(v)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": len(v)}


def fmt(c: dict[str, Any], digits: int = 3) -> str:
    return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"


# ---- shared pieces ---------------------------------------------------------------------------
def video_scores(videos: np.ndarray, captions: list[str]) -> dict[str, list[float]]:
    """Per video: the evaluator's speed, dynamics ratio, coherence, found rate, colour, and the
    mean absolute frame difference (attnlab.lab.experiments.frame_change) as a pixel-level check."""
    rows: dict[str, list[float]] = {
        k: [] for k in ("speed", "dynamics_ratio", "coherence", "found", "color_ok", "frame_change")
    }
    for v, c in zip(videos, captions):
        s = score_world_video(v, c)
        rows["speed"].append(s.speed)
        rows["dynamics_ratio"].append(np.nan if s.dynamics_ratio is None else s.dynamics_ratio)
        rows["coherence"].append(s.coherence)
        rows["found"].append(s.found_rate)
        rows["color_ok"].append(float(s.color_ok))
        rows["frame_change"].append(frame_change((v * 255).round()))
    return rows


def summarise(rows: dict[str, list[float]], base: dict[str, list[float]] | None = None) -> dict:
    """``ci`` of every score, and of the paired difference to ``base`` where given."""
    out: dict[str, Any] = {k: ci(v) for k, v in rows.items()}
    if base is not None:
        out["minus_base"] = {
            k: ci(np.asarray(v, float) - np.asarray(base[k], float)) for k, v in rows.items()
        }
    return out


class Lab:
    """Pipelines, captions and the generation settings shared by every claim."""

    def __init__(self, seeds: int, steps: int, log=print, model: str = "organism-none"):
        self.model = model  # the organism of claims 1, 2, 3 and 5
        self.seeds = moving_seeds(seeds)
        self.captions = [world_clip(s, frames=1).caption for s in self.seeds]
        self.steps = steps
        self.log = log
        self._pipes: dict[str, Any] = {}
        self.cache: dict[tuple[str, int], np.ndarray] = {}  # plain videos, shared by claims

    def pipe(self, model: str, frames: int | None = None):
        if model == INTERPOLATED:  # a pipeline per length: interpolation changes every row
            key = f"{model}@{frames}"
            if key not in self._pipes:
                p = load_pipeline("organism-sinusoidal", progress=False)
                if frames is not None and frames > TRAIN_FRAMES:
                    interpolate_frame_positions(p.unet, frames)
                p.set_progress_bar_config(disable=True)
                self._pipes[key] = p
            return self._pipes[key]
        if model not in self._pipes:
            p = load_pipeline(model, progress=False)
            if frame_pe_of(p.unet) == "sinusoidal":
                # positions < 16 keep their trained rows: 16-frame videos are unchanged
                extend_frame_positions(p.unet, 64)
            p.set_progress_bar_config(disable=True)
            self._pipes[model] = p
        return self._pipes[model]

    def plain(self, model: str, n: int) -> np.ndarray:
        if (model, n) not in self.cache:
            self.cache[(model, n)] = self.generate(model, n)
        return self.cache[(model, n)]

    def generate(self, model: str, frames: int, edits=(), rec: dict | None = None) -> np.ndarray:
        """``len(seeds)`` videos ``[N, F, 32, 32, 3]`` of the captions, generator seed 0, DDIM
        ``steps`` steps, the pipeline's default guidance; ``rec``: record kwargs (maps are
        returned in ``rec['probs']``)."""
        import contextlib

        pipe = self.pipe(model, frames)
        t0 = time.time()
        with contextlib.ExitStack() as stack:
            if rec is not None:
                recorder = stack.enter_context(record(pipe, **rec))
            if edits:
                stack.enter_context(edit(pipe, *edits))
            videos = sample(
                pipe,
                self.captions,
                frames=frames,
                seed=0,
                batch=len(self.captions),
                num_inference_steps=self.steps,
            )
        if rec is not None:
            rec["probs"] = recorder.to_xarray()[D.PROBS]
        names = ", ".join(type(e).__name__ for e in edits) or "plain"
        self.log(f"  {model} {frames} frames {names}: {time.time() - t0:.0f} s")
        return videos


# ---- claim 1: real vs synthetic maps --------------------------------------------------------
def map_stats(maps: list[Any], n: int) -> dict[str, Any]:
    """Per map ``[F, F]`` (one per video): band concentration k = 1, diagonal mass and the
    decay profile at offsets 0..PROFILE_OFFSETS - 1 in units of uniform attention (1/F)."""
    bc = [float(band_concentration(m, k=1)) for m in maps]
    prof = np.array([band_profile(m).values[:PROFILE_OFFSETS] * n for m in maps])
    return {
        "band_concentration_k1": ci(bc),
        "profile_over_uniform": [ci(prof[:, d]) for d in range(prof.shape[1])],
        "_bc": bc,
        "_profile": prof.tolist(),
    }


def per_video_level_maps(probs, level: int | str) -> list[np.ndarray]:
    """Cond-half maps per sample (mean over steps and the level's layers; 'all': all layers)."""
    p = probs.isel({D.RUN: 0}) if D.RUN in probs.dims else probs
    if D.CFG in p.dims:
        p = p.sel({D.CFG: "cond"})
    if level != "all":
        p = p.where(p[D.LEVEL] == level, drop=True)
    p = p.mean([D.STEP, D.LAYER])
    return [p.isel({D.SAMPLE: i}).values for i in range(p.sizes[D.SAMPLE])]


def claim_maps(lab: Lab) -> dict[str, Any]:
    out: dict[str, Any] = {"frames": {}}
    pipe = lab.pipe(lab.model)
    for n in (16, 48):
        real_maps: dict[Any, list] = {}
        t0 = time.time()
        for s in lab.seeds:
            clip = world_clip(s, frames=n)
            rec = record_real(
                pipe,
                clip.to_video(f"world-{s}"),
                prompt=clip.caption,
                frames=n,
                height=32,
                width=32,
                timesteps=REAL_TIMESTEPS,
                seed=0,
                progress=False,
                cfg="cond",
            )
            probs = rec.to_xarray()[D.PROBS]
            levels = sorted({int(v) for v in probs[D.LEVEL].values})
            for lv in ["all", *levels]:
                real_maps.setdefault(lv, []).extend(per_video_level_maps(probs, lv))
        lab.log(f"  real world clips {n} frames: {time.time() - t0:.0f} s")
        rec_kw: dict[str, Any] = {"cfg": "cond"}
        videos = lab.generate(lab.model, n, rec=rec_kw)
        lab.cache[(lab.model, n)] = videos  # recording does not change them
        syn_maps = {lv: per_video_level_maps(rec_kw["probs"], lv) for lv in real_maps}
        cell: dict[str, Any] = {
            "uniform_band_concentration_k1": (3 * n - 2) / n**2,
            "levels": {},
        }
        for lv in real_maps:
            r, g = map_stats(real_maps[lv], n), map_stats(syn_maps[lv], n)
            diff = np.asarray(r["_bc"]) - np.asarray(g["_bc"])
            cell["levels"][str(lv)] = {
                "real": {k: v for k, v in r.items() if not k.startswith("_")},
                "synthetic": {k: v for k, v in g.items() if not k.startswith("_")},
                "real_minus_synthetic_bc": ci(diff),
            }
        out["frames"][str(n)] = cell
    out["real_timesteps"] = list(REAL_TIMESTEPS)
    return out


# ---- claim 2: replacement probes -----------------------------------------------------------
def claim_probes(lab: Lab) -> dict[str, Any]:
    n = TRAIN_FRAMES
    base = video_scores(lab.plain(lab.model, n), lab.captions)
    out: dict[str, Any] = {"frames": n, "baseline": summarise(base), "probes": {}}
    for kind in ("identity", "ones"):
        for ls in LEVEL_SETS:
            videos = lab.generate(lab.model, n, [Replace(kind, levels=list(ls))])
            rows = video_scores(videos, lab.captions)
            out["probes"][f"{kind}-{level_set_label(ls)}"] = summarise(rows, base)
    return out


# ---- claim 3: TAR and the sigma presets at 48 frames -----------------------------------------
def claim_tar(lab: Lab) -> dict[str, Any]:
    n = 48
    base = video_scores(lab.plain(lab.model, n), lab.captions)
    out: dict[str, Any] = {"frames": n, "plain": summarise(base), "presets": {}}
    for preset in PRESETS:
        rows = video_scores(lab.generate(lab.model, n, [TAR(preset)]), lab.captions)
        out["presets"][preset] = summarise(rows, base)
    return out


# ---- claim 4: the PE variants beyond their training length -----------------------------------
def window_scores(videos: np.ndarray, captions: list[str]) -> list[dict[str, Any]]:
    """The evaluator on each 16-frame window (frames 0-15, 16-31, ...; the last one ends at the
    video's last frame) of every video."""
    n = videos.shape[1]
    out = []
    for a in range(0, n, TRAIN_FRAMES):
        rows = video_scores(videos[:, a : a + TRAIN_FRAMES], captions)
        last = min(a + TRAIN_FRAMES, n) - 1
        out.append({"frames": [a, last], **{k: ci(v) for k, v in rows.items()}})
    return out


def per_frame_steps(videos: np.ndarray, captions: list[str]) -> np.ndarray:
    """Centroid step between frame i-1 and i (fraction of the frame; NaN where either frame
    has no object), per video: the evaluator's per-frame readings."""
    out = []
    for v, c in zip(videos, captions):
        pf = score_world_video(v, c).per_frame()
        step = np.hypot(np.diff(pf["x"]), np.diff(pf["y"])) / v.shape[1]
        out.append(np.concatenate([[np.nan], step]))
    return np.array(out)


def mean_over_videos(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where a column has no value."""
    ok = np.isfinite(values)
    total = np.where(ok, values, 0.0).sum(0)
    count = ok.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def claim_pe(lab: Lab) -> dict[str, Any]:
    out: dict[str, Any] = {"models": {}}
    for model in lab.pe_models:
        cells = {}
        for n in PE_LENGTHS:
            videos = lab.plain(model, n)
            scores = [score_world_video(v, c) for v, c in zip(videos, lab.captions)]
            rates = per_frame_rates(scores)
            steps = per_frame_steps(videos, lab.captions)
            cells[str(n)] = {
                "whole": {k: ci(v) for k, v in video_scores(videos, lab.captions).items()},
                "windows": window_scores(videos, lab.captions),
                "per_frame": {
                    "found": rates["found"].round(4).tolist(),
                    "color_ok": rates["color_ok"].round(4).tolist(),
                    "step": mean_over_videos(steps).round(5).tolist(),
                },
            }
        out["models"][model] = cells
    return out


# ---- claim 5: reference transfer from a real world clip --------------------------------------
def reference_clip(seed: int, speed: float, frames: int) -> np.ndarray:
    """The scene of world clip ``seed`` with its speed set to ``speed`` (bouncing as usual)."""
    scene = sample_scene(np.random.default_rng(seed))
    return render(dataclasses.replace(scene, speed=speed), frames).frames01()


def claim_transfer(lab: Lab) -> dict[str, Any]:
    """One real reference per speed (the scene of the first caption's world clip, slow and
    fast), its similarity matrix as Transfer's prior at level 0, applied to the whole batch:
    paired with the plain batch (same captions, same noise)."""
    from attnlab.data.similarity import similarity_matrix

    n = TRAIN_FRAMES
    base = video_scores(lab.plain(lab.model, n), lab.captions)
    out: dict[str, Any] = {
        "frames": n,
        "similarity": SIMILARITY_BACKEND,
        "reference_scene_seed": lab.seeds[0],
        "reference_caption": lab.captions[0],
        "plain": summarise(base),
    }
    by_speed = {}
    for name, speed in (("slow", SLOW), ("fast", FAST)):
        ref = reference_clip(lab.seeds[0], speed, n)
        s = score_world_video(ref, lab.captions[0])
        sim = similarity_matrix(video_of(ref, "ref").frames, SIMILARITY_BACKEND).values
        rows = video_scores(
            lab.generate(lab.model, n, [Transfer(sim, similarity=SIMILARITY_BACKEND)]),
            lab.captions,
        )
        by_speed[name] = rows
        out[name] = {
            "reference_world_speed": speed,
            "reference_evaluator_speed": s.speed,
            "reference_coherence": s.coherence,
            "reference_similarity_band_concentration_k1": float(
                band_concentration(np.clip(sim, 0, None), k=1)
            ),
            "reference_similarity_profile": band_profile(sim).values.round(4).tolist(),
            "generated": summarise(rows, base),
        }
    out["fast_minus_slow"] = {
        k: ci(np.asarray(by_speed["fast"][k], float) - np.asarray(by_speed["slow"][k], float))
        for k in base
    }
    return out


# ---- figures ---------------------------------------------------------------------------------
def fig_maps_pe(maps: dict[str, Any], pe: dict[str, Any]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, n in zip(axes[:2], ("16", "48")):
        cell = maps["frames"][n]["levels"]["0"]
        for src, color in (("real", "C3"), ("synthetic", "C0")):
            prof = cell[src]["profile_over_uniform"]
            d = np.arange(len(prof))
            m = np.array([p["mean"] for p in prof])
            lo = np.array([p["lo"] for p in prof])
            hi = np.array([p["hi"] for p in prof])
            bc = cell[src]["band_concentration_k1"]
            ax.plot(d, m, "o-", color=color, label=f"{src} (band conc. {bc['mean']:.3f})")
            ax.fill_between(d, lo, hi, color=color, alpha=0.25)
        ax.axhline(1.0, color="0.4", ls="--", label="uniform (1/N)")
        ax.set_xlabel("frame offset |i - j|")
        ax.set_ylabel("mean attention x N (uniform = 1)")
        ax.set_title(f"{maps.get('model', 'organism-none')} level 0, {n} frames", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[2]  # coherence per 16-frame window of the 64-frame videos, with intervals
    for k, (model, color) in enumerate(zip(PE_MODELS, ("C0", "C1", "C2", "C3"))):
        wins = pe["models"][model]["64"]["windows"]
        x = np.array([(w["frames"][0] + w["frames"][1]) / 2 for w in wins]) + (k - 1) * 1.2
        m = np.array([w["coherence"]["mean"] for w in wins])
        err = [m - [w["coherence"]["lo"] for w in wins], [w["coherence"]["hi"] for w in wins] - m]
        ax.errorbar(
            x, m, yerr=err, fmt="o-", color=color, capsize=3, label=model.removeprefix("organism-")
        )
    ax.axvline(TRAIN_FRAMES - 0.5, color="0.4", ls=":", label="training length")
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("16-frame window of the 64-frame videos (centre frame)")
    ax.set_ylabel("coherence (evaluator)")
    ax.set_title("PE variants: coherence per window", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[3]
    for model, color in zip(PE_MODELS, ("C0", "C1", "C2", "C3")):
        y = np.array(pe["models"][model]["64"]["per_frame"]["step"], float)
        ax.plot(np.arange(len(y)), y, color=color, label=model.removeprefix("organism-"))
    ax.axvline(TRAIN_FRAMES - 0.5, color="0.4", ls=":", label="training length")
    ax.axhline(WORLD_SPEED, color="k", ls="-.", lw=1, label="real world clips (mean)")
    ax.set_xlabel("frame index (64-frame videos)")
    ax.set_ylabel("centroid step (fraction of frame)")
    ax.set_title("PE variants: centroid step per frame index (mean of 8)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.set_ylim(bottom=0)
    fig.suptitle("Claims 1 and 4 on the organisms (bands: 95% bootstrap over videos)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_edits(probes: dict, tar: dict, transfer: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 6.4))
    panels = (
        ("probes (16 frames)", probes["baseline"], probes["probes"]),
        ("TAR presets (48 frames)", tar["plain"], tar["presets"]),
        (
            "transfer from a real clip (16 frames)",
            transfer["plain"],
            {"slow ref": transfer["slow"]["generated"], "fast ref": transfer["fast"]["generated"]},
        ),
    )
    for col, (title, base, cond) in enumerate(panels):
        names = ["plain", *cond]
        for row, key, label in (
            (0, "speed", "speed (centroid step / frame)"),
            (1, "coherence", "coherence"),
        ):
            ax = axes[row, col]
            cells = [base[key], *(cond[k][key] for k in cond)]
            m = np.array([c["mean"] for c in cells])
            err = np.array(
                [[c["mean"] - c["lo"] for c in cells], [c["hi"] - c["mean"] for c in cells]]
            )
            ax.bar(range(len(m)), m, color=["0.6"] + ["C0"] * (len(m) - 1))
            ax.errorbar(range(len(m)), m, yerr=err, fmt="none", color="k", capsize=2)
            if key == "speed":
                ax.axhline(WORLD_SPEED, color="k", ls="-.", lw=1, label="real world clips (mean)")
                if col == 2:
                    for name, speed, ls in (("slow", SLOW, ":"), ("fast", FAST, "--")):
                        ax.axhline(speed, color="C3", ls=ls, label=f"{name} reference {speed}")
                ax.legend(fontsize=7, loc="lower right")
            ax.set_xticks(range(len(m)))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel(label, fontsize=8)
            ax.set_ylim(0, 1.0 if key == "coherence" else None)
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle(
        f"Claims 2, 3 and 5 on {probes.get('model', 'organism-none')}: evaluator scores (bars: "
        "mean over videos, 95% bootstrap)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ---- markdown tables (docs/organisms.md) ----------------------------------------------------
def report(have: dict[str, Any]) -> str:
    """The tables of docs/organisms.md from the JSON results: mean [95% interval]."""
    lines: list[str] = []
    # (results written before claims took --model were organism-none's)
    model = next((r["model"] for r in have.values() if isinstance(r.get("model"), str)), None)
    model = model or "organism-none"
    if "maps" in have:
        m = have["maps"]
        lines += [
            f"Claim 1: {model}, level 0 and all levels (cond half; real: noised at t = "
            f"{'/'.join(map(str, m['real_timesteps']))}; synthetic: mean over the steps)",
            "",
            "| frames | level | uniform | real band conc. k=1 | synthetic | real - synthetic "
            "| real profile d=0/1/2 (x uniform) | synthetic profile d=0/1/2 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, cell in m["frames"].items():
            for lv, c in cell["levels"].items():
                prof = [
                    " / ".join(f"{p['mean']:.2f}" for p in c[src]["profile_over_uniform"][:3])
                    for src in ("real", "synthetic")
                ]
                lines.append(
                    f"| {n} | {lv} | {cell['uniform_band_concentration_k1']:.3f} | "
                    f"{fmt(c['real']['band_concentration_k1'])} | "
                    f"{fmt(c['synthetic']['band_concentration_k1'])} | "
                    f"{fmt(c['real_minus_synthetic_bc'])} | {prof[0]} | {prof[1]} |"
                )
        lines.append("")

    def scored(title: str, base_name: str, base: dict, cells: dict[str, dict]) -> list[str]:
        out = [
            title,
            "",
            "| run | speed (frame/frame) | minus plain | coherence | minus plain | found "
            "| frame change |",
            "|---|---|---|---|---|---|---|",
            f"| {base_name} | {fmt(base['speed'])} | | {fmt(base['coherence'])} | | "
            f"{base['found']['mean']:.2f} | {fmt(base['frame_change'], 4)} |",
        ]
        for k, c in cells.items():
            d = c.get("minus_base", {})
            out.append(
                f"| {k} | {fmt(c['speed'])} | {fmt(d['speed']) if d else ''} | "
                f"{fmt(c['coherence'])} | {fmt(d['coherence']) if d else ''} | "
                f"{c['found']['mean']:.2f} | {fmt(c['frame_change'], 4)} |"
            )
        return [*out, ""]

    if "probes" in have:
        p = have["probes"]
        lines += scored(
            f"Claim 2: replacement probes, {model}, 16 frames",
            "none (plain)",
            p["baseline"],
            p["probes"],
        )
    if "tar" in have:
        t = have["tar"]
        lines += scored(
            f"Claim 3: TAR presets, {model}, 48 frames", "plain", t["plain"], t["presets"]
        )
    if "transfer" in have and "plain" in have["transfer"]:
        t = have["transfer"]
        cells = {f"{k} reference": t[k]["generated"] for k in ("slow", "fast")}
        lines += scored(
            f"Claim 5: Transfer from a real world clip, {model}, 16 frames",
            "plain",
            t["plain"],
            cells,
        )
        for k in ("slow", "fast"):
            lines.append(
                f"- {k} reference: world speed {t[k]['reference_world_speed']}, evaluator speed "
                f"{t[k]['reference_evaluator_speed']:.3f}, its similarity's band conc. k=1 "
                f"{t[k]['reference_similarity_band_concentration_k1']:.3f}"
            )
        d = t["fast_minus_slow"]
        lines += [
            f"- fast - slow reference: speed {fmt(d['speed'])}, coherence {fmt(d['coherence'])}",
            "",
        ]
    if "pe" in have and "models" in have["pe"]:
        lines += [
            "Claim 4: the PE variants per 16-frame window (speed, coherence, found; "
            "mean [95% interval])",
            "",
            "| model | frames | window | speed | coherence | found | colour |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, cells in have["pe"]["models"].items():
            for n, c in cells.items():
                for w in c["windows"]:
                    lines.append(
                        f"| {model} | {n} | {w['frames'][0]}-{w['frames'][1]} | "
                        f"{fmt(w['speed'])} | {fmt(w['coherence'])} | {fmt(w['found'], 2)} | "
                        f"{fmt(w['color_ok'], 2)} |"
                    )
        lines.append("")
    return "\n".join(lines)


def merge_pe_parts(out: Path) -> None:
    """Write pe.json from the pe-<models>.json parts of parallel runs once they cover all
    models of claim 4 (and pe.json is missing or a placeholder)."""
    path = out / "pe.json"
    if path.exists() and "placeholder" not in json.loads(path.read_text()):
        return
    parts = [json.loads(q.read_text()) for q in sorted(out.glob("pe-*.json"))]
    models = {m: c for part in parts for m, c in part["models"].items()}
    if set(models) != set(PE_MODELS):
        return
    meta = {k: v for k, v in parts[0].items() if k not in ("models", "command", "wall_s")}
    merged = {
        **meta,
        "command": [part["command"] for part in parts],
        "wall_s": [part["wall_s"] for part in parts],
        "models": {m: models[m] for m in PE_MODELS},
    }
    path.write_text(json.dumps(merged, indent=1))
    for q in out.glob("pe-*.json"):
        q.unlink()


# ---- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=8, help="videos per cell (moving captions)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps per generation")
    p.add_argument("--only", nargs="+", choices=CLAIMS, default=list(CLAIMS))
    p.add_argument("--force", action="store_true", help="recompute claims already written")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="default: analyses/data/organisms_claims/<model>")
    p.add_argument("--figures", help="default: docs/figures/organisms/<model>")
    p.add_argument("--report", action="store_true", help="print the markdown tables")
    p.add_argument(
        "--model", choices=MODELS, default="organism-none", help="the organism of claims 1-3, 5"
    )
    p.add_argument(
        "--pe-models",
        nargs="+",
        choices=PE_MODELS,
        default=list(PE_MODELS),
        help="claim 4 for these models only, into pe-<model>.json (to run it in parallel; "
        "the parts are merged into pe.json once all three exist)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out or f"analyses/data/organisms_claims/{a.model}")
    out.mkdir(parents=True, exist_ok=True)
    lab = Lab(a.seeds, a.steps, model=a.model)
    lab.pe_models = tuple(a.pe_models)
    runners = {
        "maps": claim_maps,
        "probes": claim_probes,
        "tar": claim_tar,
        "pe": claim_pe,
        "transfer": claim_transfer,
    }
    command = "python analyses/organisms_claims.py " + " ".join(argv or sys.argv[1:])
    partial_pe = set(a.pe_models) != set(PE_MODELS)
    for name in a.only:
        path = out / f"{name}.json"
        if name == "pe" and partial_pe:
            path = out / f"pe-{'+'.join(a.pe_models)}.json"
        if path.exists() and not a.force:
            print(f"[{name}] {path} exists, skipped (--force recomputes)")
            continue
        print(f"[{name}]", flush=True)
        t0 = time.time()
        result = runners[name](lab)
        meta = {
            "claim": name,
            "model": lab.model if name != "pe" else list(lab.pe_models),
            "command": command,
            "seeds": len(lab.seeds),
            "world_seeds": lab.seeds,
            "captions": lab.captions,
            "steps": lab.steps,
            "guidance": "pipeline default (3.0)",
            "interval": f"95% percentile bootstrap over videos ({BOOT} resamples)",
            "threads": a.threads,
            "wall_s": round(time.time() - t0, 1),
        }
        path.write_text(json.dumps({**meta, **result}, indent=1))
        print(f"[{name}] {meta['wall_s']} s -> {path}", flush=True)
    merge_pe_parts(out)
    have = {}
    for n in CLAIMS:
        if (out / f"{n}.json").exists():
            data = json.loads((out / f"{n}.json").read_text())
            if "placeholder" not in data:  # written by a process that is still computing it
                have[n] = data
    if a.report:
        print(report(have))
    from attnlab.lab.plots import save_figure

    fig_dir = Path(a.figures or f"docs/figures/organisms/{a.model}")
    # claim 4 is the same whichever organism's run measured it: the figure takes it from a
    # sibling folder when this one has none
    pe = have.get("pe") or next(
        (json.loads(q.read_text()) for q in sorted(out.parent.glob("*/pe.json"))), None
    )
    if "maps" in have and pe is not None and "placeholder" not in pe:
        print(*save_figure(fig_maps_pe(have["maps"], pe), fig_dir / "claims_maps_pe.png", dpi=120))
    if {"probes", "tar", "transfer"} <= set(have):
        print(
            *save_figure(
                fig_edits(have["probes"], have["tar"], have["transfer"]),
                fig_dir / "claims_edits.png",
                dpi=120,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
