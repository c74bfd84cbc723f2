"""The client protocol: what recorders and edits are to the processors, typed.

Every recorder and edit is a :class:`Client` of the :class:`~attnlab.core.control.Controller`
(lifecycle: ``bind`` -> per run ``on_run_start`` / ``on_steps_known`` -> per denoiser call
``on_call`` -> per layer ``wants`` -> ``on_run_end`` -> ``release``). A client acts at one
:class:`Stage` of each temporal attention call:

* ``BIAS`` (:class:`BiasClient`): changes the logits before the softmax (TAR, Transfer);
* ``REPLACE`` (:class:`ReplaceClient`): changes the probabilities after it (Replace);
* ``OBSERVE`` (:class:`Observer`): reads logits and probabilities (recorders, hooks);
* ``CONTEXT``: acts on the denoiser's conditioning instead, never on attention maps (Synopsis).

The processors never look at a client's class: clients say themselves whether they act on each
``F x F`` map alone (``row_local``, which allows the cache-blocked path), what probabilities a
replacement fixes (``target``, which allows skipping q and k), and what logit prior a bias adds
(``logit_prior``, which lets the joint-attention processor apply it to frame pairs).

The processors in turn see the controller only as a :class:`ProcessorHost`: the site table,
the current :class:`CallContext` and the :class:`Plan` of each site.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from attnlab.core.denoisers import BARE_DENOISER
from attnlab.core.sites import Site, SiteTable


class Stage(str, enum.Enum):
    """Where in a temporal attention call a client acts (see the module docstring)."""

    BIAS = "bias"
    REPLACE = "replace"
    OBSERVE = "observe"
    CONTEXT = "context"


@dataclass
class RunInfo:
    """One run: a pipeline call or an explicit ``Controller.run`` block."""

    index: int
    cfg: bool = False
    source: str = "synthetic"
    meta: dict[str, Any] = field(default_factory=dict)
    timesteps: list[float] | None = None
    calls: int = 0
    implicit: bool = False  # begun by a denoiser call outside any pipeline call or run block
    # CFG halves seen in the current step, for pipelines that call the denoiser once per half
    halves_seen: set[str] | None = None
    # the ``expert`` names of the denoisers whose calls are this run's steps ("unet",
    # "transformer", "transformer_2" ...; "denoiser" for a bare denoiser); set by the run
    # tracker (not a constructor argument: the public signature stays 0.1's)
    experts: list[str] = field(default_factory=lambda: [BARE_DENOISER], init=False)

    @property
    def num_steps(self) -> int | None:
        return len(self.timesteps) if self.timesteps is not None else None


@dataclass
class CallContext:
    """What is known about the current denoiser call, shared by all sites during it."""

    run: RunInfo
    step: int
    timestep: float | None
    num_train_timesteps: int
    batch: int
    frames: int
    latent: tuple[int, int]
    # the scheduler passes a continuous noise level (e.g. SVD's c_noise), not a step in [0, T)
    continuous: bool = False
    # the one CFG half this call's whole batch belongs to, for pipelines that call the
    # denoiser separately per half (Wan: ``cache_context("cond")`` / ``("uncond")``)
    half: str | None = None
    # the denoiser running this call, by its pipeline component name (Wan 2.2 A14B:
    # "transformer" for the high-noise steps, "transformer_2" for the low-noise ones); set by
    # the run tracker (not a constructor argument: the public signature stays 0.1's)
    expert: str = field(default=BARE_DENOISER, init=False)
    # the first frame of the window of frames this layer call attends within, when the
    # pipeline runs temporal attention on windows (AnimateDiff's FreeNoise); ``frames`` is then
    # the window's length. None: the call attends all ``frames`` of the denoiser call. Set by
    # the controller on the context of one layer call (not a constructor argument)
    window: int | None = field(default=None, init=False)

    @property
    def cfg(self) -> bool:
        return self.run.cfg

    @property
    def t_frac(self) -> float | None:
        """Timestep as a fraction of the training horizon T (1.0 = pure noise)."""
        if self.continuous:
            raise ValueError(
                "this scheduler passes a continuous noise level, not a timestep in [0, T): "
                "timestep windows (t_min/t_max) do not apply; select steps by index (steps=...) "
                "and pass t_min=None"
            )
        return None if self.timestep is None else self.timestep / self.num_train_timesteps

    def halves(self) -> list[str]:
        """Names of the batch halves, in batch order."""
        if self.half is not None:
            return [self.half]
        return ["uncond", "cond"] if self.cfg else ["cond"]


@dataclass(frozen=True)
class LogitPrior:
    """A bias client's action as data: ``logits + scale * max(logits) * dA`` (paper Eq. 3).

    ``dA``: ``[F, F]`` over (query frame, key frame); ``max_mode``: "row" (per query), "head"
    (per map) or "global" (per call).
    """

    dA: np.ndarray
    max_mode: str = "row"
    scale: float = 1.0


#: what a replacement fixes the probabilities to: "identity" (I_N), "ones" (J_N / N) or a
#: row-normalised ``[F, F]`` matrix
Target = str | np.ndarray


def target_matrix(target: Target, frames: int) -> np.ndarray:
    """``target`` as an ``[F, F]`` matrix (rows sum to 1)."""
    if isinstance(target, str):
        if target == "identity":
            return np.eye(frames)
        if target == "ones":
            return np.full((frames, frames), 1.0 / frames)
        raise ValueError(f"unknown fixed target {target!r}; allowed: identity, ones, a matrix")
    return target


class Client:
    """Base of recorders and edits: the controller calls these at run, call and layer level."""

    stage: ClassVar[Stage | str] = Stage.OBSERVE

    def bind(self, controller: Any) -> None:
        """Validate against the model's site table when attached (raise on bad selections).

        ``controller``: the :class:`~attnlab.core.control.Controller` attaching the client
        (typed ``Any`` so that the protocol stays below the controller; clients type it)."""

    def wants(self, site: Site, ctx: CallContext) -> bool:
        """Whether this client acts on ``site`` during the current call."""
        return False

    def on_run_start(self, run: RunInfo) -> None: ...

    def on_steps_known(self, run: RunInfo) -> None: ...

    def on_call(self, ctx: CallContext) -> None: ...

    def on_run_end(self, run: RunInfo, ok: bool) -> None: ...

    def release(self) -> None:
        """Undo what ``bind`` installed (called when the client leaves, also after errors)."""

    def spec(self) -> dict[str, Any] | None:
        """JSON-able description written into the provenance of recorded runs (edits only)."""
        return None


@runtime_checkable
class BiasClient(Protocol):
    """Acts on the logits ``[rows, heads, F, F]`` (or a block of rows of one head)."""

    def bias(self, site: Site, ctx: CallContext, logits: torch.Tensor) -> torch.Tensor: ...

    def row_local(self, ctx: CallContext) -> bool:
        """Whether each ``F x F`` map is changed from itself alone, on every batch item (the
        processor may then run it block by block)."""
        ...

    def halves(self, ctx: CallContext) -> list[int] | None:
        """Batch halves (indices into ``ctx.halves()``) it acts on; None: all."""
        ...

    def logit_prior(self, site: Site, ctx: CallContext) -> LogitPrior | None:
        """The bias as a :class:`LogitPrior`, or None when it is not of that form."""
        ...


@runtime_checkable
class ReplaceClient(Protocol):
    """Acts on the probabilities ``[rows, heads, F, F]`` (or a block of rows of one head)."""

    def replace(self, site: Site, ctx: CallContext, probs: torch.Tensor) -> torch.Tensor: ...

    def row_local(self, ctx: CallContext) -> bool: ...

    def halves(self, ctx: CallContext) -> list[int] | None: ...

    def target(self, ctx: CallContext) -> Target | None:
        """The probabilities it sets, the same for every row and head of the halves it acts
        on; None when they depend on the input."""
        ...


class Observer(Client):
    """Base of clients that read the maps (recorders, hook routing)."""

    stage: ClassVar[Stage | str] = Stage.OBSERVE
    #: whether it reads the logits (False spares the processor a copy of them)
    logits: bool = True
    #: whether the hook points must fire (forces the whole-tensor path)
    hook_points: bool = False

    def observe(
        self,
        site: Site,
        ctx: CallContext,
        logits: torch.Tensor | None,
        probs: torch.Tensor,
        text_mass: torch.Tensor | None = None,
    ) -> None:
        """One layer call's maps ``[B*h*w, heads, F, F]`` (``text_mass``, joint attention with
        text tokens: ``[B*h*w, heads, F, 1]``)."""

    def sums_only(self, site: Site, ctx: CallContext) -> bool:
        """Whether :meth:`observe_sums` suffices (the maps summed over spatial positions)."""
        return False

    def observe_sums(
        self,
        site: Site,
        ctx: CallContext,
        logits: torch.Tensor | None,
        probs: torch.Tensor,
        positions: int,
    ) -> None:
        """``[batch, heads, F, F]`` sums over ``positions`` rows each (when ``sums_only``)."""
        raise NotImplementedError(f"{type(self).__name__} does not take position sums")


@dataclass
class Plan:
    """Which clients act on one site during one call, by stage."""

    bias: list[BiasClient] = field(default_factory=list)
    replace: list[ReplaceClient] = field(default_factory=list)
    observe: list[Observer] = field(default_factory=list)

    def add(self, client: Client) -> None:
        """File ``client`` under its stage (checked against the stage's protocol)."""
        stage = Stage(client.stage)
        name = type(client).__name__
        if stage is Stage.BIAS:
            if not isinstance(client, BiasClient):
                raise TypeError(f"{name} says stage 'bias' but lacks the BiasClient methods")
            self.bias.append(client)
        elif stage is Stage.REPLACE:
            if not isinstance(client, ReplaceClient):
                raise TypeError(f"{name} says stage 'replace' but lacks the ReplaceClient methods")
            self.replace.append(client)
        elif stage is Stage.OBSERVE:
            if not isinstance(client, Observer):
                raise TypeError(f"{name} says stage 'observe' but is not an attnlab Observer")
            self.observe.append(client)
        else:
            raise ValueError(f"{name} acts at stage {stage.value!r}, not on attention maps")


def split_batch(x: torch.Tensor, ctx: CallContext, site: Site) -> torch.Tensor:
    """View ``[B*h*w, heads, F, F]`` as ``[halves, n, h*w, heads, F, F]`` (batch is [uncond, cond])."""
    halves = len(ctx.halves())
    return x.view(halves, ctx.batch // halves, -1, *x.shape[1:])


class ProcessorHost(Protocol):
    """What a processor reads from whoever installed it: the
    :class:`~attnlab.core.control.Controller`, or a stand-in in tests and benchmarks."""

    @property
    def table(self) -> SiteTable:
        """The site table of the denoiser."""
        ...

    @property
    def ctx(self) -> CallContext | None:
        """The current denoiser call (None outside one)."""
        ...

    def plan(self, name: str) -> Plan | None:
        """The clients acting on site ``name`` in the current call (None: fast path)."""
        ...

    def check_rows(self, site: Site, rows: int, frames: int) -> CallContext:
        """The current call, after checking a layer call's shape against the site table."""
        ...
