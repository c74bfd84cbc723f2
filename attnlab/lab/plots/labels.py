"""Text of figures, read from the coordinates of stored runs: titles, facet and row labels.

* :func:`sigma_label`: ``{64: 1, 32: 8}`` -> ``"σ64=1,σ32=8"`` (Fig. 9)
* :func:`level_label`: ``"level 0 (40x64)"``
* :func:`condition_labels`: one label per run and edit setting ("real", "synthetic",
  "synthetic+TAR 64D1", "synthetic+replace identity@0", ...)
* private helpers: per-run coordinate values, facet labels and suptitles from the selection
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from attnlab.core.dims import (
    CFG,
    EDITS,
    FRAMES,
    LAYER,
    LAYER_H,
    LAYER_W,
    LEVEL,
    MODEL,
    QUERY,
    RUN,
    SOURCE,
    STEP,
)

#: the derived run label used by default for rows: "real", "synthetic", "synthetic+TAR 64D1", ...
CONDITION = "condition"


def sigma_label(sigmas: Mapping[int | str, float]) -> str:
    """``{64: 1, 32: 8}`` -> ``"σ64=1,σ32=8"`` (the paper's Fig. 9 labels)."""
    return ",".join(f"σ{res}={_num(s)}" for res, s in sigmas.items())


def _num(x: Any) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:g}"


def level_label(level: int, h: int | None = None, w: int | None = None) -> str:
    """``level_label(0, 40, 64)`` -> ``"level 0 (40x64)"``."""
    size = f" ({int(h)}x{int(w)})" if h is not None and w is not None else ""
    return f"level {int(level)}{size}"


def _levels_text(da: xr.DataArray) -> str | None:
    """'level 0 (40x64)' / 'levels 0 (40x64), 1 (20x32)' from the layer coords of ``da``."""
    if LEVEL not in da.coords or LAYER not in da[LEVEL].dims:
        return None
    seen: dict[int, str] = {}
    hs, ws = _layer_size(da, LAYER_H), _layer_size(da, LAYER_W)
    for lev, h, w in zip(da[LEVEL].values, hs, ws):
        if int(lev) not in seen:
            seen[int(lev)] = level_label(lev, h, w)[len("level ") :]
    parts = [seen[k] for k in sorted(seen)]
    return ("level " if len(parts) == 1 else "levels ") + ", ".join(parts)


def _layer_size(da: xr.DataArray, coord: str) -> list[Any]:
    """Per-layer feature size; ``h``/``w`` may be ``(run, layer)`` (the store's layout): the
    largest finite value over runs is used."""
    n = da.sizes[LAYER]
    if coord not in da.coords:
        return [None] * n
    c = da[coord]
    extra = [d for d in c.dims if d != LAYER]
    if extra:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c = c.max(extra, skipna=True)
    return [None if not np.isfinite(v) else int(v) for v in c.values.astype(float)]


def _steps_text(da: xr.DataArray) -> str | None:
    if STEP not in da.dims:
        return None
    vals = da[STEP].values if STEP in da.coords else np.arange(da.sizes[STEP])
    try:
        ints = [int(v) for v in vals]
    except (TypeError, ValueError):
        return f"{len(vals)} steps"
    if len(ints) == 1:
        return f"step {ints[0]}"
    if ints == list(range(ints[0], ints[0] + len(ints))):
        return f"steps {ints[0]}–{ints[-1]}"
    return f"{len(ints)} steps"


def _unique_run_value(da: xr.DataArray, coord: str) -> Any | None:
    if coord not in da.coords:
        return None
    vals = pd.unique(np.ravel(da[coord].values))
    return vals[0] if len(vals) == 1 else None


def _title_parts(da: xr.DataArray, cfg: str | None) -> dict[str, str]:
    """What the suptitle says about a selection: model, levels, steps, cfg branch."""
    parts = {}
    model = _unique_run_value(da, MODEL)
    if model is not None and str(model):
        parts[MODEL] = str(model)
    for key, text in ((LEVEL, _levels_text(da)), (STEP, _steps_text(da))):
        if text:
            parts[key] = text
    if CFG in da.dims or cfg is None:
        parts[CFG] = cfg if cfg is not None else "cfg mean"
    return parts


def _selection_title(da: xr.DataArray | Sequence[xr.DataArray], cfg: str | None) -> str:
    """Suptitle from coordinates: model, levels, steps, cfg branch. Of several selections
    (the entries of a dict input), only what they all share: a model, levels or steps that
    differ between them are left out."""
    many = [da] if isinstance(da, xr.DataArray) else list(da)
    if not many:
        return ""
    each = [_title_parts(d, cfg) for d in many]
    shared = {k: v for k, v in each[0].items() if all(p.get(k) == v for p in each[1:])}
    return " · ".join(shared.values())


