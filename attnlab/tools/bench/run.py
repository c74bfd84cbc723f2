"""The whole UNet benchmark in one call: where the time goes, end-to-end time and peak memory of
each variant as ratios to plain, the per-layer micro-benchmarks and the targets.

* :func:`run_bench`: run a configuration; returns (and writes as JSON) every measurement.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attnlab.tools.bench.harness import machine
from attnlab.tools.bench.micro import flop_share, layer_paths, tar_options, time_share
from attnlab.tools.bench.report import check_targets, format_report
from attnlab.tools.bench.unet import (
    CONFIGS,
    VARIANTS,
    build_pipeline,
    memory_variants_cpu,
    memory_variants_cuda,
    time_variants,
)


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
        "machine": machine(device),
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
