"""Benchmark of attnlab on full-3D attention: frame-map recording and 3D TAR vs the untouched
transformer (time ratios: wall and CPU time) and peak memory of a frame-map recording vs plain.

A random-weight ``CogVideoXTransformer3DModel`` (CogVideoX-2b's layer structure: joint text +
video attention, 3D RoPE, head dim 64, at reduced width and depth) is called on one latent
video, without a pipeline. Variants, interleaved in rotating order over several rounds in one
process (each round's ratio to that round's plain call; median and quartiles reported, for
wall time and for the process's CPU time -- the latter is the robust one on a shared machine
with ``--threads 1``):

* ``plain``: the untouched transformer;
* ``record``: ``attnlab.record`` of every layer, per-head frame maps (and text mass);
* ``tar``: ``attnlab.TAR(1.0, t_min=None)`` on every layer;
* ``identity``: ``attnlab.Replace("identity")`` on every layer;
* ``full-map`` (memory only): the naive way, for comparison -- each layer's ``S x S`` softmax
  materialised (float32) and summed over frame blocks.

Peak memory: a child process with glibc's mmap threshold at 64 KiB (so the resident set follows
live tensors) resets the kernel's high-water mark before each call and reads ``VmHWM`` after.

    python3 -m attnlab.tools.bench_joint --threads 1 --out bench-joint.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class JointBenchConfig:
    heads: int = 4
    head_dim: int = 64
    layers: int = 4
    frames: int = 7  # latent frames (= 25 video frames)
    latent: tuple[int, int] = (32, 48)  # -> 16 x 24 = 384 tokens per frame with 2 x 2 patches
    text: int = 16
    rounds: int = 5


def build(cfg: JointBenchConfig) -> torch.nn.Module:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.head_dim,
        in_channels=16,
        out_channels=16,
        time_embed_dim=64,
        text_embed_dim=64,
        num_layers=cfg.layers,
        sample_width=cfg.latent[1],
        sample_height=cfg.latent[0],
        sample_frames=(cfg.frames - 1) * 4 + 1,
        patch_size=2,
        max_text_seq_length=cfg.text,
        use_rotary_positional_embeddings=True,
    ).eval()


def inputs(cfg: JointBenchConfig) -> dict[str, Any]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    g = torch.Generator().manual_seed(0)
    gh, gw = cfg.latent[0] // 2, cfg.latent[1] // 2
    rope = get_3d_rotary_pos_embed(cfg.head_dim, ((0, 0), (gh, gw)), (gh, gw), cfg.frames)
    return dict(
        hidden_states=torch.randn(1, cfg.frames, 16, *cfg.latent, generator=g),
        encoder_hidden_states=torch.randn(1, cfg.text, 64, generator=g),
        timestep=torch.tensor([700]),
        image_rotary_emb=rope,
        return_dict=False,
    )


@contextlib.contextmanager
def _full_map() -> Iterator[None]:
    """Naive frame maps: the whole ``S x S`` softmax of every attention call (for comparison)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        P = ((q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)).softmax(-1)
        sdpa.maps.append(P.sum(-2).sum(0))  # keep a small reduction; P itself is freed
        del P
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)  # fmt: skip

    sdpa.maps = []  # type: ignore[attr-defined]
    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def variant(model: torch.nn.Module, name: str):
    import attnlab

    if name == "plain":
        return contextlib.nullcontext()
    if name == "record":
        return attnlab.record(model, reduce="head")
    if name == "tar":
        return attnlab.edit(model, attnlab.TAR(1.0, t_min=None))
    if name == "identity":
        return attnlab.edit(model, attnlab.Replace("identity"))
    if name == "full-map":
        return _full_map()
    raise ValueError(f"unknown variant {name!r}")


def call(
    model: torch.nn.Module, kw: dict[str, Any], name: str
) -> tuple[torch.Tensor, float, float]:
    """One call under variant ``name``: (output, wall seconds, CPU seconds of this process)."""
    with torch.no_grad(), variant(model, name):
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(**kw)[0]
        return out, time.perf_counter() - t0, time.process_time() - c0


