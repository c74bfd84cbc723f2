"""The processor's fast and blocked paths: bit-identical to the whole-tensor computation (within
float rounding where the summation order differs), reductions fused into the blocked loop, and
the cache-derived block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import attnlab
import attnlab.core.blocking as blocking
import attnlab.core.processor as processor
from attnlab.core import dims as D
from attnlab.core.processor import HookPoint, TemporalAttnProcessor, _PositionSums
from attnlab.core.protocol import CallContext, Observer, Plan, RunInfo
from attnlab.core.sites import Site
from attnlab.edits import regularise
from tests.helpers import capture

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


def _layer(dim=32, heads=4, seed=0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()
    attn.add_module("hook_logits", HookPoint())
    attn.add_module("hook_probs", HookPoint())
    return attn


def _run(plan, x, *, whole=False, attn=None, batch=2):
    """The processor's output for ``plan`` on ``x`` (``[rows, frames, 32]``): its own path, or
    forced onto the whole-tensor path."""
    attn = attn or _layer()
    site = Site("t", "test", "down", 0, 0, attn.heads, 32 // attn.heads, "none", None)
    proc = TemporalAttnProcessor(_Fixed(plan, x.shape[1], batch), site, AttnProcessor2_0())
    with torch.no_grad():
        if whole:
            return proc.explicit(attn, x, None, None, plan, hooked=True)
        return proc(attn, x)


class _Keep(Observer):
    stage = "observe"

    def __init__(self, logits=True):
        self.logits = logits

    def observe(self, site, ctx, logits, probs):
        self.seen = (None if logits is None else logits.clone(), probs.clone())


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


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so the blocked path really runs in several blocks."""
    monkeypatch.setitem(blocking.BLOCK_ELEMENTS, "cpu", 2 * 5 * 5)


@pytest.fixture
def straddling_blocks(monkeypatch):
    """Blocks of 5 rows over batch items of 6 rows: blocks straddle item boundaries."""
    monkeypatch.setitem(blocking.BLOCK_ELEMENTS, "cpu", 5 * 7 * 7)


# ---- exactness of the fast paths ----------------------------------------------------------


@pytest.mark.parametrize("frames", [5, 8, 12, 16])
@pytest.mark.parametrize("mode", ["row", "head"])
def test_blocked_tar_is_bit_identical_to_whole_tensor_tar(small_blocks, frames, mode):
    x = torch.randn(12, frames, 32)
    plan = Plan(bias=[attnlab.TAR(max_mode=mode)])
    assert processor._row_local(plan, _Fixed(plan, frames).ctx)
    assert torch.equal(_run(plan, x), _run(plan, x, whole=True))


@pytest.mark.parametrize("frames", [5, 8, 16])
def test_explicit_paths_equal_batched_matmul_attention(frames):
    """Per-head bmm (both explicit paths) vs the 4D-matmul formula, within 1e-6."""
    attn = _layer()
    x = torch.randn(12, frames, 32)
    with torch.no_grad():
        q, k, v = (
            f(x).view(12, frames, 4, 8).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v)
        )
        logits = torch.matmul(q, k.transpose(-1, -2)) * 8**-0.5
        ref = torch.matmul(logits.softmax(-1), v).transpose(1, 2).reshape(12, frames, 32)
        ref = attn.to_out[0](ref)
    for whole in (False, True):
        got = _run(Plan(observe=[_Keep()]), x, attn=attn, whole=whole)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_blocked_recording_sees_the_same_logits_and_probs(small_blocks):
    x = torch.randn(12, 12, 32)
    blocked, whole = _Keep(), _Keep()
    a = _run(Plan(bias=[attnlab.TAR()], observe=[blocked]), x)
    b = _run(Plan(bias=[attnlab.TAR()], observe=[whole]), x, whole=True)
    assert torch.equal(a, b)
    assert torch.equal(blocked.seen[0], whole.seen[0])
    assert torch.equal(blocked.seen[1], whole.seen[1])
    # an observer that declares it does not use logits gets none (no [rows, heads, F, F] copy)
    lean = _Keep(logits=False)
    assert torch.equal(_run(Plan(observe=[lean]), x), _run(Plan(), x, whole=True))
    assert lean.seen[0] is None
    torch.testing.assert_close(lean.seen[1].sum(-1), torch.ones(12, 4, 12))


def test_global_max_and_one_cfg_half_take_the_whole_tensor_path():
    ctx = _Fixed(None, 8).ctx
    assert not processor._row_local(Plan(bias=[attnlab.TAR(max_mode="global")]), ctx)
    assert not processor._row_local(Plan(bias=[attnlab.TAR(cfg="cond")]), ctx)
    assert not processor._row_local(Plan(replace=[attnlab.Replace("ones", cfg="uncond")]), ctx)
    assert (
        processor._constant_probs(Plan(replace=[attnlab.Replace("ones", cfg="cond")]), ctx) is None
    )


@pytest.mark.parametrize("frames", [5, 8, 12, 48])
def test_identity_and_matrix_probes_are_bit_identical(frames):
    x = torch.randn(6, frames, 32)
    m = np.random.RandomState(frames).rand(frames, frames) + 0.1
    for probe in (attnlab.Replace("identity"), attnlab.Replace(m)):
        plan = Plan(replace=[probe])
        assert processor._constant_probs(plan, _Fixed(plan, frames).ctx) is not None
        assert torch.equal(_run(plan, x), _run(plan, x, whole=True))