def _specs(edits: Any) -> list[Any]:
    """The list of edit specs of a run's ``edits`` value (JSON text, a list, a dict, or none)."""
    if edits is None or (isinstance(edits, str) and not edits.strip()):
        return []
    try:
        spec = json.loads(edits) if isinstance(edits, str) else edits
    except json.JSONDecodeError:
        return [edits]
    if isinstance(spec, Mapping):
        return [spec]
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def _kind(edit: Mapping[str, Any]) -> str | None:
    for key in ("kind", "name", "type", "edit"):
        if isinstance(edit.get(key), str):
            return str(edit[key])
    return None


def _matrix_text(m: Any, what: str = "matrix") -> str:
    return f"{len(m)}x{len(m)} {what}" if isinstance(m, (list, tuple)) else str(m)


def _tar_args(e: Mapping[str, Any]) -> str:
    sigma = e.get("sigma")
    if isinstance(sigma, Mapping):  # {level: sigma} ({width: sigma} with compat="vstar")
        by_value: dict[str, list[str]] = {}
        for key, v in sigma.items():
            by_value.setdefault(_num(v), []).append(str(key))
        text = ",".join(f"σ{v}@{'+'.join(keys)}" for v, keys in by_value.items())
    elif sigma is None:
        text = ""
    else:
        text = str(sigma) if isinstance(sigma, str) else f"σ{_num(sigma)}"
    return f"{text} {e['compat']}".strip() if e.get("compat") else text


def _reference_text(ref: Any) -> str:
    if isinstance(ref, str):
        name = ref.rstrip("/").split("/")[-1]
        return name.rsplit(".", 1)[0] if "." in name and not ref.startswith("world:") else name
    return _matrix_text(ref, "ref. matrix")


def _args(*keys: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda e: ",".join(_value_text(e[k]) for k in keys if e.get(k) is not None)


#: the arguments that tell one setting of an edit kind from another, as short text
_EDIT_ARGS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "tar": _tar_args,
    "replace": lambda e: _matrix_text(e.get("matrix", "")),
    "transfer": lambda e: _reference_text(e.get("reference", "")),
    "window_decay": _args("window", "alpha"),
    "sliding_window": _args("window", "stride"),
    "spectral_blend": _args("window", "cutoff"),
    "rope_scale": lambda e: f"{e.get('method', '')}×{_value_text(e.get('factor', ''))}",
    "riflex": lambda e: ",".join(
        f"{k}={_value_text(e[k])}" for k in ("k", "frames") if e.get(k) is not None
    ),
    "frame_positions": _args("mode", "frames"),
    "synopsis": lambda e: "",  # its key states are the prompt's (see _edits_key)
}