def _summary(xs: list[float]) -> dict[str, float]:
    # "inclusive": quartiles interpolated within the data (the default "exclusive" method
    # extrapolates past the extremes for few rounds: [1, 10] gave q1 = -1.25)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2]}


def time_variants(cfg: JointBenchConfig, variants: list[str]) -> dict[str, Any]:
    model = build(cfg)
    kw = inputs(cfg)
    ref, _, _ = call(model, kw, "plain")
    for name in variants:
        call(model, kw, name)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in ["plain", *variants]}
    cpu: dict[str, list[float]] = {v: [] for v in ["plain", *variants]}
    outs: dict[str, torch.Tensor] = {}
    order = ["plain", *variants]
    for r in range(cfg.rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            outs[name], t, c = call(model, kw, name)
            times[name].append(t)
            cpu[name].append(c)
    result: dict[str, Any] = {
        "plain_s": _summary(times["plain"]),
        "plain_cpu_s": _summary(cpu["plain"]),
    }
    for name in variants:
        result[name] = {
            "time_ratio": _summary([t / p for t, p in zip(times[name], times["plain"])]),
            # CPU time of the process: with one thread, the work done, whatever else runs on
            # a shared machine (wall time counts the waits for a core too)
            # (a sub-millisecond call's process CPU time is at the clock's resolution: no ratio
            # where plain's reads as zero or less)
            "cpu_time_ratio": _summary(
                [t / p if p > 0 else float("nan") for t, p in zip(cpu[name], cpu["plain"])]
            ),
            "max_abs_diff": float((outs[name] - ref).abs().max()),
        }
    return result


def _rss() -> dict[str, int]:
    import re

    text = Path("/proc/self/status").read_text()
    return {
        k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024  # type: ignore[union-attr]
        for k in ("VmRSS", "VmHWM")
    }


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    cfg = JointBenchConfig(**{**spec["cfg"], "latent": tuple(spec["cfg"]["latent"])})
    model = build(cfg)
    kw = inputs(cfg)
    out: dict[str, list[float]] = {v: [] for v in spec["variants"]}
    for name in spec["variants"]:
        call(model, kw, name)
    for _ in range(spec["repeats"]):
        for name in spec["variants"]:
            gc.collect()
            Path("/proc/self/clear_refs").write_text("5")
            before = _rss()["VmRSS"]
            call(model, kw, name)
            out[name].append(_rss()["VmHWM"] - before)
    return {k: statistics.median(v) for k, v in out.items()}


def memory_variants(cfg: JointBenchConfig, variants: list[str], repeats: int = 2) -> dict[str, Any]:
    spec = {"cfg": asdict(cfg), "variants": variants, "repeats": repeats, "threads": torch.get_num_threads()}  # fmt: skip
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab.tools.bench_joint", "--memory-child", json.dumps(spec)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    line = next((s for s in proc.stdout.splitlines() if s.startswith("MEMORY ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    raw = json.loads(line[len("MEMORY ") :])
    return {
        k: {"call_peak_mib": v / 2**20, "ratio_to_plain": v / raw["plain"]} for k, v in raw.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m attnlab.tools.bench_joint", description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", type=int, default=7, help="latent frames")
    p.add_argument("--latent", type=int, nargs=2, default=(32, 48), metavar=("H", "W"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        print("MEMORY " + json.dumps(_memory_child(json.loads(args.memory_child))))
        return 0
    torch.set_num_threads(args.threads)
    cfg = JointBenchConfig(
        frames=args.frames, rounds=args.rounds, latent=tuple(args.latent), layers=args.layers
    )
    S = cfg.frames * (cfg.latent[0] // 2) * (cfg.latent[1] // 2) + cfg.text
    result: dict[str, Any] = {
        "config": {**asdict(cfg), "sequence": S},
        "torch": torch.__version__,
        "threads": args.threads,
    }
    # each phase is written as soon as it is done (a slow memory phase keeps the timings)
    for key, run in (
        ("time", lambda: time_variants(cfg, ["record", "tar", "identity"])),
        ("memory", lambda: memory_variants(cfg, ["plain", "record", "tar", "full-map"])),
    ):
        result[key] = run()
        text = json.dumps(result, indent=1)
        print(text, flush=True)
        if args.out:
            Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
