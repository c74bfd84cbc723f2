"""Reductions fused into the blocked explicit path, and the cache-derived block size."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import attnlab
import attnlab.core.processor as processor
from attnlab.core import dims as D
from attnlab.core.control import CallContext, Plan, RunInfo
from attnlab.core.processor import HookPoint, TemporalAttnProcessor, _PositionSums
from attnlab.core.protocol import Observer
from attnlab.core.sites import Site

# float32 sums over a few hundred rows in two different orders (block by block vs one
# reduction over the whole tensor) differ by a few ulp of values <= 1: 1e-6 leaves a margin
SUM_ORDER_ATOL = 1e-6


class _Fixed:
    """One layer's controller: a fixed plan and a CFG call context with ``batch`` items."""

    def __init__(self, plan, frames, batch=2):
        self._plan = plan
        self.ctx = CallContext(
            RunInfo(0, cfg=True), 0, 900.0, 1000, batch=batch, frames=frames, latent=(3, 2)
        )

    def plan(self, name):
        return self._plan

    def check_rows(self, site, rows, frames):
        return self.ctx


class _Spy(Observer):
    """A recorder-like observer that takes sums when ``sums`` is set, else full maps."""

    stage = "observe"
    logits = True

    def __init__(self, sums: bool):
        self.sums = sums
        self.calls: list[str] = []

    def sums_only(self, site, ctx):
        return self.sums

    def observe(self, site, ctx, logits, probs):
        self.calls.append("observe")
        self.full = (logits.clone(), probs.clone())

    def observe_sums(self, site, ctx, logits, probs, positions):
        self.calls.append("observe_sums")
        self.summed = (logits.clone(), probs.clone(), positions)


def _layer(dim=32, heads=4):
    torch.manual_seed(0)
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()
    attn.add_module("hook_logits", HookPoint())
    attn.add_module("hook_probs", HookPoint())
    return attn


