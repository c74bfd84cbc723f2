"""Selections of layers, steps and CFG halves, validated against a model's site table."""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from attnlab.core.sites import BLOCKS, Site, SiteTable

CFG_CHOICES = ("both", "cond", "uncond")


class SelectionError(ValueError):
    """A layer, step or CFG selection that matches nothing or is malformed."""


def _tuple(x: Any) -> tuple | None:
    if x is None:
        return None
    if isinstance(x, (str, int)):
        return (x,)
    return tuple(x)


@dataclass(frozen=True)
class Layers:
    """Which temporal layers: by resolution level, block and/or module-path regex (all must hold).

    ``None`` for a field means no constraint. ``names`` are regular expressions searched in
    the module path (e.g. ``"up_blocks"``, ``"attn1$"``).
    """

    levels: tuple[int, ...] | None = None
    blocks: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None

    @classmethod
    def make(cls, levels: Any = None, blocks: Any = None, names: Any = None) -> Layers:
        levels = _tuple(levels)
        if levels is not None:
            bad = [v for v in levels if not _is_level(v)]
            if bad:
                raise SelectionError(
                    f"levels must be whole numbers >= 0 (0 = full latent resolution), got {bad}"
                )
            levels = tuple(int(v) for v in levels)
        return cls(levels, _tuple(blocks), _tuple(names))

    def matches(self, site: Site) -> bool:
        if self.levels is not None and site.level not in self.levels:
            return False
        if self.blocks is not None and site.block not in self.blocks:
            return False
        return self.names is None or any(re.search(p, site.name) for p in self.names)

    def resolve(self, table: SiteTable) -> list[Site]:
        """The matching sites; a clear error naming what exists when something matches nothing."""
        if self.levels is not None:
            bad = [lv for lv in self.levels if lv not in table.levels]
            if bad:
                raise SelectionError(
                    f"no temporal attention layer at level {bad}; {table.model_class} has levels "
                    f"{table.levels} (0 = full latent resolution)"
                )
        if self.blocks is not None:
            bad_blocks = [b for b in self.blocks if b not in BLOCKS]
            if bad_blocks:
                raise SelectionError(f"unknown block {bad_blocks}; allowed: {', '.join(BLOCKS)}")
        if self.names is not None:
            for p in self.names:
                try:
                    rx = re.compile(p)
                except re.error as err:
                    raise SelectionError(
                        f"layer name pattern {p!r} is not a valid regex: {err}"
                    ) from err
                if not any(rx.search(s.name) for s in table):
                    raise SelectionError(
                        f"layer name pattern {p!r} matches no temporal attention layer of "
                        f"{table.model_class}; e.g. {table.names[0]!r} (see attnlab.sites(pipe))"
                    )
        chosen = [s for s in table if self.matches(s)]
        if not chosen:
            raise SelectionError(
                f"the selection {self.describe()} matches no temporal attention layer"
            )
        return chosen

    def describe(self) -> str:
        parts = [f"{k}={list(v)}" for k, v in self.to_dict().items() if v is not None]
        return "Layers(" + (", ".join(parts) or "all") + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels) if self.levels is not None else None,
            "blocks": list(self.blocks) if self.blocks is not None else None,
            "names": list(self.names) if self.names is not None else None,
        }


