"""The context managers of the public API: ``record``, ``edit`` and ``hooks``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from attnlab.core.control import Controller
from attnlab.core.protocol import CallContext, Client, Observer
from attnlab.core.recording import Recorder
from attnlab.core.selection import Layers, Steps
from attnlab.core.sites import Site


@contextlib.contextmanager
def record(
    pipe: Any,
    *,
    levels: int | list[int] | None = None,
    blocks: str | list[str] | None = None,
    names: str | list[str] | None = None,
    steps: Any = None,
    cfg: str = "both",
    reduce: str = "mean",
    grid: tuple[int, int] = (4, 4),
    logits: bool = False,
    store: str | os.PathLike | None = None,
    name: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Iterator[Recorder]:
    """Record temporal attention of every run of ``pipe`` (pipeline or denoiser) in the block.

    Layers are chosen by ``levels`` (0 = full latent resolution), ``blocks`` ("in", "down",
    "mid", "up") and ``names`` (regexes on module paths); ``steps`` by sampler-step index
    (int, list, range or slice; None = all); ``cfg`` by batch half ("both", "cond", "uncond").
    ``reduce`` is "mean" (over space and heads), "head" or "spatial" (a ``grid`` of positions).
    ``logits=True`` also records ``q k^T / sqrt(d)`` before any edit. With ``store=path`` each
    step is streamed to that zarr store and not kept in memory.
    """
    recorder = Recorder(
        layers=Layers.make(levels, blocks, names),
        steps=Steps.make(steps),
        cfg=cfg,
        reduce=reduce,
        grid=grid,
        logits=logits,
        store=store,
        name=name,
        meta=meta,
    )
    with Controller.of(pipe).attached(recorder):
        yield recorder


@contextlib.contextmanager
def edit(pipe: Any, *edits: Client) -> Iterator[tuple[Client, ...]]:
    """Apply edits to every run of ``pipe`` inside the block; restore the model on exit.

    Order: bias edits (e.g. TAR, Transfer) act on logits before the softmax, in the order
    given; replacement edits (e.g. Replace) act on probabilities after it, in the order given
    (a later replacement sees the earlier one's output).
    """
    if not edits:
        raise ValueError("attnlab.edit needs at least one edit (e.g. attnlab.TAR())")
    controller = Controller.of(pipe)
    with contextlib.ExitStack() as stack:
        for e in edits:
            if not isinstance(e, Client):
                raise TypeError(f"not an attnlab edit: {e!r}")
            stack.enter_context(controller.attached(e))
        yield edits


class _Explicit(Observer):
    """Routes every temporal layer through the whole-tensor explicit path, so the hook points
    fire whatever the grad mode and whoever intercepts them (torch hooks, nnsight)."""

    hook_points = True

    def wants(self, site: Site, ctx: CallContext) -> bool:
        return True


@contextlib.contextmanager
def hooks(pipe: Any) -> Iterator[Controller]:
    """Attach ``hook_logits``/``hook_probs`` to every temporal layer and keep them firing.

    Inside the block, torch hooks or an nnsight trace (create ``NNsight(pipe.unet)`` inside
    it) can read and set ``<layer>.hook_logits`` and ``<layer>.hook_probs``.
    """
    controller = Controller.of(pipe)
    with controller.attached(_Explicit()):
        yield controller
