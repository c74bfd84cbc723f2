"""Reliability of sweeps under faults and bad input, with real processes (docs/reliability.md).

Faults are injected mid-recording (after step 0 of 2 is stored) with ``ATTNLAB_SWEEP_FAULT``,
set on the workers of a shared LocalCluster or in the environment of a sweep subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import attnlab
from attnlab.core import dims as D
from attnlab.core.store import StoreError
from attnlab.lab.sweep import (
    FAILURES_GROUP,
    FAULT_ENV,
    QUARANTINE_DIR,
    CellTask,
    SweepError,
    SweepSpecError,
    cell_states,
    list_failures,
    parse_spec,
    run_cell,
    run_sweep,
    worker_status,
)
from attnlab.lab.sweep.lock import LOCK_NAME, StoreLock, StoreLockedError
from attnlab.tools.cli import sweep_main as main

PROMPTS = ["alpha cat", "bravo dog", "charlie owl"]  # faults target bravo, hangs charlie


def spec_for(models, **over):
    spec = {
        "name": "rel",
        "models": [str(m) for m in models],
        "prompts": list(PROMPTS),
        "seeds": [0],
        "frames": [8],
        "generation": {"steps": 2, "height": 64, "width": 48},
        "record": {"levels": [0]},
    }
    spec.update(over)
    return spec


def _setenv(name: str, value: str | None) -> None:
    """Runs on workers: set or unset an environment variable in that process."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster like run_sweep's (2 worker processes x 1 thread), shared by the tests.

    It gives up on a cell at the first worker death (run_sweep's own clusters retry once)."""
    import logging

    import dask
    from dask.distributed import Client, LocalCluster

    # no retry after a worker death (run_sweep's own clusters retry ALLOWED_FAILURES times)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lc = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: no clash with other clusters
            silence_logs=logging.CRITICAL,
        )
    client = Client(lc)
    yield client
    client.close()
    lc.close()


@pytest.fixture
def fault(cluster):
    """``fault("exit:bravo")`` sets the fault on every worker; unset after the test."""

    def set_(value: str | None) -> None:
        cluster.run(_setenv, FAULT_ENV, value)

    yield set_
    set_(None)


def ms(tiny_dirs) -> str:
    return str(tiny_dirs["tiny-modelscope"])


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a hash of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def complete_flag(store: Path, run_id: str) -> bool:
    return bool(zarr.open_group(str(store), path=f"runs/{run_id}", mode="r").attrs["complete"])


def cells_by_prompt(spec):
    return {c.prompt: c for c in parse_spec(spec).cells()}


# ---- faults inside a cell ------------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_recording(cluster, fault, tiny_dirs, tmp_path):
    """os._exit in a worker mid-run: the other cells complete, the cell is recorded as failed,
    the store stays readable, and a later retry completes it."""
    store = tmp_path / "s.zarr"
    spec = spec_for([ms(tiny_dirs)])
    bravo = cells_by_prompt(spec)["bravo dog"]
    pids = set(cluster.run(os.getpid).values())
    fault("exit:bravo")
    s = run_sweep(spec, store, scheduler=cluster.scheduler.address, progress=False)
    assert len(s.done) == 2 and list(s.failed) == [bravo.cell_id], s.failed
    assert s.failed[bravo.cell_id].startswith("WorkerDied")
    assert set(cluster.run(os.getpid).values()) != pids  # workers were killed and restarted
    # the store is readable; the killed cell's run holds step 0, is incomplete and not loaded
    assert attnlab.load(store).sizes[D.RUN] == 2
    assert attnlab.load(store, include_incomplete=True).sizes[D.RUN] == 3
    assert not complete_flag(store, bravo.run_id)
    assert list_failures(store)[bravo.cell_id]["attempts"] == 1
    fault(None)
    # not retried unless asked
    s = run_sweep(spec, store, scheduler=cluster.scheduler.address, progress=False)
    assert s.not_retried == [bravo.cell_id] and not s.done and len(s.skipped) == 2
    s = run_sweep(
        spec, store, scheduler=cluster.scheduler.address, retry_failed=True, progress=False
    )
    assert s.done == [bravo.cell_id] and s.ok and len(s.skipped) == 2
    ds = attnlab.load(store)
    assert ds.sizes[D.RUN] == 3 and ds.sizes[D.STEP] == 2
    assert not np.isnan(ds[D.PROBS].values).any()
    assert list_failures(store) == {}


