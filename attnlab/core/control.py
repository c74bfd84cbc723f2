"""The controller: installs attnlab's processors on a denoiser while clients are active.

One :class:`Controller` per denoiser module, shared by every active recorder and edit (they
nest in any combination). A pipeline with several denoisers (Wan 2.2 A14B's ``transformer``
and ``transformer_2``) has one controller, of its first one, that instruments all of them:
their calls are the steps of one run, each labelled with its ``expert``. It swaps
:class:`~attnlab.core.processor.TemporalAttnProcessor` onto
the temporal sites only (joint-attention models: :class:`~attnlab.core.joint.JointAttnProcessor`),
attaches the ``hook_logits`` / ``hook_probs`` hook points, tracks runs and calls (its base,
:class:`~attnlab.core.runs.RunTracker`) and says which clients act on each site in each call.
Everything is undone when the last client leaves, also after an exception. A denoiser compiled
with ``torch.compile`` (its wrapper) or in place (``Module.compile``) runs eagerly meanwhile:
its compiled graph was traced through the model's own processors.

* :class:`Controller` - ``of``, ``attached``, ``run``, ``plan``, ``check_rows``;
* :func:`active_patches` - attnlab's patches in place now, each with a description;
* :func:`is_instrumented` - whether attnlab has patched a pipeline or denoiser right now.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from attnlab.core.denoisers import compiled_wrappers, denoiser_of, denoisers_of
from attnlab.core.joint import JOINT_HOOK_NAMES, JointAttnProcessor
from attnlab.core.patch import (
    AttributePatch,
    CallbackPatch,
    ChildModulePatch,
    Patch,
    ProcessorPatch,
    SkipRegistryPatch,
)
from attnlab.core.processor import HOOK_NAMES, HookPoint, TemporalAttnProcessor
from attnlab.core.protocol import CallContext, Client, Plan, Stage
from attnlab.core.refusals import (
    UnsupportedConfigurationError,
    check_hidden_layers,
    check_recordable,
)
from attnlab.core.runs import RunTracker
from attnlab.core.sites import Site, sites

# the controller of each instrumented denoiser (only while clients are attached)
_controllers: weakref.WeakKeyDictionary[torch.nn.Module, Controller] = weakref.WeakKeyDictionary()
# the controller whose patches are on each denoiser now (a pipeline's second expert included)
_owners: weakref.WeakKeyDictionary[torch.nn.Module, Controller] = weakref.WeakKeyDictionary()


def _controller_of(obj: Any) -> Controller | None:
    try:
        model = denoiser_of(obj)
    except TypeError:
        return None
    return _owners.get(model) or _controllers.get(model)


def active_patches(obj: Any | None = None) -> list[Patch]:
    """attnlab's patches in place now: all of them, or those of ``obj``'s denoiser (``obj``: a
    pipeline or a denoiser). Each has a readable ``description``."""
    if obj is None:
        return [p for ctrl in list(_controllers.values()) for p in ctrl.patches]
    ctrl = _controller_of(obj)
    return list(ctrl.patches) if ctrl is not None else []


def is_instrumented(obj: Any) -> bool:
    """Whether attnlab has patched ``obj`` (a pipeline or denoiser) right now: a recorder, edit
    or hook context is active on it (a pipeline's second expert is instrumented with the
    pipeline). Outside every context this is False and the model is exactly as it was."""
    ctrl = _controller_of(obj)
    return bool(ctrl is not None and (ctrl.clients or len(ctrl.patches)))


def free_noise_blocks(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    """Site name -> the ``FreeNoiseTransformerBlock`` holding it, for the sites of ``names``
    that AnimateDiff's FreeNoise (``pipe.enable_free_noise``) runs on windows of frames."""
    from diffusers.models.attention import FreeNoiseTransformerBlock

    modules = dict(model.named_modules())
    found: dict[str, torch.nn.Module] = {}
    for name in names:
        block = modules.get(name.rpartition(".")[0])
        if isinstance(block, FreeNoiseTransformerBlock):
            found[name] = block
    return found


