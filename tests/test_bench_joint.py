"""The full-3D attention benchmark measures what it claims: recording leaves the output
bit-identical, 3D TAR and the identity probe change it; every ratio is a ratio of two positive
times. (No assertion on how fast anything is.)"""

from __future__ import annotations

from attnlab.tools.bench_joint import JointBenchConfig, _summary, time_variants


def test_time_variants_on_a_tiny_cogvideox():
    cfg = JointBenchConfig(
        heads=2, head_dim=64, layers=1, frames=3, latent=(8, 8), text=4, rounds=2
    )
    result = time_variants(cfg, ["record", "tar", "identity"])
    assert result["record"]["max_abs_diff"] == 0.0  # the model's own attention call, untouched
    assert result["tar"]["max_abs_diff"] > 1e-4 and result["identity"]["max_abs_diff"] > 1e-4
    for name in ("record", "tar", "identity"):
        s = result[name]["time_ratio"]  # perf_counter: monotonic
        assert 0 < s["q1"] <= s["median"] <= s["q3"]
        # the process CPU time of these sub-millisecond calls is at the clock's resolution (one
        # CI run read a negative difference with several torch threads): only a summary of it
        c = result[name]["cpu_time_ratio"]
        assert set(c) >= {"q1", "median", "q3"}
    assert result["plain_s"]["median"] > 0 and result["plain_cpu_s"]["median"] > 0


def test_summary_quartiles_stay_within_the_measurements():
    """Two rounds that differ a lot (a loaded machine) once gave a negative first quartile of
    positive ratios: the quartiles are interpolated between the measurements, never past them."""
    assert _summary([1.0, 10.0]) == {"median": 5.5, "q1": 3.25, "q3": 7.75}
    assert _summary([2.0]) == {"median": 2.0, "q1": 2.0, "q3": 2.0}
    xs = [0.9, 1.1, 1.0, 7.0, 1.2]
    s = _summary(xs)
    assert min(xs) <= s["q1"] <= s["median"] <= s["q3"] <= max(xs)
