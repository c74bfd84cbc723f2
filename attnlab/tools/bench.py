"""Benchmarks: time and peak memory of recording and editing, as ratios in one run.

``run_bench(config)`` builds a random-weight ModelScope-layout pipeline (no downloads) and runs
the untouched pipeline ("plain") interleaved with instrumented variants, several rounds,
rotating the order each round. Each round's wall time is divided by the same round's plain
time, so load from other processes shifts numerator and denominator alike; it reports the
median and interquartile range of those ratios. Variants:

* ``installed``: attnlab imported and installed on every temporal layer, no client selecting
  anything (the fast path everywhere; the output must be bit-identical to plain);
* ``record``: every temporal layer at every step, mean-reduced, streamed to a zarr store;
* ``tar``: ``attnlab.TAR()`` (paper default: level 0, the first ~56% of the steps);
* ``identity`` / ``ones``: ``attnlab.Replace(..., levels=[0])`` probes.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only). On CPU, a child
process per frame count runs every variant with glibc's mmap threshold fixed at 64 KiB (freed
tensors go straight back to the OS, so resident memory follows live tensors), resets the
kernel's resident high-water mark (``/proc/self/clear_refs``) before each call and reads
``VmHWM`` after it: ``peak`` is the process's peak resident memory during the call (weights,
libraries and all), ``delta`` the peak minus the resident memory just before the call.

Micro-benchmarks time one temporal attention module (projections included) on the ModelScope
level-0 shape through each processor path, and the attention core alone for the TAR
implementations that were considered. ``attnlab bench`` / ``python -m attnlab.tools.bench`` run it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnlab.core.protocol import Observer

# ---------------------------------------------------------------------------------------
# configurations


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration: model shape, video size, sampler and defaults."""

    name: str
    unet: dict[str, Any]
    text_hidden: int
    height: int
    width: int
    frames: tuple[int, ...]
    steps: int
    vae: str = "tiny"  # "tiny" (8 channels) or "sd" (the SD / VideoCrafter2 VAE shape)
    repeats: int = 3
    memory_repeats: int = 1
    micro_frames: tuple[int, ...] = ()
    micro_scaling: tuple[int, ...] = ()
    micro_repeats: int = 3
    guidance: float = 7.5


_MODELSCOPE = dict(
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    layers_per_block=2,
    attention_head_dim=64,
    norm_num_groups=32,
)

CONFIGS: dict[str, BenchConfig] = {
    # the test suite's tiny model: runs in CI in seconds, numbers meaningless
    "tiny": BenchConfig(
        "tiny",
        dict(
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=4,
        ),
        text_hidden=32,
        height=64,
        width=48,
        frames=(8,),
        steps=2,
        repeats=2,
    ),
    # ModelScope layer structure (2 layers per block, head dim 64, 34 temporal layers) at
    # 0.4x width and a 64x96 video: 12% of the UNet's FLOPs are temporal attention (VC2 at
    # 320x512: 10%), 18% of its CPU time
    "mid": BenchConfig(
        "mid",
        dict(_MODELSCOPE, block_out_channels=(128, 256, 512, 512), cross_attention_dim=64),
        text_hidden=64,
        height=64,
        width=96,
        frames=(16, 48),
        steps=4,
        repeats=3,
        micro_frames=(16, 48),
        micro_scaling=(16, 32, 48, 64, 128),
    ),
    # VideoCrafter2 / ModelScope full size; needs a GPU
    "vc2": BenchConfig(
        "vc2",
        dict(_MODELSCOPE, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024),
        text_hidden=1024,
        height=320,
        width=512,
        frames=(16, 48, 128),
        steps=25,
        vae="sd",
        repeats=5,
        memory_repeats=3,
        micro_frames=(16, 48, 128),
        micro_scaling=(16, 32, 48, 64, 128),
        micro_repeats=10,
    ),
}

VARIANTS = ("plain", "installed", "record", "tar", "identity", "ones")
#: how people get temporal attention maps without attnlab (same layers, steps and reduction as
#: ``record``), and attnlab's recorder keeping the maps in RAM instead of a store
PEERS = ("record-ram", "peer-ram", "peer-nnsight")
ALL_VARIANTS = VARIANTS + PEERS

#: the targets of issue 7 (end-to-end ratios against plain)
TARGETS = {
    "installed": {"time": 1.00, "identical": True},
    "record": {"time": 1.05, "memory": 1.10},
    "tar": {"time": 1.05},
    "identity": {"time": 1.00},
    "ones": {"time": 1.00},
}


