"""The temporal-attention processor: one per temporal self-attention module, installed by the
:class:`~attnlab.control.Controller` only while a recorder, edit or hook context is active.

Two paths:

* **fast**: no client selects this layer at this call: the original processor runs unchanged
  (fused SDPA; output bit-identical to the untouched model);
* **explicit**: ``logits = q k^T / sqrt(d)`` -> ``hook_logits`` -> bias edits -> softmax ->
  replacement edits -> ``hook_probs`` -> recorders -> ``probs @ v``.

Tensor layout inside (diffusers folds space into the batch)::

    hidden_states  [B*h*w, F, C]          rows are b*(h*w) + y*w + x
    logits, probs  [B*h*w, heads, F, F]   query_frame x key_frame
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .control import Controller
    from .sites import Site


class HookPoint(nn.Module):
    """Identity module that gives a stable name to an intermediate tensor.

    attnlab attaches ``hook_logits`` (``[B*h*w, heads, F, F]``, pre-softmax, before attnlab's
    bias edits) and ``hook_probs`` (same shape, the probabilities used, after every edit) to
    each temporal ``Attention`` module. Plain torch forward hooks and nnsight traces can read
    them and replace them (a hook's return value / an nnsight assignment becomes the tensor).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def has_hooks(self) -> bool:
        return bool(
            self._forward_hooks
            or self._forward_pre_hooks
            or torch.nn.modules.module._global_forward_hooks
        )


HOOK_NAMES = ("hook_logits", "hook_probs")


class TemporalAttnProcessor:
    """Processor for one temporal self-attention site; delegates to the original when idle."""

    def __init__(self, controller: Controller, site: Site, original: Any):
        self.controller = controller
        self.site = site
        self.original = original

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        plan = self.controller.plan(self.site.name)
        if plan is None and not (attn.hook_logits.has_hooks() or attn.hook_probs.has_hooks()):
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        return self.explicit(attn, hidden_states, attention_mask, temb, plan)

    def explicit(self, attn, hidden_states, attention_mask, temb, plan) -> torch.Tensor:
        """The default processor's math with the attention probabilities materialised."""
        ctrl = self.controller
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim != 3:
            raise RuntimeError(
                f"{self.site.name}: expected [B*h*w, frames, channels] hidden states, got {tuple(hidden_states.shape)}"
            )
        rows, frames, _ = hidden_states.shape
        ctx = ctrl.check_rows(self.site, rows, frames)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

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
        rope = getattr(attn, "attnlab_rope", None)
        if rope is not None:
            query, key = rope(query, key)

        # the scale SDPA applies by default, so the explicit path matches the fused one
        logits = torch.matmul(query, key.transpose(-1, -2)) * head_dim**-0.5
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, frames, rows).view(
                rows, heads, -1, frames
            )
            logits = logits + mask
        logits = attn.hook_logits(logits)
        raw_logits = logits
        if plan is not None:
            for client in plan.bias:
                logits = client.bias(self.site, ctx, logits)
        probs = logits.softmax(dim=-1, dtype=torch.float32).to(value.dtype)
        if plan is not None:
            for client in plan.replace:
                probs = client.replace(self.site, ctx, probs)
        probs = attn.hook_probs(probs)
        if plan is not None:
            for client in plan.observe:
                client.observe(self.site, ctx, raw_logits, probs)

        out = torch.matmul(probs, value)
        out = out.transpose(1, 2).reshape(rows, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Fused attention as the default processor calls it (for tests and benchmarks)."""
    return F.scaled_dot_product_attention(q, k, v)
