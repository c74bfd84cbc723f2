"""Where the UNet's time goes, and micro-benchmarks of one temporal attention layer.

* :func:`flop_share`: share of the UNet's FLOPs in temporal attention (meta tensors, any size);
* :func:`time_share`: share of one UNet call's wall time in temporal attention modules;
* :func:`layer_paths`: one temporal attention module (projections included) on the ModelScope
  level-0 shape through each processor path, ms per call;
* :func:`tar_options`: the attention core alone, for each TAR implementation that was considered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attnlab.core.protocol import Observer
from attnlab.tools.bench.harness import summary, sync, time_rounds, timed
from attnlab.tools.bench.unet import CONFIGS, BenchConfig

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
            sync(device)
            start[name] = time.perf_counter()

        def post(m, args, out, name=name, group=group):
            sync(device)
            acc[group] = acc.get(group, 0.0) + time.perf_counter() - start[name]

        handles += [
            modules[name].register_forward_pre_hook(pre),
            modules[name].register_forward_hook(post),
        ]
    try:
        with torch.no_grad():
            unet(x, t, enc)  # warm-up
            acc.clear()
            sync(device)
            t0 = time.perf_counter()
            unet(x, t, enc)
            sync(device)
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
    """Interleaved timing of ``fns`` in rotating rounds (one warm-up round); medians and IQRs
    in ms."""
    rounds = time_rounds(lambda name: (*timed(fns[name], device)[:2], None), list(fns), repeats)
    return {k: summary([t * 1e3 for t in v]) for k, v in rounds.wall.items()}


def _one_layer_site(frames: int, rows: int, heads: int, head_dim: int):
    """A level-0 site and a CFG call context for benchmarking one temporal layer alone."""
    from attnlab.core.protocol import CallContext, RunInfo
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
    from attnlab.core.processor import TemporalAttnProcessor
    from attnlab.core.protocol import Plan

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
    from attnlab.core.processor import TemporalAttnProcessor
    from attnlab.core.protocol import Plan
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