@pytest.mark.parametrize(
    "kind, error", [("interrupt", "KeyboardInterrupt"), ("raise", "RuntimeError")]
)
def test_exception_inside_the_pipeline(cluster, fault, tiny_dirs, tmp_path, kind, error):
    """KeyboardInterrupt / an exception mid-recording in a worker: recorded, model restored."""
    store = tmp_path / "s.zarr"
    spec = spec_for([ms(tiny_dirs)])
    bravo = cells_by_prompt(spec)["bravo dog"]
    pids = set(cluster.run(os.getpid).values())
    fault(f"{kind}:bravo")
    s = run_sweep(spec, store, scheduler=cluster.scheduler.address, progress=False)
    assert len(s.done) == 2 and s.failed[bravo.cell_id].startswith(error)
    failure = list_failures(store)[bravo.cell_id]
    assert error in failure["traceback"] and failure["cell"]["prompt"] == "bravo dog"
    # no worker died, and every cached pipeline has its original processors back
    assert set(cluster.run(os.getpid).values()) == pids
    for status in cluster.run(worker_status).values():
        assert all(status["clean"].values()), status
    assert attnlab.load(store).sizes[D.RUN] == 2
    assert not complete_flag(store, bravo.run_id)  # step 0 stored, never marked complete


def test_failed_last_write_is_never_left_complete(ms_pipe, tiny_dirs, tmp_path, monkeypatch):
    """A write error in the recorder's final flush: the cell fails and its run stays incomplete."""
    from attnlab.core import store as store_mod
    from attnlab.lab.sweep import _PIPES

    store = tmp_path / "s.zarr"
    spec = parse_spec(spec_for([ms(tiny_dirs)], prompts=["alpha cat"]))
    cell = spec.cells()[0]
    attnlab.core.store.prepare_store(store, spec.layout())
    original = store_mod.RunWriter.append

    def append(self, ds):
        if self.steps >= 1:
            raise OSError("No space left on device")
        return original(self, ds)

    monkeypatch.setattr(store_mod.RunWriter, "append", append)
    monkeypatch.setitem(_PIPES, (ms(tiny_dirs), "cpu", None), ms_pipe)
    result = run_cell(CellTask(cell, str(store), ms(tiny_dirs), "cpu"))
    assert result["status"] == "failed" and "No space left" in result["error"]
    assert not complete_flag(store, cell.run_id)
    assert cell_states(store, [cell])[cell.cell_id].state == "partial"
    with pytest.raises(StoreError, match="no complete runs"):
        attnlab.load(store)


# ---- the sweep process itself killed, interrupted, or run twice ---------------------------


def start_sweep(spec: dict, store: Path, tmp_path: Path, fault: str | None, name: str):
    """``python -m attnlab.tools.cli sweep`` with one local worker, in its own process group."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    argv = ["-m", "attnlab.tools.cli", "sweep", str(path), "--store", str(store), "--workers", "1"]
    with open(tmp_path / f"{name}.err", "w") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, *argv, "--no-progress"],
            env=env,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can kill it and its workers
        )
    proc.err_path = tmp_path / f"{name}.err"
    return proc


def wait_for(predicate, proc, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            tail = proc.err_path.read_text()[-3000:]
            raise AssertionError(f"sweep exited early with {proc.returncode}: {tail}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the sweep")


def stable_snapshot(store: Path, timeout: float = 60.0) -> dict:
    """A snapshot once two taken a second apart agree (a writer may be mid-append)."""
    import time

    before = snapshot(store)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = snapshot(store)
        if now == before:
            return now
        before = now
    raise AssertionError(f"{store} kept changing for {timeout} s")


def hanging_mid_run(store: Path, cells: dict) -> bool:
    """alpha and bravo complete, charlie's run started (step 0 stored) and hanging."""
    try:
        return (
            complete_flag(store, cells["alpha cat"].run_id)
            and complete_flag(store, cells["bravo dog"].run_id)
            and not complete_flag(store, cells["charlie owl"].run_id)
        )
    except Exception:  # not written yet
        return False


