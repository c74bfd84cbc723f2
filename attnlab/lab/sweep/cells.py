"""What a store holds for each cell of a sweep: states, failure records, quarantine.

* :class:`CellState` - complete, partial, failed, corrupt or missing (with reason, attempts)
* :func:`cell_states` - the state of every cell in a store (read-only)
* :func:`expected_steps` - how many sampler steps a complete run of a cell holds
* :func:`read_failure`, :func:`list_failures` - the failure records (``failures/<cell id>``)

Failed runs are demoted to incomplete, failures are written and cleared, and unreadable runs
are moved to ``quarantine/`` (never deleted) by the driver and the worker through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.core.store import RUNS_GROUP, StoreError, check_chunks
from attnlab.lab.sweep.spec import Cell, record_kwargs

FAILURES_GROUP = "failures"
QUARANTINE_DIR = "quarantine"


@dataclass
class CellState:
    """What the store holds for a cell: complete, partial, failed, corrupt or missing."""

    state: str
    reason: str = ""
    attempts: int = 0


def expected_steps(cell: Cell) -> int:
    """How many sampler steps a complete run of ``cell`` holds."""
    from attnlab.core.selection import Steps

    n = int(cell.generation["steps"])
    chosen = Steps.make(record_kwargs(cell.record)["steps"]).resolve(n)
    return n if chosen is None else len(chosen)


def _run_state(
    store: Path, run_id: str, variables: Sequence[str], steps: int | None = None
) -> tuple[str, str]:
    import zarr

    if not (store / RUNS_GROUP / run_id).exists():
        return "missing", ""
    try:
        group = zarr.open_group(str(store), path=f"{RUNS_GROUP}/{run_id}", mode="r", zarr_format=3)
        complete = bool(group.attrs.get("complete", False))
    except Exception as err:
        return (
            "corrupt",
            f"run group {RUNS_GROUP}/{run_id} is unreadable: {type(err).__name__}: {err}",
        )
    if not complete:
        return "partial", ""
    try:
        for var in variables:
            if var not in group:
                return "corrupt", f"run {run_id} is marked complete but has no {var!r} array"
            if steps is not None and group[var].shape[0] != steps:
                return "corrupt", (
                    f"run {run_id} is marked complete but holds {group[var].shape[0]} of "
                    f"{steps} steps"
                )
        list(group.arrays())  # every array's metadata must parse
        try:  # every chunk present, as load requires
            check_chunks(store, run_id, group)
        except StoreError as err:
            return "corrupt", str(err)
    except Exception as err:
        return "corrupt", f"run {run_id} has unreadable arrays: {type(err).__name__}: {err}"
    return "complete", ""


def read_failure(store: str | os.PathLike, cell_id: str) -> dict[str, Any] | None:
    """The failure record of a cell (None if it has none)."""
    import zarr

    store = Path(store)
    if not (store / FAILURES_GROUP / cell_id).exists():
        return None
    try:
        g = zarr.open_group(str(store), path=f"{FAILURES_GROUP}/{cell_id}", mode="r", zarr_format=3)
        return dict(g.attrs)
    except Exception as err:
        return {"error": f"unreadable failure record: {err}", "attempts": 1}


def list_failures(store: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every failure record in a store, by cell id."""
    folder = Path(store) / FAILURES_GROUP
    if not folder.is_dir():
        return {}
    out = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir():
            rec = read_failure(store, d.name)
            if rec is not None:
                out[d.name] = rec
    return out


def _write_failure(store: Path, cell: Cell, result: dict[str, Any], attempts: int) -> None:
    import zarr

    root = zarr.open_group(str(store), mode="r+", zarr_format=3)
    group = root.require_group(FAILURES_GROUP).create_group(cell.cell_id, overwrite=True)
    group.attrs.update(
        json.loads(
            json.dumps(
                {
                    "cell_id": cell.cell_id,
                    "run_id": cell.run_id,
                    "cell": cell.key(),
                    "label": cell.label,
                    "error": result.get("error", "?"),
                    "traceback": result.get("traceback", ""),
                    "attempts": attempts,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": result.get("host", ""),
                    "pid": result.get("pid"),
                },
                default=str,
            )
        )
    )


def _clear_failure(store: Path, cell_id: str) -> None:
    import zarr

    if (store / FAILURES_GROUP / cell_id).exists():
        root = zarr.open_group(str(store), mode="r+", zarr_format=3)
        del root[f"{FAILURES_GROUP}/{cell_id}"]


def _demote(store: Path, run_id: str) -> None:
    """Mark a failed cell's run incomplete (the recorder may have marked it complete after a
    failed last write); never raises."""
    import zarr

    with contextlib.suppress(Exception):
        if (store / RUNS_GROUP / run_id).exists():
            group = zarr.open_group(str(store), path=f"{RUNS_GROUP}/{run_id}", mode="r+")
            if group.attrs.get("complete"):
                group.attrs["complete"] = False


def _quarantine(store: Path, run_id: str) -> Path:
    """Move an unreadable run aside (``quarantine/<run id>.<time>``): never delete data."""
    target = store / QUARANTINE_DIR / f"{run_id}.{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(store / RUNS_GROUP / run_id, target)
    return target


def cell_states(
    store: str | os.PathLike, cells: Sequence[Cell], variables: Sequence[str] = ("probs",)
) -> dict[str, CellState]:
    """The state of every cell in ``store`` (read-only)."""
    store = Path(store)
    out = {}
    for cell in cells:
        state, reason = _run_state(store, cell.run_id, variables, expected_steps(cell))
        failure = read_failure(store, cell.cell_id) if state != "complete" else None
        attempts = int(failure.get("attempts", 1)) if failure else 0
        if state == "corrupt":
            out[cell.cell_id] = CellState("corrupt", reason, attempts)
        elif failure is not None:
            out[cell.cell_id] = CellState("failed", str(failure.get("error", "?")), attempts)
        else:
            out[cell.cell_id] = CellState(state, reason, attempts)
    return out
