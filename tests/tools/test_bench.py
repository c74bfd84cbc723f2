"""The benchmarks: the ``attnlab bench`` command on the tiny config (no timing assertions), the
micro-benchmarks, the peers' baselines and the shared harness."""

from __future__ import annotations

import json
import math

import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.tools import bench, cli
from attnlab.tools.bench import harness, unet

# ---- the benchmark command ---------------------------------------------------------------


def test_tiny_bench_runs_end_to_end_and_returns_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = tmp_path / "bench.md"
    assert (
        cli.main(
            [
                "bench",
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


def test_memory_child_measures_each_variant():
    """The peak-memory child process (``python -m attnlab.tools.bench --memory-child``) runs
    every variant and reports ratios to plain."""
    mem = bench.memory_variants_cpu(bench.CONFIGS["tiny"], 8, ["record"], repeats=1)
    if mem is None:
        pytest.skip("no /proc/self/clear_refs")
    assert mem["method"] == "cpu-rss" and set(mem) == {"method", "plain", "record"}
    assert mem["plain"]["peak_ratio"]["median"] == 1.0
    for name in ("plain", "record"):
        assert mem[name]["peak_mib"]["median"] > mem[name]["delta_mib"]["median"] >= 0


# ---- the harness ---------------------------------------------------------------------------


def test_rounds_rotate_the_order_and_time_only_after_the_warm_up():
    calls: list[str] = []

    def call(name):
        calls.append(name)
        return float(len(calls)), 0.5, name.upper()

    rounds = harness.time_rounds(call, ["a", "b", "c"], rounds=2, warmup=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert rounds.wall == {"a": [6.0, 8.0], "b": [4.0, 9.0], "c": [5.0, 7.0]}
    assert rounds.first == {"a": "A", "b": "B", "c": "C"}
    # a CPU time that reads as zero (the clock's resolution) gives no ratio
    first, second = harness.ratios([2.0, 3.0], [1.0, 0.0])
    assert first == 2.0 and math.isnan(second)


def test_summary_quartiles_stay_within_the_measurements():
    """Two rounds that differ a lot (a loaded machine) once gave a negative first quartile of
    positive ratios: the quartiles are interpolated between the measurements, never past them."""
    s = harness.summary([1.0, 10.0])
    assert s == {"median": 5.5, "q1": 3.25, "q3": 7.75, "iqr": 4.5, "n": 2, "values": [1.0, 10.0]}
    s = harness.summary([2.0])
    assert s == {"median": 2.0, "q1": 2.0, "q3": 2.0, "iqr": 0.0, "n": 1, "values": [2.0]}
    xs = [0.9, 1.1, 1.0, 7.0, 1.2]
    s = harness.summary(xs)
    assert min(xs) <= s["q1"] <= s["median"] <= s["q3"] <= max(xs)
    assert s["values"] == xs  # in the order measured


def test_proc_status_reads_resident_memory():
    status = harness.proc_status()
    assert 0 < status["VmRSS"] <= status["VmHWM"]


# ---- the peers' ways of getting maps (benchmark variants) ---------------------------------


def test_peer_variants_record_the_same_maps_as_attnlab():
    """The benchmark's peer variants (classic processor + RAM hook; nnsight .save()) keep the
    same layers, steps and reduction as ``attnlab.record``: equal maps up to float rounding
    (the classic processor computes the softmax with baddbmm instead of per-head bmm)."""
    cfg = unet.CONFIGS["tiny"]
    pipe = unet.build_pipeline(cfg)
    frames = 6
    with attnlab.record(pipe) as rec:
        plain = unet.generate(pipe, cfg, frames)
    ours = rec.to_xarray()[D.PROBS].isel(run=0, sample=0)  # [step, layer, cfg, F, F]
    order = unet._execution_order(pipe, cfg, frames)
    layers = list(ours[D.LAYER].values)
    with unet.peer_keep_maps(pipe) as kept:
        video = unet.generate(pipe, cfg, frames)
    torch.testing.assert_close(video, plain, rtol=0, atol=1e-4)
    assert len(kept) == cfg.steps * len(layers)
    nn_video, nn_maps = unet.peer_nnsight(pipe, cfg, frames)
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
        for m in unet._temporal_attention(pipe).values()
    )
