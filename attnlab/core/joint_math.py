"""The math of frame-level maps and edits on full-3D (joint space-time) attention: pure
functions of ``q, k, v`` as a model gives them to SDPA. Derivations: ``docs/attention-3d.md``.

* :func:`frame_mass` - per video query, its attention mass on each latent frame, and on text;
* :func:`frame_logits` - per video query, its mean pre-softmax logit over each frame's keys;
* :class:`BiasOp`, :class:`ReplaceOp` - a TAR-style logit bias (or a frame-level logit
  function), a frame-mass replacement;
* :func:`edited_attention` - joint attention with those edits, explicit and blocked;
* :func:`to_rows` - per-query results in the temporal processors' row layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlab.core.blocking import joint_block_rows
from attnlab.core.joint_sites import TokenLayout

# torch's SDPA (attnlab never replaces it: the joint processor sees the layer's calls to it
# through a torch function mode, see attnlab.core.joint)
SDPA = F.scaled_dot_product_attention


def other_modes() -> bool:
    """Whether a torch function mode is in force (inside a mode's handler: one entered before
    that mode, e.g. diffusers' layer-skip ``AttentionScoreSkipFunctionMode``)."""
    return torch._C._len_torch_function_stack() > 0


def alone() -> contextlib.AbstractContextManager:
    """attnlab's own math, out of reach of every torch function mode (and tensor-subclass
    handler) in force: another library's mode cannot change what attnlab measures."""
    return torch._C.DisableTorchFunction()


def _mask_rows(mask: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    if mask is None or mask.ndim < 2 or mask.shape[-2] == 1:
        return mask
    return mask[..., a:b, :]


def _split_mass(raw: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[..., F (+1)]`` raw masses -> (renormalised frame masses, text mass or None)."""
    video = raw[..., : layout.frames]
    mass = video / video.sum(-1, keepdim=True)
    text = raw[..., layout.frames] if layout.text != "cross" else None
    return mass, text


def frame_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: TokenLayout,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per video query: frame masses renormalised over video keys, and text mass.

    ``query``, ``key``: ``[B, heads, S, d]`` as given to SDPA. Returns ``mass [B, heads, Nv, F]``
    (``m_q(j) / sum_j m_q(j)``, rows sum to 1) and ``text [B, heads, Nv]`` (``tau_q``; None for
    "cross"), computed as ``softmax(q k^T * scale + mask) @ E`` (one-hot frame membership
    ``E``, zero-padded to ``d`` columns or a multiple of ``d``, so that torch picks its fused
    kernel) by fused attention calls over blocks of queries, in float32.
    """
    B, H, S, d = query.shape
    v0 = layout.video_start(S)
    Nv = layout.video
    E = layout.membership(S, query.device, torch.float32)
    cols = E.shape[1]
    # fused kernels want the value as wide as the query head dim (a narrower value falls back
    # to the unfused math path, ~2.5x slower on CPU): zero columns up to a multiple of d
    width = -(-cols // d) * d
    E = torch.cat([E, E.new_zeros(S, width - cols)], 1)
    q = query.float()
    k = key.float()
    mask = (
        attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    )
    out = q.new_empty((B, H, Nv, width))
    step = joint_block_rows(B, H, S, Nv, q.device)
    for c in range(0, width, d):
        Ex = E[:, c : c + d].expand(B, H, S, d)
        for a in range(0, Nv, step):
            b = min(Nv, a + step)
            out[:, :, a:b, c : c + d] = SDPA(
                q[:, :, v0 + a : v0 + b],
                k,
                Ex,
                attn_mask=_mask_rows(mask, v0 + a, v0 + b),
                scale=scale,
            )
    return _split_mass(out[..., :cols], layout)


def frame_logits(
    query: torch.Tensor, key: torch.Tensor, layout: TokenLayout, scale: float | None = None
) -> torch.Tensor:
    """``[B, heads, Nv, F]``: mean pre-softmax logit of each video query over the key tokens
    of each frame, ``q . mean_{k in j} k * scale`` (exact: the logit is linear in ``k``)."""
    B, H, S, d = query.shape
    v0 = layout.video_start(S)
    scale = d**-0.5 if scale is None else scale
    kv = key[:, :, v0 : v0 + layout.video].float()
    kbar = kv.reshape(B, H, layout.frames, layout.per_frame, d).mean(3)
    return (query[:, :, v0 : v0 + layout.video].float() @ kbar.transpose(-1, -2)) * scale


#: a frame-level logit function: ``fn(logits [B, heads, r, Nv], query_frame [r], key_frame
#: [Nv]) -> logits`` on the video-query x video-key logits, given each token's latent frame
FrameLogitFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BiasOp:
    """A logit edit on the video-query x video-key logits, for the samples it applies to: a
    TAR-style prior ``logits + scale * max * dA[frame(q), frame(k)]`` (``dA [F, F]``, max
    mode, scale), or, when ``fn`` is given, ``fn(logits, frame(q), frame(k))`` (a frame-level
    logit function such as WindowDecay's; ``dA``, ``max_mode`` and ``scale`` are then unused)."""

    dA: torch.Tensor | None
    max_mode: str = "row"
    scale: float = 1.0
    samples: torch.Tensor | None = None  # bool [B]; None = all
    fn: FrameLogitFn | None = None


@dataclass
class ReplaceOp:
    """A frame-mass replacement: target ``M [F, F]`` (rows sum to 1), samples it applies to."""

    target: torch.Tensor
    samples: torch.Tensor | None = None


def _select(new: torch.Tensor, old: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    if samples is None:
        return new
    return torch.where(samples.view(-1, *([1] * (new.ndim - 1))), new, old)


def edited_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: TokenLayout,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    bias: list[BiasOp] = (),  # type: ignore[assignment]
    replace: list[ReplaceOp] = (),  # type: ignore[assignment]
    observe: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Joint attention with frame-level edits, explicit and blocked over queries.

    Returns ``(out [B, heads, S, dv], mass, text)`` (``mass``/``text`` as in :func:`frame_mass`,
    of the probabilities after every edit, when ``observe``). Per block of query rows:
    logits ``q k^T * scale + mask`` -> bias ops on the video-row x video-key part (priors
    and frame-level logit functions, in order; text rows and keys untouched) -> softmax
    (float32) -> replacement ops on the video rows -> ``@ v``. See ``docs/attention-3d.md`` for
    the definitions.
    """
    B, H, S, d = query.shape
    scale = d**-0.5 if scale is None else scale
    v0 = layout.video_start(S)
    Nv, Fr, T = layout.video, layout.frames, layout.per_frame
    frame_of = torch.arange(Nv, device=query.device) // T
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(
            attn_mask.shape, dtype=query.dtype, device=query.device
        ).masked_fill(~attn_mask, float("-inf"))
    step = joint_block_rows(B, H, S, S, query.device)
    blocks = [(a, min(S, a + step)) for a in range(0, S, step)]

    def logits_of(a: int, b: int) -> torch.Tensor:
        L = (query[:, :, a:b] @ key.transpose(-1, -2)) * scale
        m = _mask_rows(attn_mask, a, b)
        return L if m is None else L + m

    # the maxima that need every row first ("head": per sample and head; "global": per call)
    maxima: dict[int, torch.Tensor] = {}
    if any(op.fn is None and op.max_mode != "row" for op in bias):
        head_max = query.new_full((B, H), float("-inf"))
        for a, b in blocks:
            ra, rb = max(a, v0), min(b, v0 + Nv)
            if ra >= rb:
                continue
            L = logits_of(ra, rb)[..., v0 : v0 + Nv]
            head_max = torch.maximum(head_max, L.amax(dim=(-2, -1)))
        for i, op in enumerate(bias):
            if op.fn is not None:
                continue
            if op.max_mode == "head":
                maxima[i] = head_max[:, :, None]
            elif op.max_mode == "global":
                sel = head_max if op.samples is None else head_max[op.samples]
                maxima[i] = sel.amax().expand(B, H)[:, :, None]

    out = value.new_empty((B, H, S, value.shape[-1]))
    mass = query.new_empty((B, H, Nv, Fr), dtype=torch.float32) if observe else None
    text = (
        query.new_empty((B, H, Nv), dtype=torch.float32)
        if observe and layout.text != "cross"
        else None
    )
    for a, b in blocks:
        L = logits_of(a, b)
        ra, rb = max(a, v0), min(b, v0 + Nv)  # video query rows in this block
        has_video = ra < rb
        if has_video and bias:
            rows = slice(ra - a, rb - a)
            fq = frame_of[ra - v0 : rb - v0]
            Lvv = L[:, :, rows, v0 : v0 + Nv]
            for i, op in enumerate(bias):
                if op.fn is not None:
                    new = op.fn(Lvv, fq, frame_of)
                else:
                    assert op.dA is not None
                    m = Lvv.amax(dim=-1) if op.max_mode == "row" else maxima[i]
                    dA = op.dA.to(Lvv.dtype)[fq][:, frame_of]  # [rows, Nv]
                    new = Lvv + (op.scale * m)[..., None] * dA
                Lvv = _select(new, Lvv, op.samples)
            L[:, :, rows, v0 : v0 + Nv] = Lvv
        P = L.softmax(dim=-1, dtype=torch.float32)
        del L
        if has_video and replace:
            rows = slice(ra - a, rb - a)
            fq = frame_of[ra - v0 : rb - v0]
            Pvv = P[:, :, rows, v0 : v0 + Nv].unflatten(-1, (Fr, T))  # [B, H, r, F, T]
            for rop in replace:
                m = Pvv.sum(-1)  # [B, H, r, F]
                V = m.sum(-1, keepdim=True)
                within = torch.where(
                    (m > 0)[..., None], Pvv / m.clamp_min(1e-38)[..., None], Pvv.new_full((), 1 / T)
                )
                new = within * (V * rop.target.to(P.dtype)[fq])[..., None]
                Pvv = _select(new, Pvv, rop.samples)
            P[:, :, rows, v0 : v0 + Nv] = Pvv.flatten(-2)
        out[:, :, a:b] = (P.to(value.dtype) @ value).to(out.dtype)
        if observe and has_video:
            Pv = P[:, :, ra - a : rb - a]
            raw = Pv[..., v0 : v0 + Nv].unflatten(-1, (Fr, T)).sum(-1)
            assert mass is not None
            mass[:, :, ra - v0 : rb - v0] = raw / raw.sum(-1, keepdim=True)
            if text is not None:
                text[:, :, ra - v0 : rb - v0] = Pv[..., :v0].sum(-1) + Pv[..., v0 + Nv :].sum(-1)
    return out, mass, text


def to_rows(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[B, heads, F*T, C]`` per video query -> ``[B*T, heads, F, C]`` (rows ``b*T + y*w + x``),
    the temporal processors' layout, so recorders reduce joint maps like temporal ones."""
    B, H, _, C = x.shape
    return (
        x.reshape(B, H, layout.frames, layout.per_frame, C)
        .permute(0, 3, 1, 2, 4)
        .reshape(B * layout.per_frame, H, layout.frames, C)
    )
