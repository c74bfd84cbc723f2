"""Benchmark command (tiny config, no timing assertions) and the exactness of the fast paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import attnlab
import attnlab.core.processor as processor
from attnlab.core.control import CallContext, Plan, RunInfo
from attnlab.core.processor import HookPoint, TemporalAttnProcessor
from attnlab.core.protocol import Observer
from attnlab.core.sites import Site
from attnlab.edits import regularise
from attnlab.tools import bench

from .conftest import capture

# ---- the benchmark command ---------------------------------------------------------------


def test_tiny_bench_runs_end_to_end_and_returns_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = tmp_path / "bench.md"
    assert (
        bench.main(
            [
                "--config",
                "tiny",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--out",
                str(out),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    timing = result["end_to_end"]["8"]["time"]
    assert set(timing) == set(bench.VARIANTS)
    plain = timing["plain"]["time_s"]["median"]
    for name, t in timing.items():
        # one round: each ratio is that variant's time over plain's time in the same round
        assert t["time_ratio"]["n"] == t["time_s"]["n"] == 1
        assert t["time_ratio"]["median"] == pytest.approx(t["time_s"]["median"] / plain), name
        # the same for the process's CPU time (robust on a shared machine)
        cpu_plain = timing["plain"]["cpu_s"]["median"]
        assert t["cpu_ratio"]["median"] == pytest.approx(t["cpu_s"]["median"] / cpu_plain), name
        assert t["cpu_s"]["median"] > 0
    assert timing["plain"]["time_ratio"]["median"] == 1.0
    assert "CPU time ratio" in report.read_text()
    # attnlab installed, nobody selecting anything: bit-identical output
    assert timing["installed"]["identical"]
    # edits change the video; recording changes it only by the explicit path's rounding
    assert not timing["identity"]["identical"]
    assert timing["record"]["max_abs_diff"] < 1e-4
    assert 0 < result["flop_share"]["8"]["temporal"] < 1
    assert set(result["targets"]) == {f"{v}@8" for v in bench.VARIANTS if v != "plain"}
    text = report.read_text()
    assert "| installed |" in text and "Targets" in text
    assert "attnlab bench: tiny" in capsys.readouterr().out


def test_micro_benchmarks_run_and_check_exactness():
    layer = bench.layer_paths(8, rows=64, channels=32, heads=2, repeats=1)
    fast = layer["paths"]["fast (default SDPA)"]
    assert fast["ratio"] == 1.0
    for p in layer["paths"].values():  # each path's median time over the fused default's
        assert p["ratio"] == pytest.approx(p["median"] / fast["median"])
    opts = bench.tar_options(8, rows=64, heads=2, head_dim=16, repeats=1, flex=False)
    assert opts["options"]["blocked per head (kept)"]["max_abs_diff"] < 1e-6
    assert opts["options"]["sdpa + float attn_mask"]["max_abs_diff"] < 1e-5


def test_flop_share_of_the_vc2_model_on_meta_tensors():
    share = bench.flop_share("vc2", 16)
    assert 0.05 < share["temporal"] < 0.2  # about 10% of a full-size ModelScope UNet
    assert share["level0"] < share["temporal"]


# ---- exactness of the fast paths ----------------------------------------------------------


class _Fixed:
    """Stand-in controller: one plan and call context for every call."""

    def __init__(self, plan, frames, batch=2):
        self._plan = plan
        self.ctx = CallContext(
            RunInfo(0, cfg=True), 0, 900.0, 1000, batch=batch, frames=frames, latent=(3, 2)
        )

    def plan(self, name):
        return self._plan

    def check_rows(self, site, rows, frames):
        return self.ctx


class _Keep(Observer):
    stage = "observe"

    def __init__(self, logits=True):
        self.logits = logits

    def observe(self, site, ctx, logits, probs):
        self.seen = (None if logits is None else logits.clone(), probs.clone())


def _layer(dim=32, heads=4, seed=0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()
    attn.add_module("hook_logits", HookPoint())
    attn.add_module("hook_probs", HookPoint())
    return attn


def _run(plan, frames, *, whole=False, x=None, attn=None):
    """The processor's output for ``plan``: its own path, or forced onto the whole-tensor path."""
    attn = attn or _layer()
    site = Site("t", "test", "down", 0, 0, attn.heads, 32 // attn.heads, "none", None)
    proc = TemporalAttnProcessor(_Fixed(plan, frames), site, AttnProcessor2_0())
    with torch.no_grad():
        if whole:
            return proc.explicit(attn, x, None, None, plan, hooked=True)
        return proc(attn, x)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so the blocked path really runs in several blocks."""
    monkeypatch.setitem(processor.BLOCK_ELEMENTS, "cpu", 2 * 5 * 5)


@pytest.mark.parametrize("frames", [5, 8, 12, 16])
@pytest.mark.parametrize("mode", ["row", "head"])
def test_blocked_tar_is_bit_identical_to_whole_tensor_tar(small_blocks, frames, mode):
    x = torch.randn(12, frames, 32)
    plan = Plan(bias=[attnlab.TAR(max_mode=mode)])
    assert processor._row_local(plan, _Fixed(plan, frames).ctx)
    assert torch.equal(_run(plan, frames, x=x), _run(plan, frames, whole=True, x=x))


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
        got = _run(Plan(observe=[_Keep()]), frames, x=x, attn=attn, whole=whole)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_blocked_recording_sees_the_same_logits_and_probs(small_blocks):
    x = torch.randn(12, 12, 32)
    blocked, whole = _Keep(), _Keep()
    a = _run(Plan(bias=[attnlab.TAR()], observe=[blocked]), 12, x=x)
    b = _run(Plan(bias=[attnlab.TAR()], observe=[whole]), 12, whole=True, x=x)
    assert torch.equal(a, b)
    assert torch.equal(blocked.seen[0], whole.seen[0])
    assert torch.equal(blocked.seen[1], whole.seen[1])
    # an observer that declares it does not use logits gets none (no [rows, heads, F, F] copy)
    lean = _Keep(logits=False)
    assert torch.equal(_run(Plan(observe=[lean]), 12, x=x), _run(Plan(), 12, whole=True, x=x))
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
        assert torch.equal(_run(plan, frames, x=x), _run(plan, frames, whole=True, x=x))


@pytest.mark.parametrize("frames", [5, 8, 12, 48])
def test_ones_probe_equals_uniform_attention(frames):
    x = torch.randn(6, frames, 32)
    plan = Plan(bias=[attnlab.TAR()], replace=[attnlab.Replace("ones")])
    fast, ref = _run(plan, frames, x=x), _run(plan, frames, whole=True, x=x)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    # the output is one row per position, repeated over frames
    assert torch.equal(fast, fast[:, :1].expand_as(fast))


def test_ones_probe_in_training_mode_keeps_dropout_per_frame():
    attn = _layer()
    attn.to_out[1].p = 0.5
    attn.train()
    x = torch.randn(6, 8, 32)
    out = _run(Plan(replace=[attnlab.Replace("ones")]), 8, x=x, attn=attn)
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