def _text_encoder(hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=max(1, hidden // 32),
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def _vae(kind: str):
    from attnlab.models.tiny import kl_vae

    if kind == "tiny":
        return kl_vae()
    # Stable Diffusion's VAE shape
    return kl_vae((128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512)


def build_pipeline(
    config: str | BenchConfig, device: str = "cpu", dtype: torch.dtype | None = None, seed: int = 0
):
    """A ``TextToVideoSDPipeline`` with a random-weight UNet3D of ``config`` (no downloads)."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    from attnlab.core.quiet import quiet_library_logs
    from attnlab.models.tiny import clip_tokenizer, ddim_scheduler

    cfg = CONFIGS[config] if isinstance(config, str) else config
    torch.manual_seed(seed)
    scheduler = ddim_scheduler()
    with quiet_library_logs():  # only the known-harmless deprecation / float32 lines
        pipe = TextToVideoSDPipeline(
            unet=UNet3DConditionModel(**cfg.unet),
            vae=_vae(cfg.vae),
            text_encoder=_text_encoder(cfg.text_hidden),
            tokenizer=clip_tokenizer(),
            scheduler=scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        if cfg.vae == "sd":
            pipe.vae.enable_slicing()
        return pipe.to(device=device, dtype=dtype)


@contextlib.contextmanager
def variant_context(name: str, pipe: Any, workdir: Path) -> Iterator[None]:
    """Enter benchmark variant ``name`` on ``pipe`` (see the module docstring)."""
    import attnlab
    from attnlab.core.control import Client, Controller

    if name == "plain":
        yield
    elif name == "installed":
        with Controller.of(pipe).attached(Client()):
            yield
    elif name == "record":
        store = workdir / f"record-{time.monotonic_ns()}.zarr"
        try:
            with attnlab.record(pipe, store=store):
                yield
        finally:
            shutil.rmtree(store, ignore_errors=True)
    elif name == "tar":
        with attnlab.edit(pipe, attnlab.TAR()):
            yield
    elif name in ("identity", "ones"):
        with attnlab.edit(pipe, attnlab.Replace(name, levels=[0])):
            yield
    elif name == "record-ram":
        with attnlab.record(pipe):
            yield
    elif name == "peer-ram":
        with peer_keep_maps(pipe):
            yield
    elif name == "peer-nnsight":
        yield  # the traced call itself is the variant: see ``generate``
    else:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(ALL_VARIANTS)}")


# ---------------------------------------------------------------------------------------
# the peers' way of getting temporal attention maps


def _temporal_attention(pipe: Any) -> dict[str, torch.nn.Module]:
    """Every temporal attention module of ``pipe`` (attnlab's site table), by path."""
    from attnlab.core.sites import sites

    modules = dict(pipe.unet.named_modules())
    return {s.name: modules[s.name] for s in sites(pipe.unet)}


def _classic_maps(probs: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """``[B*h*w*heads, F, F]`` (``AttnProcessor``'s layout) -> mean over positions and heads
    per batch item, ``[B, F, F]``: the reduction of ``attnlab.record(reduce="mean")``."""
    return probs.view(batch, -1, frames, frames).mean(dim=1)


@contextlib.contextmanager
def peer_keep_maps(pipe: Any, batch: int = 2) -> Iterator[list[torch.Tensor]]:
    """The attention-map-diffusers / DAAM way: diffusers' classic ``AttnProcessor`` (which
    materialises the probabilities) on the temporal layers, and a hook on each layer's
    ``get_attention_scores`` that keeps every call's map (reduced as ``record`` does) in RAM.
    Yields the list of kept maps; restores the processors on exit."""
    from diffusers.models.attention_processor import AttnProcessor

    layers = _temporal_attention(pipe)
    kept: list[torch.Tensor] = []
    saved = {name: m.processor for name, m in layers.items()}

    def hooked(module: torch.nn.Module):
        original = module.get_attention_scores

        def get_attention_scores(query, key, attention_mask=None):
            probs = original(query, key, attention_mask)
            kept.append(_classic_maps(probs.detach(), batch, probs.shape[-1]))
            return probs

        return get_attention_scores

    try:
        for m in layers.values():
            m.set_processor(AttnProcessor())
            m.get_attention_scores = hooked(m)
        yield kept
    finally:
        for name, m in layers.items():
            m.__dict__.pop("get_attention_scores", None)
            m.set_processor(saved[name])


def _execution_order(pipe: Any, cfg: BenchConfig, frames: int) -> list[str]:
    """Temporal layers in the order one UNet call runs them (nnsight needs that order)."""
    layers = _temporal_attention(pipe)
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, n=name: order.append(n)) for name, m in layers.items()
    ]
    try:
        with torch.no_grad():
            kw = dict(device=pipe.unet.device, dtype=pipe.unet.dtype)
            pipe.unet(
                torch.zeros(1, pipe.unet.config.in_channels, frames, 8, 8, **kw),
                torch.tensor(999),
                encoder_hidden_states=torch.zeros(1, 1, pipe.unet.config.cross_attention_dim, **kw),
            )
    finally:
        for h in handles:
            h.remove()
    return order


def peer_nnsight(pipe: Any, cfg: BenchConfig, frames: int, seed: int = 0):
    """nnsight's way: trace the pipeline call with ``AttnProcessor`` on the temporal layers and
    ``.save()`` each layer's probabilities (``get_attention_scores`` inside the processor,
    reached through ``.source``), reduced as ``record`` does. Returns (video, maps)."""
    from diffusers.models.attention_processor import AttnProcessor
    from nnsight import NNsight

    layers = _temporal_attention(pipe)
    order = _execution_order(pipe, cfg, frames)
    batch = 2 if cfg.guidance > 1 else 1  # the pipeline's CFG batch
    saved_procs = {name: m.processor for name, m in layers.items()}
    try:
        for m in layers.values():
            m.set_processor(AttnProcessor())
        model = NNsight(pipe.unet)
        maps = []
        with (
            torch.no_grad(),
            model.trace(
                "a polar bear playing drums",
                fn=pipe,
                num_frames=frames,
                height=cfg.height,
                width=cfg.width,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance,
                generator=torch.Generator().manual_seed(seed),
                output_type="pt",
            ) as tracer,
        ):
            for _ in tracer.iter[: cfg.steps]:
                for name in order:
                    module = model
                    for part in name.split("."):
                        module = module[int(part)] if part.isdigit() else getattr(module, part)
                    probs = module.source.self_processor_0.source.attn_get_attention_scores_0
                    maps.append(_classic_maps(probs.output, batch, frames).save())
            result = tracer.result.save()
        return result.frames, maps
    finally:
        for name, m in layers.items():
            m.set_processor(saved_procs[name])


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def generate(pipe: Any, cfg: BenchConfig, frames: int, seed: int = 0) -> torch.Tensor:
    """One seeded pipeline call; returns the decoded video tensor."""
    return pipe(
        prompt="a polar bear playing drums",
        num_frames=frames,
        height=cfg.height,
        width=cfg.width,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).frames


def _timed_call(pipe: Any, cfg: BenchConfig, frames: int, name: str, workdir: Path):
    device = pipe.unet.device
    """Wall seconds, CPU seconds of this process (all its threads) and the video of one call.

    The CPU time is the robust measure on a shared machine (waiting for a core does not count);
    on a GPU it counts only the host's share of the work."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with variant_context(name, pipe, workdir):
        if name == "peer-nnsight":
            video, _ = peer_nnsight(pipe, cfg, frames)
        else:
            video = generate(pipe, cfg, frames)
        _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, video


# ---------------------------------------------------------------------------------------
# statistics


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles and interquartile range of ``values``."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {
        "median": statistics.median(v),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "n": len(v),
        "values": list(values),
    }


# ---------------------------------------------------------------------------------------
# end to end: time


def time_variants(
    pipe: Any,
    cfg: BenchConfig,
    frames: int,
    variants: Sequence[str] = VARIANTS,
    repeats: int = 3,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Interleaved timed runs of every variant; ratios against plain within each round."""
    variants = ["plain", *[v for v in variants if v != "plain"]]
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    outputs: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-") as tmp:
        for r in range(warmup + repeats):
            k = r % len(variants)
            for name in variants[k:] + variants[:k]:  # rotate the order each round
                dt, dc, video = _timed_call(pipe, cfg, frames, name, Path(tmp))
                outputs.setdefault(name, video.detach().float().cpu())
                if r >= warmup:
                    times[name].append(dt)
                    cpu[name].append(dc)
                if log:
                    log(
                        f"  {frames} frames, round {r - warmup + 1 if r >= warmup else 'warm-up'}: {name} {dt:.2f} s (CPU {dc:.2f} s)"
                    )
    ref = outputs["plain"]
    result: dict[str, Any] = {}
    for name in variants:
        ratios = [t / p for t, p in zip(times[name], times["plain"])]
        cpu_ratios = [t / p if p > 0 else float("nan") for t, p in zip(cpu[name], cpu["plain"])]
        diff = (outputs[name] - ref).abs().max().item()
        result[name] = {
            "time_s": summary(times[name]),
            "time_ratio": summary(ratios),
            "cpu_s": summary(cpu[name]),
            "cpu_ratio": summary(cpu_ratios),
            "identical": bool(torch.equal(outputs[name], ref)),
            "max_abs_diff": diff,
        }
    return result


# ---------------------------------------------------------------------------------------
# end to end: peak memory


def _proc_status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {
        k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024
        for k in ("VmRSS", "VmHWM")
    }


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: peak resident memory of each variant's call (see module docstring)."""
    torch.set_num_threads(spec["threads"])
    cfg = CONFIGS[spec["config"]]
    pipe = build_pipeline(cfg)
    variants: list[str] = spec["variants"]
    out: dict[str, dict[str, list[float]]] = {v: {"peak": [], "delta": []} for v in variants}
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-mem-") as tmp:
        for name in variants:  # warm-up: one call each
            _timed_call(pipe, cfg, spec["frames"], name, Path(tmp))
        for r in range(spec["repeats"]):
            k = r % len(variants)
            for name in variants[k:] + variants[:k]:
                gc.collect()
                _malloc_trim()
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
                before = _proc_status()["VmRSS"]
                _timed_call(pipe, cfg, spec["frames"], name, Path(tmp))
                peak = _proc_status()["VmHWM"]
                out[name]["peak"].append(peak)
                out[name]["delta"].append(peak - before)
    return out


def memory_variants_cpu(
    cfg: BenchConfig, frames: int, variants: Sequence[str], repeats: int
) -> dict[str, Any] | None:
    """Peak resident memory per variant, measured in a child process (Linux only)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    variants = ["plain", *[v for v in variants if v != "plain"]]
    spec = dict(
        config=cfg.name,
        frames=frames,
        variants=variants,
        repeats=repeats,
        threads=torch.get_num_threads(),
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab.tools.bench", "--memory-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((s for s in proc.stdout.splitlines() if s.startswith("MEMORY ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    raw = json.loads(line[len("MEMORY ") :])
    return _memory_result(raw, variants, "cpu-rss")


def memory_variants_cuda(
    pipe: Any, cfg: BenchConfig, frames: int, variants: Sequence[str], repeats: int
) -> dict[str, Any]:
    """Peak allocated CUDA memory per variant (``torch.cuda.max_memory_allocated``)."""
    variants = ["plain", *[v for v in variants if v != "plain"]]
    raw: dict[str, dict[str, list[float]]] = {v: {"peak": [], "delta": []} for v in variants}
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-mem-") as tmp:
        for r in range(repeats):
            k = r % len(variants)
            for name in variants[k:] + variants[:k]:
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                _timed_call(pipe, cfg, frames, name, Path(tmp))
                peak = torch.cuda.max_memory_allocated()
                raw[name]["peak"].append(peak)
                raw[name]["delta"].append(peak - before)
    return _memory_result(raw, variants, "cuda-allocated")


def _memory_result(raw: dict[str, Any], variants: Sequence[str], method: str) -> dict[str, Any]:
    res: dict[str, Any] = {"method": method}
    for name in variants:
        r = raw[name]
        res[name] = {
            "peak_mib": summary([p / 2**20 for p in r["peak"]]),
            "delta_mib": summary([d / 2**20 for d in r["delta"]]),
            "peak_ratio": summary([p / q for p, q in zip(r["peak"], raw["plain"]["peak"])]),
            "delta_ratio": summary([d / q for d, q in zip(r["delta"], raw["plain"]["delta"])]),
        }
    return res


# ---------------------------------------------------------------------------------------
# where the time goes


def _temporal_groups(unet: torch.nn.Module) -> dict[str, str]:
    from attnlab.core.sites import sites

    groups = {}
    for s in sites(unet):
        if s.block == "in":
            groups[s.name] = "transformer_in"
        elif s.level == 0:
            groups[s.name] = "level0"
        else:
            groups[s.name] = "other"
    return groups


def flop_share(config: str | BenchConfig, frames: int, batch: int = 2) -> dict[str, float]:
    """Share of the UNet's FLOPs in temporal attention (meta tensors: no memory, any size)."""
    from diffusers import UNet3DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = CONFIGS[config] if isinstance(config, str) else config
    with torch.device("meta"):
        unet = UNet3DConditionModel(**cfg.unet)
        cross = cfg.unet["cross_attention_dim"]
        x = torch.randn(batch, 4, frames, cfg.height // 8, cfg.width // 8)
        enc = torch.randn(batch, 77, cross)
        t = torch.full((batch,), 500)
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        unet(x, t, enc)
    counts = {k.split(".", 1)[-1]: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    total = counts.pop("Global")
    share = {"transformer_in": 0.0, "level0": 0.0, "other": 0.0}
    for name, group in _temporal_groups(unet).items():
        share[group] += counts.get(name, 0) / total
    return {"total_gflop": total / 1e9, "temporal": sum(share.values()), **share}


def time_share(pipe: Any, cfg: BenchConfig, frames: int, batch: int = 2) -> dict[str, float]:
    """Share of one UNet call's wall time spent in temporal attention modules (forward hooks)."""
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, frames, cfg.height // 8, cfg.width // 8, generator=g)
    enc = torch.randn(batch, 77, cfg.unet["cross_attention_dim"], generator=g)
    x, enc = x.to(device, dtype), enc.to(device, dtype)
    t = torch.full((batch,), 500, device=device)
    acc: dict[str, float] = {}
    start: dict[str, float] = {}
    handles = []
    modules = dict(unet.named_modules())
    for name, group in _temporal_groups(unet).items():

        def pre(m, args, name=name):
            _sync(device)
            start[name] = time.perf_counter()

        def post(m, args, out, name=name, group=group):
            _sync(device)
            acc[group] = acc.get(group, 0.0) + time.perf_counter() - start[name]

        handles += [
            modules[name].register_forward_pre_hook(pre),
            modules[name].register_forward_hook(post),
        ]
    try:
        with torch.no_grad():
            unet(x, t, enc)  # warm-up
            acc.clear()
            _sync(device)
            t0 = time.perf_counter()
            unet(x, t, enc)
            _sync(device)
            total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    share = {g: acc.get(g, 0.0) / total for g in ("transformer_in", "level0", "other")}
    return {"unet_call_s": total, "temporal": sum(share.values()), **share}


# ---------------------------------------------------------------------------------------
# micro-benchmarks: one temporal attention layer


class _OneLayer:
    """Stand-in controller for one layer: a fixed plan and call context."""

    def __init__(self, plan: Any, ctx: Any):
        self._plan = plan
        self.ctx = ctx

    def plan(self, name: str) -> Any:
        return self._plan

    def check_rows(self, site: Any, rows: int, frames: int) -> Any:
        return self.ctx


class _MeanObserver(Observer):
    """What a mean-reducing recorder did with a layer's probabilities before reductions were
    fused into the blocked loop: take the full ``[rows, heads, F, F]`` tensor, then reduce."""

    stage = "observe"
    logits = False

    def observe(self, site: Any, ctx: Any, logits: Any, probs: torch.Tensor) -> None:
        self.last = probs.mean(dim=(0, 1))


class _FullObserver(Observer):
    """Takes the full tensors and does nothing with them (the cost of making them)."""

    stage = "observe"

    def __init__(self, logits: bool):
        self.logits = logits

    def observe(self, site: Any, ctx: Any, logits: Any, probs: torch.Tensor) -> None:
        pass


class _SumsObserver(Observer):
    """What a mean-reducing recorder does now: position sums accumulated block by block."""

    stage = "observe"
    logits = False

    def sums_only(self, site: Any, ctx: Any) -> bool:
        return True

    def observe_sums(self, site: Any, ctx: Any, logits: Any, probs: Any, positions: int) -> None:
        self.last = probs.sum(dim=(0, 1)) / (positions * probs.shape[0] * probs.shape[1])


def _layer(channels: int, heads: int, device: str, dtype: torch.dtype):
    """A temporal ``Attention`` as UNet3D builds it (no q/k/v bias, output bias)."""
    from diffusers.models.attention_processor import Attention

    from attnlab.core.processor import HookPoint

    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False)
    attn.add_module("hook_logits", HookPoint())
    attn.add_module("hook_probs", HookPoint())
    return attn.eval().to(device=device, dtype=dtype)


def _bench(fns: dict[str, Callable[[], Any]], repeats: int, device: str) -> dict[str, Any]:
    """Interleaved timing of ``fns`` (one warm-up call each); medians and IQRs in ms."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: summary(v) for k, v in times.items()}


def _one_layer_site(frames: int, rows: int, heads: int, head_dim: int):
    """A level-0 site and a CFG call context for benchmarking one temporal layer alone."""
    from attnlab.core.control import CallContext, RunInfo
    from attnlab.core.sites import Site

    site = Site("layer", "unet3d", "down", 0, 0, heads, head_dim, "none", None)
    ctx = CallContext(
        RunInfo(0, cfg=True), 0, 900.0, 1000, batch=2, frames=frames, latent=(rows // 2, 1)
    )
    return site, ctx


def layer_paths(
    frames: int,
    rows: int = 5120,
    channels: int = 320,
    heads: int = 5,
    repeats: int = 3,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Time one temporal attention module through each processor path (ms per call)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    import attnlab
    from attnlab.core.control import Plan
    from attnlab.core.processor import TemporalAttnProcessor

    torch.manual_seed(0)
    attn = _layer(channels, heads, device, dtype)
    x = torch.randn(rows, frames, channels, device=device, dtype=dtype)
    site, ctx = _one_layer_site(frames, rows, heads, channels // heads)
    procs: dict[str, tuple[Any, bool]] = {  # name -> (plan, force the whole-tensor path)
        "explicit (hooks)": (None, True),
        # recording, stage by stage (blocked path)
        "explicit, nothing kept": (Plan(), False),
        "+ probability tensor": (Plan(observe=[_FullObserver(logits=False)]), False),
        "+ logits copy": (Plan(observe=[_FullObserver(logits=True)]), False),
        "record: full tensor, then mean (before)": (Plan(observe=[_MeanObserver()]), False),
        "record: fused position sums (now)": (Plan(observe=[_SumsObserver()]), False),
        "tar": (Plan(bias=[attnlab.TAR()]), False),
        "tar, whole tensors (before)": (Plan(bias=[attnlab.TAR()]), True),
        "identity": (Plan(replace=[attnlab.Replace("identity")]), False),
        "identity, explicit (before)": (Plan(replace=[attnlab.Replace("identity")]), True),
        "ones": (Plan(replace=[attnlab.Replace("ones")]), False),
        "ones, explicit (before)": (Plan(replace=[attnlab.Replace("ones")]), True),
    }
    default = AttnProcessor2_0()

    def call(plan: Any, whole: bool) -> Callable[[], Any]:
        proc = TemporalAttnProcessor(_OneLayer(plan, ctx), site, default)

        def fn():
            with torch.no_grad():
                if whole:
                    return proc.explicit(attn, x, None, None, plan, hooked=True)
                return proc(attn, x)

        return fn

    def fast():
        with torch.no_grad():
            return default(attn, x)

    fns = {"fast (default SDPA)": fast, **{k: call(*v) for k, v in procs.items()}}
    res = _bench(fns, repeats, device)
    ref = res["fast (default SDPA)"]["median"]
    for v in res.values():
        v["ratio"] = v["median"] / ref
    return {"frames": frames, "rows": rows, "channels": channels, "heads": heads, "paths": res}


def tar_options(
    frames: int,
    rows: int = 5120,
    heads: int = 5,
    head_dim: int = 64,
    repeats: int = 3,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    flex: bool = True,
) -> dict[str, Any]:
    """The attention core alone (q, k, v as the processor gets them): ways to compute TAR.

    Every option computes ``softmax(l + rowmax(l) * dA) @ v`` with ``l = q k^T / sqrt(d)``; the
    row max needs ``l`` itself, so the fused options (SDPA with a float mask, flex_attention
    with a score modifier) compute ``q k^T`` twice. "blocked" is the processor's own code.
    """
    import attnlab
    from attnlab.core.control import Plan
    from attnlab.core.processor import TemporalAttnProcessor
    from attnlab.data.metrics import gaussian_prior
    from attnlab.edits import regularise

    torch.manual_seed(0)
    shape = (rows, frames, heads, head_dim)  # projections viewed as [rows, heads, F, d]
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).transpose(1, 2) for _ in range(3))
    dA = torch.as_tensor(gaussian_prior(frames, 1.0), device=device, dtype=dtype)
    scale = head_dim**-0.5
    site, ctx = _one_layer_site(frames, rows, heads, head_dim)
    plan = Plan(bias=[attnlab.TAR()])  # level 0: sigma 1, the same dA
    proc = TemporalAttnProcessor(_OneLayer(plan, ctx), site, None)

    def logits_all() -> torch.Tensor:
        return torch.matmul(q, k.transpose(-1, -2)).mul_(scale)

    def whole():
        p = regularise(logits_all(), dA).softmax(-1, dtype=torch.float32).to(dtype)
        return torch.matmul(p, v)

    def blocked():
        return proc._blocked(q, k, v, None, scale, plan, ctx).transpose(1, 2)

    def sdpa_mask():
        m = logits_all().amax(-1, keepdim=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m * dA)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v)

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "sdpa, no TAR (default)": sdpa,
        "whole tensors (before)": whole,
        "blocked per head (kept)": blocked,
        "sdpa + float attn_mask": sdpa_mask,
    }
    notes: dict[str, str] = {}
    if flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            compiled = torch.compile(flex_attention, dynamic=False)

            def flex_fn():
                m = logits_all().amax(-1)

                def score_mod(score, b, h, qi, ki):
                    return score + m[b, h, qi] * dA[qi, ki]

                return compiled(q, k, v, score_mod=score_mod)

            t0 = time.perf_counter()
            flex_fn()
            notes["flex_compile_s"] = f"{time.perf_counter() - t0:.1f}"
            fns["flex_attention + score_mod"] = flex_fn
        except Exception as err:  # no compiler, unsupported build, ...
            notes["flex"] = f"unavailable: {type(err).__name__}: {str(err)[:200]}"
    with torch.no_grad():
        ref = whole()
        res = _bench(fns, repeats, device)
        base = res["sdpa, no TAR (default)"]["median"]
        for name, fn in fns.items():
            res[name]["ratio"] = res[name]["median"] / base
            if name != "sdpa, no TAR (default)":
                out = fn()
                res[name]["exact"] = bool(torch.equal(out, ref))
                res[name]["max_abs_diff"] = (out.float() - ref.float()).abs().max().item()
    return {"frames": frames, "rows": rows, "heads": heads, "options": res, "notes": notes}


# ---------------------------------------------------------------------------------------
# the whole benchmark


def _machine(device: str) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    with contextlib.suppress(Exception):
        import diffusers

        info["diffusers"] = diffusers.__version__
    with contextlib.suppress(Exception):
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_bench(
    config: str = "tiny",
    repeats: int | None = None,
    out: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    frames: Sequence[int] | None = None,
    variants: Sequence[str] = VARIANTS,
    memory: bool | None = None,
    micro: bool | None = None,
    end_to_end: bool = True,
    flex: bool = True,
    threads: int | None = None,
    warmup: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the benchmark ``config`` ("tiny", "mid" or "vc2"); returns (and with ``out``
    writes as JSON) every measurement, with medians and IQRs of the ratios to plain.

    ``memory`` / ``micro`` default to on except for "tiny"; ``end_to_end=False`` runs the
    micro-benchmarks only; ``dtype`` defaults to float16 on CUDA and float32 on CPU;
    ``threads`` sets torch's CPU threads for the run (on a shared machine 1 thread gives far
    steadier numbers). Ratios are per round (plain and variants interleaved, ``warmup``
    untimed rounds first). ``out`` is rewritten after every stage (partial results survive).
    """
    if threads is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run_bench(
                config,
                repeats,
                out,
                device=device,
                dtype=dtype,
                frames=frames,
                variants=variants,
                memory=memory,
                micro=micro,
                end_to_end=end_to_end,
                flex=flex,
                warmup=warmup,
                verbose=verbose,
            )
        finally:
            torch.set_num_threads(previous)
    cfg = CONFIGS[config]
    if cfg.vae == "sd" and torch.device(device).type == "cpu":
        raise ValueError(
            f"config {cfg.name!r} is full size: run it on a GPU (device='cuda'); "
            f"on CPU use 'mid' (its FLOP shares: attnlab.tools.bench.flop_share({cfg.name!r}, 16))"
        )
    repeats = repeats or cfg.repeats
    frames = tuple(frames or cfg.frames)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
    memory = (cfg.name != "tiny") if memory is None else memory
    micro = (cfg.name != "tiny") if micro is None else micro
    log = print if verbose else None
    result: dict[str, Any] = {
        "config": cfg.name,
        "settings": {
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "unet"},
            "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.unet.items()},
            "repeats": repeats,
            "frames": list(frames),
            "dtype": str(dtype).replace("torch.", ""),
            "variants": list(variants),
        },
        "machine": _machine(device),
        "command": f"attnlab bench --config {cfg.name} --repeats {repeats} --device {device}"
        f" --threads {torch.get_num_threads()}",
        "flop_share": {f: flop_share(cfg, f) for f in frames},
    }
    t_start = time.perf_counter()

    def save() -> None:
        result["targets"] = check_targets(result)
        result["wall_s"] = time.perf_counter() - t_start
        if out is not None:
            Path(out).write_text(json.dumps(result, indent=1, default=str))

    if end_to_end:
        pipe = build_pipeline(cfg, device=device, dtype=dtype)
        result["time_share"] = {f: time_share(pipe, cfg, f) for f in frames}
        result["end_to_end"] = {}
        for f in frames:
            if log:
                log(f"[bench] {cfg.name}: {f} frames, {repeats} rounds")
            entry = {"time": time_variants(pipe, cfg, f, variants, repeats, warmup, log=log)}
            result["end_to_end"][f] = entry
            save()
            if memory:
                if log:
                    log(f"[bench] {cfg.name}: {f} frames, peak memory")
                if torch.device(device).type == "cuda":
                    entry["memory"] = memory_variants_cuda(
                        pipe, cfg, f, variants, cfg.memory_repeats
                    )
                else:
                    entry["memory"] = memory_variants_cpu(cfg, f, variants, cfg.memory_repeats)
                save()
        del pipe
        gc.collect()
    if micro:
        if log:
            log("[bench] per-layer micro-benchmarks")
        micro_res: dict[str, list[Any]] = {"level0": [], "tar_options": [], "scaling": []}
        result["micro"] = micro_res
        for f in cfg.micro_frames:
            micro_res["level0"].append(
                layer_paths(f, repeats=cfg.micro_repeats, device=device, dtype=dtype)
            )
            save()
        for f in cfg.micro_frames:
            micro_res["tar_options"].append(
                tar_options(f, repeats=cfg.micro_repeats, device=device, dtype=dtype, flex=flex)
            )
            save()
        for f in cfg.micro_scaling:
            rows = _scaling_rows(f, device)
            micro_res["scaling"].append(
                layer_paths(f, rows=rows, repeats=cfg.micro_repeats, device=device, dtype=dtype)
            )
            save()
    save()
    if log:
        log(format_report(result))
    return result


def _scaling_rows(frames: int, device: str) -> int:
    """Rows for the frame-count sweep: the level-0 5120 on GPU; on CPU rows x F <= 5120 x 48."""
    if torch.device(device).type == "cuda":
        return 5120
    return min(5120, 5120 * 48 // frames)


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 7 against the medians measured, per frame count."""
    checks: dict[str, Any] = {}
    for f, entry in result.get("end_to_end", {}).items():
        for name, target in TARGETS.items():
            t = entry["time"].get(name)
            if t is None:
                continue
            c: dict[str, Any] = {
                "time_ratio": t["time_ratio"]["median"],
                "time_target": target["time"],
            }
            c["time_met"] = c["time_ratio"] <= max(target["time"], 1.0) + _noise(t)
            if "identical" in target:
                c["identical"] = t["identical"]
            mem = (entry.get("memory") or {}).get(name)
            if "memory" in target and mem is not None:
                c["peak_ratio"] = mem["peak_ratio"]["median"]
                c["delta_ratio"] = mem["delta_ratio"]["median"]
                c["memory_target"] = target["memory"]
                c["memory_met"] = c["peak_ratio"] <= target["memory"]
            checks[f"{name}@{f}"] = c
    return checks


def _noise(t: dict[str, Any]) -> float:
    """Half the IQR of the ratio: a 1.00x target is met if 1.00 is within the noise."""
    return t["time_ratio"]["iqr"] / 2


# ---------------------------------------------------------------------------------------
# report


def _fmt_ratio(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f}x [{s['q1']:.3f}-{s['q3']:.3f}]"


def format_report(result: dict[str, Any]) -> str:
    """The results as markdown tables."""
    lines = [f"## attnlab bench: {result['config']}", ""]
    m = result["machine"]
    lines.append(
        f"{m.get('cpu', '?')}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, device {m['device']}"
    )
    if "time_share" not in result:
        result = {**result, "flop_share": {}}
    lines += ["", "Temporal attention share of one UNet call (CFG batch 2):", ""]
    lines += [
        "| frames | FLOPs: temporal (transformer_in / level 0 / other) | wall time: temporal (transformer_in / level 0 / other) | UNet call |",
        "|---|---|---|---|",
    ]
    for f in result["flop_share"]:
        fs = result["flop_share"][f]
        ts = result.get("time_share", {}).get(f)
        tcol = (
            f"{ts['temporal']:.1%} ({ts['transformer_in']:.1%} / {ts['level0']:.1%} / {ts['other']:.1%})"
            if ts
            else "-"
        )
        call = f"{ts['unet_call_s']:.2f} s" if ts else "-"
        lines.append(
            f"| {f} | {fs['temporal']:.1%} ({fs['transformer_in']:.1%} / {fs['level0']:.1%} / {fs['other']:.1%}) | {tcol} | {call} |"
        )
    for f, entry in result.get("end_to_end", {}).items():
        lines += ["", f"End to end, {f} frames (ratio to plain: median [q1-q3] over rounds):", ""]
        mem = entry.get("memory")
        head = "| variant | time (median s) | time ratio | CPU time ratio | output vs plain |"
        sep = "|---|---|---|---|---|"
        if mem:
            head += " peak memory ratio | peak MiB | call's working memory ratio | working MiB |"
            sep += "---|---|---|---|"
        lines += [head, sep]
        for name, t in entry["time"].items():
            same = "identical" if t["identical"] else f"max diff {t['max_abs_diff']:.2g}"
            cpu_ratio = _fmt_ratio(t["cpu_ratio"]) if "cpu_ratio" in t else "-"
            row = f"| {name} | {t['time_s']['median']:.2f} | {_fmt_ratio(t['time_ratio'])} | {cpu_ratio} | {same} |"
            if mem:
                mm = mem[name]
                row += (
                    f" {_fmt_ratio(mm['peak_ratio'])} | {mm['peak_mib']['median']:.0f} |"
                    f" {_fmt_ratio(mm['delta_ratio'])} | {mm['delta_mib']['median']:.0f} |"
                )
            lines.append(row)
    micro = result.get("micro")
    if micro:
        for layer in micro["level0"]:
            lines += [
                "",
                f"One temporal attention layer, {layer['rows']} rows x {layer['frames']} frames x "
                f"{layer['channels']} channels ({layer['heads']} heads), ms per call:",
                "",
                "| path | ms (median) | IQR | ratio to fast |",
                "|---|---|---|---|",
            ]
            for name, s in layer["paths"].items():
                lines.append(f"| {name} | {s['median']:.1f} | {s['iqr']:.1f} | {s['ratio']:.2f}x |")
        for opt in micro["tar_options"]:
            lines += [
                "",
                f"TAR attention core only, {opt['rows']} rows x {opt['heads']} heads x {opt['frames']} frames, ms:",
                "",
                "| option | ms (median) | ratio to SDPA without TAR | vs whole-tensor TAR (before) |",
                "|---|---|---|---|",
            ]
            for name, s in opt["options"].items():
                exact = (
                    "-"
                    if "exact" not in s
                    else ("bit-identical" if s["exact"] else f"max diff {s['max_abs_diff']:.1e}")
                )
                lines.append(f"| {name} | {s['median']:.1f} | {s['ratio']:.2f}x | {exact} |")
            if opt["notes"]:
                lines.append(f"\nnotes: {opt['notes']}")
        if micro["scaling"]:
            names = list(micro["scaling"][0]["paths"])
            lines += ["", "Frame-count scaling, one level-0 layer, ratio to fast (ms of fast):", ""]
            lines += [
                "| frames | rows | " + " | ".join(names) + " |",
                "|---" * (len(names) + 2) + "|",
            ]
            for layer in micro["scaling"]:
                p = layer["paths"]
                cells = [f"{p[n]['ratio']:.2f}x" for n in names]
                cells[0] = f"{p[names[0]]['median']:.0f} ms"
                lines.append(f"| {layer['frames']} | {layer['rows']} | " + " | ".join(cells) + " |")
    if result.get("targets"):
        lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
        for key, c in result["targets"].items():
            meas = f"time {c['time_ratio']:.3f}x (target {c['time_target']:.2f}x)"
            met = c["time_met"]
            if "identical" in c:
                meas += ", output " + ("identical" if c["identical"] else "DIFFERS")
                met = met and c["identical"]
            if "peak_ratio" in c:
                meas += f", peak memory {c['peak_ratio']:.3f}x (target {c['memory_target']:.2f}x; working memory {c['delta_ratio']:.2f}x)"
                met = met and c["memory_met"]
            lines.append(f"| {key} | {meas} | {'yes' if met else 'NO'} |")
    lines.append(f"\n(wall time of the benchmark: {result.get('wall_s', 0):.0f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# command line


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``attnlab bench`` (pass a subparser to add them there)."""
    p = parser or argparse.ArgumentParser(prog="attnlab bench", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default per config)")
    p.add_argument(
        "--frames", type=int, nargs="*", default=None, help="frame counts (default per config)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (vc2 needs cuda)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--variants",
        nargs="*",
        default=list(VARIANTS),
        choices=list(ALL_VARIANTS),
        help=f"default: {' '.join(VARIANTS)}; the peers' ways: {' '.join(PEERS)}",
    )
    p.add_argument("--no-memory", dest="memory", action="store_const", const=False, default=None)
    p.add_argument("--no-micro", dest="micro", action="store_const", const=False, default=None)
    p.add_argument(
        "--micro-only", dest="end_to_end", action="store_false", help="per-layer benchmarks only"
    )
    p.add_argument("--no-flex", dest="flex", action="store_false", help="skip flex_attention")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write all measurements as JSON here")
    p.add_argument("--report", default=None, help="write the markdown tables here")
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``attnlab bench`` from parsed arguments."""
    result = run_bench(
        args.config,
        args.repeats,
        args.out,
        device=args.device,
        dtype=args.dtype,
        frames=args.frames,
        variants=args.variants,
        memory=args.memory,
        micro=args.micro,
        end_to_end=args.end_to_end,
        flex=args.flex,
        threads=args.threads,
    )
    if args.report:
        Path(args.report).write_text(format_report(result) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attnlab.tools.bench [--config mid] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-child"]:
        print("MEMORY " + json.dumps(_memory_child(json.loads(argv[1]))), flush=True)
        return 0
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
