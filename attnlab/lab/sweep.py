"""Sweeps: grids of recorded generations, run as tasks on a dask.distributed cluster.

A sweep spec (TOML, YAML or JSON; see ``analyses/sweeps/example.toml``) lists models, prompts
(or a prompt file), seeds, frame counts and edits, plus recorder and generation settings.
Every combination is a *cell*; each cell is one task that generates one video and records its
temporal attention into one zarr store as the run ``runs/sweep-<cell id>``, where the cell id
is a hash of the cell's spec: re-running a sweep finds what is already there.

Guarantees (tested in ``tests/test_reliability.py``, listed in ``docs/reliability.md``):

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

``ATTNLAB_SWEEP_FAULT`` (``KIND:TEXT[;KIND:TEXT]``, KIND one of raise, interrupt, exit, hang)
injects a fault mid-recording into every cell whose prompt contains TEXT: a testing aid.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import hashlib
import inspect
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.core.store import RUNS_GROUP, StoreError, prepare_store

FAILURES_GROUP = "failures"
QUARANTINE_DIR = "quarantine"
RUN_PREFIX = "sweep-"
FAULT_ENV = "ATTNLAB_SWEEP_FAULT"
FAULT_KINDS = ("raise", "interrupt", "exit", "hang")
# how often dask re-runs a cell whose worker died before giving up on it (KilledWorker)
ALLOWED_FAILURES = 1
# pipelines kept loaded per worker process (least recently used evicted first)
MAX_CACHED_MODELS = 2


class SweepError(ValueError):
    """A sweep that cannot run as given (nothing was written)."""


class SweepSpecError(SweepError):
    """A malformed sweep spec; ``key`` names the offending entry (e.g. ``seeds[1]``)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"sweep spec: {key}: {message}")


# ---------------------------------------------------------------------------------------
# The spec

SPEC_KEYS = (
    "name",
    "models",
    "prompts",
    "prompt_file",
    "seeds",
    "frames",
    "edits",
    "generation",
    "record",
    "device",
)
GENERATION_DEFAULTS: dict[str, Any] = {
    "steps": 25,
    "guidance": 7.5,
    "height": None,
    "width": None,
    "negative_prompt": None,
    "dtype": None,
}
RECORD_DEFAULTS: dict[str, Any] = {
    "levels": None,
    "blocks": None,
    "names": None,
    "steps": None,
    "cfg": "both",
    "reduce": "mean",
    "grid": [4, 4],
    "logits": False,
}
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Prompt:
    """A prompt and, optionally, its key states (the paper's prompt list: ``subprompts``)."""

    prompt: str
    subprompts: tuple[str, ...] = ()


@dataclass
class EditChoice:
    """One entry of ``edits``: a set of edits applied together (empty: no edit)."""

    label: str
    specs: list[dict[str, Any]]
    # a bare "synopsis": Synopsis(prompt.subprompts, **synopsis) per prompt with subprompts
    synopsis: dict[str, Any] | None = None


