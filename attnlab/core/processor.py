"""The temporal-attention processor: one per temporal self-attention module, installed by the
:class:`~attnlab.core.control.Controller` only while a recorder, edit or hook context is active,
and reading it only as a :class:`~attnlab.core.protocol.ProcessorHost`.

Paths, chosen per layer and call:

* **fast**: no client selects this layer at this call: the original processor runs unchanged
  (fused SDPA; output bit-identical to the untouched model);
* **explicit**: ``logits = q k^T / sqrt(d)`` (with the model's own position terms, if its
  family declares them (:class:`~attnlab.core.sites.PositionTerms`): a rotation of q and k, a
  ``[heads, F, F]`` logit bias) -> ``hook_logits`` -> bias edits -> softmax -> replacement edits
  -> ``hook_probs`` -> recorders -> ``probs @ v``. Without hooks on the hook points, no
  autograd graph, and edits that act row by row (TAR/Transfer with a per-row or
  per-map max, replacements, on both CFG halves), it runs in cache-sized blocks of rows,
  materialising only what recorders keep: bit-identical to the whole-tensor computation, and
  on CPU about as fast as the fused default (see ``docs/performance.md``);
* **constant**: the last replacement fixes the probabilities (``target``) on both CFG halves
  and nobody observes this layer: the probabilities do not depend on q or k, so those are never
  computed (identity: ``out = v``; ones: ``out`` = mean of ``v`` over frames).

When a torch function mode is in force (diffusers' layer skip / PAG score skip), the layer's
original processor runs first under :class:`_ScoreSkipWatch`: a call whose attention that mode
answers without scores keeps diffusers' output and is not recorded or edited (the recorder's
``ran`` stays False); otherwise that output is dropped and the paths above run.

Tensor layout inside (diffusers folds space into the batch)::

    hidden_states  [B*h*w, F, C]          rows are b*(h*w) + y*w + x
    logits, probs  [B*h*w, heads, F, F]   query_frame x key_frame

* :class:`HookPoint` - the identity module behind ``hook_logits`` / ``hook_probs``
  (:data:`HOOK_NAMES`);
* :class:`TemporalAttnProcessor` - the processor of one temporal self-attention site.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from attnlab.core.blocking import block_rows
from attnlab.core.joint_math import SDPA, other_modes
from attnlab.core.protocol import CallContext, Plan, ProcessorHost, Target, target_matrix
from attnlab.core.sites import PositionTerms, Site

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention


class HookPoint(nn.Module):
    """Identity module that gives a stable name to an intermediate tensor.

    attnlab attaches ``hook_logits`` (``[B*h*w, heads, F, F]``, pre-softmax, before attnlab's
    bias edits) and ``hook_probs`` (same shape, the probabilities used, after every edit) to
    each temporal ``Attention`` module. Plain torch forward hooks and nnsight traces can read
    them and replace them (a hook's return value / an nnsight assignment becomes the tensor).
    ``name`` is its dotted path in the denoiser (``<site>.hook_probs``), as in TransformerLens.

    Hooks registered on the hook point itself (or an nnsight trace) are seen; torch's global
    module hooks are not a reason to leave the fast paths: to have them fire on hook points,
    use :func:`attnlab.hooks`.
    """

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def has_hooks(self) -> bool:
        """Whether anything outside attnlab may read or replace this tensor: forward hooks on
        this module, or an instance-level ``forward`` wrapper (nnsight wraps each module's
        ``forward`` on the instance, without torch hooks)."""
        return bool(self._forward_hooks or self._forward_pre_hooks or "forward" in self.__dict__)

    def extra_repr(self) -> str:
        return self.name


HOOK_NAMES = ("hook_logits", "hook_probs")


def _blocks(rows: int, frames: int, device: torch.device) -> list[tuple[int, int]]:
    step = block_rows(rows, frames, device)
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


def _scores(
    query: torch.Tensor, key: torch.Tensor, scale: float, a: int, b: int, h: int
) -> torch.Tensor:
    """``q k^T * scale`` of head ``h``, rows ``a:b``: ``[b - a, F, F]`` (strided, no copies)."""
    return torch.bmm(query[a:b, h], key[a:b, h].transpose(1, 2)).mul_(scale)


class TemporalAttnProcessor:
    """Processor for one temporal self-attention site; delegates to the original when idle."""

    def __init__(
        self,
        host: ProcessorHost,
        site: Site,
        original: Any,
        position: PositionTerms | None = None,
    ):
        self.host = host
        self.site = site
        self.original = original
        self.position = position

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        plan = self.host.plan(self.site.name)
        hooked = _hooked(attn, plan)
        if plan is None and not hooked:
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        if other_modes():
            # a torch function mode is in force (diffusers' layer skip / PAG score skip): it
            # decides on the layer's own call, as without attnlab
            with _ScoreSkipWatch(self.site.name) as watch:
                out = self.original(
                    attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                    *args, **kwargs,
                )  # fmt: skip
            if watch.skipped():
                return out  # its attention did not run: not recorded (`ran` False), not edited
        return self.explicit(attn, hidden_states, attention_mask, temb, plan, hooked=hooked)

    def explicit(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
        plan: Plan | None,
        hooked: bool | None = None,
    ) -> torch.Tensor:
        """The default processor's math with the attention probabilities available."""
        if hooked is None:
            hooked = _hooked(attn, plan)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim != 3:
            raise RuntimeError(
                f"{self.site.name}: expected [B*h*w, frames, channels] hidden states, got {tuple(hidden_states.shape)}"
            )
        rows, frames, _ = hidden_states.shape
        ctx = self.host.check_rows(self.site, rows, frames)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        constant = None if hooked or plan is None or plan.observe else _constant_probs(plan, ctx)
        if constant is not None:
            out = _attend_constant(attn, hidden_states, constant, frames)
        else:
            out = self._attend(attn, hidden_states, attention_mask, plan, ctx, hooked)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if out.shape[1] != frames:  # "ones": one row per position, the same for every frame
            out = out.expand(rows, frames, out.shape[-1])
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _attend(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        plan: Plan | None,
        ctx: CallContext,
        hooked: bool,
    ) -> torch.Tensor:
        """``softmax(edit(q k^T / sqrt d)) @ v`` -> ``[rows, F, heads * head_dim]``."""
        rows, frames, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(rows, -1, heads, head_dim).transpose(1, 2)
        key = key.view(rows, -1, heads, head_dim).transpose(1, 2)
        value = value.view(rows, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        position = self.position
        if position is not None and position.rotate is not None:
            query, key = position.rotate(query, key)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, frames, rows).view(
                rows, heads, -1, frames
            )
        if position is not None and position.logit_bias is not None:
            # the model's own additive logit term, [heads, F, F] (LaVie)
            bias = position.logit_bias(frames, query.device).to(query.dtype)
            bias = bias.expand(rows, heads, frames, frames)
            mask = bias if mask is None else mask + bias
        # the scale SDPA applies by default, so the explicit path matches the fused one
        scale = head_dim**-0.5
        grad = torch.is_grad_enabled() and (
            query.requires_grad or key.requires_grad or value.requires_grad
        )
        if hooked or grad or not _row_local(plan, ctx):
            out = self._whole(attn, query, key, value, mask, scale, plan, ctx)
        else:
            out = self._blocked(query, key, value, mask, scale, plan, ctx)
        return out.reshape(rows, -1, heads * head_dim).to(query.dtype)

    def _whole(self, attn, query, key, value, mask, scale, plan, ctx) -> torch.Tensor:
        """Whole-tensor path: every stage sees the full ``[rows, heads, F, F]`` tensor (hooks,
        autograd, edits that need the whole tensor). Returns ``[rows, F, heads, head_dim]``.

        The two matmuls run per head and block of rows exactly as in :meth:`_blocked` (batched
        matmuls are not bit-stable across batch layouts; per-head ``bmm`` is), so both paths
        give the same numbers bit for bit.
        """
        rows, heads, frames, head_dim = query.shape
        blocks = _blocks(rows, frames, query.device)
        logits = query.new_empty((rows, heads, frames, frames))
        for a, b in blocks:
            for h in range(heads):
                logits[a:b, h] = _scores(query, key, scale, a, b, h)
        if mask is not None:
            logits = logits + mask
        logits = attn.hook_logits(logits)
        raw_logits = logits
        if plan is not None:
            for client in plan.bias:
                logits = client.bias(self.site, ctx, logits)
        probs = logits.softmax(dim=-1, dtype=torch.float32).to(value.dtype)
        del logits
        if plan is not None:
            for client in plan.replace:
                probs = client.replace(self.site, ctx, probs)
        probs = attn.hook_probs(probs)
        if plan is not None:
            for client in plan.observe:
                client.observe(self.site, ctx, raw_logits, probs)
        del raw_logits
        out = value.new_empty((rows, frames, heads, head_dim))
        for a, b in blocks:
            for h in range(heads):
                out[a:b, :, h] = torch.bmm(probs[a:b, h], value[a:b, h])
        return out

    def _blocked(self, query, key, value, mask, scale, plan, ctx) -> torch.Tensor:
        """Blocked path (no hooks, row-local edits): the numbers of :meth:`_whole`, bit for bit.

        One head and a block of rows at a time: ``q k^T`` -> bias -> softmax -> replacement ->
        ``@ v`` stays in cache, the strided per-head matmuls read the projections in place
        (no transposed copies of q, k, v or the output). Observers that only need the maps
        summed over spatial positions (``sums_only``: the ``mean`` and ``head`` reductions) get
        those sums accumulated block by block (``observe_sums``); the full ``[rows, heads, F, F]``
        probabilities exist only if another observer needs them, and the logits only if one of
        those asks for logits. Returns ``[rows, F, heads, head_dim]``.
        """
        rows, heads, frames, head_dim = query.shape
        observers = plan.observe if plan is not None else []
        bias = plan.bias if plan is not None else []
        replace = plan.replace if plan is not None else []
        summing = [c for c in observers if c.sums_only(self.site, ctx)]
        full = [c for c in observers if not any(c is s for s in summing)]
        # a recorder that does not record logits says so (``logits = False``): skip that copy
        keep_logits = any(c.logits for c in full)
        sum_logits = any(c.logits for c in summing)
        shape = (rows, heads, frames, frames)
        all_logits = query.new_empty(shape) if keep_logits else None
        all_probs = value.new_empty(shape) if full else None
        sums = _PositionSums(ctx.batch, rows, heads, frames, query.device) if summing else None
        logit_sums = (
            _PositionSums(ctx.batch, rows, heads, frames, query.device) if sum_logits else None
        )
        out = value.new_empty((rows, frames, heads, head_dim))
        for a, b in _blocks(rows, frames, query.device):
            for h in range(heads):
                logits = _scores(query, key, scale, a, b, h)
                if mask is not None:
                    logits = logits + mask[a:b, h]
                if all_logits is not None:
                    all_logits[a:b, h] = logits
                if logit_sums is not None:
                    logit_sums.add(logits, a, b, h)
                for client in bias:
                    logits = client.bias(self.site, ctx, logits)
                probs = logits.softmax(dim=-1, dtype=torch.float32).to(value.dtype)
                for client in replace:
                    probs = client.replace(self.site, ctx, probs)
                if all_probs is not None:
                    all_probs[a:b, h] = probs
                if sums is not None:
                    sums.add(probs, a, b, h)
                out[a:b, :, h] = torch.bmm(probs, value[a:b, h])
        for client in observers:
            if sums is not None and any(client is s for s in summing):
                client.observe_sums(
                    self.site,
                    ctx,
                    None if logit_sums is None else logit_sums.total,
                    sums.total,
                    sums.positions,
                )
            else:
                client.observe(self.site, ctx, all_logits, all_probs)
        return out


class _ScoreSkipWatch(TorchFunctionMode):
    """Watches one layer call's ``scaled_dot_product_attention`` calls pass through the torch
    function modes in force, without replacing the function: :meth:`skipped` says whether they
    were answered without attention scores (diffusers' ``AttentionScoreSkipFunctionMode``,
    used by ``apply_layer_skip(skip_attention_scores=True)``, skip-layer guidance and PAG,
    returns the ``value`` tensor itself)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.calls = 0
        self.answered = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is SDPA:
            self.calls += 1
            value = kwargs["value"] if "value" in kwargs else args[2]
            self.answered += out is value
        return out

    def skipped(self) -> bool:
        """True: every attention call was answered without scores; False: every call ran (or
        none was made). A layer call with both raises."""
        if self.answered and self.answered != self.calls:
            raise RuntimeError(
                f"{self.name}: {self.answered} of the layer's {self.calls} attention calls were "
                "answered without attention scores by a torch function mode (diffusers' layer "
                "skip / PAG), the others ran: attnlab records a layer call whose attention "
                "ran, or marks it as not run, never a part of it"
            )
        return self.calls > 0 and self.answered == self.calls


class _PositionSums:
    """Per batch item and head, the sum over spatial positions of ``[F, F]`` maps, accumulated
    block by block in float32: ``total`` is ``[batch, heads, F, F]``.

    Rows are ``b * positions + p`` (diffusers folds space into the batch), so a block of rows
    ``a:b`` covers one or a few batch items; each item's slice is summed over its rows.
    """

    def __init__(self, batch: int, rows: int, heads: int, frames: int, device: torch.device):
        if batch < 1 or rows % batch:
            raise RuntimeError(f"{rows} rows do not split into {batch} batch items")
        self.positions = rows // batch
        self.total = torch.zeros((batch, heads, frames, frames), device=device)

    def add(self, x: torch.Tensor, a: int, b: int, h: int) -> None:
        n = self.positions
        for item in range(a // n, (b - 1) // n + 1):
            lo, hi = max(a, item * n), min(b, (item + 1) * n)
            self.total[item, h] += x[lo - a : hi - a].sum(dim=0, dtype=torch.float32)


def _hooked(attn: Attention, plan: Plan | None) -> bool:
    """Whether the hook points of ``attn`` must see the whole tensors: someone hooks them, or an
    observer asks for them (``hook_points = True``, e.g. :func:`attnlab.hooks`). The blocked
    and constant paths never call the hook points, so either forces the whole-tensor path."""
    if plan is not None and any(c.hook_points for c in plan.observe):
        return True
    points: list[HookPoint] = [attn.hook_logits, attn.hook_probs]  # type: ignore[list-item]
    return any(p.has_hooks() for p in points)


def _row_local(plan: Plan | None, ctx: CallContext) -> bool:
    """Whether every edit in ``plan`` acts on each ``F x F`` map (row and head) alone."""
    if plan is None:
        return True
    return all(c.row_local(ctx) for c in plan.bias) and all(c.row_local(ctx) for c in plan.replace)


def _constant_probs(plan: Plan, ctx: CallContext) -> str | torch.Tensor | None:
    """The probabilities when the last replacement fixes them for every row, else None.

    Returns "identity", "ones" or the row-normalised ``[F, F]`` matrix (float64).
    """
    if not plan.replace:
        return None
    last = plan.replace[-1]
    if last.halves(ctx) is not None:
        return None
    target: Target | None = last.target(ctx)
    if target is None:
        return None
    if isinstance(target, str):
        return target
    return torch.as_tensor(target_matrix(target, ctx.frames))


def _attend_constant(
    attn: Attention, hidden_states: torch.Tensor, probs: str | torch.Tensor, frames: int
) -> torch.Tensor:
    """``probs @ v`` for probabilities that are the same for every row and head; q, k unused.

    ``[rows, F, heads * head_dim]``: identity -> ``v`` (bit-identical to ``I @ v``); a matrix
    -> ``M @ v`` (the explicit path's own matmul). "ones" -> the mean of ``v`` over frames,
    ``[rows, 1, heads * head_dim]`` when the output projection's dropout is inactive (the
    caller projects one row and expands it); equal to ``(1/F) @ v`` up to float rounding
    (summation order; measured <= 2.4e-7 on unit-scale values).
    """
    value = attn.to_v(hidden_states)
    if isinstance(probs, str):
        if probs == "identity":
            return value
        mean = value.mean(dim=1, keepdim=True)
        drop = attn.to_out[1]
        if isinstance(drop, nn.Dropout) and (drop.p == 0 or not drop.training):
            return mean
        return mean.expand_as(value).contiguous()
    rows = value.shape[0]
    heads = attn.heads
    head_dim = value.shape[-1] // heads
    value = value.view(rows, frames, heads, head_dim).transpose(1, 2)
    target = probs.to(device=value.device, dtype=value.dtype).expand(rows, heads, frames, frames)
    out = torch.matmul(target, value)  # as the explicit path computes it with Replace's target
    return out.transpose(1, 2).reshape(rows, frames, heads * head_dim)