def still_running(procs, timeout: float = 10.0) -> list:
    """The processes of ``procs`` still alive (not zombies) after waiting up to ``timeout``."""
    import psutil

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    end = time.monotonic() + timeout
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def kill_group(proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_concurrent_sweep_refused_and_killed_sweep_resumes(cluster, tiny_dirs, tmp_path, capsys):
    """Two real processes on one store: a sweep subprocess, then this process's sweep, which
    is refused and writes nothing. Then SIGKILL of the first (and its workers) mid-recording:
    the store stays readable, the stale lock is taken over, a re-run completes the rest."""
    import psutil

    store = tmp_path / "s.zarr"
    spec = spec_for([ms(tiny_dirs)])
    cells = cells_by_prompt(spec)
    first = start_sweep(spec, store, tmp_path, "hang:charlie", "first")
    try:
        wait_for(lambda: hanging_mid_run(store, cells), first)
        before = stable_snapshot(store)  # the hang comes after step 0 is fully written
        with pytest.raises(
            StoreLockedError, match=f"in use by another attnlab sweep \\(pid {first.pid} "
        ):
            run_sweep(spec, store, scheduler=cluster.scheduler.address, progress=False)
        assert main([str(tmp_path / "first.json"), "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert f"attnlab sweep: error: {store} is in use by another attnlab sweep" in err
        assert f"delete {store / LOCK_NAME}" in err
        assert snapshot(store) == before  # the refused sweeps wrote nothing
        workers = psutil.Process(first.pid).children(recursive=True)
        assert len(workers) >= 1
    finally:
        kill_group(first)
    assert not still_running(workers)
    # the store is readable: the two finished cells intact, the killed one invisible
    assert attnlab.load(store).sizes[D.RUN] == 2
    assert attnlab.load(store, include_incomplete=True).sizes[D.RUN] == 3
    assert json.loads((store / LOCK_NAME).read_text())["pid"] == first.pid  # stale now
    with pytest.warns(UserWarning, match="stale lock"):
        s = run_sweep(spec, store, scheduler=cluster.scheduler.address, progress=False)
    assert s.done == [cells["charlie owl"].cell_id] and len(s.skipped) == 2 and s.ok
    ds = attnlab.load(store)
    assert ds.sizes[D.RUN] == 3 and not np.isnan(ds[D.PROBS].values).any()
    assert not (store / LOCK_NAME).exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_its_workers(tiny_dirs, tmp_path, monkeypatch):
    """SIGINT to the sweep process while a cell hangs mid-recording: KeyboardInterrupt, the
    local cluster's workers are stopped, the lock released, completed cells kept."""
    import threading

    import psutil

    store = tmp_path / "s.zarr"
    spec = spec_for([ms(tiny_dirs)])
    cells = cells_by_prompt(spec)
    monkeypatch.setenv(FAULT_ENV, "hang:charlie")  # inherited by the local cluster's workers
    # Python leaves SIGINT ignored when it started so (a runner launched in the background by a
    # shell without job control): the interrupt this test sends must raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    seen: list = []
    stop = threading.Event()

    def interrupt_when_hanging() -> None:
        end = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < end:
            if hanging_mid_run(store, cells):
                seen.extend(p for p in me.children(recursive=True) if p.pid not in before)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)
        if not stop.is_set():  # never reached: interrupt anyway, the test fails (not hangs)
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_when_hanging, daemon=True)
    watcher.start()
    try:
        # the cell hangs forever: returning at all shows the interrupt was not waited out
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, store, scheduler="local", workers=1, progress=False)
    finally:
        stop.set()
        signal.signal(signal.SIGINT, previous)
    assert seen, "the sweep never reached the hanging cell"
    assert not (store / LOCK_NAME).exists()
    assert not still_running(seen)
    assert attnlab.load(store).sizes[D.RUN] == 2
    assert not complete_flag(store, cells["charlie owl"].run_id)