@pytest.mark.parametrize("frames", [5, 8, 12, 48])
def test_ones_probe_equals_uniform_attention(frames):
    x = torch.randn(6, frames, 32)
    plan = Plan(bias=[attnlab.TAR()], replace=[attnlab.Replace("ones")])
    fast, ref = _run(plan, x), _run(plan, x, whole=True)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    # the output is one row per position, repeated over frames
    assert torch.equal(fast, fast[:, :1].expand_as(fast))


def test_ones_probe_in_training_mode_keeps_dropout_per_frame():
    attn = _layer()
    attn.to_out[1].p = 0.5
    attn.train()
    x = torch.randn(6, 8, 32)
    out = _run(Plan(replace=[attnlab.Replace("ones")]), x, attn=attn)
    assert not torch.equal(out, out[:, :1].expand_as(out))  # dropped independently per frame


def test_probes_still_show_the_replaced_probabilities_to_hooks_and_recorders(ms_pipe, gen):
    name = next(s.name for s in attnlab.sites(ms_pipe) if s.level == 0 and s.block == "down")
    attn = dict(ms_pipe.unet.named_modules())[name]
    seen = {}
    with attnlab.edit(ms_pipe, attnlab.Replace("ones", levels=[0])):
        handle = attn.hook_probs.register_forward_hook(capture(seen, "p"))
        try:
            gen(ms_pipe, num_inference_steps=1)
        finally:
            handle.remove()
    frames = seen["p"].shape[-1]
    assert torch.equal(seen["p"], torch.full_like(seen["p"], 1.0 / frames))
    with (
        attnlab.record(ms_pipe, levels=[0], blocks="down") as rec,
        attnlab.edit(ms_pipe, attnlab.Replace("identity", levels=[0])),
    ):
        gen(ms_pipe, num_inference_steps=1)
    probs = rec.to_xarray().probs.values
    assert np.array_equal(probs, np.broadcast_to(np.eye(frames), probs.shape))


@pytest.mark.parametrize(
    "edit",
    [
        lambda: attnlab.TAR(t_min=None),
        lambda: attnlab.TAR({0: 1.0, 1: 3.0}, max_mode="head"),
        lambda: attnlab.Replace("identity", levels=[0, 1]),
        lambda: attnlab.Replace("ones", levels=[0]),
    ],
)
def test_pipeline_output_equals_the_whole_tensor_computation(ms_pipe, gen, monkeypatch, edit):
    with attnlab.edit(ms_pipe, edit()):
        fast = gen(ms_pipe)
    monkeypatch.setattr(processor, "_row_local", lambda plan, ctx: False)
    monkeypatch.setattr(processor, "_constant_probs", lambda plan, ctx: None)
    with attnlab.edit(ms_pipe, edit()):
        ref = gen(ms_pipe)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("mode", ["row", "head", "global"])
def test_regularise_is_exactly_eq3(dtype, mode):
    torch.manual_seed(0)
    logits = (torch.randn(3, 2, 9, 9) * 4).to(dtype)
    dA = torch.rand(9, 9).to(dtype)
    m = {
        "row": logits.amax(-1, keepdim=True),
        "head": logits.amax((-2, -1), keepdim=True),
        "global": logits.amax(),
    }[mode]
    for scale in (1.0, 0.3):
        got = regularise(logits, dA, mode, scale)
        assert torch.equal(got, logits + (scale * m) * dA) and got.dtype == dtype
    assert torch.equal(regularise(logits, dA.double(), mode), logits + m * dA.double())


# ---- reductions fused into the blocked path, and the block size -------------------------


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
def test_summing_observer_gets_the_sums_of_the_full_maps(straddling_blocks, bias):
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


def test_no_full_tensor_when_every_observer_sums(straddling_blocks, monkeypatch):
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
def test_recorder_fused_reduction_equals_the_whole_tensor_reduction(
    ms_pipe, reduce, straddling_blocks
):
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
    monkeypatch.setattr(blocking, "l2_cache_bytes", lambda: 512 << 10)
    assert blocking.cpu_block_elements() == 1 << 17
    monkeypatch.setattr(blocking, "l2_cache_bytes", lambda: 2 << 20)
    assert blocking.cpu_block_elements() == 1 << 19
    monkeypatch.setattr(blocking, "l2_cache_bytes", lambda: 64 << 30)
    assert blocking.cpu_block_elements() == 1 << 21
    monkeypatch.setattr(blocking, "l2_cache_bytes", lambda: None)
    assert blocking.cpu_block_elements() == 1 << 18
    monkeypatch.setenv("ATTNLAB_BLOCK_ELEMENTS", "4096")
    assert blocking.cpu_block_elements() == 4096
    for bad in ("lots", "0"):
        monkeypatch.setenv("ATTNLAB_BLOCK_ELEMENTS", bad)
        with pytest.raises(ValueError, match="ATTNLAB_BLOCK_ELEMENTS must be a positive integer"):
            blocking.cpu_block_elements()
