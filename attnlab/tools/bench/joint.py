"""Benchmark of attnlab on full-3D attention: frame-map recording and 3D TAR vs the untouched
transformer (time ratios: wall and CPU time) and peak memory of a frame-map recording vs plain.

* :class:`JointBenchConfig`: the transformer's size and the number of rounds;
* :func:`build` / :func:`inputs`: the random-weight transformer and one latent video's inputs;
* :func:`variant`: enter one variant on the transformer;
* :func:`call`: one call under a variant (output, wall and CPU seconds);
* :func:`time_variants`: time ratios to plain per round, and each variant's output difference;
* :func:`memory_variants`: each call's peak resident memory, in a child process;
* :func:`main`: ``python -m attnlab.tools.bench.joint`` (writes the result as JSON).

A random-weight ``CogVideoXTransformer3DModel`` (CogVideoX-2b's layer structure: joint text +
video attention, 3D RoPE, head dim 64, at reduced width and depth) is called on one latent
video, without a pipeline. Variants, interleaved in rotating order over several rounds in one
process (each round's ratio to that round's plain call; median and quartiles reported, for
wall time and for the process's CPU time -- the latter is the robust one on a shared machine
with ``--threads 1``):

* ``plain``: the untouched transformer;
* ``record``: ``attnlab.record`` of every layer, per-head frame maps (and text mass), by the
  default path, the split one (one pass: the split path's merged output is the layer output,
  within float32 rounding of the model's call, and the masses come with it);
* ``record-exact``: the same under ``joint_paths(record="exact")`` (the model's own attention
  call for the output, bit-identical; the masses by one more fused call with the one-hot frame
  matrix as the value);
* ``tar`` / ``tar-head``: ``attnlab.TAR(1.0, t_min=None)`` (max mode "row" / "head") on every
  layer, by the split path (the default); ``tar-blocked``: the same under
  ``joint_paths(edit="blocked")``;
* ``identity``: ``attnlab.Replace("identity")`` on every layer (split path);
  ``identity-blocked``: blocked;
* ``sliding`` / ``blend``: ``attnlab.SlidingWindow(4, 2)`` / ``attnlab.SpectralBlend(4, 0.25)``
  on every layer (split path); ``sliding-blocked`` / ``blend-blocked``: blocked (not in the
  default set: ``--variants``);
* ``full-map`` (memory only): the naive way, for comparison -- each layer's ``S x S`` softmax
  materialised (float32) and summed over frame blocks.

Peak memory: a child process with glibc's mmap threshold at 64 KiB (so the resident set follows
live tensors) resets the kernel's high-water mark before each call and reads ``VmHWM`` after
(:mod:`attnlab.tools.bench.harness`).

    python3 -m attnlab.tools.bench.joint --threads 1 --out bench-joint.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.core.joint import joint_paths
from attnlab.tools.bench.harness import (
    memory_child,
    ratios,
    rss_peaks,
    summary,
    time_rounds,
    timed,
)


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


@contextlib.contextmanager
def _stacked(*contexts: Any) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


def variant(model: torch.nn.Module, name: str):
    import attnlab

    if name == "plain":
        return contextlib.nullcontext()
    if name == "record":
        return attnlab.record(model, reduce="head")
    if name == "record-exact":
        return _stacked(joint_paths(record="exact"), attnlab.record(model, reduce="head"))
    if name in ("tar", "tar-blocked"):
        path = joint_paths(edit="blocked" if name.endswith("blocked") else "split")
        return _stacked(path, attnlab.edit(model, attnlab.TAR(1.0, t_min=None)))
    if name == "tar-head":
        return attnlab.edit(model, attnlab.TAR(1.0, t_min=None, max_mode="head"))
    if name in ("identity", "identity-blocked"):
        path = joint_paths(edit="blocked" if name.endswith("blocked") else "split")
        return _stacked(path, attnlab.edit(model, attnlab.Replace("identity")))
    if name in ("sliding", "sliding-blocked", "blend", "blend-blocked"):
        path = joint_paths(edit="blocked" if name.endswith("blocked") else "split")
        edit = (
            attnlab.SlidingWindow(4, 2)
            if name.startswith("sliding")
            else attnlab.SpectralBlend(4, 0.25)
        )
        return _stacked(path, attnlab.edit(model, edit))
    if name == "full-map":
        return _full_map()
    raise ValueError(f"unknown variant {name!r}")


def call(
    model: torch.nn.Module, kw: dict[str, Any], name: str
) -> tuple[torch.Tensor, float, float]:
    """One call under variant ``name``: (output, wall seconds, CPU seconds of this process)."""
    with torch.no_grad(), variant(model, name):
        t, c, out = timed(lambda: model(**kw)[0])
        return out, t, c


def time_variants(cfg: JointBenchConfig, variants: list[str]) -> dict[str, Any]:
    """``cfg.rounds`` rotating rounds of plain and ``variants`` after one warm-up round: each
    variant's wall and CPU time ratios to plain and its largest output difference to plain."""
    model = build(cfg)
    kw = inputs(cfg)

    def timed_call(name: str) -> tuple[float, float, torch.Tensor]:
        out, t, c = call(model, kw, name)
        return t, c, out

    rounds = time_rounds(timed_call, ["plain", *variants], cfg.rounds)
    result: dict[str, Any] = {
        "plain_s": summary(rounds.wall["plain"]),
        "plain_cpu_s": summary(rounds.cpu["plain"]),
    }
    ref = rounds.first["plain"]
    for name in variants:
        result[name] = {
            "time_ratio": summary(ratios(rounds.wall[name], rounds.wall["plain"])),
            # CPU time of the process: with one thread, the work done, whatever else runs on
            # a shared machine (wall time counts the waits for a core too)
            "cpu_time_ratio": summary(ratios(rounds.cpu[name], rounds.cpu["plain"])),
            "max_abs_diff": float((rounds.first[name] - ref).abs().max()),
        }
    return result


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The memory child's work: :func:`~attnlab.tools.bench.harness.rss_peaks` of each
    variant's call (``spec``: cfg, variants, repeats, threads)."""
    torch.set_num_threads(spec["threads"])
    cfg = JointBenchConfig(**{**spec["cfg"], "latent": tuple(spec["cfg"]["latent"])})
    model = build(cfg)
    kw = inputs(cfg)
    calls = {name: (lambda name=name: call(model, kw, name)) for name in spec["variants"]}
    return rss_peaks(calls, spec["repeats"])


