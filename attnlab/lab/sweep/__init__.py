"""Sweeps: grids of recorded generations, run as tasks on a dask.distributed cluster.

A sweep spec (TOML, YAML or JSON; see ``analyses/sweeps/example.toml``) lists models, prompts
(or a prompt file), seeds, frame counts and edits, plus recorder and generation settings.
Every combination is a *cell*; each cell is one task that generates one video and records its
temporal attention into one zarr store as the run ``runs/sweep-<cell id>``, where the cell id
is a hash of the cell's spec: re-running a sweep finds what is already there. The command
line is ``attnlab sweep`` (:mod:`attnlab.tools.cli`).

Guarantees (tested in ``tests/lab/test_sweep_faults.py``, listed in ``docs/reliability.md``):

* everything is validated before any work or any write (unknown keys and models, models
  without temporal attention, frame counts past a model's positional encoding, selections);
* a cell's run is marked complete only after its last step is written; a killed or failed
  cell leaves an incomplete run that :func:`attnlab.load` skips and a re-run replaces;
* failures are kept in the store (``failures/<cell id>``: error and traceback) and re-run
  only with ``retry_failed=True``; unreadable or incomplete-on-disk runs count as failed
  and are moved to ``quarantine/`` (never deleted) when retried;
* one sweep per store at a time: a lock file (``sweep.lock``: pid, host, command) refuses a
  second sweep and is taken over when its process is gone;
* models load once per worker process (a per-process cache), not once per cell.

Modules:

* :mod:`~attnlab.lab.sweep.spec` - parse and validate a spec, expand it into cells, preflight
* :mod:`~attnlab.lab.sweep.cells` - cell states in a store, failure records, quarantine
* :mod:`~attnlab.lab.sweep.worker` - :func:`run_cell` and the per-process model cache
* :mod:`~attnlab.lab.sweep.driver` - :func:`run_sweep`, :func:`plan_sweep`, the dask client
* :mod:`~attnlab.lab.sweep.lock` - the store's lock file (one sweep per store)
* :mod:`~attnlab.lab.sweep.faults` - ``ATTNLAB_SWEEP_FAULT``, faults injected for tests
"""

from attnlab.lab.sweep.cells import (
    FAILURES_GROUP,
    QUARANTINE_DIR,
    CellState,
    cell_states,
    expected_steps,
    list_failures,
    read_failure,
)
from attnlab.lab.sweep.driver import ALLOWED_FAILURES, SweepSummary, plan_sweep, run_sweep
from attnlab.lab.sweep.faults import FAULT_ENV, FAULT_KINDS
from attnlab.lab.sweep.spec import (
    DTYPES,
    GENERATION_DEFAULTS,
    RECORD_DEFAULTS,
    RUN_PREFIX,
    SPEC_KEYS,
    Cell,
    EditChoice,
    Prompt,
    SweepError,
    SweepSpec,
    SweepSpecError,
    load_spec,
    parse_spec,
    preflight,
    record_kwargs,
)
from attnlab.lab.sweep.worker import _PIPES as _PIPES  # the model cache, which tests seed
from attnlab.lab.sweep.worker import (
    MAX_CACHED_MODELS,
    CellTask,
    pipe_is_clean,
    run_cell,
    worker_status,
)

__all__ = [
    "ALLOWED_FAILURES",
    "DTYPES",
    "FAILURES_GROUP",
    "FAULT_ENV",
    "FAULT_KINDS",
    "GENERATION_DEFAULTS",
    "MAX_CACHED_MODELS",
    "QUARANTINE_DIR",
    "RECORD_DEFAULTS",
    "RUN_PREFIX",
    "SPEC_KEYS",
    "Cell",
    "CellState",
    "CellTask",
    "EditChoice",
    "Prompt",
    "SweepError",
    "SweepSpec",
    "SweepSpecError",
    "SweepSummary",
    "cell_states",
    "expected_steps",
    "list_failures",
    "load_spec",
    "parse_spec",
    "pipe_is_clean",
    "plan_sweep",
    "preflight",
    "read_failure",
    "record_kwargs",
    "run_cell",
    "run_sweep",
    "worker_status",
]
