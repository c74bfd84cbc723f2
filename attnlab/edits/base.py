"""The base of every edit: targeting by layers, sampler steps, timestep window and CFG half,
JSON round trips (``spec`` / ``from_spec``) and the registry of edit kinds."""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from attnlab.core.protocol import CallContext, Client, split_batch
from attnlab.core.selection import CFG_CHOICES, Layers, SelectionError, Steps, cfg_halves
from attnlab.core.sites import Site

if TYPE_CHECKING:
    from attnlab.core.control import Controller

REGISTRY: dict[str, type[Edit]] = {}


class EditError(ValueError):
    """Bad edit parameters (raised at construction or when the edit meets a model)."""


class EditInactiveWarning(UserWarning):
    """An edit left every layer untouched for a whole run because its window of frames covered
    every call (see :class:`FrameWindowEdit`)."""


def register(cls: type[Edit]) -> type[Edit]:
    REGISTRY[cls.kind] = cls
    return cls


def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EditError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise EditError(f"{name} must be a positive finite number, got {value!r}")
    return v


class Edit(Client):
    """Base of all edits: targeting by layers, steps, timestep window and CFG half."""

    kind: ClassVar[str] = ""
    default_blocks: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        *,
        levels: Any = None,
        blocks: Any = "default",
        names: Any = None,
        steps: Any = None,
        t_min: float | None = None,
        t_max: float | None = None,
        cfg: str = "both",
    ):
        if blocks == "default":
            blocks = self.default_blocks
        self.layers = Layers.make(levels, blocks, names)
        self.steps = Steps.make(steps)
        for name, v in (("t_min", t_min), ("t_max", t_max)):
            if v is not None and (
                isinstance(v, (bool, str)) or not isinstance(v, numbers.Real) or not 0 <= v <= 1
            ):
                raise EditError(
                    f"{name} is a fraction of the training horizon T in [0, 1], got {v!r}"
                )
        if t_min is not None and t_max is not None and t_min > t_max:
            raise EditError(f"empty timestep window: t_min={t_min} > t_max={t_max}")
        self.t_min = None if t_min is None else float(t_min)
        self.t_max = None if t_max is None else float(t_max)
        if cfg not in CFG_CHOICES:
            raise EditError(f"cfg must be one of {', '.join(CFG_CHOICES)}; got {cfg!r}")
        self.cfg = cfg
        self._sites: set[str] = set()
        self._steps: set[int] | None = None

    # ---- serialisation -------------------------------------------------------------------
    def target_params(self) -> dict[str, Any]:
        d = self.layers.to_dict()
        return {
            **d,
            "steps": self.steps.to_json(),
            "t_min": self.t_min,
            "t_max": self.t_max,
            "cfg": self.cfg,
        }

    def params(self) -> dict[str, Any]:
        """The edit's own parameters (JSON-able); targeting is added by :meth:`spec`."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params(), **self.target_params()}

    def to_json(self) -> str:
        return json.dumps(self.spec())

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Edit:
        params = dict(params)
        steps = params.get("steps")
        if isinstance(steps, dict) and "slice" in steps:
            params["steps"] = slice(*steps["slice"])
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(json.dumps(self.spec(), sort_keys=True))

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.spec().items() if k != "kind" and v is not None
        )
        return f"{type(self).__name__}({args})"

    # ---- client protocol -----------------------------------------------------------------
    def bind(self, controller: Controller) -> None:
        self.controller = controller
        layers = self.layers
        if (
            self.default_blocks is not None
            and layers.blocks == tuple(self.default_blocks)
            and not any(s.block in self.default_blocks for s in controller.table)
        ):  # the default blocks are UNet blocks: a transformer's layers all count
            layers = Layers(layers.levels, None, layers.names)
        self._sites = {s.name for s in layers.resolve(controller.table)}

    def on_run_start(self, run) -> None:
        self._steps = self.steps.resolve(run.num_steps) if run.timesteps is not None else None
        self._run_halves = ["uncond", "cond"] if run.cfg else ["cond"]
        if not cfg_halves(self.cfg, self._run_halves):
            raise SelectionError(
                f"{self.kind}: cfg={self.cfg!r} but this run has no classifier-free guidance batch"
            )

    def on_steps_known(self, run) -> None:
        self._steps = self.steps.resolve(run.num_steps)

    def active(self, ctx: CallContext) -> bool:
        """Whether this edit acts during the current denoiser call."""
        steps = self._steps if self._steps is not None else self.steps.resolve(None)
        if steps is not None and ctx.step not in steps:
            return False
        if self.t_min is not None or self.t_max is not None:
            t = ctx.t_frac
            if t is None:
                raise EditError(f"{self.kind}: a timestep window needs the denoiser's timestep")
            if self.t_min is not None and t < self.t_min - 1e-9:
                return False
            if self.t_max is not None and t > self.t_max + 1e-9:
                return False
        return True

    def wants(self, site: Site, ctx: CallContext) -> bool:
        return (
            site.name in self._sites
            and bool(cfg_halves(self.cfg, ctx.halves()))  # a call may hold one CFG half only
            and self.active(ctx)
        )

    def halves(self, ctx: CallContext) -> list[int] | None:
        """Batch halves (indices into ``ctx.halves()``) to edit; None = all (no slicing)."""
        idx = cfg_halves(self.cfg, ctx.halves())
        return None if len(idx) == len(ctx.halves()) else idx

    def _apply(
        self,
        x: torch.Tensor,
        ctx: CallContext,
        site: Site,
        fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        halves = self.halves(ctx)
        if halves is None:
            return fn(x)
        out = x.clone()
        view = split_batch(out, ctx, site)
        for h in halves:
            view[h] = fn(view[h])
        return out


class FrameWindowEdit(Edit):
    """An edit with a window of ``window`` frames that is the identity on a call whose frames the
    window covers (:meth:`covers`): WindowDecay, SlidingWindow, SpectralBlend. Such calls are left
    untouched (bit-exact). A run in which the window covered every selected call, so that the
    edit did nothing at all, ends with one :class:`EditInactiveWarning` naming the frame counts:
    the window counts the frames the attention sees, latent frames on a DiT, and a window given
    in video frames would otherwise do nothing without a word. (Neutral parameters, such as
    ``alpha=1``, are deliberate and not warned about.)"""

    window: int
    _acted: bool = False
    _covered: frozenset[int] = frozenset()

    def covers(self, frames: int) -> bool:
        """Whether the window covers a call of ``frames`` frames (the edit then does nothing)."""
        return frames <= self.window

    def identity_at(self, frames: int) -> bool:
        """Whether the edit changes nothing for a call of ``frames`` frames."""
        raise NotImplementedError

    def on_run_start(self, run) -> None:
        super().on_run_start(run)
        self._acted, self._covered = False, frozenset()

    def wants(self, site: Site, ctx: CallContext) -> bool:
        if not super().wants(site, ctx):
            return False
        if self.identity_at(ctx.frames):
            if self.covers(ctx.frames):
                self._covered = self._covered | {ctx.frames}
            return False
        self._acted = True
        return True

    def on_run_end(self, run, ok: bool) -> None:
        super().on_run_end(run, ok)
        if ok and self._covered and not self._acted:
            frames = ", ".join(str(f) for f in sorted(self._covered))
            warnings.warn(
                f"{self!r} left every layer untouched in this run: the attention saw {frames} "
                f"frames per call, which its window of {self.window} covers (the window counts "
                "the frames the attention sees: latent frames on a DiT, e.g. 81 video frames of "
                "Wan are 21)",
                EditInactiveWarning,
                stacklevel=2,
            )
        self._acted, self._covered = False, frozenset()