class _WindowWatch:
    """Which window of frames a FreeNoise block attends in its current attention calls.

    FreeNoise's block runs its attention layers once per window on
    ``hidden_states[:, start:end]``, normalised by the block's ``norm1`` first: the window's
    first frame is that slice's offset in the block's input (read from the tensors the block
    passes, by a forward pre-hook on the block and one on ``norm1``)."""

    def __init__(self, block: Any):
        self.block = block
        self.input: torch.Tensor | None = None
        self.start: int | None = None
        self.length: int | None = None

    def on_block(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        self.input = args[0] if args else kwargs.get("hidden_states")
        self.start = self.length = None

    def on_norm(self, module: Any, args: tuple) -> None:
        x, base = args[0], self.input
        self.start = self.length = None
        if (
            base is None
            or x.ndim != 3
            or base.ndim != 3
            or x.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
            or x.stride() != base.stride()
            or x.shape[0] != base.shape[0]
            or x.shape[2] != base.shape[2]
        ):
            return  # not a window of the block's input
        start, rest = divmod(x.storage_offset() - base.storage_offset(), base.stride(1))
        if rest == 0 and start >= 0 and start + x.shape[1] <= base.shape[1]:
            self.start, self.length = start, x.shape[1]


class Controller(RunTracker):
    """Owns attnlab's instrumentation of one denoiser; see the module docstring."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, sites(model))
        self._plans: dict[str, Plan | None] = {}
        # (attention module, attnlab's processor on it, site name) for every site installed
        self._processors: list[tuple[Any, Any, str]] = []
        # sites that AnimateDiff's FreeNoise runs on windows of frames (while installed)
        self._windows: dict[str, _WindowWatch] = {}
        # torch.compile wrappers (OptimizedModule) around the denoisers, seen in ``of``
        self._compiled: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()

    # ---- attaching -----------------------------------------------------------------------
    @classmethod
    def of(cls, obj: Any) -> Controller:
        """The controller of ``obj``'s denoiser (one per denoiser, shared by its pipelines);
        a pipeline's other denoisers (experts) are instrumented by the same controller."""
        model = denoiser_of(obj)
        owner = _owners.get(model)
        if owner is not None and owner.model is not model:
            raise UnsupportedConfigurationError(
                f"{type(model).__name__} ({owner.expert_name(model)!r}) is instrumented now as "
                f"an expert of the pipeline of {type(owner.model).__name__}: record the pipeline "
                "(each step says its expert) or this denoiser outside that block, not both at once"
            )
        check_hidden_layers(obj)  # before the site table, which would miss those layers
        ctrl = _controllers.get(model)
        if ctrl is None:
            ctrl = _controllers[model] = cls(model)
        check_recordable(obj, model, joint=ctrl.table.joint)
        if not isinstance(obj, torch.nn.Module):  # a pipeline
            for key, other in denoisers_of(obj).items():
                if other is not model:
                    ctrl.add_denoiser(other, key)
            ctrl.add_pipeline(obj)
        for wrapper in compiled_wrappers(obj):
            ctrl.add_compiled(wrapper)
        return ctrl

    def add_compiled(self, wrapper: torch.nn.Module) -> None:
        """``wrapper``: a ``torch.compile`` wrapper (``OptimizedModule``) around a denoiser of
        this controller; while installed it runs its module eagerly (now, if installed)."""
        if wrapper in self._compiled:
            return
        self._compiled.add(wrapper)
        if self.clients:
            self._run_eagerly(wrapper)

    def _run_eagerly(self, wrapper: Any) -> None:
        """The compiled graph of a ``torch.compile`` wrapper was traced through the model's
        own processors: while attnlab's stand in for them, the wrapper calls its module
        eagerly (attnlab's processors and hooks run as Python, the maps are the module's own
        computation); its compiled ``forward`` is restored with every other patch."""
        inner = wrapper._orig_mod
        self.patches.apply(
            AttributePatch(
                wrapper,
                "forward",
                inner.__call__,
                f"torch.compile wrapper of {type(inner).__name__}: forward runs it eagerly",
            )
        )

    def add_denoiser(self, model: torch.nn.Module, component: str) -> None:
        """Instrument ``model``, another denoiser of a pipeline of this one (an expert with the
        same site table, checked by :func:`~attnlab.core.refusals.check_recordable`): its
        calls are steps of the same runs (now, if installed)."""
        if any(model is m for m in self.denoisers):
            return
        self._check_owner(model, component)
        self.denoisers.append(model)
        if self.clients:  # installed already: instrument it now
            self._install_denoiser(model)
            self._track_denoiser(model)

    @contextlib.contextmanager
    def attached(self, client: Client) -> Iterator[Client]:
        """Attach ``client`` for the duration of the block; install/uninstall as needed."""
        if getattr(client, "_attnlab_attached", False):
            raise ValueError(
                f"this {type(client).__name__} is already active in another attnlab context; "
                "use a separate instance for each context"
            )
        if Stage(client.stage) is not Stage.OBSERVE and free_noise_blocks(
            self.model, self.table.names
        ):
            raise UnsupportedConfigurationError(
                f"{type(client).__name__} edits attention, and the pipeline runs temporal "
                "attention on windows of frames (AnimateDiff's FreeNoise, enable_free_noise): "
                "attnlab records under FreeNoise but does not edit under it; call "
                "pipe.disable_free_noise() for the edited runs"
            )
        if Stage(client.stage) is Stage.CONTEXT and len(self.denoisers) > 1:
            raise UnsupportedConfigurationError(
                f"{type(client).__name__} acts on the conditioning of one denoiser, and this "
                f"pipeline has {len(self.denoisers)} ({', '.join(self.expert_names())}); use it "
                "with a pipeline of one denoiser"
            )
        client.bind(self)
        if not self.clients:
            try:
                self._install()
            except BaseException:
                client.release()
                raise
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

    def _check_owner(self, model: Any, component: str) -> None:
        """Refuse a denoiser that another attnlab block instruments on its own."""
        owner = _owners.get(model)
        if owner is not None and owner is not self:
            raise UnsupportedConfigurationError(
                f"{component!r} ({type(model).__name__}) is instrumented now by another attnlab "
                "block on that denoiser alone: record the pipeline (each step says its expert) "
                "or the denoiser alone, not both at once"
            )

    def _install(self) -> None:
        for model in self.denoisers:
            self._check_owner(model, self.expert_name(model))
        try:
            # diffusers' layer skip (guiders apply it per pass) finds attnlab's processors
            processor = JointAttnProcessor if self.table.joint else TemporalAttnProcessor
            self.patches.apply(SkipRegistryPatch(processor))
            for model in self.denoisers:
                self._install_denoiser(model)
            for wrapper in list(self._compiled):
                self._run_eagerly(wrapper)
            self._track_runs()
        except BaseException:
            self._uninstall()
            raise

    def _install_denoiser(self, model: torch.nn.Module) -> None:
        """attnlab's processors (and hook points) on every site of one denoiser."""
        _owners[model] = self
        patches = self.patches
        modules = dict(model.named_modules())
        of = "" if model is self.model else f"{self.expert_name(model)}: "
        # full-3D attention models get their family's joint processor (and its hook point)
        joint = self.table.joint
        family = self.table.family
        windowed = free_noise_blocks(model, self.table.names)
        for name, module in modules.items():
            if vars(module).get("_compiled_call_impl") is not None:
                # compiled in place (Module.compile, diffusers' regional compilation): its graph
                # was traced through the model's own processors; eager while attnlab's stand in
                where = f"{of}{name or type(model).__name__}"
                patches.apply(
                    AttributePatch(
                        module,
                        "_compiled_call_impl",
                        None,
                        f"{where} compiled in place (Module.compile): runs eagerly",
                    )
                )
        for site in self.table:
            attn = modules[site.name]
            proc: TemporalAttnProcessor | JointAttnProcessor
            if joint:
                proc = JointAttnProcessor(self, site, attn.processor)
            else:
                terms = family.position_terms(attn) if family.position_terms else None
                proc = TemporalAttnProcessor(self, site, attn.processor, terms)
            patches.apply(ProcessorPatch(attn, proc, f"{of}{site.name}.processor"))
            self._processors.append((attn, proc, site.name))
            block = windowed.get(site.name)
            if block is not None:
                self._watch_windows(site.name, block, of)
            for hook_name in JOINT_HOOK_NAMES if joint else HOOK_NAMES:
                if not hasattr(attn, hook_name):
                    point = HookPoint(f"{site.name}.{hook_name}")
                    patches.apply(
                        ChildModulePatch(attn, hook_name, point, f"{of}{site.name}.{hook_name}")
                    )

    def _watch_windows(self, name: str, block: Any, of: str) -> None:
        """Follow the windows of the FreeNoise block holding site ``name`` (one watch per
        block, shared by its attention layers)."""
        watch = next((w for w in self._windows.values() if w.block is block), None)
        if watch is None:
            watch = _WindowWatch(block)
            where = f"{of}{name.rpartition('.')[0]}"
            self.patches.apply(
                CallbackPatch(
                    block,
                    lambda: (
                        block.register_forward_pre_hook(watch.on_block, with_kwargs=True).remove
                    ),
                    f"{where} forward pre-hook (FreeNoise windows)",
                )
            )
            self.patches.apply(
                CallbackPatch(
                    block,
                    lambda: block.norm1.register_forward_pre_hook(watch.on_norm).remove,
                    f"{where}.norm1 forward pre-hook (FreeNoise windows)",
                )
            )
        self._windows[name] = watch

    def _attended_frames(self, frames: int) -> int:
        """FreeNoise runs every temporal layer on windows: the frame limit applies to those."""
        if self._windows and len(self._windows) == len(self.table):
            return min(frames, max(int(w.block.context_length) for w in self._windows.values()))
        return frames

    def _uninstall(self) -> None:
        errors = self.patches.restore_all()
        self._windows.clear()
        self._processors.clear()
        self._untrack_runs()
        # nothing of attnlab stays on the model: let model and pipelines be garbage-collected
        _controllers.pop(self.model, None)
        for model in self.denoisers:
            if _owners.get(model) is self:
                del _owners[model]
        if errors:
            raise RuntimeError(f"attnlab could not fully restore the model: {errors}")

    # ---- calls ---------------------------------------------------------------------------
    def _new_call(self, ctx: CallContext) -> None:
        self._plans.clear()
        self._check_processors()
        super()._new_call(ctx)

    def _check_processors(self) -> None:
        """Refuse a call in which another processor stands where attnlab's was set (diffusers'
        perturbed-attention guidance swaps its own in for the call on ``pag_applied_layers``):
        that layer would be recorded as not run and edited for nothing."""
        for attn, proc, name in self._processors:
            now = getattr(attn, "processor", proc)
            if now is not proc:
                hint = (
                    " (perturbed-attention guidance on a temporal layer: pass pag_scale=0, or "
                    "pag_applied_layers that name no temporal attention)"
                    if "PAG" in type(now).__name__
                    else ""
                )
                raise UnsupportedConfigurationError(
                    f"{name}: its attention processor was replaced by {type(now).__name__} "
                    f"while attnlab was attached{hint}; attnlab records and edits through its own "
                    "processor only"
                )

    def _narrow_call(self, ctx: CallContext, half: str, batch: int) -> None:
        super()._narrow_call(ctx, half, batch)
        self._plans.clear()  # which clients act depends on the halves that run

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

    def _window_context(
        self, site: Site, ctx: CallContext, watch: _WindowWatch, rows: int, frames: int, hw: int
    ) -> CallContext:
        """The context of one windowed layer call: ``frames`` the window's, ``window`` its
        first frame."""
        if watch.start is None or watch.length != frames or watch.input is None:
            raise RuntimeError(
                f"{site.name}: FreeNoise ran this layer on {frames} frames, and attnlab could not "
                "tell which window of the block's input they are (the block normalises a slice "
                "of its input for each window); record without FreeNoise"
            )
        if rows != ctx.batch * hw or watch.input.shape[1] != ctx.frames:
            raise RuntimeError(
                f"{site.name}: run-time shape ({rows} rows, a window of {frames} of "
                f"{watch.input.shape[1]} frames) does not match level {site.level} of the site "
                f"table for batch {ctx.batch}, latent {ctx.latent}, {ctx.frames} frames"
            )
        window = copy.copy(ctx)
        window.frames = frames
        window.window = watch.start
        return window

    def check_rows(self, site: Site, rows: int, frames: int) -> CallContext:
        """Check the run-time shape against the site table: the rows are ``batch * h * w`` of
        the site's own level (levels of a small latent can share a size, e.g. two 1 x 1 levels
        of a 4 x 4 latent, so the level is checked by its size, not looked up from it)."""
        ctx = self.ctx
        if ctx is None:
            raise RuntimeError(f"{site.name} called outside a denoiser forward")
        h, w = self.table.level_size(site.level, ctx.latent)
        watch = self._windows.get(site.name)
        if watch is not None:
            return self._window_context(site, ctx, watch, rows, frames, h * w)
        if rows != ctx.batch * h * w or frames != ctx.frames:
            level = self.table.level_from_rows(rows, ctx.batch, ctx.latent)
            raise RuntimeError(
                f"{site.name}: run-time shape ({rows} rows, {frames} frames) does not match level "
                f"{site.level} of the site table for batch {ctx.batch}, latent {ctx.latent}, "
                f"{ctx.frames} frames (shape says level {level})"
            )
        return ctx