def _value_text(v: Any) -> str:
    """A parameter value as short text: numbers without trailing zeros, long values hashed."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, float)):
        return _num(v)
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    if len(text) <= 16:
        return text
    return "#" + hashlib.sha1(text.encode()).hexdigest()[:6]


def _edit_label(edit: Any) -> str:
    """A short label of one edit spec (``edit.spec()``): its kind and the arguments that tell
    its settings apart, e.g. "TAR 64D1", "TAR σ1@0,σ8@1", "replace identity@0,1",
    "transfer carphone@0", "sliding_window 16,4"."""
    if not isinstance(edit, Mapping):
        return str(edit)
    if isinstance(edit.get("label"), str):
        return str(edit["label"])
    kind = _kind(edit) or "edit"
    name = kind.upper() if kind.lower() in {"tar", "vsp"} else kind
    args = _EDIT_ARGS[kind.lower()](edit) if kind.lower() in _EDIT_ARGS else ""
    text = f"{name} {args}" if args else name
    levels = edit.get("levels")
    if kind.lower() != "tar" and isinstance(levels, (list, tuple)) and levels:
        text += "@" + ",".join(str(v) for v in levels)
    return text


def _condition_of(source: Any, edits: Any) -> str:
    label = str(source) if source is not None else "run"
    return "+".join([label, *(_edit_label(e) for e in _specs(edits))])


def _edits_key(edits: Any) -> str:
    """Canonical text of a run's edits: equal for runs of one edit setting. The key states of
    a :class:`~attnlab.edits.Synopsis` are left out: they are the prompt's (sub)prompts, as the
    prompt itself is not part of a condition."""
    out = []
    for e in _specs(edits):
        if isinstance(e, Mapping) and _kind(e) == "synopsis":
            e = {k: v for k, v in e.items() if k != "key_states"}
        out.append(e)
    return json.dumps(out, sort_keys=True, default=str)


def _differences(specs: Sequence[list[Any]]) -> list[str]:
    """Per spec list, the text of the parameters in which it differs from the others."""
    lengths = {len(s) for s in specs}
    out: list[list[str]] = [[] for _ in specs]
    if len(lengths) == 1 and all(isinstance(e, Mapping) for s in specs for e in s):
        for i in range(lengths.pop()):
            keys = list(dict.fromkeys(k for s in specs for k in s[i]))
            for k in keys:
                vals = [json.dumps(s[i].get(k), sort_keys=True, default=str) for s in specs]
                if len(set(vals)) > 1:
                    for parts, s in zip(out, specs):
                        parts.append(f"{k}={_value_text(s[i].get(k))}")
    texts = [", ".join(parts) for parts in out]
    if len(set(texts)) < len(texts):  # no parameter tells them apart as text: hash them
        texts = [
            "#" + hashlib.sha1(json.dumps(s, sort_keys=True, default=str).encode()).hexdigest()[:6]
            for s in specs
        ]
    return texts


def condition_labels(probs: xr.DataArray) -> np.ndarray:
    """One label per run: the ``condition`` coordinate if present, else ``source`` plus the
    label of each of its edits (:func:`_edit_label`), e.g. "real", "synthetic",
    "synthetic+TAR 64D1", "synthetic+replace identity@0".

    Runs of different edit settings never share a label: where the short labels of two
    settings coincide, the parameters that differ are added, e.g.
    "synthetic+TAR 64D1 (max_mode=global)"."""
    n = probs.sizes.get(RUN, 1)
    if CONDITION in probs.coords:
        return np.broadcast_to(np.asarray(probs[CONDITION].values, dtype=object), (n,))
    src = _run_values(probs, SOURCE, n)
    eds = _run_values(probs, EDITS, n)
    labels = [_condition_of(s, e) for s, e in zip(src, eds)]
    keys = [_edits_key(e) for e in eds]
    for label in dict.fromkeys(labels):
        idx = [k for k in range(n) if labels[k] == label]
        distinct = list(dict.fromkeys(keys[k] for k in idx))
        if len(distinct) < 2:
            continue
        texts = _differences([json.loads(d) for d in distinct])
        for k in idx:
            labels[k] = f"{label} ({texts[distinct.index(keys[k])]})"
    return np.array(labels, dtype=object)


def _check_one_setting(da: xr.DataArray, what: str = "one panel") -> None:
    """Refuse to pool runs of different edit settings (their ``edits`` differ)."""
    if EDITS not in da.coords or RUN not in da.dims or da.sizes[RUN] < 2:
        return
    keys = [_edits_key(e) for e in _run_values(da, EDITS)]
    if len(set(keys)) > 1:
        labels = list(dict.fromkeys(condition_labels(da.drop_vars(CONDITION, errors="ignore"))))
        raise ValueError(
            f"runs of different edits would be averaged into {what}: {labels}; facet by "
            f"{CONDITION!r} (one label per edit setting) or select runs first"
        )


def _run_values(da: xr.DataArray, coord: str, n: int | None = None) -> np.ndarray:
    n = da.sizes.get(RUN, 1) if n is None else n
    if coord not in da.coords:
        return np.array([None] * n, dtype=object)
    vals = np.asarray(da[coord].values)
    if vals.ndim == 0:
        return np.array([vals.item()] * n, dtype=object)
    if da[coord].dims != (RUN,):
        raise ValueError(f"coordinate {coord!r} must lie along {RUN!r}, not {da[coord].dims}")
    return vals.astype(object)


def _run_labels(da: xr.DataArray, coord: str) -> np.ndarray:
    if coord == CONDITION:
        return condition_labels(da)
    if coord == FRAMES and coord not in da.coords and QUERY in da.dims:
        # no frames coordinate: count the query frames holding any finite value, per run
        other = [d for d in da.dims if d not in (RUN, QUERY)]
        counts = da.notnull().any(other).sum(QUERY).values
        return np.broadcast_to(np.asarray(counts, dtype=object), (da.sizes.get(RUN, 1),))
    if coord not in da.coords:
        available = sorted(str(c) for c in da.coords if RUN in da[c].dims)
        raise KeyError(f"no run coordinate {coord!r}; available: {available}")
    return _run_values(da, coord)


def _wrap(label: str, width: int = 24) -> str:
    """A long row label on several lines, broken after "+" or a space (kept at the line's
    end: joining the lines gives the label back), at most ``width`` characters a line where
    the parts allow."""
    out = []
    for text in str(label).split("\n"):
        parts = re.findall(r"[^+ ]*(?:\+| +|$)", text)
        lines = [""]
        for part in filter(None, parts):
            if lines[-1] and len(lines[-1]) + len(part.rstrip()) > width:
                lines.append("")
            lines[-1] += part
        out += lines
    return "\n".join(out)


def _fmt_facet(coord: str | None, value: Any) -> str:
    if coord is None:
        return ""
    if coord == FRAMES:
        return f"{int(value)} frames"
    if coord == MODEL:
        return str(value).split("/")[-1] or "(model not recorded)"
    return str(value)
