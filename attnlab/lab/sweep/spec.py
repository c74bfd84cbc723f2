"""Sweep specs: parse and validate a spec, expand it into cells, and check it before any work.

* :class:`SweepSpec` - a validated spec; ``cells()`` expands it into the grid of cells
* :class:`Cell` - one task: model, prompt, seed, frame count, edits; ``cell_id`` hashes it
* :class:`Prompt`, :class:`EditChoice` - one entry of ``prompts`` / of ``edits``
* :func:`parse_spec` - validate a spec given as a mapping
* :func:`load_spec` - a :class:`SweepSpec` from itself, a mapping or a TOML / YAML / JSON file
* :func:`preflight` - check every model, frame count, selection and edit before any work
* :func:`check_device` - refuse a device this machine does not have
* :func:`record_kwargs` - keyword arguments of :func:`attnlab.record` from record settings
* :class:`SweepError`, :class:`SweepSpecError` - a sweep that cannot run as given
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_PREFIX = "sweep-"


class SweepError(ValueError):
    """A sweep that cannot run as given (nothing was written)."""


class SweepSpecError(SweepError):
    """A malformed sweep spec; ``key`` names the offending entry (e.g. ``seeds[1]``)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"sweep spec: {key}: {message}")


SPEC_KEYS = (
    "name",
    "models",
    "prompts",
    "prompt_file",
    "seeds",
    "frames",
    "lengths",
    "train_frames",
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
    # ``lengths`` (ratios of ``train_frames``) when the frame counts were given that way
    lengths: list[float] | None = None
    train_frames: int | None = None

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

    def layout(self, text_mass: bool = False) -> dict[str, Any]:
        """The store layout this sweep writes (must match an existing store's); ``text_mass``:
        its models are joint-attention DiTs with the text in the attention sequence, whose
        recorders also write the text mass (:func:`store_layout` tells it from the models)."""
        from attnlab.core.recording import Recorder
        from attnlab.core.selection import Layers, Steps

        kw = self.record_kwargs()
        rec = Recorder(
            layers=Layers.make(kw["levels"], kw["blocks"], kw["names"]),
            steps=Steps.make(kw["steps"]),
            cfg=kw["cfg"],
            reduce=kw["reduce"],
            grid=kw["grid"],
            logits=kw["logits"],
        )
        rec._text_mass = text_mass  # as binding to such a model sets it
        return rec.layout


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
    # the same edit spelled two ways ("tar:64D1" and {kind="tar", sigma="64D1"}) is one cell id:
    # compare the canonical specs, not the labels
    seen: dict[str, int] = {}
    for i, choice in enumerate(out):
        key = json.dumps(
            {"specs": choice.specs, "synopsis": choice.synopsis},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        if key in seen:
            raise SweepSpecError(
                "edits",
                f"edits[{seen[key]}] and edits[{i}] are the same edit "
                f"({out[seen[key]].label!r} and {choice.label!r}); give it once",
            )
        seen[key] = i
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


def _frames(data: Mapping[str, Any]) -> tuple[list[int], list[float] | None, int | None]:
    """``frames`` (video frame counts), or ``lengths`` (ratios) times ``train_frames``."""
    if ("frames" in data) == ("lengths" in data):
        raise SweepSpecError(
            "frames",
            "give exactly one of 'frames' (frame counts) or 'lengths' (ratios of train_frames)",
        )
    if "frames" in data:
        if "train_frames" in data:
            raise SweepSpecError(
                "train_frames", "applies with 'lengths' only (frame counts as ratios of it)"
            )
        return _int_list(data, "frames", minimum=1), None, None
    if "train_frames" not in data:
        raise SweepSpecError(
            "train_frames", "is missing: 'lengths' are ratios of the training length in frames"
        )
    train = _number(data["train_frames"], "train_frames", integer=True, minimum=1)
    ratios = [
        float(_number(v, f"lengths[{i}]", minimum=0))
        for i, v in enumerate(_nonempty_list(data, "lengths"))
    ]
    frames = []
    for i, r in enumerate(ratios):
        n = round(r * train)
        if n < 1:
            raise SweepSpecError(f"lengths[{i}]", f"{r} x {train} frames is no frame")
        frames.append(n)
    if len(set(frames)) != len(frames):
        raise SweepSpecError("lengths", f"give the same frame counts twice: {frames}")
    return frames, ratios, train


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
            from attnlab.models.loading import check_setting

            try:  # the rule of generation settings everywhere (multiples of 8)
                check_setting(k, g[k])
            except ValueError as err:
                raise SweepSpecError(f"generation.{k}", str(err)) from None
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


_DEVICE_HINT = "'auto', 'cpu', 'cuda', 'cuda:1', 'mps', ..."


def _device(value: Any) -> str:
    """``device`` as torch parses it ("auto": the worker's choice). Only the syntax: a spec may
    be written on one machine for another; :func:`check_device` asks this machine."""
    if not isinstance(value, str) or not value:
        raise SweepSpecError("device", f"must be one of {_DEVICE_HINT}, got {value!r}")
    if value != "auto":
        from attnlab.models.loading import check_device as check

        try:
            check(value, here=False)
        except ValueError as err:
            raise SweepSpecError("device", str(err)) from None
    return value


def check_device(device: str) -> None:
    """Refuse a ``device`` (as :func:`parse_spec` accepts it) that this machine does not have:
    CUDA without a CUDA device or with too few of them, MPS or another backend that is not
    available. "auto" and "cpu" always pass."""
    if device == "auto":
        return
    from attnlab.models.loading import check_device as check

    try:
        check(device)
    except ValueError as err:
        raise SweepSpecError("device", str(err)) from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_spec(data: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> SweepSpec:
    """Validate a spec given as a mapping (paths in it are relative to ``base_dir``)."""
    if not isinstance(data, Mapping):
        raise SweepSpecError("<root>", f"must be a table of keys, got {_type_name(data)}")
    _check_keys(data, SPEC_KEYS, "")
    for required in ("models", "seeds"):
        if required not in data:
            raise SweepSpecError(required, "is missing (required)")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise SweepSpecError("name", f"must be a string, got {_type_name(name)}")
    device = _device(data.get("device", "auto"))
    frames, lengths, train_frames = _frames(data)
    spec = SweepSpec(
        models=_str_list(data, "models"),
        prompts=_prompts(data, Path(base_dir)),
        seeds=_int_list(data, "seeds", minimum=0),
        frames=frames,
        edits=_edits(data),
        generation=_generation(data),
        record=_record(data),
        name=name,
        device=device,
        lengths=lengths,
        train_frames=train_frames,
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


def preflight(spec: SweepSpec, *, check_device_here: bool = True) -> dict[str, str]:
    """Check every model and setting before any work; returns {model: loadable reference}.
    ``check_device_here``: also refuse a ``device`` this machine does not have
    (:func:`check_device`; leave it off where the cells run on other machines)."""
    from attnlab.core.selection import Layers, SelectionError, Steps
    from attnlab.core.sites import FrameLimitError, UnsupportedModelError, sites
    from attnlab.edits import EditError, Replace, from_spec
    from attnlab.edits.synopsis import Synopsis
    from attnlab.models.loading import resolve_model

    if check_device_here:
        check_device(spec.device)
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
    text_in: dict[str, bool] = {}  # the text in the attention sequence: text_mass recorded
    for i, model in enumerate(spec.models):
        key = f"models[{i}]"
        try:
            ref = resolve_model(model)
            table = sites(ref)
        except (FileNotFoundError, UnsupportedModelError, OSError, ValueError) as err:
            raise SweepSpecError(key, f"{model!r}: {err}") from err
        refs[model] = ref
        text_in[model] = table.text != "cross"
        frame_key = "lengths" if spec.lengths is not None else "frames"
        for j, frames in enumerate(spec.frames):
            try:
                table.check_frames(frames)
            except FrameLimitError as err:
                # a table extended for the run (FramePositions) takes the frames in every cell
                extended = [
                    c
                    for c in cells
                    if c.model == model
                    and c.frames == frames
                    and any(
                        s.get("kind") == "frame_positions" and s.get("frames", 0) >= frames
                        for s in c.edits
                    )
                ]
                if len(extended) != sum(c.model == model and c.frames == frames for c in cells):
                    raise SweepSpecError(
                        f"{frame_key}[{j}]",
                        f"{err} (or add a FramePositions edit of at least {frames} frames to "
                        "every edit of the sweep)",
                    ) from None
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
    if len(set(text_in.values())) > 1:
        joint = [m for m, t in text_in.items() if t]
        other = [m for m, t in text_in.items() if not t]
        raise SweepSpecError(
            "models",
            f"{', '.join(joint)} attend to the text in their attention sequence (their runs "
            f"also record the text mass), {', '.join(other)} do not: one store holds one "
            "layout; sweep them into two stores",
        )
    return refs


def store_layout(spec: SweepSpec, refs: Mapping[str, str]) -> dict[str, Any]:
    """The layout of ``spec``'s store given its models (``refs``: :func:`preflight`'s): with
    the text mass when they attend to the text in their attention sequence."""
    from attnlab.core.sites import sites

    return spec.layout(text_mass=any(sites(ref).text != "cross" for ref in refs.values()))
