"""The measuring discipline every attnlab benchmark shares: rotating rounds, quartiles, peak memory.

* :func:`rotated`: one round's call order (the names rotated by the round's index);
* :func:`timed`: wall and CPU seconds of one call (CUDA synchronised around it);
* :func:`time_rounds`: interleaved calls of several variants, warm-up rounds first;
* :func:`ratios`: per-round ratios of a variant's times to the baseline's;
* :func:`summary`: median, quartiles and interquartile range;
* :func:`proc_status`: this process's resident memory and its high-water mark;
* :func:`malloc_trim`: hand freed heap memory back to the OS;
* :func:`rss_peaks` / :func:`cuda_peaks`: peak memory of each variant's call, in rotating rounds;
* :func:`memory_child`: run a peak-resident-memory measurement in a fresh child process;
* :func:`machine`: the machine, library versions and threads, for the result file.

Per-round ratios: each round's time of a variant is divided by the same round's time of the
baseline, so load from other processes shifts numerator and denominator alike. Peak resident
memory: a child process with glibc's mmap threshold fixed at 64 KiB (freed tensors go straight
back to the OS, so resident memory follows live tensors) resets the kernel's resident high-water
mark (``/proc/self/clear_refs``) before each call and reads ``VmHWM`` after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: glibc settings of the memory child: freed blocks above 64 KiB go back to the OS at once
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def rotated(names: Sequence[str], r: int) -> list[str]:
    """Round ``r``'s order: ``names`` rotated by ``r`` (each leads once every len(names) rounds)."""
    k = r % len(names)
    return [*names[k:], *names[:k]]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA only)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[float, float, T]:
    """Wall seconds, CPU seconds of this process (all its threads) and the result of ``fn()``.

    The CPU time is the robust measure on a shared machine (waiting for a core does not count);
    on a GPU it counts only the host's share of the work."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


@dataclasses.dataclass
class Rounds:
    """Timed rounds: per name, the wall and CPU seconds of each timed round, and the output of
    its first call (warm-up included)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    first: dict[str, Any]


def time_rounds(
    call: Callable[[str], tuple[float, float, Any]],
    names: Sequence[str],
    rounds: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> Rounds:
    """``warmup`` untimed rounds, then ``rounds`` timed ones; every round calls each name once,
    in :func:`rotated` order. ``call(name)`` returns (wall s, CPU s, output) (see :func:`timed`);
    ``log`` gets one line per call, prefixed by ``label``."""
    result = Rounds({n: [] for n in names}, {n: [] for n in names}, {})
    for r in range(warmup + rounds):
        for name in rotated(names, r):
            dt, dc, out = call(name)
            result.first.setdefault(name, out)
            if r >= warmup:
                result.wall[name].append(dt)
                result.cpu[name].append(dc)
            if log:
                log(
                    f"  {label}round {r - warmup + 1 if r >= warmup else 'warm-up'}: {name} {dt:.2f} s (CPU {dc:.2f} s)"
                )
    return result


def ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round by round ``value / baseline``; NaN where the baseline is not positive (a
    sub-millisecond call's process CPU time is at the clock's resolution and may read as 0)."""
    return [v / b if b > 0 else float("nan") for v, b in zip(values, baseline)]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles and interquartile range of ``values``."""
    v = sorted(values)
    if len(v) >= 2:
        # "inclusive": quartiles interpolated within the data (the default "exclusive" method
        # extrapolates past the extremes for few rounds: [1, 10] gives q1 = -1.25)
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
# peak memory


def proc_status() -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (resident high-water mark) in bytes."""
    text = Path("/proc/self/status").read_text()
    return {
        k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024  # type: ignore[union-attr]
        for k in ("VmRSS", "VmHWM")
    }


def malloc_trim() -> None:
    """Hand glibc's free heap memory back to the OS (no-op where there is no glibc)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_peaks(calls: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, list]]:
    """Peak resident memory of each call (run in the memory child): one warm-up call each, then
    ``repeats`` rotating rounds. Per name, ``peak`` is the process's peak resident memory during
    the call (weights, libraries and all), ``delta`` the peak minus the resident memory just
    before the call (bytes)."""
    names = list(calls)
    out: dict[str, dict[str, list]] = {n: {"peak": [], "delta": []} for n in names}
    for name in names:
        calls[name]()
    for r in range(repeats):
        for name in rotated(names, r):
            gc.collect()
            malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            before = proc_status()["VmRSS"]
            calls[name]()
            peak = proc_status()["VmHWM"]
            out[name]["peak"].append(peak)
            out[name]["delta"].append(peak - before)
    return out


def cuda_peaks(calls: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, list]]:
    """Peak allocated CUDA memory of each call (``torch.cuda.max_memory_allocated``) in
    ``repeats`` rotating rounds: ``peak`` and ``delta`` (the peak minus the allocation before)."""
    names = list(calls)
    out: dict[str, dict[str, list]] = {n: {"peak": [], "delta": []} for n in names}
    for r in range(repeats):
        for name in rotated(names, r):
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            calls[name]()
            peak = torch.cuda.max_memory_allocated()
            out[name]["peak"].append(peak)
            out[name]["delta"].append(peak - before)
    return out


def memory_child(target: str, spec: dict[str, Any]) -> Any:
    """Run ``target(spec)`` (``"package.module:function"``, returning JSON-able data, typically
    :func:`rss_peaks`'s) in a fresh Python process with :data:`MALLOC_ENV`; returns its result."""
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab.tools.bench", "--memory-child", target, json.dumps(spec)],
        env=dict(os.environ, **MALLOC_ENV),
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((s for s in proc.stdout.splitlines() if s.startswith("MEMORY ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("MEMORY ") :])


def child_main(argv: Sequence[str]) -> int:
    """The memory child's side of :func:`memory_child`: ``TARGET SPEC`` -> a ``MEMORY`` line."""
    target, spec = argv
    module, _, name = target.partition(":")
    result = getattr(importlib.import_module(module), name)(json.loads(spec))
    print("MEMORY " + json.dumps(result), flush=True)
    return 0


def machine(device: str) -> dict[str, Any]:
    """Platform, Python / torch / diffusers versions, CPU model and count, torch threads, GPU."""
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
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", cpu).group(1)  # type: ignore[union-attr]
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info