@dataclass
class Cell:
    """One task: one model, prompt, seed, frame count and edit choice."""

    model: str
    prompt: str
    seed: int
    frames: int
    edits: list[dict[str, Any]]
    label: str
    generation: dict[str, Any]
    record: dict[str, Any]

    def key(self) -> dict[str, Any]:
        """Everything that defines the cell's result (hashed into its id)."""
        return {
            "model": self.model,
            "prompt": self.prompt,
            "seed": self.seed,
            "frames": self.frames,
            "edits": self.edits,
            "generation": self.generation,
            "record": self.record,
        }

    @property
    def cell_id(self) -> str:
        text = json.dumps(self.key(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def run_id(self) -> str:
        return RUN_PREFIX + self.cell_id

    def describe(self) -> str:
        return f"{self.model} | {self.prompt[:40]!r} | seed {self.seed} | {self.frames} frames | {self.label}"


@dataclass
class SweepSpec:
    """A validated sweep spec; :meth:`cells` expands it into the grid of cells."""

    models: list[str]
    prompts: list[Prompt]
    seeds: list[int]
    frames: list[int]
    edits: list[EditChoice]
    generation: dict[str, Any]
    record: dict[str, Any]
    name: str = ""
    device: str = "auto"
    source: str | None = None

    def cells(self) -> list[Cell]:
        out = []
        for model in self.models:
            for p in self.prompts:
                for seed in self.seeds:
                    for frames in self.frames:
                        for choice in self.edits:
                            specs = list(choice.specs)
                            if choice.synopsis is not None:
                                if not p.subprompts:
                                    continue  # synopsis only for prompts with key states
                                specs.append(_synopsis(p.subprompts, choice.synopsis).spec())
                            out.append(
                                Cell(
                                    model,
                                    p.prompt,
                                    seed,
                                    frames,
                                    specs,
                                    choice.label,
                                    dict(self.generation),
                                    dict(self.record),
                                )
                            )
        return out

    def record_kwargs(self) -> dict[str, Any]:
        return record_kwargs(self.record)

    def layout(self) -> dict[str, Any]:
        """The store layout this sweep writes (must match an existing store's)."""
        from attnlab.core.recording import Recorder
        from attnlab.core.selection import Layers, Steps

        kw = self.record_kwargs()
        return Recorder(
            layers=Layers.make(kw["levels"], kw["blocks"], kw["names"]),
            steps=Steps.make(kw["steps"]),
            cfg=kw["cfg"],
            reduce=kw["reduce"],
            grid=kw["grid"],
            logits=kw["logits"],
        ).layout


def record_kwargs(record: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`attnlab.record` from a cell's normalised record settings."""
    kw = dict(record)
    steps = kw.get("steps")
    if isinstance(steps, dict) and "slice" in steps:
        kw["steps"] = slice(*steps["slice"])
    kw["grid"] = tuple(kw.get("grid") or (4, 4))
    return kw


def _synopsis(subprompts: Sequence[str], params: dict[str, Any]):
    from attnlab.edits.synopsis import Synopsis

    return Synopsis(list(subprompts), **params)


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; known keys: {', '.join(known)}"


def _type_name(v: Any) -> str:
    return type(v).__name__


def _check_keys(data: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in data:
        if key not in known:
            raise SweepSpecError(f"{where}{key}", _suggest(str(key), known))


def _nonempty_list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise SweepSpecError(key, f"must be a list, got {_type_name(value)} {value!r}")
    if not value:
        raise SweepSpecError(key, "is an empty list; give at least one value")
    return value


def _int_list(data: Mapping[str, Any], key: str, minimum: int | None = None) -> list[int]:
    out = []
    for i, v in enumerate(_nonempty_list(data, key)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise SweepSpecError(f"{key}[{i}]", f"must be an integer, got {_type_name(v)} {v!r}")
        if minimum is not None and v < minimum:
            raise SweepSpecError(f"{key}[{i}]", f"must be >= {minimum}, got {v}")
        out.append(v)
    if len(set(out)) != len(out):
        raise SweepSpecError(key, f"has duplicates: {out}")
    return out


def _str_list(data: Mapping[str, Any], key: str) -> list[str]:
    out = []
    for i, v in enumerate(_nonempty_list(data, key)):
        if not isinstance(v, str) or not v.strip():
            raise SweepSpecError(
                f"{key}[{i}]", f"must be a non-empty string, got {_type_name(v)} {v!r}"
            )
        out.append(v)
    if len(set(out)) != len(out):
        raise SweepSpecError(key, f"has duplicates: {out}")
    return out


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise SweepSpecError(where, "is an empty prompt")
        return Prompt(value)
    if isinstance(value, Mapping):
        _check_keys(value, ("prompt", "subprompts"), f"{where}.")
        text = value.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise SweepSpecError(f"{where}.prompt", f"must be a non-empty string, got {text!r}")
        subs = value.get("subprompts", [])
        if not isinstance(subs, list) or not all(isinstance(s, str) and s.strip() for s in subs):
            raise SweepSpecError(
                f"{where}.subprompts", f"must be a list of non-empty strings, got {subs!r}"
            )
        return Prompt(text, tuple(subs))
    raise SweepSpecError(
        where, f"must be a string or a {{prompt, subprompts}} table, got {_type_name(value)}"
    )


def _prompts(data: Mapping[str, Any], base: Path) -> list[Prompt]:
    if ("prompts" in data) == ("prompt_file" in data):
        raise SweepSpecError("prompts", "give exactly one of 'prompts' or 'prompt_file'")
    if "prompts" in data:
        items = [_prompt(v, f"prompts[{i}]") for i, v in enumerate(_nonempty_list(data, "prompts"))]
    else:
        ref = data["prompt_file"]
        if not isinstance(ref, str):
            raise SweepSpecError("prompt_file", f"must be a path string, got {_type_name(ref)}")
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise SweepSpecError("prompt_file", f"{str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                raw = json.loads(text)
            except ValueError as err:
                raise SweepSpecError("prompt_file", f"{path} is not valid JSON: {err}") from None
            if not isinstance(raw, list) or not raw:
                raise SweepSpecError(
                    "prompt_file", f"{path} must hold a non-empty JSON list of prompts"
                )
        else:  # one prompt per line
            raw = [line.strip() for line in text.splitlines() if line.strip()]
            if not raw:
                raise SweepSpecError("prompt_file", f"{path} holds no prompts")
        items = [_prompt(v, f"prompt_file[{i}]") for i, v in enumerate(raw)]
    if len({p.prompt for p in items}) != len(items):
        dup = sorted({p.prompt for p in items if [q.prompt for q in items].count(p.prompt) > 1})
        raise SweepSpecError("prompts", f"duplicate prompts: {dup}")
    return items


def _edit_one(item: Any, where: str) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """(label, specs, synopsis-from-subprompts params) of one edit (string or table)."""
    from attnlab.core.selection import SelectionError
    from attnlab.edits import EditError, from_spec, parse_edit

    try:
        if isinstance(item, str):
            if item == "none":
                return "none", [], None
            if item == "synopsis":
                return "synopsis", [], {}
            return item, [parse_edit(item).spec()], None
        if isinstance(item, Mapping):
            spec = dict(item)
            if spec.get("kind") == "synopsis" and "key_states" not in spec:
                params = {k: v for k, v in spec.items() if k != "kind"}
                _synopsis(["a", "b"], params)  # validate the parameters
                args = ",".join(f"{k}={v}" for k, v in params.items())
                return f"synopsis({args})" if args else "synopsis", [], params
            edit = from_spec(spec)
            args = ",".join(f"{k}={v}" for k, v in item.items() if k != "kind")
            return f"{spec.get('kind')}({args})", [edit.spec()], None
    except (EditError, SelectionError, TypeError, ValueError) as err:
        raise SweepSpecError(where, str(err)) from err
    raise SweepSpecError(
        where, f"an edit is a string ('tar:64D1', 'none') or a table, got {_type_name(item)}"
    )


def _edits(data: Mapping[str, Any]) -> list[EditChoice]:
    if "edits" not in data:
        return [EditChoice("none", [])]
    out = []
    for i, item in enumerate(_nonempty_list(data, "edits")):
        where = f"edits[{i}]"
        if isinstance(item, list):
            if not item:
                raise SweepSpecError(where, "an empty combination; use 'none' for no edit")
            labels, specs, syn = [], [], None
            for j, sub in enumerate(item):
                if sub == "none":
                    raise SweepSpecError(f"{where}[{j}]", "'none' cannot be combined")
                label, s, sy = _edit_one(sub, f"{where}[{j}]")
                labels.append(label)
                specs += s
                if sy is not None:
                    syn = sy
            out.append(EditChoice("+".join(labels), specs, syn))
        else:
            label, specs, syn = _edit_one(item, where)
            out.append(EditChoice(label, specs, syn))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise SweepSpecError("edits", f"duplicate edits: {labels}")
    return out


def _number(v: Any, key: str, *, integer: bool = False, minimum: float | None = None) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise SweepSpecError(key, f"must be {kind}, got {_type_name(v)} {v!r}")
    if not integer and not math.isfinite(v):
        raise SweepSpecError(key, f"must be finite, got {v!r}")
    if minimum is not None and v < minimum:
        raise SweepSpecError(key, f"must be >= {minimum}, got {v!r}")
    return v


def _generation(data: Mapping[str, Any]) -> dict[str, Any]:
    raw = data.get("generation", {})
    if not isinstance(raw, Mapping):
        raise SweepSpecError("generation", f"must be a table, got {_type_name(raw)}")
    _check_keys(raw, tuple(GENERATION_DEFAULTS), "generation.")
    g = {**GENERATION_DEFAULTS, **raw}
    g["steps"] = _number(g["steps"], "generation.steps", integer=True, minimum=1)
    g["guidance"] = float(_number(g["guidance"], "generation.guidance", minimum=0))
    for k in ("height", "width"):
        if g[k] is not None:
            g[k] = _number(g[k], f"generation.{k}", integer=True, minimum=8)
            if g[k] % 8:
                raise SweepSpecError(f"generation.{k}", f"must be a multiple of 8, got {g[k]}")
    if g["negative_prompt"] is not None and not isinstance(g["negative_prompt"], str):
        raise SweepSpecError("generation.negative_prompt", "must be a string")
    if g["dtype"] is not None and g["dtype"] not in DTYPES:
        raise SweepSpecError("generation.dtype", f"must be one of {DTYPES}, got {g['dtype']!r}")
    return g


def _steps_value(v: Any, key: str) -> Any:
    """Record steps: all (None / "all"), an int, a list of ints, or "start:stop[:step]"."""
    from attnlab.core.selection import SelectionError, Steps

    if isinstance(v, str) and v != "all":
        try:
            parts = [int(p) if p.strip() else None for p in v.split(":")]
        except ValueError:
            raise SweepSpecError(
                key, f"expected 'all', '0:14' or a list of ints, got {v!r}"
            ) from None
        if len(parts) not in (2, 3):
            raise SweepSpecError(key, f"expected 'start:stop[:step]', got {v!r}")
        v = slice(*parts)
    try:
        return Steps.make(v).to_json()
    except (SelectionError, TypeError, ValueError) as err:
        raise SweepSpecError(key, str(err)) from None


def _record(data: Mapping[str, Any]) -> dict[str, Any]:
    from attnlab.core.recording import REDUCTIONS
    from attnlab.core.selection import CFG_CHOICES

    raw = data.get("record", {})
    if not isinstance(raw, Mapping):
        raise SweepSpecError("record", f"must be a table, got {_type_name(raw)}")
    _check_keys(raw, tuple(RECORD_DEFAULTS), "record.")
    r = {**RECORD_DEFAULTS, **raw}
    lv = r["levels"]
    if lv is not None:
        lv = [lv] if isinstance(lv, int) and not isinstance(lv, bool) else lv
        if not isinstance(lv, list) or not lv or not all(_is_int(x) and x >= 0 for x in lv):
            raise SweepSpecError(
                "record.levels", f"must be a level or a list of levels >= 0, got {r['levels']!r}"
            )
        r["levels"] = sorted(set(lv))
    for k in ("blocks", "names"):
        v = r[k]
        if v is not None:
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise SweepSpecError(
                    f"record.{k}", f"must be a string or a list of strings, got {r[k]!r}"
                )
            r[k] = v
    r["steps"] = _steps_value(r["steps"], "record.steps")
    if r["cfg"] not in CFG_CHOICES:
        raise SweepSpecError("record.cfg", f"must be one of {CFG_CHOICES}, got {r['cfg']!r}")
    if r["reduce"] not in REDUCTIONS:
        raise SweepSpecError("record.reduce", f"must be one of {REDUCTIONS}, got {r['reduce']!r}")
    g = r["grid"]
    if not isinstance(g, list) or len(g) != 2 or not all(_is_int(x) and x >= 1 for x in g):
        raise SweepSpecError("record.grid", f"must be two positive integers [y, x], got {g!r}")
    r["grid"] = g if r["reduce"] == "spatial" else None
    if not isinstance(r["logits"], bool):
        raise SweepSpecError("record.logits", f"must be true or false, got {r['logits']!r}")
    return r


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_spec(data: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> SweepSpec:
    """Validate a spec given as a mapping (paths in it are relative to ``base_dir``)."""
    if not isinstance(data, Mapping):
        raise SweepSpecError("<root>", f"must be a table of keys, got {_type_name(data)}")
    _check_keys(data, SPEC_KEYS, "")
    for required in ("models", "seeds", "frames"):
        if required not in data:
            raise SweepSpecError(required, "is missing (required)")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise SweepSpecError("name", f"must be a string, got {_type_name(name)}")
    device = data.get("device", "auto")
    if not isinstance(device, str) or not device:
        raise SweepSpecError(
            "device", f"must be 'auto', 'cpu', 'cuda', 'cuda:1', ... got {device!r}"
        )
    spec = SweepSpec(
        models=_str_list(data, "models"),
        prompts=_prompts(data, Path(base_dir)),
        seeds=_int_list(data, "seeds", minimum=0),
        frames=_int_list(data, "frames", minimum=1),
        edits=_edits(data),
        generation=_generation(data),
        record=_record(data),
        name=name,
        device=device,
    )
    if not spec.cells():
        raise SweepSpecError(
            "edits",
            "no cells: 'synopsis' needs prompts with subprompts (a prompt file entry "
            '{"prompt": ..., "subprompts": [...]})',
        )
    return spec


def load_spec(spec: SweepSpec | Mapping[str, Any] | str | os.PathLike) -> SweepSpec:
    """A :class:`SweepSpec` from itself, a mapping, or a TOML / YAML / JSON file."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {str(path)!r} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as err:
        raise SweepSpecError(str(path), f"cannot parse: {err}") from None
    parsed = parse_spec(data, base_dir=path.parent)
    parsed.source = str(path)
    return parsed


# ---------------------------------------------------------------------------------------
# Checks before any work: models, frame limits, selections and edits against each model


def preflight(spec: SweepSpec) -> dict[str, str]:
    """Check every model and setting before any work; returns {model: loadable reference}."""
    from attnlab.core.selection import Layers, SelectionError, Steps
    from attnlab.core.sites import FrameLimitError, UnsupportedModelError, sites
    from attnlab.edits import EditError, Replace, from_spec
    from attnlab.edits.synopsis import Synopsis
    from attnlab.models.loading import resolve_model

    refs = {}
    kw = spec.record_kwargs()
    rec_layers = Layers.make(kw["levels"], kw["blocks"], kw["names"])
    try:
        Steps.make(kw["steps"]).resolve(spec.generation["steps"])
    except SelectionError as err:
        raise SweepSpecError(
            "record.steps", f"{err} (generation.steps = {spec.generation['steps']})"
        ) from None
    if kw["cfg"] == "uncond" and spec.generation["guidance"] <= 1.0:
        raise SweepSpecError(
            "record.cfg", "'uncond' needs classifier-free guidance (generation.guidance > 1)"
        )
    cells = spec.cells()
    for i, model in enumerate(spec.models):
        key = f"models[{i}]"
        try:
            ref = resolve_model(model)
            table = sites(ref)
        except (FileNotFoundError, UnsupportedModelError, OSError, ValueError) as err:
            raise SweepSpecError(key, f"{model!r}: {err}") from err
        refs[model] = ref
        for j, frames in enumerate(spec.frames):
            try:
                table.check_frames(frames)
            except FrameLimitError as err:
                raise SweepSpecError(f"frames[{j}]", str(err)) from None
        try:
            rec_layers.resolve(table)
        except SelectionError as err:
            raise SweepSpecError("record", f"{model!r}: {err}") from None
        for cell in (c for c in cells if c.model == model):
            idx = next(k for k, ch in enumerate(spec.edits) if ch.label == cell.label)
            for s in cell.edits:
                try:
                    edit = from_spec(s)
                    if not isinstance(edit, Synopsis):
                        edit.layers.resolve(table)
                    if isinstance(edit, Replace):
                        edit.target_matrix(cell.frames)
                    if isinstance(edit, Synopsis):
                        edit.weights(cell.frames)
                except (EditError, SelectionError, ValueError) as err:
                    raise SweepSpecError(
                        f"edits[{idx}]", f"{model!r}, {cell.frames} frames: {err}"
                    ) from None
    return refs


# ---------------------------------------------------------------------------------------
# The store: cell states, failure records, quarantine


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
            arr = group[var]
            if arr.nchunks_initialized < arr.nchunks:
                missing = arr.nchunks - arr.nchunks_initialized
                return (
                    "corrupt",
                    f"run {run_id}: {missing} of {arr.nchunks} chunks of {var!r} are missing",
                )
            if steps is not None and arr.shape[0] != steps:
                return "corrupt", (
                    f"run {run_id} is marked complete but holds {arr.shape[0]} of {steps} steps"
                )
        list(group.arrays())  # every array's metadata must parse
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


# ---------------------------------------------------------------------------------------
# Worker side: one cell = one task


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
    from attnlab.core.processor import TemporalAttnProcessor
    from attnlab.core.sites import denoiser_of

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


def _faults_for(prompt: str) -> list[str]:
    out = []
    for part in os.environ.get(FAULT_ENV, "").split(";"):
        kind, _, text = part.strip().partition(":")
        if kind in FAULT_KINDS and text and text in prompt:
            out.append(kind)
    return out


def _fault_kwargs(pipe: Any, kind: str, steps: int) -> dict[str, Any]:
    """Pipeline callbacks that fire ``kind`` after step 1 (mid-recording: step 0 is stored)."""
    at = min(1, steps - 1)

    def fire() -> None:
        if kind == "raise":
            raise RuntimeError(f"injected fault ({FAULT_ENV})")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "exit":
            os._exit(70)
        while True:  # hang
            time.sleep(1)

    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in params:

        def on_step_end(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            if i == at:
                fire()
            return kw

        return {"callback_on_step_end": on_step_end}
    if "callback" in params:

        def callback(i: int, t: Any, latents: Any) -> None:
            if i == at:
                fire()

        return {"callback": callback, "callback_steps": 1}
    fire()
    return {}


def run_cell(task: CellTask) -> dict[str, Any]:
    """Generate and record one cell into the store (runs on a worker); never raises.

    Returns a result dict: ``status`` ("done" or "failed"), ``error`` and ``traceback`` on
    failure, ``seconds``, ``pid``, ``host`` and ``loads`` (pipeline loads of this model in
    this process so far).
    """
    import zarr

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
            if state == "partial":  # left by an interrupted attempt: start over
                root = zarr.open_group(str(store), mode="r+", zarr_format=3)
                del root[f"{RUNS_GROUP}/{cell.run_id}"]
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


# ---------------------------------------------------------------------------------------
# Driver side


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
    preflight(spec)
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
    :class:`~attnlab.locks.StoreLockedError` when another sweep holds the store.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    from attnlab.core.locks import StoreLock

    t0 = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SweepError(f"workers must be a positive integer, got {workers!r}")
    spec = load_spec(spec)
    store = Path(store).expanduser().absolute()
    StoreLock(store).check()  # refuse a busy store at once, before loading any model
    cells = spec.cells()
    refs = preflight(spec)
    layout = spec.layout()
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


# ---------------------------------------------------------------------------------------
# Command line: `attnlab sweep SPEC --store out.zarr [...]`


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``attnlab sweep``."""
    p.add_argument("spec", help="sweep spec (.toml, .yaml or .json); see analyses/sweeps/")
    p.add_argument("--store", required=True, help="zarr store (created, or resumed)")
    p.add_argument(
        "--scheduler",
        default="local",
        help="'local' (a LocalCluster of worker processes) or a dask scheduler address",
    )
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--retry-failed", action="store_true", help="re-run cells that failed before")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and list cells with their state; run none"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    """``attnlab sweep``: 0 all cells complete, 1 some failed, 2 bad input, 130 interrupted."""
    try:
        if args.dry_run:
            plan = plan_sweep(args.spec, args.store)
            for cell, st in plan:
                print(f"{cell.cell_id}  {st.state:8s}  {cell.describe()}")
            counts = {
                s: sum(1 for _, st in plan if st.state == s) for s in {st.state for _, st in plan}
            }
            print(f"{len(plan)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            return 0
        summary = run_sweep(
            args.spec,
            args.store,
            scheduler=args.scheduler,
            workers=args.workers,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            "attnlab sweep: interrupted; completed cells are kept in the store, "
            "re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError, OSError) as err:  # SweepError, StoreError, ...
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        print(f"attnlab sweep: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(summary)
        for cell_id, error in summary.failed.items():
            print(f"  failed {cell_id}: {error.splitlines()[0] if error else '?'}")
        if summary.failed:
            print(f"  tracebacks: {Path(summary.store) / FAILURES_GROUP}/<cell id>/zarr.json")
    return 0 if summary.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attnlab.sweep SPEC --store S ...`` (same as ``attnlab sweep``)."""
    parser = argparse.ArgumentParser(prog="attnlab sweep", description=run_sweep.__doc__)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    # run the imported module's main, so tasks pickle as attnlab.lab.sweep.run_cell, not __main__'s
    from attnlab.lab.sweep import main as _main

    sys.exit(_main())
