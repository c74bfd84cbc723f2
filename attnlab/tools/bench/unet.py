"""The UNet benchmark's subject: configurations, variants, the peers' baselines, and the
end-to-end measurements of one pipeline (time and peak memory, as ratios to plain).

* :class:`BenchConfig`, :data:`CONFIGS`: model shape, video size, sampler ("tiny", "mid", "vc2");
* :data:`VARIANTS`, :data:`PEERS`, :data:`ALL_VARIANTS`: what is compared with plain;
* :func:`build_pipeline`: a random-weight ModelScope-layout pipeline (no downloads);
* :func:`variant_context`: enter one variant on a pipeline;
* :func:`peer_keep_maps`, :func:`peer_nnsight`: how people get the maps without attnlab;
* :func:`generate`: one seeded pipeline call;
* :func:`time_variants`: interleaved timed calls, ratios to plain per round;
* :func:`memory_variants_cpu` / :func:`memory_variants_cuda`: peak memory per variant.

Variants: ``plain`` (the untouched pipeline), ``installed`` (attnlab installed on every temporal
layer, no client selecting anything: the fast path everywhere; the output must be bit-identical
to plain), ``record`` (every temporal layer at every step, mean-reduced, streamed to a zarr
store), ``tar`` (``attnlab.TAR()``: paper default, level 0, the first ~56% of the steps),
``identity`` / ``ones`` (``attnlab.Replace(..., levels=[0])`` probes).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only). On CPU, a child process
per frame count runs every variant (see :mod:`attnlab.tools.bench.harness`): ``peak`` is the
process's peak resident memory during the call (weights, libraries and all), ``delta`` the peak
minus the resident memory just before the call.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from attnlab.tools.bench.harness import (
    cuda_peaks,
    memory_child,
    ratios,
    rss_peaks,
    summary,
    time_rounds,
    timed,
)
from attnlab.tools.bench_names import (  # noqa: F401 (exported here too)
    ALL_VARIANTS,
    CONFIGS,
    PEERS,
    VARIANTS,
    BenchConfig,
)

# ---------------------------------------------------------------------------------------
# configurations and variants: in attnlab.tools.bench_names (no torch: the parser's names)


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

    from attnlab.models.tiny import clip_tokenizer, ddim_scheduler
    from attnlab.util.quiet import quiet_library_logs

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
    from attnlab.core.control import Controller
    from attnlab.core.protocol import Client

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


def _run_variant(pipe: Any, cfg: BenchConfig, frames: int, name: str, workdir: Path):
    """One call of the pipeline under variant ``name``; returns the video."""
    with variant_context(name, pipe, workdir):
        if name == "peer-nnsight":
            video, _ = peer_nnsight(pipe, cfg, frames)
            return video
        return generate(pipe, cfg, frames)


def _with_plain_first(variants: Sequence[str]) -> list[str]:
    return ["plain", *[v for v in variants if v != "plain"]]


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
    variants = _with_plain_first(variants)
    device = pipe.unet.device
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-") as tmp:

        def call(name: str):
            dt, dc, video = timed(lambda: _run_variant(pipe, cfg, frames, name, Path(tmp)), device)
            return dt, dc, video.detach().float().cpu()

        rounds = time_rounds(call, variants, repeats, warmup, log=log, label=f"{frames} frames, ")
    ref = rounds.first["plain"]
    result: dict[str, Any] = {}
    for name in variants:
        out = rounds.first[name]
        result[name] = {
            "time_s": summary(rounds.wall[name]),
            "time_ratio": summary(ratios(rounds.wall[name], rounds.wall["plain"])),
            "cpu_s": summary(rounds.cpu[name]),
            "cpu_ratio": summary(ratios(rounds.cpu[name], rounds.cpu["plain"])),
            "identical": bool(torch.equal(out, ref)),
            "max_abs_diff": (out - ref).abs().max().item(),
        }
    return result


# ---------------------------------------------------------------------------------------
# end to end: peak memory


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The memory child's work: :func:`~attnlab.tools.bench.harness.rss_peaks` of each variant's
    pipeline call (``spec``: config, frames, variants, repeats, threads)."""
    torch.set_num_threads(spec["threads"])
    cfg = CONFIGS[spec["config"]]
    pipe = build_pipeline(cfg)
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-mem-") as tmp:
        calls = {
            name: (lambda name=name: _run_variant(pipe, cfg, spec["frames"], name, Path(tmp)))
            for name in spec["variants"]
        }
        return rss_peaks(calls, spec["repeats"])


def memory_variants_cpu(
    cfg: BenchConfig, frames: int, variants: Sequence[str], repeats: int
) -> dict[str, Any] | None:
    """Peak resident memory per variant, measured in a child process (Linux only)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    variants = _with_plain_first(variants)
    spec = dict(
        config=cfg.name,
        frames=frames,
        variants=variants,
        repeats=repeats,
        threads=torch.get_num_threads(),
    )
    raw = memory_child(f"{__name__}:_memory_child", spec)
    return _memory_result(raw, variants, "cpu-rss")


def memory_variants_cuda(
    pipe: Any, cfg: BenchConfig, frames: int, variants: Sequence[str], repeats: int
) -> dict[str, Any]:
    """Peak allocated CUDA memory per variant (``torch.cuda.max_memory_allocated``)."""
    variants = _with_plain_first(variants)
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-mem-") as tmp:
        calls = {
            name: (lambda name=name: _run_variant(pipe, cfg, frames, name, Path(tmp)))
            for name in variants
        }
        raw = cuda_peaks(calls, repeats)
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
