"""The zarr (v3) store of recorded attention, written and read through xarray.

Layout (see docs/store-schema.md)::

    run.zarr/                 root group; attrs["attnlab"] = {"schema", "reduction", "grid", "variables"}
    run.zarr/runs/<run_id>/   one xarray Dataset per run; attrs = provenance, "complete"

Each run is its own group, so runs with different frame or step counts coexist, writers never
touch each other's arrays, and a run interrupted half way is visible as ``complete=False`` and
skipped by :func:`load`. :func:`load` concatenates runs along ``run`` (NaN-padded where frame,
step or layer sets differ).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from attnlab.core import dims as D

SCHEMA_VERSION = 1
#: the dimension of the windows of frames a windowed run's temporal attention ran on (AnimateDiff's
#: FreeNoise): the window's first frame; maps of such runs have it after ``layer``, with
#: ``query_frame`` / ``key_frame`` counted within the window (docs/store-schema.md)
WINDOW = D.WINDOW
RUNS_GROUP = "runs"
# run-level provenance keys lifted into `run` coordinates on load (attr name -> coord name)
RUN_COORDS = {
    "source": D.SOURCE,
    "model": D.MODEL,
    "prompt": D.PROMPT,
    "seed": D.SEED,
    "frames": D.FRAMES,
    "video": D.VIDEO,
    "pe": D.PE,
    "pe_max_len": D.PE_MAX_LEN,
}
# per-layer coordinates that depend on the model or latent size: (run, layer) after load
RUN_LAYER_COORDS = (D.LAYER_H, D.LAYER_W, D.HEADS, D.HEAD_DIM)
# per-layer coordinates fixed by the module path: 1D along `layer`
LAYER_COORDS = (D.LEVEL, D.BLOCK)


#: attribute of an integer array that stands for strings: code ``i`` means ``labels[i]``
LABELS_ATTR = "attnlab_labels"


def encode_strings(ds: xr.Dataset, labels: dict[str, list[str]] | None = None) -> xr.Dataset:
    """String variables and coordinates as ``int32`` codes with their labels in an attribute.

    zarr v3 specifies no fixed-length string type (zarr-python's ``fixed_length_utf32`` is
    unstable and other readers refuse it), and its variable-length ``string`` is an extension
    that e.g. tensorstore does not read; integer codes read everywhere. Labels keep the order of
    first appearance, or are given per variable in ``labels`` (for arrays appended step by
    step: every append must code alike). :func:`decode_strings` inverts this.
    """
    fixed = labels or {}
    changed = {}
    for name, var in ds.variables.items():
        if var.dtype.kind not in "US" and not (
            var.dtype.kind == "O" and all(isinstance(v, str) for v in var.values.ravel())
        ):
            continue
        values = np.asarray(var.values).astype(str)
        names = list(fixed.get(str(name), ())) or list(dict.fromkeys(values.ravel().tolist()))
        unknown = sorted(set(values.ravel().tolist()) - set(names))
        if unknown:
            raise StoreError(f"{name!r} values {unknown} are not among its labels {names}")
        index = {label: i for i, label in enumerate(names)}
        codes = np.array([index[v] for v in values.ravel()], dtype=np.int32).reshape(values.shape)
        changed[name] = xr.Variable(var.dims, codes, attrs={**var.attrs, LABELS_ATTR: names})
    if not changed:
        return ds
    coords = {k: v for k, v in changed.items() if k in ds.coords}
    data = {k: v for k, v in changed.items() if k not in ds.coords}
    return ds.assign_coords(coords).assign(data)


def decode_strings(ds: xr.Dataset) -> xr.Dataset:
    """Inverse of :func:`encode_strings`: coded arrays become string arrays (numpy ``<U``)."""
    changed = {}
    for name, var in ds.variables.items():
        labels = var.attrs.get(LABELS_ATTR)
        if labels is None:
            continue
        attrs = {k: v for k, v in var.attrs.items() if k != LABELS_ATTR}
        values = np.asarray(labels, dtype=str)[np.asarray(var.values, dtype=np.int64)]
        changed[name] = xr.Variable(var.dims, values, attrs=attrs)
    if not changed:
        return ds
    coords = {k: v for k, v in changed.items() if k in ds.coords}
    data = {k: v for k, v in changed.items() if k not in ds.coords}
    return ds.assign_coords(coords).assign(data)


class StoreError(ValueError):
    """A store that cannot be read or appended to as asked (nothing was modified)."""


def new_run_id() -> str:
    """Sortable, collision-safe id: UTC time plus random hex (safe for concurrent writers)."""
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9))
    return f"{stamp}.{ns % 10**9:09d}-{secrets.token_hex(3)}"


def _open_root(path: Path, mode: Literal["r", "r+", "a", "w", "w-"]):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as err:
        raise StoreError(f"{path} is not a readable zarr v3 group: {err}") from err


def layout_of(path: str | os.PathLike) -> dict[str, Any] | None:
    """The attnlab layout of an existing store (None if ``path`` does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    root = _open_root(path, "r")
    layout = root.attrs.get("attnlab")
    if layout is None:
        raise StoreError(
            f"{path} exists but is not an attnlab store (no 'attnlab' attribute); choose another path"
        )
    return dict(layout)


def check_schema(path: str | os.PathLike, existing: dict[str, Any]) -> None:
    """Refuse a store (``existing``: its :func:`layout_of`) of another schema than this
    attnlab writes."""
    if existing.get("schema") != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has attnlab store schema {existing.get('schema')}, this attnlab writes schema "
            f"{SCHEMA_VERSION}; write to a new store"
        )