# ---- the lock --------------------------------------------------------------------------------


def write_lock(store: Path, **info) -> None:
    store.mkdir(parents=True, exist_ok=True)
    (store / LOCK_NAME).write_text(json.dumps(info))


def test_lock_refuses_live_and_foreign_holders_and_takes_over_dead_ones(tmp_path):
    import psutil

    store = tmp_path / "s.zarr"
    host = socket.gethostname()
    me = psutil.Process(os.getpid())
    # a live process on this host
    write_lock(store, pid=me.pid, host=host, started=me.create_time(), command="x")
    with pytest.raises(StoreLockedError, match=f"pid {me.pid} on host {host}"):
        StoreLock(store).acquire()
    # a process on another host: cannot be checked, refused
    write_lock(store, pid=1, host="elsewhere", started=0.0, command="x")
    with pytest.raises(StoreLockedError, match="on host elsewhere"):
        StoreLock(store).acquire()
    # an unreadable lock file
    (store / LOCK_NAME).write_text("{garbage")
    with pytest.raises(StoreLockedError, match="cannot be read"):
        StoreLock(store).acquire()
    # a dead process, and a reused pid (same pid, other start time): stale, taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, started in ((dead.pid, None), (me.pid, me.create_time() - 100)):
        write_lock(store, pid=pid, host=host, started=started, command="old")
        with pytest.warns(UserWarning, match="stale lock"), StoreLock(store) as lock:
            assert json.loads((store / LOCK_NAME).read_text())["token"] == lock.token
            with pytest.raises(StoreLockedError):  # exclusive while held
                StoreLock(store).acquire()
        assert not (store / LOCK_NAME).exists()
    # release never removes someone else's lock
    lock = StoreLock(store).acquire()
    write_lock(store, pid=me.pid, host=host, started=me.create_time(), token="other")
    lock.release()
    assert (store / LOCK_NAME).exists()


# ---- bad input -------------------------------------------------------------------------------


