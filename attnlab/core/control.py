"""The controller: installs attnlab's processors on a denoiser while clients are active.

One :class:`Controller` per denoiser module, shared by every active recorder and edit (they
nest in any combination). It swaps :class:`~attnlab.core.processor.TemporalAttnProcessor` onto
the temporal sites only (joint-attention models: :class:`~attnlab.core.joint.JointAttnProcessor`),
attaches the ``hook_logits`` / ``hook_probs`` hook points, tracks runs and calls (its base,
:class:`~attnlab.core.runs.RunTracker`) and says which clients act on each site in each call.
Everything is undone when the last client leaves, also after an exception.

* :class:`Controller` - ``of``, ``attached``, ``run``, ``plan``, ``check_rows``;
* :func:`active_patches` - attnlab's patches in place now, each with a description;
* :func:`is_instrumented` - whether attnlab has patched a pipeline or denoiser right now.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from attnlab.core.joint import JointAttnProcessor
from attnlab.core.patch import ChildModulePatch, Patch, ProcessorPatch
from attnlab.core.processor import HOOK_NAMES, HookPoint, TemporalAttnProcessor
from attnlab.core.protocol import CallContext, Client, Plan
from attnlab.core.refusals import check_recordable
from attnlab.core.runs import RunTracker
from attnlab.core.sites import Site, denoiser_of, sites

# the controller of each instrumented denoiser (only while clients are attached)
_controllers: weakref.WeakKeyDictionary[torch.nn.Module, Controller] = weakref.WeakKeyDictionary()


def active_patches(obj: Any | None = None) -> list[Patch]:
    """attnlab's patches in place now: all of them, or those of ``obj``'s denoiser (``obj``: a
    pipeline or a denoiser). Each has a readable ``description``."""
    if obj is None:
        return [p for ctrl in list(_controllers.values()) for p in ctrl.patches]
    try:
        model = denoiser_of(obj)
    except TypeError:
        return []
    ctrl = _controllers.get(model)
    return list(ctrl.patches) if ctrl is not None else []


def is_instrumented(obj: Any) -> bool:
    """Whether attnlab has patched ``obj`` (a pipeline or denoiser) right now: a recorder, edit
    or hook context is active on it. Outside every context this is False and the model is
    exactly as it was."""
    try:
        model = denoiser_of(obj)
    except TypeError:
        return False
    ctrl = _controllers.get(model)
    return bool(ctrl is not None and (ctrl.clients or len(ctrl.patches)))


class Controller(RunTracker):
    """Owns attnlab's instrumentation of one denoiser; see the module docstring."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, sites(model))
        self._plans: dict[str, Plan | None] = {}

    # ---- attaching -----------------------------------------------------------------------
    @classmethod
    def of(cls, obj: Any) -> Controller:
        """The controller of ``obj``'s denoiser (one per denoiser, shared by its pipelines)."""
        model = denoiser_of(obj)
        ctrl = _controllers.get(model)
        if ctrl is None:
            ctrl = _controllers[model] = cls(model)
        check_recordable(obj, model, joint=ctrl.table.joint)
        if obj is not model:
            ctrl.add_pipeline(obj)
        return ctrl

    @contextlib.contextmanager
    def attached(self, client: Client) -> Iterator[Client]:
        """Attach ``client`` for the duration of the block; install/uninstall as needed."""
        if getattr(client, "_attnlab_attached", False):
            raise ValueError(
                f"this {type(client).__name__} is already active in another attnlab context; "
                "use a separate instance for each context"
            )
        client.bind(self)
        if not self.clients:
            self._install()
        client._attnlab_attached = True  # type: ignore[attr-defined]
        self.clients.append(client)
        self._plans.clear()
        ok = False
        try:
            yield client
            ok = True
        finally:
            try:
                if self.run_info is not None and self.run_info.implicit:
                    # bare denoiser calls without a delimited run: the outermost block is the
                    # run; a client leaving earlier (an edit around some calls, the inner of
                    # two recorders) ends its own part, the others' run goes on
                    if all(c is client for c in self.clients):
                        self.end_run(ok=ok)
                    else:
                        client.on_run_end(self.run_info, ok)
            finally:
                self.clients = [c for c in self.clients if c is not client]
                client._attnlab_attached = False  # type: ignore[attr-defined]
                self._plans.clear()
                try:
                    client.release()
                finally:
                    if not self.clients:
                        self._uninstall()

    def _install(self) -> None:
        patches = self.patches
        modules = dict(self.model.named_modules())
        # full-3D attention models get their family's joint processor (and no hook points)
        joint = self.table.joint
        family = self.table.family
        for site in self.table:
            attn = modules[site.name]
            proc: TemporalAttnProcessor | JointAttnProcessor
            if joint:
                proc = JointAttnProcessor(self, site, attn.processor)
            else:
                terms = family.position_terms(attn) if family.position_terms else None
                proc = TemporalAttnProcessor(self, site, attn.processor, terms)
            patches.apply(ProcessorPatch(attn, proc, f"{site.name}.processor"))
            for hook_name in HOOK_NAMES if not joint else ():
                if not hasattr(attn, hook_name):
                    point = HookPoint(f"{site.name}.{hook_name}")
                    patches.apply(
                        ChildModulePatch(attn, hook_name, point, f"{site.name}.{hook_name}")
                    )
        self._track_runs()

    def _uninstall(self) -> None:
        errors = self.patches.restore_all()
        self._untrack_runs()
        # nothing of attnlab stays on the model: let model and pipelines be garbage-collected
        _controllers.pop(self.model, None)
        if errors:
            raise RuntimeError(f"attnlab could not fully restore the model: {errors}")

    # ---- calls ---------------------------------------------------------------------------
    def _new_call(self, ctx: CallContext) -> None:
        self._plans.clear()
        super()._new_call(ctx)

    def plan(self, name: str) -> Plan | None:
        """The clients acting on site ``name`` in the current call (None: fast path)."""
        try:
            return self._plans[name]
        except KeyError:
            pass
        ctx = self.ctx
        plan = None
        if ctx is not None:
            site = self.table.get(name)
            wanted = [c for c in self.clients if c.wants(site, ctx)]
            if wanted:
                plan = Plan()
                for c in wanted:
                    plan.add(c)
        self._plans[name] = plan
        return plan

    def check_rows(self, site: Site, rows: int, frames: int) -> CallContext:
        """Check the run-time shape against the site table: the rows are ``batch * h * w`` of
        the site's own level (levels of a small latent can share a size, e.g. two 1 x 1 levels
        of a 4 x 4 latent, so the level is checked by its size, not looked up from it)."""
        ctx = self.ctx
        if ctx is None:
            raise RuntimeError(f"{site.name} called outside a denoiser forward")
        h, w = self.table.level_size(site.level, ctx.latent)
        if rows != ctx.batch * h * w or frames != ctx.frames:
            level = self.table.level_from_rows(rows, ctx.batch, ctx.latent)
            raise RuntimeError(
                f"{site.name}: run-time shape ({rows} rows, {frames} frames) does not match level "
                f"{site.level} of the site table for batch {ctx.batch}, latent {ctx.latent}, "
                f"{ctx.frames} frames (shape says level {level})"
            )
        return ctx