def prepare_store(path: str | os.PathLike, layout: dict[str, Any]) -> Path:
    """Create a store with ``layout`` or check that an existing one has the same layout."""
    path = Path(path)
    existing = layout_of(path)
    if existing is None:
        root = _open_root(path, "w-")
        root.attrs["attnlab"] = {"schema": SCHEMA_VERSION, **layout}
        root.create_group(RUNS_GROUP)
        return path
    check_schema(path, existing)
    theirs = {k: existing.get(k) for k in layout}
    if theirs != layout:
        raise StoreError(
            f"cannot append to {path}: it holds {theirs}, this recording is {layout}; "
            "record with the same reduction/variables or write to a new store"
        )
    return path


#: group attribute of a run being written: the writer's ``pid``, its start time ``started``,
#: ``host`` and ``token`` (None once its writer finished)
WRITER = "writer"
#: the tokens of the runs this process is writing now
_WRITING: set[str] = set()


def _writing_now(writer: Any) -> bool:
    """Whether the writer a run group names is still writing it: one of this process's, or a
    live process of this host (one of another host cannot be told: its run is replaced)."""
    if not isinstance(writer, dict):
        return False
    if writer.get("token") in _WRITING:
        return True
    if writer.get("host") != socket.gethostname() or writer.get("pid") == os.getpid():
        return False
    import psutil  # (distributed's dependency)

    try:
        process = psutil.Process(int(writer["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # killed, not yet reaped
        started = writer.get("started")
        # the pid of a process started after the writer is another process (pid reuse)
        return started is None or abs(process.create_time() - float(started)) < 1.0
    except psutil.AccessDenied:
        return True  # a live process of another user
    except (psutil.Error, KeyError, TypeError, ValueError, OverflowError):
        return False


def claim_run(path: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """Reserve ``run_id`` for one writer, before any work; returns the writer's mark.

    Refused (:class:`StoreError`): a complete run of that name, and a run another writer is
    writing now (another recorder of this process, or a live process of this host). An
    incomplete group an interrupted writer left behind is replaced, so re-running the same
    named job (analyses, sweeps) does not fail forever.
    """
    runs = _open_root(Path(path), "r+")[RUNS_GROUP]
    if run_id in runs:
        attrs = runs[run_id].attrs
        if attrs.get("complete", False):
            raise StoreError(
                f"run {run_id!r} already exists (complete) in {path}; choose another name"
            )
        writer = attrs.get(WRITER)
        if _writing_now(writer):
            raise StoreError(
                f"run {run_id!r} of {path} is being written now (process {writer.get('pid')} "
                f"on {writer.get('host')}); choose another name"
            )
        del runs[run_id]
    import psutil

    token = secrets.token_hex(8)
    mark: dict[str, Any] = {
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        "host": socket.gethostname(),
        "token": token,
    }
    runs.create_group(run_id, attributes={"complete": False, WRITER: mark})
    _WRITING.add(token)
    return mark


def abandon_claim(path: str | os.PathLike, run_id: str, mark: dict[str, Any]) -> None:
    """A claimed run that never wrote a step: its empty group goes, if it is still this
    writer's."""
    _WRITING.discard(mark["token"])
    runs = _open_root(Path(path), "r+")[RUNS_GROUP]
    if run_id in runs:
        group = runs[run_id]
        if (group.attrs.get(WRITER) or {}).get("token") == mark["token"] and not list(group.keys()):
            del runs[run_id]


def _group(run_id: str) -> str:
    return f"{RUNS_GROUP}/{run_id}"


def checksum_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The zarr encoding attnlab writes every array with: zstd, then a CRC-32C checksum of each
    chunk (the zarr v3 ``crc32c`` codec), so a damaged chunk fails to read instead of returning
    wrong numbers."""
    import zarr.codecs

    codecs = (zarr.codecs.ZstdCodec(level=0, checksum=False), zarr.codecs.Crc32cCodec())
    return {str(name): {"compressors": codecs} for name in ds.variables}


@dataclass
class StoreCheck:
    """What :func:`verify_store` found: every group (``runs/<id>``, ``videos/<name>``,
    ``similarity/<name>``, ``evaluation/<id>``) that it read whole, with its damage."""

    path: Path
    #: group -> one line per damaged chunk (array, chunk index, the reader's error)
    damaged: dict[str, list[str]]
    #: groups read whole and intact
    intact: list[str]
    #: groups with arrays written without checksums (by attnlab before 0.2): read whole, but
    #: corruption that still decompresses cannot be told from data
    unchecked: list[str]

    @property
    def ok(self) -> bool:
        return not self.damaged

    def __str__(self) -> str:
        lines = [
            f"{self.path}: {len(self.intact)} group(s) intact, {len(self.damaged)} damaged"
            + (f", {len(self.unchecked)} without checksums" if self.unchecked else "")
        ]
        for group, problems in self.damaged.items():
            lines += [f"  damaged {group}: {p}" for p in problems]
        lines += [f"  no checksums: {g}" for g in self.unchecked]
        return "\n".join(lines)


def _has_checksums(array: Any) -> bool:
    codecs = getattr(array.metadata, "codecs", ())
    return any(type(c).__name__ == "Crc32cCodec" for c in codecs)


def verify_store(path: str | os.PathLike) -> StoreCheck:
    """Read every chunk of every array of a store and report which groups are damaged.

    Stores written by attnlab 0.2 or later carry a CRC-32C checksum per chunk, so any changed
    byte is found; older stores are read whole too (a chunk that no longer decompresses is
    found) and listed as ``unchecked``. The other groups stay readable: load them with
    ``attnlab.load(path, runs=[...])``.

    Returns:
        :class:`StoreCheck` (``.ok``, ``.damaged``, ``.intact``, ``.unchecked``; ``str()`` is a
        report naming every damaged group, array and chunk).

    Example::

        check = attnlab.verify_store("run.zarr")
        if not check.ok:
            print(check)          # damaged runs/<id>: probs chunk (3, 0, 0, ...): ...
    """
    import itertools

    import zarr

    path = Path(path)
    if layout_of(path) is None:
        raise StoreError(f"no attnlab store at {path}")
    root = zarr.open_group(path, mode="r")
    damaged: dict[str, list[str]] = {}
    seen: set[str] = set()
    unchecked: set[str] = set()
    for name, obj in root.members(max_depth=None):
        if not isinstance(obj, zarr.Array):
            continue
        group, _, array = name.rpartition("/")
        seen.add(group)
        every = bool((root[group] if group else root).attrs.get(EVERY_CHUNK, False))
        if not _has_checksums(obj):
            unchecked.add(group)
        for index in itertools.product(*(range(n) for n in obj.cdata_shape)):
            # written with every chunk: a missing one is damage (zarr would read the fill value)
            if every and not (path / name / obj.metadata.encode_chunk_key(index)).exists():
                damaged.setdefault(group, []).append(f"{array} chunk {index}: missing")
                continue
            try:
                obj.get_block_selection(index)
            except Exception as err:  # any reader error is damage, named with its chunk
                text = " ".join(str(err).split())[:200] or type(err).__name__
                damaged.setdefault(group, []).append(f"{array} chunk {index}: {text}")
    intact = sorted(seen - set(damaged))
    return StoreCheck(path, damaged, intact, sorted(unchecked))


_WARNED_UNCHECKED: set[str] = set()


def _warn_if_unchecked(path: Path, run_id: str) -> None:
    """Say once per store that a store written before checksums cannot show corruption."""
    import warnings

    import zarr

    key = str(path.resolve())
    if key in _WARNED_UNCHECKED:
        return
    _WARNED_UNCHECKED.add(key)
    group = zarr.open_group(path, mode="r")[_group(run_id)]
    arrays = [a for _, a in group.arrays()] if isinstance(group, zarr.Group) else []
    if arrays and not all(_has_checksums(a) for a in arrays):
        warnings.warn(
            f"{path} was written without checksums (attnlab before 0.2): it loads, but damage "
            "that still decompresses cannot be detected; attnlab.verify_store reads it whole",
            stacklevel=3,
        )


#: group attribute of everything written with every chunk present (attnlab 0.3 on): there a
#: missing chunk is damage; zarr would read it back as the fill value
EVERY_CHUNK = "every_chunk"
#: group attributes that describe the writing, not the run (never provenance)
WRITE_ATTRS = ("complete", EVERY_CHUNK, WRITER)


def write_group(ds: xr.Dataset, path: str | os.PathLike, group: str, **kwargs: Any) -> None:
    """``ds.to_zarr`` into ``group`` of the store at ``path`` with every chunk written, also one
    that holds only the fill value (zarr leaves those out by default, coordinates included, and
    a step where nothing ran, ``ran`` all False and maps all NaN, would then look like damage)."""
    import zarr

    ds = ds.assign_attrs({EVERY_CHUNK: True})
    with zarr.config.set({"array.write_empty_chunks": True}):
        ds.to_zarr(Path(path), group=group, zarr_format=3, consolidated=False, **kwargs)


class RunWriter:
    """Writes one run into a store step by step (streaming) and marks it complete at the end."""

    def __init__(
        self,
        path: Path,
        run_id: str,
        attrs: dict[str, Any],
        labels: dict[str, list[str]] | None = None,
        mark: dict[str, Any] | None = None,
    ):
        """``labels``: the fixed labels of string coordinates along ``step`` (``expert``);
        ``mark``: the run's :func:`claim_run` made earlier (else it is claimed now)."""
        self.path = path
        self.run_id = run_id
        self.attrs = attrs
        self.labels = dict(labels or {})
        self.steps = 0
        self.mark = mark if mark is not None else claim_run(path, run_id)

    def append(self, ds: xr.Dataset) -> None:
        """Append the steps in ``ds`` (a Dataset with a ``step`` dimension)."""
        # xarray rewrites the group's attributes on every append: always send the provenance
        ds = ds.assign_attrs({**_attrs_for_zarr(self.attrs), "complete": False, WRITER: self.mark})
        ds = encode_strings(ds, self.labels)
        if self.steps == 0:
            encoding = checksum_encoding(ds)
            for v in ds.data_vars:
                encoding[str(v)]["chunks"] = _step_chunks(ds[v])
            # (into the group claim_run made for this writer)
            write_group(ds, self.path, _group(self.run_id), mode="a", encoding=encoding)
        else:
            write_group(ds, self.path, _group(self.run_id), append_dim=D.STEP)
        self.steps += ds.sizes[D.STEP]

    def finish(self, complete: bool, extra: dict[str, Any] | None = None) -> None:
        if self.steps == 0:
            abandon_claim(self.path, self.run_id, self.mark)
            return
        _WRITING.discard(self.mark["token"])
        group = _open_root(self.path, "r+")[_group(self.run_id)]
        group.attrs.update(
            {**_attrs_for_zarr(extra or {}), "complete": bool(complete), WRITER: None}
        )


def _step_chunks(da: xr.DataArray) -> tuple[int, ...]:
    # one chunk = every map of one step: whole N x N maps are never split
    return tuple(1 if d == D.STEP else n for d, n in zip(da.dims, da.shape))


def _attrs_for_zarr(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs, default=str))


def write_run(
    path: str | os.PathLike, ds: xr.Dataset, layout: dict[str, Any], run_id: str | None = None
) -> str:
    """Write one complete run (a per-run Dataset with provenance attrs) into a store."""
    path = prepare_store(path, layout)
    run_id = run_id or ds.attrs.get("run_id") or new_run_id()
    writer = RunWriter(path, run_id, dict(ds.attrs))
    writer.append(ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds.assign_attrs({}))
    writer.finish(True)
    return run_id


def list_runs(path: str | os.PathLike, include_incomplete: bool = False) -> list[str]:
    """Run ids in a store, oldest first. A damaged run is skipped with a warning (never fatal)."""
    return [r for r, complete in _scan_runs(path) if include_incomplete or complete]


def _scan_runs(path: str | os.PathLike) -> list[tuple[str, bool]]:
    """(run id, complete) of every readable run, oldest first; damaged runs warn."""
    import warnings

    import zarr

    path = Path(path)
    if layout_of(path) is None:
        raise StoreError(f"no attnlab store at {path}")
    out = []
    runs_dir = path / RUNS_GROUP
    for child in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not (child / "zarr.json").exists():
            continue
        try:
            group = zarr.open_group(str(path), path=_group(child.name), mode="r", zarr_format=3)
            complete = bool(group.attrs.get("complete", False))
            if not complete and not any(True for _ in group.array_keys()):
                continue  # claimed by a writer that has not written a step yet
            if complete:
                check_chunks(path, child.name, group)
        except Exception as err:  # one damaged run must not hide the others
            warnings.warn(f"skipping run {child.name!r} of {path}: {err}", stacklevel=3)
            continue
        out.append((child.name, complete))
    return out


def check_chunks(path: Path, run_id: str, group: Any) -> None:
    """A complete run must have every chunk (a missing one would read as the fill value, NaN
    or 0): of every array where every chunk was written, else of its maps and ``ran``."""
    every = bool(group.attrs.get(EVERY_CHUNK, False))
    names = [n for n, _ in group.arrays()] if every else [D.PROBS, D.LOGITS, D.TEXT_MASS, D.RAN]
    for name in names:
        if name in group:
            arr = group[name]
            if arr.nchunks_initialized < arr.nchunks:
                missing = arr.nchunks - arr.nchunks_initialized
                raise StoreError(
                    f"run {run_id!r} of {path}: {missing} of {arr.nchunks} chunks of {name!r} are missing"
                )


def open_run(path: str | os.PathLike, run_id: str) -> xr.Dataset:
    """One run of a store, lazily, as written (no ``run`` dimension)."""
    chunks: dict[str, int] | None = (
        {} if _has_dask_array() else None
    )  # lazy dask arrays where dask is installed
    try:
        ds = xr.open_zarr(
            Path(path), group=_group(run_id), consolidated=False, zarr_format=3, chunks=chunks
        )
        return decode_strings(ds)
    except Exception as err:
        raise StoreError(f"cannot read run {run_id!r} of {path}: {err}") from err


def _has_dask_array() -> bool:
    try:
        import dask.array  # noqa: F401
    except ImportError:
        return False
    return True


def load(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    runs: Iterable[str] | None = None,
    *,
    include_incomplete: bool = False,
) -> xr.Dataset:
    """Open attnlab store(s) as one Dataset with a ``run`` dimension (lazy where dask is present).

    ``path`` may be a list of stores with the same layout (e.g. a real-video store and a
    synthetic one, to compare along the ``source`` coordinate).

    Runs are concatenated along ``run``, store by store, each store's sorted by run id
    (generated ids sort by time; with ``runs``, in the order given), with an outer join: runs with other frame, step or layer sets are NaN-padded. Incomplete runs
    (interrupted or still being written) are skipped with one warning per store; a damaged run
    is skipped with a warning.

    Args:
        path (``str | os.PathLike | list | tuple``): one store, or a list/tuple of stores whose
            root layouts (reduction, grid, variables) are equal.
        runs (``Iterable[str] | None``, default None): run ids to read (from whichever store
            holds them; complete or not). None: every complete run.
        include_incomplete (``bool``, default False): also read incomplete runs (ignored when
            ``runs`` is given).

    Returns:
        :class:`xarray.Dataset` with

        - ``probs`` (and ``logits`` when recorded), float32, dims ``(run, step, layer, cfg,
          sample, query_frame, key_frame)``; reduction ``"head"`` adds ``head`` before
          ``query_frame``, ``"spatial"`` adds ``y, x`` after ``key_frame``; joint attention
          with text in the sequence adds ``text_mass`` (dims of ``probs`` without
          ``key_frame``);
        - ``ran`` (bool, ``(run, step, layer, cfg)``, in stores that record it): whether that
          attention ran and was recorded; False on padding, and every map is NaN where it is
          False;
        - coordinates ``run`` (run ids), ``step``, ``layer`` (module paths), ``cfg``
          (``"uncond"``/``"cond"``), ``sample``, ``query_frame``, ``key_frame`` (and ``head``,
          ``y``, ``x``); ``timestep`` and ``expert`` (the denoiser of the step; ``""`` on
          padding) ``(run, step)``; ``level``, ``block`` ``(layer,)``;
          ``h``, ``w``, ``heads``, ``head_dim`` ``(run, layer)``; ``source``, ``model``,
          ``prompt``, ``seed`` (-1: unseeded), ``frames``, ``video``, ``pe``, ``pe_max_len``,
          ``edits`` and ``provenance`` (JSON) ``(run,)``;
        - attributes ``attnlab`` (the root layout: ``schema``, ``reduction``, ``grid``,
          ``variables``) and ``store`` (the path(s), comma-separated).

        See ``docs/store-schema.md``.

    Raises:
        StoreError: a path that does not exist or is not an attnlab store, stores with
            different layouts, ids in ``runs`` found in no store, or no run to read.

    Example::

        ds = attnlab.load("run.zarr")
        ds.probs.dims   # ('run', 'step', 'layer', 'cfg', 'sample', 'query_frame', 'key_frame')
        level0 = ds.probs.sel(cfg="cond").where(ds.level == 0, drop=True)
        fig = level0.mean(["step", "layer", "sample"]).isel(run=0)   # the paper's N x N map

        both = attnlab.load(["real.zarr", "synthetic.zarr"])        # same layout
        both.probs.groupby("source").mean()
        one = attnlab.load("run.zarr", runs=[str(ds.run.values[0])])
    """
    paths = (
        [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]  # type: ignore[arg-type]
    )
    runs = list(runs) if runs is not None else None  # read once per store and in the check
    if runs is not None and len(set(runs)) < len(runs):
        twice = sorted({r for r in runs if runs.count(r) > 1})
        raise StoreError(f"runs names these more than once: {twice}; each run is read once")
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        raise StoreError(f"a store is given more than once: {', '.join(map(str, paths))}")
    parts, ids, layout = [], [], None
    where: dict[str, Path] = {}
    for p in paths:
        if not p.exists():
            raise StoreError(f"no store at {p}")
        this = layout_of(p)
        if layout is not None and this != layout:
            raise StoreError(
                f"{p} has layout {this}, unlike {paths[0]} ({layout}); load them separately"
            )
        layout = this
        scanned = _scan_runs(p)
        every = [r for r, _ in scanned]
        if runs is not None:
            wanted = [r for r in runs if r in set(every)]
        elif include_incomplete:
            wanted = every
        else:
            wanted = [r for r, complete in scanned if complete]
            skipped = [r for r, complete in scanned if not complete]
            if skipped:  # one warning per store, naming every run left out
                import warnings

                warnings.warn(
                    f"{p}: skipped {len(skipped)} incomplete run(s) (interrupted or still "
                    f"being written): {', '.join(skipped)}; load(..., include_incomplete=True) "
                    "reads them",
                    stacklevel=2,
                )
        for r in wanted:
            if r in where:
                raise StoreError(
                    f"run {r!r} is in both {where[r]} and {p}; load them separately, or pick "
                    "one with runs=[...]"
                )
            where[r] = p
        if wanted:
            _warn_if_unchecked(p, wanted[0])
        parts += [open_run(p, r) for r in wanted]
        ids += wanted
    if runs is not None and set(runs) - set(ids):
        raise StoreError(
            f"runs not found in {', '.join(map(str, paths))}: {sorted(set(runs) - set(ids))}"
        )
    if not ids:
        raise StoreError(
            f"{', '.join(map(str, paths))} holds no {'' if include_incomplete else 'complete '}runs"
        )
    ds = concat_runs(parts, ids)
    ds.attrs["attnlab"] = layout
    ds.attrs["store"] = ", ".join(map(str, paths))
    return ds


def concat_runs(parts: list[xr.Dataset], ids: list[str]) -> xr.Dataset:
    """Concatenate per-run Datasets along ``run`` (outer join: NaN where sizes differ).

    ``expert`` becomes a ``(run, step)`` coordinate ("" where a run has no such step, or was
    written before attnlab recorded experts), present when any run has it. ``ran`` is False
    where a run has no such cell; runs written before ``ran`` get it from their maps (a cell
    ran where its map has a value) when another run has it. Every map variable is NaN where
    ``ran`` is False.
    """
    layer_static: dict[str, dict[str, Any]] = {c: {} for c in LAYER_COORDS}
    if any(WINDOW in ds.dims for ds in parts):  # a run without windows is one window at 0
        parts = [_one_window(ds) if WINDOW not in ds.dims else ds for ds in parts]
    with_expert = any(D.EXPERT in ds.coords for ds in parts)
    with_ran = any(D.RAN in ds.data_vars for ds in parts)
    prepared = []
    for rid, ds in zip(ids, parts):
        if with_ran and D.RAN not in ds.data_vars:
            ds = ds.assign({D.RAN: _ran_from_maps(ds)})
        attrs = {k: v for k, v in ds.attrs.items() if k not in WRITE_ATTRS}
        for c in LAYER_COORDS:
            for name, value in zip(ds[D.LAYER].values, ds[c].values):
                layer_static[c].setdefault(
                    str(name), value.item() if hasattr(value, "item") else value
                )
        ds = ds.drop_vars(list(LAYER_COORDS)).drop_attrs() if hasattr(ds, "drop_attrs") else ds
        ds = ds.expand_dims({D.RUN: [rid]})
        ds = ds.assign_coords({D.TIMESTEP: ((D.RUN, D.STEP), ds[D.TIMESTEP].values[None])})
        if with_expert:
            experts = (
                np.asarray(ds[D.EXPERT].values, dtype=str)
                if D.EXPERT in ds.coords
                else np.full(ds.sizes[D.STEP], "", dtype=str)
            )
            ds = ds.assign_coords({D.EXPERT: ((D.RUN, D.STEP), experts[None])})
        ds = ds.assign_coords(
            {c: ((D.RUN, D.LAYER), ds[c].values[None]) for c in RUN_LAYER_COORDS if c in ds.coords}
        )
        run_coords = {
            coord: (D.RUN, [_coord_value(key, attrs.get(key))]) for key, coord in RUN_COORDS.items()
        }
        run_coords[D.EDITS] = (D.RUN, [json.dumps(attrs.get("edits", []))])
        run_coords[D.PROVENANCE] = (D.RUN, [json.dumps(attrs, default=str)])
        prepared.append(ds.assign_coords(run_coords))
    out = xr.concat(
        prepared,
        dim=D.RUN,
        join="outer",
        coords="different",
        compat="equals",
        combine_attrs="drop",
        data_vars="all",
        fill_value={D.RAN: False},  # (other variables: NaN)
    )
    layers = [str(v) for v in out[D.LAYER].values]
    out = out.assign_coords(
        {c: (D.LAYER, [layer_static[c][n] for n in layers]) for c in LAYER_COORDS}
    )
    if D.CFG in out.dims:  # batch order, whatever order the runs brought the halves in
        halves = [str(h) for h in out[D.CFG].values]
        order = [h for h in ("uncond", "cond") if h in halves]
        if halves != order and sorted(halves) == sorted(order):
            out = out.sel({D.CFG: order})
    if with_expert:  # steps a run does not have: "" (the outer join filled NaN)
        values = np.asarray(out[D.EXPERT].values, dtype=object)
        filled = np.where([isinstance(v, str) for v in values.ravel()], values.ravel(), "")
        out = out.assign_coords(
            {D.EXPERT: ((D.RUN, D.STEP), filled.astype(str).reshape(values.shape))}
        )
    if with_ran:
        ran = out[D.RAN].astype(bool)
        maps = [v for v in (D.PROBS, D.LOGITS, D.TEXT_MASS) if v in out]
        masked = out.drop_vars([*maps, D.RAN]).assign({v: out[v].where(ran) for v in maps})
        out = masked.assign({D.RAN: ran})
    return out


def _one_window(ds: xr.Dataset) -> xr.Dataset:
    """A run without windows as a windowed one: its maps are the one window at frame 0."""
    maps = {}
    for name in (D.PROBS, D.LOGITS, D.TEXT_MASS):
        if name in ds.data_vars:
            da = ds[name].expand_dims({WINDOW: [0]}, axis=list(ds[name].dims).index(D.LAYER) + 1)
            maps[name] = da
    return ds.drop_vars(list(maps)).assign(maps)


def _ran_from_maps(ds: xr.Dataset) -> xr.DataArray:
    """``ran`` of a run written before attnlab recorded it: a cell ran where its map has a
    value (any finite probability)."""
    probs = ds[D.PROBS]
    other = [d for d in probs.dims if d not in (D.STEP, D.LAYER, D.CFG)]
    return probs.notnull().any(other).transpose(D.STEP, D.LAYER, D.CFG)


#: the ``seed`` coordinate of a run whose generator was not seeded (torch's global state)
UNSEEDED = -1


def _coord_value(key: str, value: Any) -> Any:
    if key == "seed":
        if isinstance(value, list):  # stores written before seeds were one integer
            value = value[0] if value else None
        return UNSEEDED if value is None or value == "" else int(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


# ---- videos and similarity matrices beside the runs (figures read them, never a model) ----
VIDEOS_GROUP = "videos"
SIMILARITY_GROUP = "similarity"


def _write_array_group(path: str | os.PathLike, group: str, name: str, da: xr.DataArray) -> None:
    if layout_of(path) is None:
        raise StoreError(f"no attnlab store at {path}: record a run first")
    ds = encode_strings(da.to_dataset(name="data"))
    write_group(ds, path, f"{group}/{name}", mode="w", encoding=checksum_encoding(ds))


def _read_array_group(path: str | os.PathLike, group: str, name: str) -> xr.DataArray:
    try:
        ds = xr.open_zarr(
            Path(path), group=f"{group}/{name}", consolidated=False, zarr_format=3, chunks=None
        )
    except Exception as err:
        raise StoreError(f"no {group[:-1]} {name!r} in {path}") from err
    return decode_strings(ds)["data"].load()


def save_video(path: str | os.PathLike, name: str, frames: Any) -> None:
    """Store a generated video (``[F, H, W, 3]`` uint8, or float in [0, 1]) under ``videos/<name>``."""
    arr = np.asarray(frames.detach().cpu() if hasattr(frames, "detach") else frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    da = xr.DataArray(arr, dims=(D.FRAME, D.HEIGHT, D.WIDTH, D.CHANNEL))
    _write_array_group(path, VIDEOS_GROUP, name, da)


def load_video(path: str | os.PathLike, name: str) -> np.ndarray:
    """A video stored with :func:`save_video`, ``[F, H, W, 3]`` uint8."""
    return _read_array_group(path, VIDEOS_GROUP, name).values


def save_similarity(path: str | os.PathLike, name: str, sim: xr.DataArray) -> None:
    """Store an inter-frame similarity matrix (dims ``frame, frame2``) under ``similarity/<name>``."""
    attrs = {
        k: (v if isinstance(v, (str, int, float)) else json.dumps(v, default=str))
        for k, v in sim.attrs.items()
    }
    _write_array_group(path, SIMILARITY_GROUP, name, sim.assign_attrs(attrs))


def load_similarity(path: str | os.PathLike, name: str) -> xr.DataArray:
    return _read_array_group(path, SIMILARITY_GROUP, name)


def list_arrays(path: str | os.PathLike, group: str) -> list[str]:
    root = _open_root(Path(path), "r")
    if group not in root:
        return []
    return sorted(name for name, _ in root[group].groups())