def test_unknown_model_is_refused_before_anything_is_written(tiny_dirs, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    spec = spec_for([ms(tiny_dirs), tmp_path / "no-such-model"])
    with pytest.raises(SweepSpecError, match=r"models\[1\].*no-such-model") as info:
        run_sweep(spec, store, progress=False)
    assert info.value.key == "models[1]"
    assert not store.exists()
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main([str(path), "--store", str(store)]) == 2
    assert "attnlab sweep: error: sweep spec: models[1]" in capsys.readouterr().err
    assert not store.exists()


@pytest.mark.parametrize(
    "folder, config, match",
    [
        (
            "transformer",
            {"_class_name": "FluxTransformer2DModel"},
            "image transformer.*no frame axis",
        ),
        ("transformer", {"_class_name": "SanaVideoTransformer3DModel"}, "linear attention"),
        ("unet", {"_class_name": "UNet2DConditionModel"}, "without a motion adapter"),
    ],
    ids=["image-transformer", "linear-attention", "unet"],
)
def test_model_without_temporal_attention_is_refused(tmp_path, folder, config, match):
    model = tmp_path / "model"
    (model / folder).mkdir(parents=True)
    (model / folder / "config.json").write_text(json.dumps(config))
    (model / "model_index.json").write_text(json.dumps({"_class_name": "SomePipeline"}))
    with pytest.raises(SweepSpecError, match=rf"models\[0\].*{match}"):
        run_sweep(spec_for([model]), tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_frames_beyond_positional_encoding_fail_early_and_clearly(tiny_dirs, tmp_path, capsys):
    spec = spec_for([tiny_dirs["tiny-animatediff"]], frames=[8, 40])
    with pytest.raises(SweepSpecError, match=r"frames\[1\].*40 frames.*at most 32 frames"):
        run_sweep(spec, tmp_path / "s.zarr", progress=False)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main([str(path), "--store", str(tmp_path / "s.zarr")]) == 2
    assert "sinusoidal, at most 32 frames" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


def test_incompatible_store_is_refused_and_left_unchanged(ms_pipe, gen, tiny_dirs, tmp_path):
    store = tmp_path / "s.zarr"
    with attnlab.record(ms_pipe, levels=[0], reduce="mean", store=store):
        gen(ms_pipe)
    before = snapshot(store)
    spec = spec_for([ms(tiny_dirs)], record={"levels": [0], "reduce": "head"})
    with pytest.raises(StoreError, match="cannot append"):
        run_sweep(spec, store, progress=False)
    assert snapshot(store) == before
    root = zarr.open_group(str(store), mode="r+")
    root.attrs["attnlab"] = {**root.attrs["attnlab"], "schema": 99}
    before = snapshot(store)
    with pytest.raises(StoreError, match="schema 99"):
        run_sweep(spec_for([ms(tiny_dirs)]), store, progress=False)
    (store / "zarr.json").write_text("{garbage")
    with pytest.raises(StoreError, match="not a readable zarr v3 group"):
        run_sweep(spec_for([ms(tiny_dirs)]), store, progress=False)
    assert snapshot(store).keys() == before.keys()
    assert not (store / LOCK_NAME).exists()


def test_corrupt_runs_are_reported_kept_and_recomputed_on_request(cluster, tiny_dirs, tmp_path):
    store = tmp_path / "s.zarr"
    spec = spec_for([ms(tiny_dirs)])
    cells = cells_by_prompt(spec)
    address = cluster.scheduler.address
    assert run_sweep(spec, store, scheduler=address, progress=False).ok
    garbled, chunkless = cells["alpha cat"], cells["bravo dog"]
    (store / "runs" / garbled.run_id / "zarr.json").write_text("{garbage")
    chunk = next((store / "runs" / chunkless.run_id / "probs" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    before = snapshot(store)
    s = run_sweep(spec, store, scheduler=address, progress=False)
    assert set(s.failed) == {garbled.cell_id, chunkless.cell_id} and len(s.skipped) == 1
    assert "unreadable" in s.failed[garbled.cell_id]
    assert "chunks of 'probs' are missing" in s.failed[chunkless.cell_id]
    assert snapshot(store) == before  # reported, nothing touched
    s = run_sweep(spec, store, scheduler=address, retry_failed=True, progress=False)
    assert set(s.done) == {garbled.cell_id, chunkless.cell_id} and s.ok
    assert len(list((store / QUARANTINE_DIR).iterdir())) == 2  # moved aside, not deleted
    ds = attnlab.load(store)
    assert ds.sizes[D.RUN] == 3 and not np.isnan(ds[D.PROBS].values).any()
    assert not (store / FAILURES_GROUP).exists() or list_failures(store) == {}


def test_bad_worker_count_and_missing_spec_file(tmp_path, capsys):
    with pytest.raises(SweepError, match="workers must be a positive integer"):
        run_sweep(spec_for(["tiny-modelscope"]), tmp_path / "s.zarr", workers=0)
    assert main([str(tmp_path / "nope.toml"), "--store", str(tmp_path / "s.zarr")]) == 2
    assert "nope.toml' not found" in capsys.readouterr().err


@pytest.mark.parametrize("array", ["ran", "timestep"])
def test_a_complete_run_missing_a_chunk_of_ran_or_of_a_coordinate_is_corrupt(
    tiny_dirs, tmp_path, array
):
    """Not only the maps: a lost chunk of ``ran`` made load skip the run while the sweep
    skipped the cell forever; a lost ``timestep`` chunk loaded as NaN."""
    from attnlab.core.store import prepare_store
    from attnlab.lab.sweep.spec import preflight, store_layout

    spec = parse_spec(spec_for([ms(tiny_dirs)], prompts=["alpha cat"]))
    refs = preflight(spec, check_device_here=False)
    layout = store_layout(spec, refs)
    variables = tuple(layout["variables"])
    store = tmp_path / "s.zarr"
    prepare_store(store, layout)
    (cell,) = spec.cells()
    assert (
        run_cell(CellTask(cell, str(store), refs[cell.model], "cpu", variables))["status"] == "done"
    )
    assert cell_states(store, [cell], variables)[cell.cell_id].state == "complete"
    chunks = sorted(
        p for p in (store / "runs" / cell.run_id / array / "c").rglob("*") if p.is_file()
    )
    chunks[-1].unlink()
    state = cell_states(store, [cell], variables)[cell.cell_id]
    assert state.state == "corrupt" and f"chunks of {array!r} are missing" in state.reason
    with pytest.warns(UserWarning, match=f"chunks of {array!r} are missing"):
        assert attnlab.core.store.list_runs(store) == []  # never loaded with a hole


def test_a_cell_never_replaces_a_run_another_live_writer_is_writing(tiny_dirs, tmp_path):
    """A re-run of a task still running elsewhere (a remote scheduler re-submits it): the cell
    fails instead of deleting the live writer's group (it deleted any incomplete run)."""
    from attnlab.core.store import prepare_store
    from attnlab.lab.sweep.spec import preflight, store_layout

    spec = parse_spec(spec_for([ms(tiny_dirs)], prompts=["alpha cat"]))
    refs = preflight(spec, check_device_here=False)
    layout = store_layout(spec, refs)
    store = tmp_path / "s.zarr"
    prepare_store(store, layout)
    (cell,) = spec.cells()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = zarr.open_group(str(store), mode="r+", zarr_format=3)["runs"]
        mark = {"pid": writer.pid, "host": socket.gethostname(), "token": "elsewhere"}
        group = runs.create_group(cell.run_id, attributes={"complete": False, "writer": mark})
        group.create_array("marker", shape=(1,), dtype="f4")[:] = 1
        out = run_cell(
            CellTask(cell, str(store), refs[cell.model], "cpu", tuple(layout["variables"]))
        )
        assert out["status"] == "failed" and "being written now" in out["error"]
        assert "marker" in zarr.open_group(str(store), path=f"runs/{cell.run_id}", mode="r")
    finally:
        writer.kill()
        writer.wait()


def test_a_mistyped_scheduler_is_refused_before_anything_is_written(tmp_path):
    store = tmp_path / "s.zarr"
    with pytest.raises(SweepError, match="scheduler must be 'local' or a scheduler's address"):
        run_sweep(spec_for(["tiny-modelscope"]), store, scheduler="locl", progress=False)
    assert not store.exists()


def test_a_dit_attending_to_its_text_sweeps_with_the_text_mass_and_not_beside_a_unet(
    tiny_dirs, tmp_path
):
    """CogVideoX's recorder also writes the text mass: the store is prepared for it (every cell
    of such a sweep failed on the layout before); one store holds one layout, so such a DiT
    beside a UNet is refused before anything is written."""
    from attnlab.core.store import prepare_store
    from attnlab.lab.sweep.spec import preflight, store_layout
    from attnlab.models.tiny_dit import cogvideox_pipeline

    folder = tmp_path / "cog"
    cogvideox_pipeline().save_pretrained(str(folder))
    over = {"prompts": ["alpha cat"], "frames": [9], "record": {}}
    over["generation"] = {"steps": 2, "height": 64, "width": 64}
    spec = parse_spec(spec_for([folder], **over))
    refs = preflight(spec, check_device_here=False)
    layout = store_layout(spec, refs)
    assert layout["variables"] == [D.PROBS, D.TEXT_MASS]
    store = tmp_path / "s.zarr"
    prepare_store(store, layout)
    (cell,) = spec.cells()
    out = run_cell(CellTask(cell, str(store), refs[cell.model], "cpu", tuple(layout["variables"])))
    assert out["status"] == "done", out.get("error")
    assert D.TEXT_MASS in attnlab.load(store)
    with pytest.raises(SweepSpecError, match="one store holds one layout"):
        preflight(parse_spec(spec_for([folder, ms(tiny_dirs)], **over)), check_device_here=False)