def _run(plan, x, batch=2):
    attn = _layer()
    site = Site("t", "test", "down", 0, 0, attn.heads, 8, "none", None)
    proc = TemporalAttnProcessor(_Fixed(plan, x.shape[1], batch), site, AttnProcessor2_0())
    with torch.no_grad():
        return proc(attn, x)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 rows over batch items of 6 rows: blocks straddle item boundaries."""
    monkeypatch.setitem(processor.BLOCK_ELEMENTS, "cpu", 5 * 7 * 7)


def test_position_sums_equal_brute_force_sums_across_item_boundaries():
    torch.manual_seed(1)
    rows, heads, frames, batch = 24, 3, 7, 4
    x = torch.rand(rows, heads, frames, frames)
    acc = _PositionSums(batch, rows, heads, frames, x.device)
    for a, b in [(0, 5), (5, 10), (10, 11), (11, 24)]:  # uneven blocks, some across items
        for h in range(heads):
            acc.add(x[a:b, h], a, b, h)
    ref = x.view(batch, rows // batch, heads, frames, frames).sum(dim=1)
    assert acc.positions == rows // batch
    torch.testing.assert_close(acc.total, ref, rtol=0, atol=SUM_ORDER_ATOL)
    with pytest.raises(RuntimeError, match="do not split"):
        _PositionSums(5, rows, heads, frames, x.device)


@pytest.mark.parametrize("bias", [False, True])
def test_summing_observer_gets_the_sums_of_the_full_maps(small_blocks, bias):
    x = torch.randn(12, 7, 32)  # batch 2 (CFG) x 6 positions
    edits = [attnlab.TAR(sigma=1.0)] if bias else []
    full, summed = _Spy(sums=False), _Spy(sums=True)
    out_full = _run(Plan(bias=edits, observe=[full]), x)
    out_sums = _run(Plan(bias=list(edits), observe=[summed]), x)
    # the attention output does not depend on how observers reduce
    assert torch.equal(out_full, out_sums)
    assert full.calls == ["observe"] and summed.calls == ["observe_sums"]
    logits, probs = full.full
    s_logits, s_probs, positions = summed.summed
    assert positions == 6
    ref = probs.view(2, 6, 4, 7, 7).sum(dim=1)
    torch.testing.assert_close(s_probs, ref, rtol=0, atol=SUM_ORDER_ATOL)
    # logits are summed before the bias edits, as hook_logits and recorders see them
    ref_logits = logits.view(2, 6, 4, 7, 7).sum(dim=1)
    torch.testing.assert_close(s_logits, ref_logits, rtol=0, atol=SUM_ORDER_ATOL * 10)


def test_no_full_tensor_when_every_observer_sums(small_blocks, monkeypatch):
    """With only summing observers, no ``[rows, heads, F, F]`` buffer is allocated."""
    x = torch.randn(12, 7, 32)
    shapes: list[tuple[int, ...]] = []
    real = torch.Tensor.new_empty

    def spy(self, size, *args, **kwargs):
        shapes.append(tuple(size))
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "new_empty", spy)
    _run(Plan(observe=[_Spy(sums=True)]), x)
    assert (12, 4, 7, 7) not in shapes
    shapes.clear()
    _run(Plan(observe=[_Spy(sums=True), _Spy(sums=False)]), x)
    assert shapes.count((12, 4, 7, 7)) == 2  # logits and probs for the full observer


@pytest.mark.parametrize("reduce", ["mean", "head"])
def test_recorder_fused_reduction_equals_the_whole_tensor_reduction(ms_pipe, reduce, small_blocks):
    """The recorder's maps through the fused sums equal those through full tensors
    (forced by a hook on ``hook_probs``, which takes the whole-tensor path)."""
    kw = dict(prompt="a cat", num_frames=6, num_inference_steps=2, height=64, width=64)

    def record(force_whole: bool):
        handles = []
        with attnlab.record(ms_pipe, levels=[0, 1], reduce=reduce, logits=True) as rec:
            if force_whole:
                for m in ms_pipe.unet.modules():
                    if isinstance(getattr(m, "hook_probs", None), HookPoint):
                        handles.append(m.hook_probs.register_forward_hook(lambda *a: None))
            try:
                video = ms_pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
            finally:
                for h in handles:
                    h.remove()
        return video.frames, rec.to_xarray()

    v_fused, fused = record(False)
    v_whole, whole = record(True)
    assert v_fused.shape == v_whole.shape
    for var in (D.PROBS, D.LOGITS):
        a, b = fused[var].values, whole[var].values
        assert a.shape == b.shape
        assert abs(a - b)[~torch.isnan(torch.as_tensor(b)).numpy()].max() < 1e-5, var
    rows = fused[D.PROBS].sum(D.KEY)
    if reduce == "head":
        rows = rows.where(~rows.isnull(), 1.0)  # NaN-padded heads
    assert float(abs(rows - 1).max()) < 1e-5


def test_block_elements_follow_the_cache_and_the_environment(monkeypatch):
    monkeypatch.setattr(processor, "l2_cache_bytes", lambda: 512 << 10)
    assert processor.cpu_block_elements() == 1 << 17
    monkeypatch.setattr(processor, "l2_cache_bytes", lambda: 2 << 20)
    assert processor.cpu_block_elements() == 1 << 19
    monkeypatch.setattr(processor, "l2_cache_bytes", lambda: 64 << 30)
    assert processor.cpu_block_elements() == 1 << 21
    monkeypatch.setattr(processor, "l2_cache_bytes", lambda: None)
    assert processor.cpu_block_elements() == 1 << 18
    monkeypatch.setenv("ATTNLAB_BLOCK_ELEMENTS", "4096")
    assert processor.cpu_block_elements() == 4096
    for bad in ("lots", "0"):
        monkeypatch.setenv("ATTNLAB_BLOCK_ELEMENTS", bad)
        with pytest.raises(ValueError, match="ATTNLAB_BLOCK_ELEMENTS must be a positive integer"):
            processor.cpu_block_elements()


# ---- the peers' ways of getting maps (benchmark variants) ---------------------------------


def test_peer_variants_record_the_same_maps_as_attnlab():
    """The benchmark's peer variants (classic processor + RAM hook; nnsight .save()) keep the
    same layers, steps and reduction as ``attnlab.record``: equal maps up to float rounding
    (the classic processor computes the softmax with baddbmm instead of per-head bmm)."""
    from attnlab.tools import bench

    cfg = bench.CONFIGS["tiny"]
    pipe = bench.build_pipeline(cfg)
    frames = 6
    with attnlab.record(pipe) as rec:
        plain = bench.generate(pipe, cfg, frames)
    ours = rec.to_xarray()[D.PROBS].isel(run=0, sample=0)  # [step, layer, cfg, F, F]
    order = bench._execution_order(pipe, cfg, frames)
    layers = list(ours[D.LAYER].values)
    with bench.peer_keep_maps(pipe) as kept:
        video = bench.generate(pipe, cfg, frames)
    torch.testing.assert_close(video, plain, rtol=0, atol=1e-4)
    assert len(kept) == cfg.steps * len(layers)
    nn_video, nn_maps = bench.peer_nnsight(pipe, cfg, frames)
    torch.testing.assert_close(nn_video, plain, rtol=0, atol=1e-4)
    assert len(nn_maps) == len(kept)
    for i, (a, b) in enumerate(zip(kept, nn_maps)):
        step, name = divmod(i, len(order))
        ref = torch.as_tensor(ours.isel(step=step).sel(layer=order[name]).values)  # [cfg, F, F]
        torch.testing.assert_close(a, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(b, ref, rtol=0, atol=1e-5)
    # the classic processors are undone
    assert all(
        type(m.processor).__name__ != "AttnProcessor"
        for m in bench._temporal_attention(pipe).values()
    )
