"""Runs and calls: how a denoiser's calls are grouped into runs and counted as sampler steps.

:class:`RunTracker` is the base of the :class:`~attnlab.core.control.Controller`. While
installed, it

* delimits *runs* (one pipeline call, or an explicit :meth:`RunTracker.run` block) by wrapping
  the pipeline's ``__call__`` (through a per-instance subclass) and the scheduler's
  ``set_timesteps``, capturing prompt, seed, size, steps and guidance for provenance;
* counts denoiser calls (one per sampler step) with a forward pre-hook on every denoiser of
  the pipeline (Wan 2.2 A14B's ``transformer`` and ``transformer_2``: one step count across
  both), reading the timestep, batch, frame count, latent size and the denoiser (``expert``)
  of each call into a :class:`~attnlab.core.protocol.CallContext`;
* follows diffusers' ``cache_context("cond" / "uncond")`` on joint-attention models, for
  pipelines that run the CFG halves as separate denoiser calls; a guided pipeline that calls
  the denoiser once per half without it (``WanVideoToVideoPipeline``) has each call's half
  told by its text conditioning (the prompt's or the negative prompt's embeddings, as the
  pipeline's ``encode_prompt`` returned them), and the calls of one step paired by their
  timestep; where that cannot be told, one error says how to label the calls;
* follows guidance turned off mid-run (diffusers' ``callback_on_step_end`` that sets
  ``_guidance_scale = 0`` and keeps ``prompt_embeds.chunk(2)[-1]``): a call on half the batch
  of the run's earlier ``[uncond, cond]`` calls is the half whose text conditioning it carries.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from attnlab.core.denoisers import BARE_DENOISER, denoisers_of
from attnlab.core.patch import (
    AttributePatch,
    CallbackPatch,
    ClassPatch,
    InnerForwardPatch,
    Patches,
)
from attnlab.core.protocol import CallContext, Client, RunInfo
from attnlab.core.refusals import cache_techniques
from attnlab.core.sites import SiteTable
from attnlab.util.provenance import model_name

# call arguments kept as provenance when a pipeline call is captured
_CALL_KEYS = (
    "prompt",
    "negative_prompt",
    "num_frames",
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
    "guidance_scale_2",
    "min_guidance_scale",
    "max_guidance_scale",
    "eta",
    "fps",
    "num_videos_per_prompt",
    "strength",
)


class RunTracker:
    """Run and call tracking of one denoiser; see the module docstring."""

    def __init__(self, model: torch.nn.Module, table: SiteTable):
        self.model = model
        self.table = table
        # every denoiser whose calls are steps of the runs: the model first, then the other
        # experts of its pipelines (Wan 2.2 A14B's transformer_2), all with the model's table
        self.denoisers: list[torch.nn.Module] = [model]
        self._forward_sigs: dict[int, inspect.Signature] = {}
        self._expert_names: dict[int, str] = {}
        self.clients: list[Client] = []
        self.patches = Patches()
        self.run_info: RunInfo | None = None
        self.ctx: CallContext | None = None
        # every pipeline seen with this denoiser (pipelines can share one UNet), held weakly
        self._pipes: weakref.WeakSet[Any] = weakref.WeakSet()
        self._wrapped: set[int] = set()
        self._last_pipe: weakref.ref | None = None
        self._current_pipe: Any | None = None
        self._runs = 0
        self._in_pipe_call = False
        self._cache_name: str | None = None
        # separate-call guidance without cache_context: the text conditioning of each half, as
        # the pipeline's encode_prompt returned it (prompt, negative prompt), and the timestep
        # of the current step (the calls of one step share it)
        self._texts: tuple[Any, Any] | None = None
        self._step_timestep: float | None = None
        # the batch and text conditioning of this run's last call on the whole [uncond, cond]
        # batch: a later call on half of it (guidance turned off mid-run) is told by its text
        self._guided: tuple[int, Any] | None = None
        # the arguments of the current denoiser call as the pipeline passed them (before any
        # diffusers hook on the denoiser changed them)
        self._outer_args: dict[str, Any] | None = None

    @property
    def pipe(self) -> Any | None:
        """The pipeline whose call is running, else the one seen last (None: bare denoiser)."""
        if self._current_pipe is not None:
            return self._current_pipe
        return self._last_pipe() if self._last_pipe is not None else None

    def add_pipeline(self, pipe: Any) -> None:
        """Delimit the runs of ``pipe``, a pipeline of this denoiser (now, if installed)."""
        self._pipes.add(pipe)
        self._last_pipe = weakref.ref(pipe)
        if self.clients:  # already installed (through another pipeline or the bare denoiser)
            self._wrap_pipeline(pipe)

    # ---- installing ----------------------------------------------------------------------
    def _track_runs(self) -> None:
        """Install the step counter on every denoiser and wrap every pipeline seen (part of
        installing)."""
        for model in self.denoisers:
            self._track_denoiser(model)
        for pipe in list(self._pipes):
            self._wrap_pipeline(pipe)

    def _track_denoiser(self, model: torch.nn.Module) -> None:
        """The step counter (and ``cache_context`` tracking) on one denoiser."""
        name = type(model).__name__
        self.patches.apply(
            CallbackPatch(
                model,
                # first among the denoiser's pre-hooks: an edit's own pre-hook there (a RoPE
                # retune on the denoiser) decides from this call's step, not the previous one's
                lambda: (
                    model.register_forward_pre_hook(
                        self._pre_forward, with_kwargs=True, prepend=True
                    ).remove
                ),
                f"{name} forward pre-hook (step counter)"
                + (f" of {self.expert_name(model)}" if model is not self.model else ""),
            )
        )
        if self.table.joint and hasattr(model, "cache_context"):
            self._wrap_cache_context(model)
        # the class's forward: instance-level wrappers (nnsight leaves one) may change the signature
        self._forward_sigs[id(model)] = inspect.signature(type(model).forward)
        if getattr(getattr(model, "_diffusers_hook", None), "_fn_refs", None):
            # diffusers hooks on the denoiser itself (FasterCache runs only the conditional
            # half on some steps): see the arguments its own forward receives
            self.patches.apply(
                InnerForwardPatch(
                    model,
                    lambda original: self._inner_forward(model, original),
                    f"{name} forward inside its diffusers hooks (the batch that runs)",
                )
            )

    def _inner_forward(self, model: torch.nn.Module, original: Any) -> Any:
        tracker = self

        def forward(*args: Any, **kwargs: Any) -> Any:
            tracker._inner_call(model, args, kwargs)
            return original(*args, **kwargs)

        return forward

    def _inner_call(self, model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """The denoiser's own forward is about to run, after the diffusers hooks on it: when
        they changed the batch (FasterCache's unconditional-batch skip passes only the
        conditional half), the call's context says which half runs."""
        ctx, outer = self.ctx, self._outer_args
        if ctx is None or outer is None:
            return
        bound = self._forward_sigs[id(model)].bind_partial(model, *args, **kwargs).arguments
        bound.pop(next(iter(bound)))  # self
        batch = int(self.table.call_dims(next(iter(bound.values())), bound)["B"])
        if batch == ctx.batch:
            return
        half = None
        text, whole = bound.get("encoder_hidden_states"), outer.get("encoder_hidden_states")
        if (
            ctx.half is None
            and ctx.cfg
            and 2 * batch == ctx.batch
            and torch.is_tensor(text)
            and torch.is_tensor(whole)
        ):
            found = [h for h, part in zip(("uncond", "cond"), whole.chunk(2)) if _same(text, part)]
            half = found[0] if len(found) == 1 else None
        if half is None:
            hooks = sorted(getattr(model._diffusers_hook, "hooks", {}))
            raise RuntimeError(
                f"{type(model).__name__}: a diffusers hook on the denoiser ({', '.join(hooks)}) "
                f"ran its forward on batch {batch} of the call's {ctx.batch}, and attnlab cannot "
                "tell which samples those are (one guidance half of a [uncond, cond] batch, told "
                "by its text conditioning, is what attnlab follows); record without that hook"
            )
        self._narrow_call(ctx, half, batch)

    def _attended_frames(self, frames: int) -> int:
        """How many frames the temporal attention of a call of ``frames`` frames attends."""
        return frames

    def _narrow_call(self, ctx: CallContext, half: str, batch: int) -> None:
        """The current call runs only guidance half ``half`` (``batch`` samples)."""
        ctx.half = half
        ctx.batch = batch

    def _untrack_runs(self) -> None:
        """Forget the run state (after the patches are restored)."""
        self._cache_name = None
        self._texts = None
        self._step_timestep = None
        self._guided = None
        self._outer_args = None
        self.run_info = None
        self.ctx = None
        self._wrapped.clear()
        self._forward_sigs.clear()

    def expert_name(self, model: torch.nn.Module) -> str:
        """The component name of denoiser ``model`` in the running pipeline (else in the
        pipelines seen; ``"denoiser"`` for a bare denoiser): the ``expert`` of its steps."""
        for pipe in (self.pipe, *self._pipes):
            if pipe is not None:
                for key, value in denoisers_of(pipe).items():
                    if value is model:
                        return key
        return BARE_DENOISER

    def expert_names(self) -> list[str]:
        """The ``expert`` names of this run's denoisers, in order (each once)."""
        return list(dict.fromkeys(self.expert_name(m) for m in self.denoisers))

    def _wrap_cache_context(self, model: torch.nn.Module) -> None:
        """Track diffusers' ``cache_context(name)``: pipelines that run the CFG halves as
        separate denoiser calls (Wan) name them "cond" / "uncond" there."""
        original: Any = model.cache_context
        tracker = self

        @contextlib.contextmanager
        def cache_context(name: str, *args: Any, **kwargs: Any):
            previous = tracker._cache_name
            tracker._cache_name = name
            try:
                with original(name, *args, **kwargs):
                    yield
            finally:
                tracker._cache_name = previous

        self.patches.apply(
            AttributePatch(
                model, "cache_context", cache_context, f"{type(model).__name__}.cache_context"
            )
        )

    def _wrap_pipeline(self, pipe: Any) -> None:
        if id(pipe) in self._wrapped:
            return
        self._wrapped.add(id(pipe))
        original_cls = type(pipe)
        call = original_cls.__call__
        signature = inspect.signature(call)
        tracker = self

        def __call__(self_, *args, **kwargs):
            if tracker._in_pipe_call:  # a pipeline calling itself: one run
                return call(self_, *args, **kwargs)
            bound = signature.bind(self_, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            for name, param in signature.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD:  # a subclass's **kwargs
                    arguments.update(arguments.pop(name, None) or {})
            meta = tracker._call_meta(self_, arguments)
            tracker._in_pipe_call = True
            tracker._current_pipe = self_
            try:
                with tracker.run(cfg=meta.pop("_cfg"), source="synthetic", meta=meta):
                    return call(self_, *args, **kwargs)
            finally:
                tracker._in_pipe_call = False
                tracker._current_pipe = None

        __call__.__signature__ = signature  # type: ignore[attr-defined]
        __call__.__doc__ = call.__doc__
        # Python looks ``__call__`` up on the type: a per-instance subclass delimits the runs
        wrapped = type(
            original_cls.__name__,
            (original_cls,),
            {"__call__": __call__, "__module__": original_cls.__module__},
        )
        wrapped.__qualname__ = original_cls.__qualname__
        self.patches.apply(ClassPatch(pipe, wrapped, f"{original_cls.__name__}.__call__ (runs)"))
        encode = getattr(pipe, "encode_prompt", None)
        if callable(encode):

            @functools.wraps(encode)
            def encode_prompt(*args, **kwargs):
                out = encode(*args, **kwargs)
                if tracker.run_info is None:
                    return out
                if tracker._texts is not None:  # prompt and negative prompt encoded apart
                    tracker._texts = (None, None)
                elif (
                    isinstance(out, tuple)
                    and len(out) >= 2
                    and all(t is None or torch.is_tensor(t) for t in out[:2])
                ):
                    tracker._texts = (out[0], out[1])  # (prompt, negative prompt) embeddings
                else:
                    tracker._texts = (None, None)
                return out

            self.patches.apply(
                AttributePatch(
                    pipe,
                    "encode_prompt",
                    encode_prompt,
                    f"{original_cls.__name__}.encode_prompt (guidance halves)",
                )
            )
        scheduler = getattr(pipe, "scheduler", None)
        if (
            scheduler is not None
            and hasattr(scheduler, "set_timesteps")
            and id(scheduler) not in self._wrapped
        ):
            self._wrapped.add(id(scheduler))  # pipelines may share one scheduler: wrap it once
            set_timesteps = scheduler.set_timesteps

            # keep the signature: pipelines inspect it (retrieve_timesteps checks for `sigmas`)
            @functools.wraps(set_timesteps)
            def wrapped_set_timesteps(*args, **kwargs):
                out = set_timesteps(*args, **kwargs)
                run = tracker.run_info
                if run is not None:
                    steps = [float(t) for t in scheduler.timesteps]
                    passes = _free_init_steps(tracker._current_pipe, scheduler, run.meta)
                    if passes is not None:  # AnimateDiff's FreeInit: every pass, known now
                        steps = passes
                    elif run.calls and run.timesteps is not None:
                        # the loop again within one call: one run, steps counted across
                        steps = [*run.timesteps, *steps]
                    if steps != run.timesteps:
                        tracker.steps_known(steps)
                return out

            self.patches.apply(
                AttributePatch(
                    scheduler,
                    "set_timesteps",
                    wrapped_set_timesteps,
                    f"{type(scheduler).__name__}.set_timesteps (step list)",
                )
            )
            if hasattr(scheduler, "set_begin_index"):
                set_begin_index = scheduler.set_begin_index

                # img2img / video-to-video with strength < 1: the pipeline skips the first
                # steps of the schedule (get_timesteps) and says where it begins here
                @functools.wraps(set_begin_index)
                def wrapped_set_begin_index(begin_index: int = 0, *args, **kwargs):
                    out = set_begin_index(begin_index, *args, **kwargs)
                    run = tracker.run_info
                    if run is not None and run.timesteps is not None and begin_index:
                        tracker.steps_known([float(t) for t in scheduler.timesteps[begin_index:]])
                    return out

                self.patches.apply(
                    AttributePatch(
                        scheduler,
                        "set_begin_index",
                        wrapped_set_begin_index,
                        f"{type(scheduler).__name__}.set_begin_index (the steps that run)",
                    )
                )

    def _call_meta(self, pipe: Any, args: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {k: _jsonable(args[k]) for k in _CALL_KEYS if k in args}
        generator = args.get("generator")
        if isinstance(generator, list) and generator:
            meta["seed"] = generator[0].initial_seed()  # one integer to group by
            meta["seeds"] = [g.initial_seed() for g in generator]
        elif isinstance(generator, torch.Generator):
            meta["seed"] = generator.initial_seed()
        else:  # torch's global random state: not reproducible from the store
            meta["seed"] = None
        meta["model"] = model_name(pipe)  # as the user named it
        meta["model_path"] = str(getattr(pipe, "name_or_path", None) or "")
        meta["pipeline"] = type(pipe).__name__
        meta["scheduler"] = type(getattr(pipe, "scheduler", None)).__name__
        config = getattr(pipe, "config", None)
        boundary = config.get("boundary_ratio") if isinstance(config, dict) else None
        if boundary is not None:  # Wan 2.2 A14B: where transformer_2 takes over
            meta["boundary_ratio"] = _jsonable(boundary)
        guidance = args.get("guidance_scale", args.get("max_guidance_scale"))
        meta["_cfg"] = bool(guidance is not None and guidance > 1.0)
        if (
            "true_cfg_scale" in args
        ):  # guidance-distilled (HunyuanVideo): guidance_scale is embedded
            negative = args.get("negative_prompt") or args.get("negative_prompt_embeds") is not None
            meta["_cfg"] = bool(args["true_cfg_scale"] > 1.0 and negative)
        return meta

    # ---- runs and calls ------------------------------------------------------------------
    @contextlib.contextmanager
    def run(
        self,
        *,
        cfg: bool = False,
        source: str = "synthetic",
        meta: dict[str, Any] | None = None,
        timesteps: list[float] | None = None,
    ) -> Iterator[RunInfo]:
        """Delimit one run of denoiser calls (pipeline calls do this automatically).

        ``cfg``: the batch is ``[uncond, cond]``. ``timesteps``: the steps this run will take,
        when known in advance (lets selections be validated before any work).
        """
        if self.run_info is not None:
            self.end_run(ok=True)
        info = self.begin_run(cfg=cfg, source=source, meta=meta)
        ok = False
        try:
            if timesteps is not None:
                self.steps_known([float(t) for t in timesteps])
            yield info
            ok = True
        finally:
            if self.run_info is info:
                self.end_run(ok=ok)

    def begin_run(
        self, *, cfg: bool = False, source: str = "synthetic", meta: dict[str, Any] | None = None
    ) -> RunInfo:
        info = RunInfo(index=self._runs, cfg=cfg, source=source, meta=dict(meta or {}))
        self._texts = None
        self._step_timestep = None
        self._guided = None
        self._expert_names = {id(m): self.expert_name(m) for m in self.denoisers}
        info.experts = self.expert_names()
        caches = {
            self._expert_names[id(m)]: cache_techniques(m)
            for m in self.denoisers
            if cache_techniques(m)
        }
        if caches:  # diffusers caching hooks: the gaps they leave are theirs (provenance)
            info.meta["caches"] = caches
        self._runs += 1
        self.run_info = info
        started = []
        try:
            for client in list(self.clients):
                client.on_run_start(info)
                started.append(client)
        except BaseException:
            # a client refused the run: the others end it unfinished, and no run is open
            self.run_info = None
            for client in started:
                with contextlib.suppress(Exception):
                    client.on_run_end(info, False)
            raise
        return info

    def steps_known(self, timesteps: list[float]) -> None:
        assert self.run_info is not None
        self.run_info.timesteps = timesteps
        for client in list(self.clients):
            client.on_steps_known(self.run_info)

    def end_run(self, ok: bool) -> None:
        info, self.run_info, self.ctx = self.run_info, None, None
        self._outer_args = None
        self._guided = None
        if info is None:
            return
        first_error = None
        for client in list(self.clients):
            try:
                client.on_run_end(info, ok)
            except Exception as err:
                first_error = first_error or err
        if first_error is not None and ok:
            raise first_error

    def _pre_forward(self, module, args, kwargs):
        bound = self._forward_sigs[id(module)].bind_partial(module, *args, **kwargs).arguments
        bound.pop(next(iter(bound)))  # self
        sample = next(iter(bound.values()))  # first argument: the noisy latents
        self._outer_args = bound
        dims = self.table.call_dims(sample, bound)
        # before diffusers' opaque size mismatch
        self.table.check_frames(self._attended_frames(int(dims["F"])))
        t = bound.get("timestep")
        timestep = None
        if t is not None:
            # a per-token timestep (Wan 2.2 TI2V's expand_timesteps gives the conditioning
            # frame's tokens 0) is recorded as its largest value: the noise level of the step
            timestep = float(t.max()) if torch.is_tensor(t) else float(t)
        if self.run_info is None:  # a bare denoiser call outside any delimited run
            self.begin_run(cfg=False, source="synthetic", meta={}).implicit = True
        run = self.run_info
        assert run is not None
        if run.calls == 0 and timestep is not None and run.timesteps:
            self._skip_to(run.timesteps, timestep)
        half = self._cache_name if self._cache_name in ("cond", "uncond") else None
        batch = int(dims["B"])
        if run.cfg and half is None:
            # guidance turned off mid-run (a callback_on_step_end keeping one half)
            half = self._half_after_guidance(bound, batch)
        if run.cfg and half is None and (batch % 2 or self._carries_one_half(bound)):
            # one guidance half per call, told by its text (an even batch too: several
            # videos per prompt)
            half = self._half_by_text(bound, batch)
        if run.cfg and half is None:  # the whole [uncond, cond] batch
            self._guided = (batch, bound.get("encoder_hidden_states"))
        if half is None:
            run.halves_seen = None
            step = run.calls
            run.calls += 1
        elif (
            run.halves_seen is None
            or half in run.halves_seen
            or timestep != self._step_timestep  # the halves of one step share its timestep
        ):  # first half of a new step
            run.halves_seen = {half}
            step = run.calls
            run.calls += 1
        else:  # the other half of the current step
            run.halves_seen.add(half)
            step = run.calls - 1
        self._step_timestep = timestep
        scheduler = getattr(self.pipe, "scheduler", None)
        config = getattr(scheduler, "config", None)
        horizon = getattr(config, "num_train_timesteps", None) or 1000
        continuous = getattr(config, "timestep_type", "discrete") == "continuous"
        self.ctx = CallContext(
            run=run,
            step=step,
            timestep=timestep,
            num_train_timesteps=int(horizon),
            batch=int(dims["B"]),
            frames=int(dims["F"]),
            latent=(int(dims["H"]), int(dims["W"])),
            continuous=continuous,
            half=half,
        )
        self.ctx.expert = self._expert_names.get(id(module)) or self.expert_name(module)
        self._new_call(self.ctx)

    def _skip_to(self, timesteps: list[float], first: float) -> None:
        """The run's first call is at a later step of the schedule: a pipeline that skips the
        first steps (video-to-video with strength < 1, ``get_timesteps``) without telling the
        scheduler (``set_begin_index``). The run's steps begin there."""
        if math.isclose(first, timesteps[0], rel_tol=1e-6, abs_tol=1e-6):
            return
        for k, t in enumerate(timesteps):
            if math.isclose(first, t, rel_tol=1e-6, abs_tol=1e-6):
                self.steps_known(timesteps[k:])
                return

    def _half_after_guidance(self, bound: dict[str, Any], batch: int) -> str | None:
        """The guidance half of a call on half the batch of this run's earlier calls on the
        whole ``[uncond, cond]`` batch: guidance turned off mid-run, as diffusers documents it
        (a ``callback_on_step_end`` that sets ``pipe._guidance_scale = 0`` and keeps
        ``prompt_embeds.chunk(2)[-1]``). The half is the one whose text conditioning (a half
        of the earlier calls' ``encoder_hidden_states``) the call carries; None: not such a
        call. Raises when the half cannot be told."""
        if self._guided is None or 2 * batch != self._guided[0]:
            return None
        whole, text = self._guided[1], bound.get("encoder_hidden_states")
        found = []
        if torch.is_tensor(whole) and torch.is_tensor(text) and whole.shape[0] % 2 == 0:
            found = [h for h, part in zip(("uncond", "cond"), whole.chunk(2)) if _same(text, part)]
        if len(found) == 1:
            return found[0]
        if found:  # both halves
            why = "the prompt and the negative prompt have the same embeddings"
            instead = "use a negative prompt whose embeddings differ from the prompt's"
        else:
            why = (
                "its encoder_hidden_states are neither half of the earlier calls' text conditioning"
            )
            instead = (
                "keep one half of prompt_embeds unchanged (prompt_embeds.chunk(2)[-1] is the "
                "conditional half)"
            )
        raise RuntimeError(
            f"classifier-free guidance stopped mid-run: the denoiser ran on batch {batch} after "
            f"calls on the [uncond, cond] batch of {2 * batch} (guidance turned off during the "
            "run, e.g. by a callback_on_step_end that sets pipe._guidance_scale = 0), and "
            f"attnlab cannot tell which half runs now ({why}); {instead}, or record with "
            "guidance_scale <= 1"
        )

    def _carries_one_half(self, bound: dict[str, Any]) -> bool:
        """The call's text conditioning is the prompt's or the negative prompt's embeddings
        alone, as the pipeline's ``encode_prompt`` returned them (not their [uncond, cond]
        concatenation)."""
        text = bound.get("encoder_hidden_states")
        texts = self._texts
        if self._current_pipe is None or texts is None or not torch.is_tensor(text):
            return False
        return any(t is not None and _same(text, t) for t in texts)

    def _half_by_text(self, bound: dict[str, Any], batch: int) -> str:
        """The guidance half of a call that carries one half without ``cache_context``
        (``WanVideoToVideoPipeline`` calls the denoiser once with the prompt's embeddings, once
        with the negative prompt's): the half whose text conditioning the call carries, as the
        pipeline's ``encode_prompt`` returned it. Raises when that cannot be told."""
        text = bound.get("encoder_hidden_states")
        why = None
        if self._current_pipe is None:
            why = "it is called outside a pipeline call: no prompt embeddings to tell it by"
        elif self._texts is None or self._texts[0] is None or self._texts[1] is None:
            why = (
                "the pipeline's encode_prompt did not return the prompt's and the negative "
                "prompt's embeddings in one call"
            )
        elif not torch.is_tensor(text):
            why = "the call has no encoder_hidden_states tensor"
        else:
            found = [name for name, t in zip(("cond", "uncond"), self._texts) if _same(text, t)]
            if len(found) == 1:
                return found[0]
            why = (
                "the prompt and the negative prompt have the same embeddings"
                if found
                else "its encoder_hidden_states are neither the prompt's nor the negative "
                "prompt's embeddings"
            )
        raise RuntimeError(
            f"classifier-free guidance run with batch {batch} per call: the denoiser is called "
            "once per guidance half without diffusers' cache_context, and attnlab cannot tell "
            f"which half this call is ({why}); label the calls: wrap each in "
            'denoiser.cache_context("cond") or denoiser.cache_context("uncond") (attnlab pairs '
            "the two calls of a step into one step with both halves), or record with "
            "guidance_scale <= 1"
        )

    def _new_call(self, ctx: CallContext) -> None:
        """Tell the clients about a new denoiser call (``self.ctx`` is already ``ctx``)."""
        for client in list(self.clients):
            client.on_call(ctx)


def _free_init_steps(pipe: Any, scheduler: Any, meta: dict[str, Any]) -> list[float] | None:
    """The timesteps of every denoiser call of a FreeInit pipeline call (``enable_free_init``:
    the sampling loop runs once per iteration, with ``use_fast_sampling`` over more steps each
    time, as ``FreeInitMixin._apply_free_init`` sets them): one run whose steps are counted
    across the passes. None without FreeInit."""
    if pipe is None or not getattr(pipe, "free_init_enabled", False):
        return None
    n = meta.get("num_inference_steps")
    if n is None:
        n = inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default
    iters = int(pipe._free_init_num_iters)
    fast = bool(pipe._free_init_use_fast_sampling)
    probe = copy.deepcopy(scheduler)
    steps: list[float] = []
    for i in range(iters):
        count = max(1, int(n / iters * (i + 1))) if fast else int(n)
        type(scheduler).set_timesteps(probe, count)
        steps += [float(t) for t in probe.timesteps]
    return steps


def _same(a: torch.Tensor, b: Any) -> bool:
    """Whether ``a`` is the tensor ``b`` or holds the same values (a dtype or device copy)."""
    if a is b:
        return True
    if not torch.is_tensor(b) or a.shape != b.shape:
        return False
    return bool(torch.equal(a, b.to(device=a.device, dtype=a.dtype)))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return f"<tensor {tuple(value.shape)}>"
    return str(value)
