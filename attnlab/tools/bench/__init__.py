"""Benchmarks: time and peak memory of recording and editing, as ratios in one run.

``run_bench(config)`` builds a random-weight ModelScope-layout pipeline (no downloads) and runs
the untouched pipeline ("plain") interleaved with instrumented variants, several rounds,
rotating the order each round; it reports the median and interquartile range of each round's
ratio to plain. ``attnlab bench`` / ``python -m attnlab.tools.bench`` run it.

* :mod:`~attnlab.tools.bench.harness`: rotating rounds, quartiles, peak memory (shared);
* :mod:`~attnlab.tools.bench.unet`: configurations, variants, peers, end-to-end measurements;
* :mod:`~attnlab.tools.bench.micro`: FLOP and time shares, one-layer micro-benchmarks;
* :mod:`~attnlab.tools.bench.report`: targets and markdown tables;
* :mod:`~attnlab.tools.bench.run`: :func:`run_bench`, the whole UNet benchmark;
* :mod:`~attnlab.tools.bench.joint`: the full-3D attention (CogVideoX) benchmark.
"""

from attnlab.tools.bench.harness import summary
from attnlab.tools.bench.micro import flop_share, layer_paths, tar_options, time_share
from attnlab.tools.bench.report import TARGETS, check_targets, format_report
from attnlab.tools.bench.run import run_bench
from attnlab.tools.bench.unet import (
    ALL_VARIANTS,
    CONFIGS,
    PEERS,
    VARIANTS,
    BenchConfig,
    build_pipeline,
    generate,
    memory_variants_cpu,
    memory_variants_cuda,
    peer_keep_maps,
    peer_nnsight,
    time_variants,
    variant_context,
)

__all__ = [
    "ALL_VARIANTS",
    "CONFIGS",
    "PEERS",
    "TARGETS",
    "VARIANTS",
    "BenchConfig",
    "build_pipeline",
    "check_targets",
    "flop_share",
    "format_report",
    "generate",
    "layer_paths",
    "memory_variants_cpu",
    "memory_variants_cuda",
    "peer_keep_maps",
    "peer_nnsight",
    "run_bench",
    "summary",
    "tar_options",
    "time_share",
    "time_variants",
    "variant_context",
]
