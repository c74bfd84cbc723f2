"""Block sizes of the blocked attention paths, read from the machine on first use (never at
import).

* :func:`l2_cache_bytes` - the per-core L2 cache size the machine reports;
* :func:`cpu_block_elements` - the CPU block budget of the temporal path, from that cache;
* :func:`block_elements` - the temporal path's budget for a device type (:data:`BLOCK_ELEMENTS`
  overrides it);
* :func:`block_rows` - rows per block of the temporal processor's blocked explicit path;
* :func:`joint_block_rows` - query rows per block of the joint-attention computations
  (:data:`JOINT_BLOCK_ELEMENTS`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


def l2_cache_bytes() -> int | None:
    """Per-core L2 cache size this machine reports (glibc ``sysconf``, then Linux sysfs)."""
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
        if size and size > 0:
            return int(size)
    except (ValueError, OSError, AttributeError):
        pass
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            if (index / "type").read_text().strip() not in ("Unified", "Data"):
                continue
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text and text[-1] in units and text[:-1].isdigit():
            return int(text[:-1]) * units[text[-1]]
        if text.isdigit():
            return int(text)
    return None


def cpu_block_elements() -> int:
    """Elements of one block's ``[rows, F, F]`` logits (one head) on CPU: one per-core L2 cache
    of float32 values, clamped to 2^15..2^21 (2^18 when the cache size is unknown).

    A block's float32 logits then just fill L2. On the 2-core AMD EPYC this was tuned on
    (512 KiB L2 per core) that is 2^17, inside the 2^16-2^18 range measured best there; a
    2 MiB L2 gives 2^19. ``ATTNLAB_BLOCK_ELEMENTS`` overrides it (see docs/performance.md).
    """
    env = os.environ.get("ATTNLAB_BLOCK_ELEMENTS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(
                f"ATTNLAB_BLOCK_ELEMENTS must be a positive integer, got {env!r}"
            ) from None
        if value < 1:
            raise ValueError(f"ATTNLAB_BLOCK_ELEMENTS must be a positive integer, got {env!r}")
        return value
    l2 = l2_cache_bytes()
    if l2 is None:
        return 1 << 18
    return int(min(1 << 21, max(1 << 15, l2 // 4)))


@functools.cache
def _cpu_default() -> int:
    return cpu_block_elements()


#: elements of one block's ``[rows, F, F]`` logits (one head) in the temporal blocked explicit
#: path, per device type, where set; otherwise on CPU a block fills the per-core L2 cache
#: (:func:`cpu_block_elements`, read once on first use) and on accelerators
#: ``DEFAULT_BLOCK_ELEMENTS`` (blocks there only bound the memory of long videos)
BLOCK_ELEMENTS: dict[str, int] = {}
DEFAULT_BLOCK_ELEMENTS = 1 << 26


def block_elements(device_type: str) -> int:
    """Elements of one block's ``[rows, F, F]`` logits (one head) on ``device_type``."""
    budget = BLOCK_ELEMENTS.get(device_type)
    if budget is not None:
        return budget
    return _cpu_default() if device_type == "cpu" else DEFAULT_BLOCK_ELEMENTS


def block_rows(rows: int, frames: int, device: torch.device) -> int:
    """Rows per block of the blocked explicit path."""
    budget = block_elements(device.type)
    return max(1, min(rows, budget // max(1, frames * frames)))


#: elements of one block's ``[B, heads, rows, S]`` joint-attention logits, per device type
#: (CPU: 16 MiB float32); others ``JOINT_DEFAULT_BLOCK_ELEMENTS``
JOINT_BLOCK_ELEMENTS: dict[str, int] = {"cpu": 1 << 22}
JOINT_DEFAULT_BLOCK_ELEMENTS = 1 << 28


def joint_block_rows(batch: int, heads: int, seq: int, rows: int, device: torch.device) -> int:
    """Query rows per block of a joint attention over ``seq`` keys."""
    budget = JOINT_BLOCK_ELEMENTS.get(device.type, JOINT_DEFAULT_BLOCK_ELEMENTS)
    return max(1, min(rows, budget // max(1, batch * heads * seq)))
