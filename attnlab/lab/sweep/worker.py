"""The worker side of a sweep: one cell is one task, run in a dask worker process.

* :class:`CellTask` - what a worker needs for one cell (picklable)
* :func:`run_cell` - generate and record one cell into the store; never raises
* :func:`pipe_is_clean` - whether no attnlab instrumentation is left on a pipeline
* :func:`worker_status` - this process's model cache: loads per model, clean or not

Models load once per worker process: a per-process cache of the last
:data:`MAX_CACHED_MODELS` pipelines, dropped when a failed cell left one instrumented.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.core.store import StoreError
from attnlab.lab.sweep.cells import _demote, _run_state, expected_steps
from attnlab.lab.sweep.faults import _fault_kwargs, _faults_for
from attnlab.lab.sweep.spec import Cell, record_kwargs

# pipelines kept loaded per worker process (least recently used evicted first)
MAX_CACHED_MODELS = 2


@dataclass
class CellTask:
    """What a worker needs for one cell."""

    cell: Cell
    store: str
    model_ref: str
    device: str = "auto"
    variables: tuple[str, ...] = ("probs",)


_PIPES: dict[tuple[str, str, str | None], Any] = {}
_LOADS: dict[str, int] = {}
_CELL_LOCK = threading.Lock()  # one cell at a time per process: pipelines are not re-entrant


def pipe_is_clean(pipe: Any) -> bool:
    """Whether no attnlab processor, hook point, client or pipeline wrapper is left on ``pipe``."""
    from attnlab.core.control import is_instrumented
    from attnlab.core.denoisers import denoiser_of
    from attnlab.core.processor import TemporalAttnProcessor

    if is_instrumented(pipe):
        return False
    model = denoiser_of(pipe)
    cls = type(pipe)
    if "__call__" in cls.__dict__ and cls.__mro__[1].__qualname__ == cls.__qualname__:
        return False  # the pipeline-call wrapper class is still in place
    return not any(
        hasattr(m, "hook_probs") or isinstance(getattr(m, "processor", None), TemporalAttnProcessor)
        for m in model.modules()
    )


def _pipeline(model: str, ref: str, device: str, dtype: str | None) -> Any:
    import torch

    from attnlab.models.loading import default_device, load_pipeline, resolve_model

    device = default_device() if device == "auto" else device
    key = (ref, device, dtype)
    pipe = _PIPES.get(key)
    if pipe is not None and not pipe_is_clean(pipe):
        del _PIPES[key]  # a failed cell left it instrumented: never reuse it
        pipe = None
    if pipe is None:
        while len(_PIPES) >= MAX_CACHED_MODELS:  # evict the least recently used model
            del _PIPES[next(iter(_PIPES))]
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        # a remote worker may not have the driver's folder: resolve the name there
        path = ref if Path(ref).exists() or model == ref else resolve_model(model)
        pipe = load_pipeline(
            path, device=device, dtype=getattr(torch, dtype) if dtype else None, progress=False
        )
        _LOADS[ref] = _LOADS.get(ref, 0) + 1
    _PIPES.pop(key, None)
    _PIPES[key] = pipe  # most recently used last
    return pipe


def worker_status() -> dict[str, Any]:
    """This process's model cache: loads per model and whether each cached pipeline is clean."""
    return {
        "pid": os.getpid(),
        "loads": dict(_LOADS),
        "clean": {k[0]: pipe_is_clean(p) for k, p in _PIPES.items()},
    }


def run_cell(task: CellTask) -> dict[str, Any]:
    """Generate and record one cell into the store (runs on a worker); never raises.

    Returns a result dict: ``status`` ("done" or "failed"), ``error`` and ``traceback`` on
    failure, ``seconds``, ``pid``, ``host`` and ``loads`` (pipeline loads of this model in
    this process so far).
    """

    from attnlab.edits import from_spec
    from attnlab.lab.experiments import GenerationSettings, generate_recorded

    cell, store = task.cell, Path(task.store)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    with _CELL_LOCK:
        try:
            steps = expected_steps(cell)
            state, reason = _run_state(store, cell.run_id, task.variables, steps)
            if state == "complete":  # a re-run of this task after its worker died late
                out.update(status="done", found_complete=True)
                return out
            if state == "corrupt":
                raise StoreError(reason)
            # a partial run (an interrupted attempt) is replaced by the recorder's claim_run,
            # which refuses one whose writer is alive (a re-run of a task still running)
            g = cell.generation
            pipe = _pipeline(cell.model, task.model_ref, task.device, g.get("dtype"))
            edits = [from_spec(s) for s in cell.edits]
            extra: dict[str, Any] = {}
            for kind in _faults_for(cell.prompt):
                extra.update(_fault_kwargs(pipe, kind, g["steps"]))
            settings = GenerationSettings(
                prompt=cell.prompt,
                frames=cell.frames,
                steps=g["steps"],
                seed=cell.seed,
                height=g["height"],
                width=g["width"],
                guidance=g["guidance"],
                negative_prompt=g["negative_prompt"],
                extra=extra,
            )
            meta = {"model": cell.model, "sweep_cell": cell.cell_id, "sweep_edit": cell.label}
            generate_recorded(
                pipe,
                settings,
                edits,
                store=store,
                record_kwargs={**record_kwargs(cell.record), "meta": meta},
                name=cell.run_id,
            )
            state, reason = _run_state(store, cell.run_id, task.variables, steps)
            if state != "complete":
                raise StoreError(
                    f"the run of cell {cell.cell_id} is not complete after generation "
                    f"({state}{': ' + reason if reason else ''}); did the record settings "
                    "select no step or layer?"
                )
            out["status"] = "done"
        except (Exception, KeyboardInterrupt) as err:
            _demote(store, cell.run_id)
            out.update(
                status="failed",
                error=f"{type(err).__name__}: {err}",
                traceback=traceback.format_exc(),
            )
        finally:
            out["seconds"] = time.perf_counter() - t0
            out["loads"] = _LOADS.get(task.model_ref, 0)
    return out
