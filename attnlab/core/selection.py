"""Selections of layers, steps and CFG halves, validated against a model's site table."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Steps:
    """Which sampler steps, by index (0 = the first, noisiest, denoiser call of a run).

    Build with :meth:`make` from ``None`` (all), an int, an iterable of ints, a ``range`` or a
    ``slice``; negative indices count from the end of the run.
    """

    indices: tuple[int, ...] | None = None
    slice_: tuple[int | None, int | None, int | None] | None = None

    @classmethod
    def make(cls, steps: Any = None) -> Steps:
        if steps is None or steps == "all":
            return cls()
        if isinstance(steps, Steps):
            return steps
        if isinstance(steps, slice):
            return cls(slice_=(steps.start, steps.stop, steps.step))
        if isinstance(steps, int):
            return cls(indices=(steps,))
        if isinstance(steps, Iterable) and not isinstance(steps, (str, bytes)):
            values = tuple(steps)
            if not all(isinstance(v, int) for v in values):
                raise SelectionError(f"steps must be integers, got {values!r}")
            return cls(indices=values)
        raise SelectionError(
            f"steps must be None, an int, a list/range of ints or a slice; got {steps!r}"
        )

    def resolve(self, num_steps: int | None) -> set[int] | None:
        """Concrete indices for a run of ``num_steps`` steps (None = every step)."""
        if self.indices is None and self.slice_ is None:
            return None
        if self.slice_ is not None:
            if num_steps is None:
                raise SelectionError("a step slice needs the run's number of steps")
            return set(range(num_steps)[slice(*self.slice_)])
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


def check_cfg(cfg: str) -> str:
    if cfg not in CFG_CHOICES:
        raise SelectionError(f"cfg must be one of {', '.join(CFG_CHOICES)}; got {cfg!r}")
    return cfg


def cfg_halves(cfg: str, halves: list[str]) -> list[int]:
    """Indices into the batch halves (``ctx.halves()``) that a cfg selection covers."""
    return [i for i, h in enumerate(halves) if cfg == "both" or cfg == h]
