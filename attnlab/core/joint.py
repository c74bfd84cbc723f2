"""The joint-attention processor: frame-level maps, probes and TAR on full-3D (joint
space-time) attention, through the model's own attention math.

While a selected layer runs its *original* processor, :class:`JointAttnProcessor` intercepts
that processor's call to ``torch.nn.functional.scaled_dot_product_attention`` and receives the
very ``q, k, v`` and mask it would have used (after the model's projections, norms, RoPE and
text layout). Recording only: fused calls split by key frame give the output and the frame
masses, merged by log-sum-exp (the output within float32 rounding of the model's own call), or
(``joint_paths(record="exact")``) the original fused call gives the output (bit-identical) and
one more call the frame masses; with an edit, the output is computed by that split path (TAR,
Transfer, Replace) or explicitly in blocks of queries (WindowDecay, or
``joint_paths(edit="blocked")``). Needs diffusers' native attention backend. The interception is
a torch function mode entered for one layer call (thread-local): the function object is never
replaced, so other code that identity-tests it (diffusers' layer skip, PAG) decides as without
attnlab, and a call such a mode answers without attention scores is recorded as not run. The
definitions and derivations of the map, of the probes and of TAR on joint attention are in
``docs/attention-3d.md``; the math is :mod:`attnlab.core.joint_math`, the token layout
:mod:`attnlab.core.joint_sites`.

* :class:`JointAttnProcessor` - the processor of one joint self-attention site (the original
  when idle);
* :func:`joint_paths` - which computation recording and edits use;
* :data:`JOINT_HOOK_NAMES` - the hook point of each joint layer, ``hook_frame_probs``: the
  frame-level map per query frame, read and set (a set map is a Replace target);
* ``_Intercept`` - the torch function mode of one layer call, which hands the maps to the
  observers.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from attnlab.core.joint_math import (
    SDPA,
    BiasOp,
    MixOp,
    ReplaceOp,
    alone,
    edited_attention,
    frame_logits,
    frame_map,
    frame_mass,
    other_modes,
    split_attention,
    split_unsupported,
    to_rows,
)
from attnlab.core.joint_sites import JointAttentionError, TokenLayout
from attnlab.core.protocol import (
    BiasClient,
    CallContext,
    Plan,
    ProcessorHost,
    ReplaceClient,
    target_matrix,
)
from attnlab.core.sites import Site

#: which computation attnlab uses on joint attention (:func:`joint_paths`)
RECORD_PATHS = ("exact", "split")
EDIT_PATHS = ("split", "blocked")
_PATHS = {"record": "split", "edit": "split"}

#: the hook point the controller attaches to each joint self-attention module: an identity
#: module on the layer call's frame-level map ``[B, heads, F, F]`` (per sample and head, the
#: map of each query frame, after every edit); a tensor a hook returns (or an nnsight
#: assignment) replaces the frame marginal as ``Replace`` with that target does
JOINT_HOOK_NAMES = ("hook_frame_probs",)


@contextlib.contextmanager
def joint_paths(record: str | None = None, edit: str | None = None) -> Iterator[None]:
    """Choose how joint attention is computed while attnlab works on a layer (process-wide,
    restored on exit; None keeps the current choice).

    ``record`` (recording only, no edit): ``"split"`` (default) -- one pass: the split path's
    merged output *is* the layer output (within float32 rounding of the model's call: below
    1e-6 per layer call at unit-scale values; in bfloat16/float16, the dtype's rounding; not
    bit-identical) and the masses come with it; ``"exact"`` -- the model's own attention call
    gives the layer output (bit-identical) and the frame masses come from one more fused call
    with the one-hot frame matrix as the value (one more attention's work). A run under
    diffusers' caching hooks (FirstBlockCache, MagCache, FasterCache, ...: their skip decisions
    compare the model's values with thresholds) records by the exact path. With no recorder
    and no edit on a layer, its own processor runs whatever the choice (bit-identical).
    ``edit``: ``"split"`` (default) -- edits
    whose logit change is constant within a (query frame, key frame) block (TAR, Transfer,
    Replace) by the split path; ``"blocked"`` -- explicit attention in blocks of query rows.
    Calls the split path cannot take (:func:`~attnlab.core.joint_math.split_unsupported`:
    WindowDecay's logit function, a device without a fused kernel with log-sum-exp, ...) take
    the other path. Derivation and measurements: ``docs/attention-3d.md``.
    """
    for name, value, allowed in (("record", record, RECORD_PATHS), ("edit", edit, EDIT_PATHS)):
        if value is not None and value not in allowed:
            raise ValueError(f"joint_paths: {name}={value!r}; allowed: {', '.join(allowed)}")
    saved = dict(_PATHS)
    if record is not None:
        _PATHS["record"] = record
    if edit is not None:
        _PATHS["edit"] = edit
    try:
        yield
    finally:
        _PATHS.update(saved)


class _Intercept(TorchFunctionMode):
    """Sees the layer's calls to ``torch.nn.functional.scaled_dot_product_attention`` for one
    layer call, as a torch function mode: the function itself is never replaced, so code that
    identity-tests it (diffusers' layer-skip / PAG mode ``AttentionScoreSkipFunctionMode``)
    decides exactly as it would without attnlab.

    Torch function modes entered before this one (outside the layer call: diffusers' hooks)
    stay in force: the call is passed on through them, and a call they answer without
    computing attention (diffusers' score skip returns ``value``) is a call
    that did not run: nothing is recorded for it and edits do not apply (the recorder's
    ``ran`` stays False). attnlab's own math runs with every torch function mode disabled
    (:func:`~attnlab.core.joint_math.alone`), so no other mode can change what attnlab measures.
    """

    def __init__(
        self, proc: JointAttnProcessor, plan: Plan, ctx: CallContext, hook: Any | None = None
    ):
        super().__init__()
        self.proc = proc
        self.plan = plan
        self.ctx = ctx
        self.hook = hook  # the layer's hook_frame_probs when it must fire, else None
        self.calls = 0
        self.skipped = 0
        self.samples = 0
        self.results: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is not SDPA:
            return func(*args, **kwargs)
        return self.sdpa(*args, **kwargs)

    def sdpa(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        site = self.proc.site
        kw: dict[str, Any] = dict(
            attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )  # fmt: skip
        if query.ndim != 4 or key.shape[-2] != query.shape[-2]:
            raise JointAttentionError(
                f"{site.name}: expected a self-attention call [B, heads, S, d] with as many keys "
                f"as queries, got query {tuple(query.shape)}, key {tuple(key.shape)}"
            )
        B = query.shape[0]
        offset = self.samples
        self.calls += 1
        self.samples += B
        plan = self.plan
        out: torch.Tensor | None = None
        mass: torch.Tensor | None
        one_call = (
            _PATHS["record"] == "split"
            # under diffusers' caching hooks (their skip decisions compare the model's values
            # with a threshold) recording keeps the model's own call, bit for bit
            and not self.ctx.run.meta.get("caches")
            and not (plan.bias or plan.replace)
            and not other_modes()
            and not (dropout_p or is_causal or enable_gqa)
            and key.shape[1] == query.shape[1]
            and split_unsupported(query, key, value, attn_mask) is None
        )
        if one_call:  # recording by the split path: its output is the layer's (within 1e-6)
            layout = self.proc.layout(self.ctx)
            with alone():
                out, mass, text = split_attention(
                    query, key, value, layout, attn_mask=attn_mask, scale=scale, observe=True
                )
            assert out is not None and mass is not None
            call = _Call(query, key, value, layout, attn_mask, scale)
            return self._conclude(call, out, mass, text, [], [])
        if other_modes() or not (plan.bias or plan.replace):
            # the modes entered before attnlab's decide, as without attnlab
            out = SDPA(query, key, value, **kw)
            if out is value:  # answered without attention scores (diffusers' score skip)
                self.skipped += 1
                return out
        if dropout_p or is_causal or enable_gqa or key.shape[1] != query.shape[1]:
            raise JointAttentionError(
                f"{site.name}: attnlab maps joint attention without dropout, causal masks or "
                "grouped heads (put the model in eval mode)"
            )
        layout = self.proc.layout(self.ctx)
        call = _Call(query, key, value, layout, attn_mask, scale)
        observe = bool(plan.observe) or self.hook is not None
        bias: list[BiasOp] = []
        repl: list[ReplaceOp | MixOp] = []
        with alone():
            if not plan.bias and not plan.replace:
                assert out is not None
                mass, text = frame_mass(query, key, layout, attn_mask=attn_mask, scale=scale)
            else:
                dev = query.device
                bias = [self.proc.bias_op(c, self.ctx, offset, B, dev) for c in plan.bias]
                self._one_max_per_call(plan.bias, bias, B)
                repl = [self.proc.replace_op(c, self.ctx, offset, B, dev) for c in plan.replace]
                out, mass, text = _edited(call, bias, repl, observe)
        assert out is not None
        return self._conclude(call, out, mass, text, bias, repl)

    def _one_max_per_call(self, clients: list, ops: list[BiasOp], batch: int) -> None:
        """Refuse a ``"global"`` maximum the call cannot see: one maximum over the layer call's
        selected samples, where the layer computes attention one sample per call (Mochi's
        processor) and more than one sample is selected."""
        ctx = self.ctx
        if batch == ctx.batch:
            return
        for client, op in zip(clients, ops):
            if op.max_mode != "global":
                continue
            chosen = self.proc._samples(client, ctx, 0, ctx.batch)
            if (ctx.batch if chosen is None else int(chosen.sum())) > 1:
                raise JointAttentionError(
                    f"{self.proc.site.name}: max_mode 'global' takes one maximum over the layer "
                    f"call's selected samples, and this layer computes attention one sample "
                    f"per call ({batch} of the call's {ctx.batch} samples here); use max_mode "
                    "'row' or 'head', or edit one guidance half of one video"
                )

    def _conclude(
        self,
        call: _Call,
        out: torch.Tensor,
        mass: torch.Tensor | None,
        text: torch.Tensor | None,
        bias: list[BiasOp],
        repl: list[ReplaceOp | MixOp],
    ) -> torch.Tensor:
        """The end of one attention call, whichever path computed it: fire the hook point on
        its frame-level map (a set map recomputes the call), keep what the observers read, and
        return the layer output."""
        if self.hook is not None:
            assert mass is not None
            out, mass, text = self._hooked(call, out, mass, text, bias, repl)
        with alone():
            if self.plan.observe:
                logits = None
                if any(c.logits for c in self.plan.observe):
                    logits = frame_logits(call.query, call.key, call.layout, call.scale)
                self.results.append((mass, text, logits))  # type: ignore[arg-type]
        return out

    def _hooked(
        self,
        call: _Call,
        out: torch.Tensor,
        mass: torch.Tensor,
        text: torch.Tensor | None,
        bias: list[BiasOp],
        repl: list[ReplaceOp | MixOp],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Fire ``hook_frame_probs`` on this call's frame-level map. The rows a hook sets (by
        returning another tensor or changing this one in place: each (sample, head, query
        frame) row that differs from the one read) become the target of one more replacement
        after the call's own edits (:class:`~attnlab.core.joint_math.ReplaceOp` with a target
        per sample and head), and the attention is computed again with it; rows left as read
        keep their queries' own masses."""
        with alone():
            read = frame_map(mass, call.layout)
            before = read.clone()  # the hook may change ``read`` in place
        assert self.hook is not None
        got = self.hook(read)  # torch hooks and nnsight act here, outside attnlab's math
        with alone():
            target, rows = _set_map(got, before, self.proc.site.name)
            if not bool(rows.any()):
                return out, mass, text  # nothing set
            if any(isinstance(r, MixOp) and r.lowpass is not None for r in repl):
                raise JointAttentionError(
                    f"{self.proc.site.name}: a map set at hook_frame_probs under SpectralBlend: "
                    "on joint attention SpectralBlend's output is a filter over query frames, "
                    "not a map a replacement can start from (read the map, or set it without "
                    "SpectralBlend)"
                )
            dev = call.query.device
            op = ReplaceOp(target.to(dev), rows=rows.to(dev))
            new_out, new_mass, new_text = _edited(call, bias, [*repl, op], True)
        assert new_mass is not None
        return new_out, new_mass, new_text

    def finish(self) -> None:
        site = self.proc.site
        if self.calls == 0:
            raise JointAttentionError(
                f"{site.name}: the layer's processor did not call torch's "
                "scaled_dot_product_attention; attnlab needs diffusers' native attention backend "
                "(unset DIFFUSERS_ATTN_BACKEND / leave set_attention_backend at 'native')"
            )
        if self.samples != self.ctx.batch:
            raise JointAttentionError(
                f"{site.name}: attention covered {self.samples} samples, the call has batch "
                f"{self.ctx.batch}"
            )
        if self.skipped:
            if self.skipped != self.calls:
                raise JointAttentionError(
                    f"{site.name}: {self.skipped} of the layer's {self.calls} attention calls "
                    "were answered without attention scores by another torch function mode "
                    "(diffusers' layer skip / PAG), the others ran: attnlab records a layer "
                    "call whose attention ran, or marks it as not run, never a part of it"
                )
            return  # did not run: nothing observed, the recorder's `ran` stays False
        if not self.plan.observe:
            return
        with alone():
            layout = self.proc.layout(self.ctx)
            mass = torch.cat([r[0] for r in self.results])
            text = _cat([r[1] for r in self.results])
            logits = _cat([r[2] for r in self.results])
            probs = to_rows(mass, layout)
            tm = to_rows(text[..., None], layout) if text is not None else None
            lg = to_rows(logits, layout) if logits is not None else None
            for client in self.plan.observe:
                client.observe(site, self.ctx, lg, probs, text_mass=tm)


class _Call(NamedTuple):
    """One joint attention call's inputs, as the layer gave them to SDPA, and its token layout."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    layout: TokenLayout
    attn_mask: torch.Tensor | None
    scale: float | None


def _edited(
    call: _Call,
    bias: list[BiasOp],
    repl: list[ReplaceOp | MixOp],
    observe: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The attention of one call with edits, by the split path where it can take them (and
    ``joint_paths(edit="split")``), else explicitly in blocks of query rows."""
    query, key, value, layout, attn_mask, scale = call
    if _PATHS["edit"] == "split" and split_unsupported(query, key, value, attn_mask, bias) is None:
        return split_attention(
            query, key, value, layout, attn_mask=attn_mask, scale=scale,
            bias=bias, replace=repl, observe=observe,
        )  # fmt: skip
    return edited_attention(
        query, key, value, layout, attn_mask=attn_mask, scale=scale,
        bias=bias, replace=repl, observe=observe,
    )  # fmt: skip


def _set_map(got: Any, read: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame-level map set at ``hook_frame_probs`` (``read``: a copy of the map the hook was
    given): ``(target [B, heads, F, F]`` float32 with rows normalised to 1, as ``Replace``
    normalises a matrix; ``rows [B, heads, F]``: the rows that differ from ``read``). One
    error naming what is wrong otherwise."""
    where = f"{site}.hook_frame_probs"
    shape = tuple(read.shape)
    if not isinstance(got, torch.Tensor):
        raise ValueError(
            f"{where}: a hook returned {type(got).__name__}; a set frame map is a tensor that "
            f"broadcasts to [B, heads, F, F] = {list(shape)}"
        )
    try:
        ok = torch.broadcast_shapes(tuple(got.shape), shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: a set frame map of shape {list(got.shape)} does not broadcast to "
            f"[B, heads, F, F] = {list(shape)}"
        )
    m = got.detach().to(device=read.device, dtype=read.dtype).expand(shape)
    rows = (m != read).any(-1)
    if not bool(rows.any()):
        return m, rows
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError(
            f"{where}: a set frame map must be finite and non-negative (a distribution over key "
            "frames per query frame)"
        )
    total = m.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError(
            f"{where}: a set frame map has rows summing to 0; each query frame's row needs a "
            "positive sum (rows are normalised to 1)"
        )
    return m / total, rows


def _hook_point(attn: torch.nn.Module, plan: Plan | None) -> Any | None:
    """The layer's ``hook_frame_probs`` when it must fire: someone hooks it (torch hooks, an
    nnsight trace) or an observer asks for hook points (:func:`attnlab.hooks`); else None."""
    point = getattr(attn, JOINT_HOOK_NAMES[0], None)
    if point is None:
        return None
    asked = plan is not None and any(c.hook_points for c in plan.observe)
    return point if asked or point.has_hooks() else None


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Concatenate per-call results that are all tensors or all None."""
    tensors = [p for p in parts if p is not None]
    return torch.cat(tensors) if tensors else None


class JointAttnProcessor:
    """Processor for one joint (space-time) self-attention site; the original when idle.

    When the host's plan for this layer is empty and nobody hooks its ``hook_frame_probs``,
    the original processor runs untouched (bit-identical output). Otherwise the original still
    runs, with its attention call intercepted (see the module docstring).
    """

    def __init__(self, host: ProcessorHost, site: Site, original: Any):
        self.host = host
        self.site = site
        self.original = original
        # per client (edit) and frame count: its bias and target tables (see _per_client)
        self._tables: dict[tuple, tuple[weakref.ref, Any]] = {}
        # diffusers' Attention.forward filters keyword arguments by the processor's signature
        # (``inspect.signature(processor.__call__)``): expose the original's
        call = type(self).__call__

        def signature_of_original(*args: Any, **kwargs: Any) -> Any:
            return call(self, *args, **kwargs)

        with contextlib.suppress(TypeError, ValueError):
            signature_of_original.__signature__ = inspect.signature(original.__call__)  # type: ignore[attr-defined]
        self.__call__ = signature_of_original  # type: ignore[method-assign]

    def __call__(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any
    ):
        plan = self.host.plan(self.site.name)
        hook = _hook_point(attn, plan)
        ctx = self.host.ctx
        if (plan is None and hook is None) or ctx is None:
            return self.original(attn, hidden_states, *args, **kwargs)
        # LTX-2's spatio-temporal guidance: its processor answers a perturbed sample with its
        # values (``torch.lerp`` by ``perturbation_mask``, 0 = perturbed), and with every sample
        # perturbed (``all_perturbed``) computes no attention at all
        mask = kwargs.get("perturbation_mask")
        zeros = mask == 0 if torch.is_tensor(mask) else None
        if bool(kwargs.get("all_perturbed")) or (zeros is not None and bool(zeros.all())):
            # the call did not run (``ran`` False, nothing recorded, edits do not apply)
            return self.original(attn, hidden_states, *args, **kwargs)
        if zeros is not None and bool(zeros.any()):
            # some of them: attention is computed for every sample, the perturbed ones' maps
            # would be recorded and edited for nothing
            raise JointAttentionError(
                f"{self.site.name}: spatio-temporal guidance perturbs {int(zeros.sum())} of the "
                "call's samples (perturbation_mask): the model discards their attention, and "
                "attnlab records or edits a layer call whose attention reached every sample's "
                "output, or marks it as not run, never a part of it; perturb every sample or "
                "none (the LTX-2 pipelines perturb all)"
            )
        with _Intercept(self, plan if plan is not None else Plan(), ctx, hook) as icpt:
            out = self.original(attn, hidden_states, *args, **kwargs)
        icpt.finish()
        return out

    def layout(self, ctx: CallContext) -> TokenLayout:
        table = self.host.table
        h, w = table.level_size(0, ctx.latent)
        return TokenLayout(ctx.frames, h * w, table.text)

    def _samples(self, client: Any, ctx: CallContext, offset: int, n: int) -> torch.Tensor | None:
        halves = client.halves(ctx)
        if halves is None:
            return None
        per_half = ctx.batch // len(ctx.halves())
        idx = torch.arange(offset, offset + n) // per_half
        return torch.isin(idx, torch.tensor(halves))

    def _per_client(self, client: Any, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, made once per ``client`` and ``key`` while this processor is installed.
        Keyed by the client's ``id`` with a weak reference to the client itself: an edit made
        after another was freed can get its ``id``, and must not be given its tables."""
        entry = self._tables.get((id(client), *key))
        if entry is None or entry[0]() is not client:
            entry = self._tables[(id(client), *key)] = (weakref.ref(client), make())
        return entry[1]

    def _const(self, kind: str, client: Any, ctx: CallContext, make) -> torch.Tensor:
        return self._per_client(
            client, (kind, ctx.frames), lambda: torch.as_tensor(make(), dtype=torch.float32)
        )

    def bias_op(
        self, client: BiasClient, ctx: CallContext, offset: int, n: int, device: torch.device
    ) -> BiasOp:
        samples = self._samples(client, ctx, offset, n)
        samples = None if samples is None else samples.to(device)
        prior = client.logit_prior(self.site, ctx)
        if prior is None:
            # a frame-level logit function of the latent frames of query and key (WindowDecay)
            frame_bias = getattr(client, "frame_bias", None)
            fn = frame_bias(self.site, ctx) if frame_bias is not None else None
            if fn is None:
                raise JointAttentionError(
                    f"{self.site.name}: {type(client).__name__} says its logit bias neither as "
                    "a prior (logit_prior) nor as a frame-level logit function (frame_bias); on "
                    "joint attention attnlab applies those (TAR, Transfer, WindowDecay) and fixed "
                    "replacements (Replace)"
                )
            return BiasOp(None, samples=samples, fn=fn)
        # keyed by what the prior depends on (TAR with compat="vstar": the call's latent width)
        key = client.prior_key(self.site, ctx) if hasattr(client, "prior_key") else (ctx.frames,)
        dA = self._per_client(
            client, ("bias", *key), lambda: torch.as_tensor(prior.dA, dtype=torch.float32)
        )
        return BiasOp(dA.to(device), prior.max_mode, prior.scale, samples)

    def replace_op(
        self, client: ReplaceClient, ctx: CallContext, offset: int, n: int, device: torch.device
    ) -> ReplaceOp | MixOp:
        target = client.target(ctx)
        mixture = getattr(client, "frame_mixture", None)
        if target is None and mixture is not None:
            # an input-dependent mixture of window softmaxes (SlidingWindow, SpectralBlend): its
            # tables depend on the frame count only, made once per layer, edit and device
            def tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
                coef, keys, low = mixture(ctx.frames)
                f32 = torch.float32
                return (
                    torch.as_tensor(coef, dtype=f32, device=device),
                    torch.as_tensor(keys, dtype=torch.bool, device=device),
                    None if low is None else torch.as_tensor(low, dtype=f32, device=device),
                )

            coef, keys, low = self._per_client(client, ("mixture", ctx.frames, device), tables)
            samples = self._samples(client, ctx, offset, n)
            return MixOp(coef, keys, low, None if samples is None else samples.to(device))
        if target is None:
            raise JointAttentionError(
                f"{self.site.name}: {type(client).__name__} replaces probabilities with values "
                "that depend on the input; on joint attention attnlab supports replacements "
                "that fix the frame mass (a target: identity, ones or a matrix)"
            )
        M = self._const("replace", client, ctx, lambda: target_matrix(target, ctx.frames))
        samples = self._samples(client, ctx, offset, n)
        return ReplaceOp(M.to(device), None if samples is None else samples.to(device))