def _is_index(value: Any) -> bool:
    """An integer step index (a bool is not one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Steps:
    """Which sampler steps, by index (0 = the first, noisiest, denoiser call of a run).

    Build with :meth:`make` from ``None`` (all), an int, an iterable of ints, a ``range`` or a
    ``slice``; negative indices count from the end of the run. A ``range`` is a slice (``range(0,
    14)`` = ``slice(0, 14)``: the first 14 steps, all of a shorter run, as ``--record-steps
    0:14`` reads); an index past the run's end is refused.
    """

    indices: tuple[int, ...] | None = None
    slice_: tuple[int | None, int | None, int | None] | None = None

    @classmethod
    def make(cls, steps: Any = None) -> Steps:
        if steps is None or steps == "all":
            return cls()
        if isinstance(steps, Steps):
            return steps
        if isinstance(steps, range):  # "the first 14 steps": clipped to the run, as a slice
            steps = slice(steps.start, steps.stop, None if steps.step == 1 else steps.step)
        if isinstance(steps, slice):
            return cls(slice_=_check_slice(steps))
        if _is_index(steps):
            return cls(indices=(int(steps),))
        if isinstance(steps, Iterable) and not isinstance(steps, (str, bytes)):
            values = tuple(steps)
            if not all(_is_index(v) for v in values):
                raise SelectionError(f"steps must be integers, got {values!r}")
            if not values:
                raise SelectionError(
                    "steps is empty: it would select no step; None selects every step"
                )
            return cls(indices=tuple(int(v) for v in values))
        raise SelectionError(
            f"steps must be None, an int, a list/range of ints or a slice; got {steps!r}"
        )

    @classmethod
    def parse(cls, text: str) -> Steps:
        """A step selection as written on the command line: ``'0,5,10'`` (indices), ``'0:14'``
        or ``'::2'`` (a slice: start:stop[:step]) or ``'all'``."""
        text = text.strip()
        if text == "all":
            return cls()
        parts = text.split(":") if ":" in text else text.split(",")
        try:
            values = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            values = []
        if ":" in text:
            if 2 <= len(values) <= 3:
                return cls.make(slice(*values))
        elif values and None not in values:
            return cls.make([v for v in values if v is not None])
        raise SelectionError(
            f"invalid step selection {text!r}: give indices ('0,5,10'), a slice "
            "('START:STOP[:STEP]', e.g. '0:14') or 'all'"
        )

    def resolve(self, num_steps: int | None) -> set[int] | None:
        """Concrete indices for a run of ``num_steps`` steps (None = every step)."""
        if self.indices is None and self.slice_ is None:
            return None
        if self.slice_ is not None:
            if num_steps is None:
                raise SelectionError("a step slice needs the run's number of steps")
            chosen = set(range(num_steps)[slice(*self.slice_)])
            if not chosen:
                raise SelectionError(
                    f"steps {_slice_text(self.slice_)} select none of this run's {num_steps} "
                    f"steps (0..{num_steps - 1})"
                )
            return chosen
        out = set()
        for i in self.indices or ():
            j = i + num_steps if (i < 0 and num_steps is not None) else i
            if num_steps is not None and not 0 <= j < num_steps:
                raise SelectionError(
                    f"step {i} out of range: this run has {num_steps} steps (0..{num_steps - 1})"
                )
            if j < 0:
                raise SelectionError(f"negative step {i} needs the run's number of steps")
            out.add(j)
        return out

    def to_json(self) -> Any:
        if self.slice_ is not None:
            return {"slice": list(self.slice_)}
        return list(self.indices) if self.indices is not None else None


def _is_level(value: Any) -> bool:
    """A level index: an int >= 0, or a string of digits (levels given as text)."""
    if isinstance(value, str):
        return value.strip().isdigit()
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


def _slice_text(parts: tuple[int | None, int | None, int | None]) -> str:
    start, stop, step = ("" if v is None else str(v) for v in parts)
    return f"{start}:{stop}" + (f":{step}" if step else "")


def _check_slice(steps: slice) -> tuple[int | None, int | None, int | None]:
    """A step slice's parts, refused when they are not integers or select nothing in any run."""
    parts = (steps.start, steps.stop, steps.step)
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in parts):
        raise SelectionError(f"a step slice takes integers, got {steps!r}")
    start, stop, step = parts
    if step == 0:
        raise SelectionError(f"steps {_slice_text(parts)}: a slice step cannot be zero")
    # same-signed bounds in the wrong order select nothing, whatever the run's length
    forward = (step or 1) > 0
    if (
        start is not None
        and stop is not None
        and (start >= 0) == (stop >= 0)
        and (start >= stop if forward else start <= stop)
    ):
        raise SelectionError(f"steps {_slice_text(parts)} select no step in any run")
    return parts


def check_cfg(cfg: str) -> str:
    if cfg not in CFG_CHOICES:
        raise SelectionError(f"cfg must be one of {', '.join(CFG_CHOICES)}; got {cfg!r}")
    return cfg


def cfg_halves(cfg: str, halves: list[str]) -> list[int]:
    """Indices into the batch halves (``ctx.halves()``) that a cfg selection covers."""
    return [i for i, h in enumerate(halves) if cfg == "both" or cfg == h]