def memory_variants(cfg: JointBenchConfig, variants: list[str], repeats: int = 2) -> dict[str, Any]:
    """Each variant's call: the median over ``repeats`` of its peak resident memory minus the
    resident memory before it (MiB), and that median's ratio to plain's (``variants`` must
    include "plain")."""
    spec = {"cfg": asdict(cfg), "variants": variants, "repeats": repeats, "threads": torch.get_num_threads()}  # fmt: skip
    raw = memory_child("attnlab.tools.bench.joint:_memory_child", spec)  # also under -m
    median = {k: statistics.median(v["delta"]) for k, v in raw.items()}
    return {
        k: {"call_peak_mib": v / 2**20, "ratio_to_plain": v / median["plain"]}
        for k, v in median.items()
    }


#: the variants timed and measured by default (``variant``)
TIME_VARIANTS = ["record", "record-exact", "tar", "tar-head", "tar-blocked", "identity", "identity-blocked"]  # fmt: skip
MEMORY_VARIANTS = ["record", "record-exact", "tar", "tar-blocked", "identity", "full-map"]


def main(argv: list[str] | None = None) -> int:
    """``python -m attnlab.tools.bench.joint [--threads 1] [--out FILE] ...``."""
    p = argparse.ArgumentParser(prog="python3 -m attnlab.tools.bench.joint", description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", type=int, default=7, help="latent frames")
    p.add_argument("--latent", type=int, nargs=2, default=(32, 48), metavar=("H", "W"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--variants", nargs="+", default=TIME_VARIANTS, help="timed against plain")
    p.add_argument("--memory-variants", nargs="+", default=MEMORY_VARIANTS, help="plain is added")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
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
        ("time", lambda: time_variants(cfg, args.variants)),
        ("memory", lambda: memory_variants(cfg, ["plain", *args.memory_variants])),
    ):
        result[key] = run()
        text = json.dumps(result, indent=1)
        print(text, flush=True)
        if args.out:
            Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
