"""The driver side of a sweep: plan it, run its cells on a dask.distributed cluster.

* :func:`run_sweep` - run every cell not yet complete in a store; returns a summary
* :func:`plan_sweep` - every cell with its state in a store (writes nothing)
* :class:`SweepSummary` - what a sweep did: cells done, skipped, failed, quarantined
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.core.store import prepare_store
from attnlab.lab.sweep.cells import (
    CellState,
    _clear_failure,
    _quarantine,
    _write_failure,
    cell_states,
)
from attnlab.lab.sweep.lock import StoreLock
from attnlab.lab.sweep.spec import (
    Cell,
    SweepError,
    SweepSpec,
    load_spec,
    preflight,
    store_layout,
)
from attnlab.lab.sweep.worker import CellTask, run_cell

# how often dask re-runs a cell whose worker died before giving up on it (KilledWorker)
ALLOWED_FAILURES = 1


@dataclass
class SweepSummary:
    """What a sweep did: cell ids done now, skipped (complete before), failed (with errors)."""

    store: str
    total: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_retried: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "total": self.total,
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "not_retried": len(self.not_retried),
            "quarantined": self.quarantined,
            "seconds": round(self.seconds, 2),
            "workers": self.workers,
            "errors": self.failed,
        }

    def __str__(self) -> str:
        text = (
            f"{self.total} cells: {len(self.done)} done, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed in {self.seconds:.1f} s"
        )
        if self.not_retried:
            text += f" ({len(self.not_retried)} failed before and not retried: use --retry-failed)"
        return text


def _check_scheduler(scheduler: Any) -> None:
    """``scheduler``: "local" or a scheduler's address (``tcp://host:port``, ``host:port``)."""
    if scheduler == "local":
        return
    from dask.distributed.comm import parse_address, parse_host_port

    try:
        if not isinstance(scheduler, str) or not scheduler:
            raise ValueError("not a string")
        _, location = parse_address(scheduler)
        parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise SweepError(
            f"scheduler must be 'local' or a scheduler's address such as "
            f"tcp://127.0.0.1:8786, got {scheduler!r} ({err})"
        ) from None


@contextlib.contextmanager
def _client(scheduler: str, workers: int) -> Iterator[Any]:
    """A dask.distributed Client: a new LocalCluster (processes) or a running scheduler."""
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler != "local":
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: no clash with other clusters
            silence_logs=logging.CRITICAL,
        )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _result_of(future: Any, cell: Cell) -> dict[str, Any]:
    from dask.distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        return {
            "cell_id": cell.cell_id,
            "status": "failed",
            "error": (
                "WorkerDied: the worker process running this cell died (killed, out of memory "
                f"or crashed) on every attempt the scheduler allows ({err})"
            ),
            "traceback": "",
        }
    except BaseException as err:  # cancelled, unpicklable result, scheduler gone
        if isinstance(err, KeyboardInterrupt):
            raise
        return {
            "cell_id": cell.cell_id,
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": "".join(traceback.format_exception(err)),
        }


def plan_sweep(
    spec: SweepSpec | Mapping[str, Any] | str | os.PathLike, store: str | os.PathLike
) -> list[tuple[Cell, CellState]]:
    """Every cell of a sweep with its state in ``store`` (validates the spec; writes nothing)."""
    spec = load_spec(spec)
    preflight(spec, check_device_here=False)  # a plan may be made on another machine
    cells = spec.cells()
    store = Path(store)
    if not store.exists():
        return [(c, CellState("missing")) for c in cells]
    from attnlab.core.store import layout_of

    layout = layout_of(store)
    variables = (layout or {}).get("variables", ["probs"])
    states = cell_states(store, cells, variables)
    return [(c, states[c.cell_id]) for c in cells]


def run_sweep(
    spec: SweepSpec | Mapping[str, Any] | str | os.PathLike,
    store: str | os.PathLike,
    *,
    scheduler: str = "local",
    workers: int = 2,
    retry_failed: bool = False,
    progress: bool = True,
) -> SweepSummary:
    """Run every cell of ``spec`` not yet complete in ``store`` on a dask.distributed cluster.

    ``scheduler``: "local" (a LocalCluster of ``workers`` processes with one thread each) or
    the address of a running scheduler (whose workers must see ``store`` and the models).
    Complete cells are skipped; cells that failed before are re-run only with
    ``retry_failed``. Raises :class:`SweepSpecError` / :class:`~attnlab.StoreError` before
    writing anything when the spec, a model or the store is unusable, and
    :class:`~attnlab.lab.sweep.lock.StoreLockedError` when another sweep holds the store.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SweepError(f"workers must be a positive integer, got {workers!r}")
    spec = load_spec(spec)
    store = Path(store).expanduser().absolute()
    _check_scheduler(scheduler)  # before anything is written
    StoreLock(store).check()  # refuse a busy store at once, before loading any model
    cells = spec.cells()
    # the device is this machine's only when the cells run here
    refs = preflight(spec, check_device_here=scheduler == "local")
    layout = store_layout(spec, refs)
    prepare_store(store, layout)
    variables = tuple(layout["variables"])
    summary = SweepSummary(store=str(store), total=len(cells))
    with StoreLock(store, purpose="attnlab sweep"):
        states = cell_states(store, cells, variables)
        todo: list[Cell] = []
        for cell in cells:
            st = states[cell.cell_id]
            if st.state == "complete":
                summary.skipped.append(cell.cell_id)
            elif st.state in ("failed", "corrupt") and not retry_failed:
                summary.failed[cell.cell_id] = st.reason
                summary.not_retried.append(cell.cell_id)
            else:
                if st.state == "corrupt":
                    summary.quarantined.append(str(_quarantine(store, cell.run_id)))
                todo.append(cell)
        if todo:
            attempts = {c.cell_id: states[c.cell_id].attempts for c in todo}
            token = os.urandom(4).hex()
            with _client(scheduler, workers) as client:
                summary.workers = len(client.nthreads())
                futures = {
                    client.submit(
                        run_cell,
                        CellTask(cell, str(store), refs[cell.model], spec.device, variables),
                        key=f"attnlab-cell-{cell.cell_id}-{token}",
                        pure=False,
                    ): cell
                    for cell in todo
                }
                bar = tqdm(
                    total=len(futures), desc="sweep", unit="cell", disable=not progress, leave=True
                )
                try:
                    for future in as_completed(futures):
                        cell = futures[future]
                        result = _result_of(future, cell)
                        summary.results.append(result)
                        if result["status"] == "done":
                            summary.done.append(cell.cell_id)
                            _clear_failure(store, cell.cell_id)
                        else:
                            summary.failed[cell.cell_id] = result["error"]
                            _write_failure(store, cell, result, attempts[cell.cell_id] + 1)
                        bar.update(1)
                        bar.set_postfix(failed=len(summary.failed), refresh=False)
                except BaseException:
                    client.cancel(list(futures), force=True)
                    raise
                finally:
                    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
