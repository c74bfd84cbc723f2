"""Edits of temporal attention as declarative, composable, serialisable objects.

Apply with ``attnlab.edit(pipe, *edits)``. Every edit targets layers (``levels``, ``blocks``,
``names``), sampler steps (``steps`` indices and/or a timestep window ``t_min``..``t_max`` as
fractions of the training horizon T) and CFG halves (``cfg``: "both", "cond", "uncond").

Composition order inside each temporal layer (see :mod:`attnlab.core.processor`):

1. bias edits (:class:`TAR`, :class:`Transfer`, :class:`WindowDecay`) change the logits, in
   the order given;
2. softmax;
3. replacement edits (:class:`Replace`; :class:`SlidingWindow` and :class:`SpectralBlend`,
   which mix window softmaxes of those probabilities) overwrite them, in the order given.

:class:`Synopsis` acts on the text conditioning instead (per-frame cross-attention context).

Every edit round-trips through JSON (``edit.to_json()`` / ``attnlab.edits.from_json``) with
all its arguments, and its spec is written into the provenance of every recorded run.
"""

from __future__ import annotations

import json
from typing import Any

from attnlab.edits.base import REGISTRY, Edit, EditError, EditInactiveWarning, _positive, register
from attnlab.edits.bias import (
    MAX_MODES,
    PRESETS,
    TAR,
    TAR_T_MIN,
    LogitBias,
    Transfer,
    preset_sigma,
    regularise,
)
from attnlab.edits.fusion import SlidingWindow, SpectralBlend
from attnlab.edits.positions import (
    POSITION_EDITS,
    FramePositions,
    PositionHandler,
    RIFLEx,
    RopeScale,
    TemporalPE,
    register_position_handler,
)
from attnlab.edits.replace import Replace
from attnlab.edits.synopsis import Synopsis, key_states_from_llm
from attnlab.edits.window import WindowDecay, decay_factors

__all__ = [
    "MAX_MODES",
    "POSITION_EDITS",
    "PRESETS",
    "REGISTRY",
    "TAR",
    "TAR_T_MIN",
    "Edit",
    "EditError",
    "EditInactiveWarning",
    "FramePositions",
    "LogitBias",
    "PositionHandler",
    "RIFLEx",
    "Replace",
    "RopeScale",
    "SlidingWindow",
    "SpectralBlend",
    "Synopsis",
    "TemporalPE",
    "Transfer",
    "WindowDecay",
    "decay_factors",
    "from_json",
    "from_spec",
    "key_states_from_llm",
    "parse_edit",
    "preset_sigma",
    "register",
    "register_position_handler",
    "regularise",
]


def from_spec(spec: dict[str, Any]) -> Edit:
    """Rebuild an edit from ``edit.spec()``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in REGISTRY:
        # edits defined in modules that build on this one register when imported: import them
        # (``import attnlab`` is lazy, so a fresh process may not have them yet)
        from attnlab.edits import synopsis  # noqa: F401
    if kind not in REGISTRY:
        raise EditError(f"unknown edit kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind].from_params(spec)


def from_json(text: str) -> Edit | list[Edit]:
    data = json.loads(text)
    return [from_spec(d) for d in data] if isinstance(data, list) else from_spec(data)


#: edits whose command-line form is ``KIND:POSITIONAL,...,KEY=VALUE,...[@LEVELS]``
_ARG_EDITS: dict[str, type[Edit]] = {
    "window_decay": WindowDecay,
    "sliding_window": SlidingWindow,
    "spectral_blend": SpectralBlend,
}


def _value(text: str) -> Any:
    """A command-line value: an int, a float, or the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _args_edit(kind: str, arg: str, levels: list[int] | None, text: str) -> Edit:
    """``window_decay:16,0.9,beyond=periodic,period=50`` -> ``WindowDecay(16, 0.9, ...)``."""
    cls = _ARG_EDITS[kind]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for part in (p.strip() for p in arg.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key.strip()] = _value(value.strip())
        elif kwargs:
            raise EditError(f"bad edit {text!r}: positional {part!r} after keyword arguments")
        else:
            args.append(_value(part))
    if not args and "window" not in kwargs:
        raise EditError(f"bad edit {text!r}: {kind} needs a window, e.g. '{kind}:16'")
    if levels is not None:
        kwargs["levels"] = levels
    try:
        return cls(*args, **kwargs)
    except TypeError as err:
        raise EditError(f"bad edit {text!r}: {err}") from None


def parse_edit(text: str) -> Edit:
    """Parse a command-line edit: ``KIND:ARG[@LEVELS]``.

    ``tar:64D1`` (a preset) or ``tar:1.5@0,1`` (sigma at levels), ``replace:identity@0``,
    ``replace:ones@0,1``, ``transfer:clip.mp4@0``, ``synopsis:a young boy|an old man``;
    ``window_decay:16`` / ``window_decay:16,0.9,beyond=periodic,period=50,beta=0.6``,
    ``sliding_window:16,4`` / ``sliding_window:16,4,weighting=flat``,
    ``spectral_blend:16,0.25`` / ``spectral_blend:16,1,filter=box``: the constructor's
    positional arguments, then ``key=value`` ones (numbers where they parse as numbers).
    """
    kind, _, rest = text.partition(":")
    arg, _, levels_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        levels = [int(v) for v in levels_text.split(",") if v] or None
    except ValueError:
        raise EditError(f"bad levels in edit {text!r}: expected '@0' or '@0,1'") from None
    if kind == "tar":
        if levels is None:
            return TAR(arg or "64D1")
        return TAR({lv: _positive("sigma", arg or 1) for lv in levels})
    if kind == "replace":
        return Replace(arg or "identity", levels=levels)
    if kind == "transfer":
        return Transfer(arg, levels=levels if levels is not None else 0)
    if kind == "synopsis":
        return Synopsis([s.strip() for s in arg.split("|") if s.strip()])
    if kind in _ARG_EDITS:
        return _args_edit(kind, arg, levels, text)
    raise EditError(
        f"unknown edit {text!r}: expected tar:, replace:, transfer:, synopsis:, "
        "window_decay:, sliding_window: or spectral_blend:"
    )
