"""The math of frame-level maps and edits on full-3D (joint space-time) attention: pure
functions of ``q, k, v`` as a model gives them to SDPA. Derivations: ``docs/attention-3d.md``.

* :func:`frame_mass` - per video query, its attention mass on each latent frame, and on text;
* :func:`frame_logits` - per video query, its mean pre-softmax logit over each frame's keys;
* :class:`BiasOp`, :class:`ReplaceOp` - a TAR-style logit bias (or a frame-level logit
  function), a frame-mass replacement; :class:`~attnlab.core.joint_mix.MixOp` (from
  :mod:`attnlab.core.joint_mix`) - a mixture of window softmaxes (SlidingWindow, SpectralBlend);
* :func:`edited_attention` - joint attention with those edits, explicit and blocked;
* :func:`split_attention` - joint attention (plain or with those edits) and its frame masses
  from one fused attention call per (query block, key frame), merged by log-sum-exp;
  :func:`split_unsupported` - why a call cannot take that path (None: it can);
* :func:`to_rows` - per-query results in the temporal processors' row layout;
* :func:`frame_map` - per-query frame masses averaged over each query frame's tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlab.core.blocking import joint_block_rows
from attnlab.core.joint_mix import (
    Blend,
    MixOp,
    block_masses,
    mix,
    select,
    store_masses,
    unmasked,
    with_masses,
)
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
    """A frame-mass replacement: target ``M [F, F]`` (rows sum to 1), or one per sample and
    head ``[B, heads, F, F]`` (the call's; a map set at ``hook_frame_probs``), and the samples
    it applies to."""

    target: torch.Tensor
    samples: torch.Tensor | None = None
    #: bool ``[B, heads, F]``: the (sample, head, query frame) rows it applies to (None: all)
    rows: torch.Tensor | None = None


def _apply_ops(
    w: torch.Tensor,
    fq: torch.Tensor,
    ops: list,
    vis: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, MixOp | None]:
    """The replacement-stage ops in order on the block masses ``w [B, heads, r, F (+1)]`` of
    video rows: a :class:`ReplaceOp` sets the rows' video masses to its target (keeping their
    video total), a :class:`MixOp` without ``lowpass`` mixes window softmaxes. Returns the new
    masses, and for a final ``lowpass`` op (SpectralBlend) the local branch's masses and the op
    (else None, None)."""
    for n, op in enumerate(ops):
        if isinstance(op, MixOp):
            if op.lowpass is not None:
                if n != len(ops) - 1:
                    raise ValueError(
                        "SpectralBlend on joint attention must be the call's last replacement-"
                        "stage edit (its output is a filter over query frames, not a map that "
                        "a later edit or a map set at hook_frame_probs could start from)"
                    )
                return w, mix(w, fq, op, vis), op  # the local branch: each frame's window
            w = mix(w, fq, op, vis)
            continue
        Fr = op.target.shape[-1]
        M, on = _replace_rows(op, fq, None if vis is None else vis[..., :Fr], w.device)
        V = w[..., :Fr].sum(-1, keepdim=True)
        new = torch.cat([V * M, w[..., Fr:]], -1) if w.shape[-1] > Fr else V * M
        w = torch.where(on[..., None], new, w)
    return w, None, None


def edited_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: TokenLayout,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    bias: list[BiasOp] = (),  # type: ignore[assignment]
    replace: list[ReplaceOp | MixOp] = (),  # type: ignore[assignment]
    observe: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Joint attention with frame-level edits, explicit and blocked over queries.

    Returns ``(out [B, heads, S, dv], mass, text)`` (``mass``/``text`` as in :func:`frame_mass`,
    of the probabilities after every edit, when ``observe``). Per block of query rows:
    logits ``q k^T * scale + mask`` -> bias ops on the video-row x video-key part (priors
    and frame-level logit functions, in order; text rows and keys untouched) -> softmax
    (float32) -> replacement ops on the video rows (fixed targets, window mixtures; on each
    row's block masses, in order) -> ``@ v`` (SpectralBlend: then its filter over query frames).
    See ``docs/attention-3d.md`` for the definitions.
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

    # the maxima that need every row first ("head": per sample and head; "global": per call),
    # each of the logits as the ops before it left them (as the temporal path applies them)
    maxima: dict[int, torch.Tensor] = {}

    def biased(Lvv: torch.Tensor, fq: torch.Tensor, ops: int) -> torch.Tensor:
        """The video-row x video-key logits after the first ``ops`` bias ops."""
        for i, op in enumerate(bias[:ops]):
            if op.fn is not None:
                new = op.fn(Lvv, fq, frame_of)
            else:
                assert op.dA is not None
                m = Lvv.amax(dim=-1) if op.max_mode == "row" else maxima[i]
                dA = op.dA.to(Lvv.dtype)[fq][:, frame_of]  # [rows, Nv]
                new = Lvv + (op.scale * m)[..., None] * dA
            Lvv = select(new, Lvv, op.samples)
        return Lvv

    for n, op in enumerate(bias):
        if op.fn is not None or op.max_mode == "row":
            continue
        head_max = query.new_full((B, H), float("-inf"))
        for a, b in blocks:
            ra, rb = max(a, v0), min(b, v0 + Nv)
            if ra >= rb:
                continue
            L = biased(logits_of(ra, rb)[..., v0 : v0 + Nv], frame_of[ra - v0 : rb - v0], n)
            head_max = torch.maximum(head_max, L.amax(dim=(-2, -1)))
        if op.max_mode == "head":
            maxima[n] = head_max[:, :, None]
        else:  # "global"
            sel = head_max if op.samples is None else head_max[op.samples]
            maxima[n] = sel.amax().expand(B, H)[:, :, None]

    out = value.new_empty((B, H, S, value.shape[-1]))
    mass = query.new_empty((B, H, Nv, Fr), dtype=torch.float32) if observe else None
    text = (
        query.new_empty((B, H, Nv), dtype=torch.float32)
        if observe and layout.text != "cross"
        else None
    )
    blend: Blend | None = None
    for a, b in blocks:
        L = logits_of(a, b)
        ra, rb = max(a, v0), min(b, v0 + Nv)  # video query rows in this block
        has_video = ra < rb
        if has_video and bias:
            rows = slice(ra - a, rb - a)
            fq = frame_of[ra - v0 : rb - v0]
            L[:, :, rows, v0 : v0 + Nv] = biased(L[:, :, rows, v0 : v0 + Nv], fq, len(bias))
        P = L.softmax(dim=-1, dtype=torch.float32)
        del L
        if has_video and replace:
            rows = slice(ra - a, rb - a)
            fq = frame_of[ra - v0 : rb - v0]
            mr = _mask_rows(attn_mask, ra, rb)
            old, vis = block_masses(P[:, :, rows], v0, layout, mr)
            new, local, mop = _apply_ops(old, fq, replace, vis)
            Pg = with_masses(P[:, :, rows], old, new, v0, layout, mr)
            P[:, :, rows] = Pg
            if mop is not None:
                assert local is not None
                if blend is None:
                    dv = value.shape[-1]
                    blend = Blend(mop, B, H, Nv, dv, old.shape[-1], query.device, observe)
                Pl = with_masses(Pg, new, local, v0, layout, mr)
                g_out = Pg.to(value.dtype) @ value
                l_out = Pl.to(value.dtype) @ value
                blend.put(slice(ra - v0, rb - v0), g_out.float(), l_out.float(), new, local)
        out[:, :, a:b] = (P.to(value.dtype) @ value).to(out.dtype)
        if observe and has_video:
            Pv = P[:, :, ra - a : rb - a]
            raw = Pv[..., v0 : v0 + Nv].unflatten(-1, (Fr, T)).sum(-1)
            assert mass is not None
            mass[:, :, ra - v0 : rb - v0] = raw / raw.sum(-1, keepdim=True)
            if text is not None:
                text[:, :, ra - v0 : rb - v0] = Pv[..., :v0].sum(-1) + Pv[..., v0 + Nv :].sum(-1)
    if blend is not None:
        blend.finish(out, mass, text, v0, layout)
    return out, mass, text


#: elements of the partial outputs one query block of :func:`split_attention` keeps (all key
#: blocks together): at least this many, or an eighth of the output's
SPLIT_BLOCK_ELEMENTS = 1 << 18
#: elements of one block of logits in the row-maximum pass of :func:`split_attention`
MAX_BLOCK_ELEMENTS = 1 << 18
#: how far (in log units) a key block's log-sum-exp may exceed the merge's reference before the
#: running output is rescaled (exp(30) ~ 1e13: far from float32's range)
_LAZY = 30.0
#: dtypes the split path runs in (torch's fused kernels with a log-sum-exp output)
SPLIT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def split_unsupported(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    bias: list[BiasOp] = (),  # type: ignore[assignment]
) -> str | None:
    """Why :func:`split_attention` cannot compute this call (None: it can)."""
    dev = query.device.type
    if dev not in ("cpu", "cuda"):
        return f"no fused attention kernel with a log-sum-exp output is used on {dev!r}"
    if query.dtype not in SPLIT_DTYPES or not (query.dtype == key.dtype == value.dtype):
        return f"q/k/v dtypes {query.dtype}/{key.dtype}/{value.dtype} (supported: one of {SPLIT_DTYPES})"  # fmt: skip
    if value.shape[-1] != query.shape[-1]:
        return f"value width {value.shape[-1]} differs from the query head dim {query.shape[-1]}"
    if attn_mask is not None and (
        attn_mask.ndim > 4 or not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point())
    ):
        return f"an attention mask of shape {tuple(attn_mask.shape)} and dtype {attn_mask.dtype}"
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, attn_mask)
    ):
        return (
            "autograd: the fused kernels' log-sum-exp output carries no gradient (run under "
            "torch.no_grad() or torch.inference_mode())"
        )
    if any(op.fn is not None for op in bias):
        return (
            "a frame-level logit function (WindowDecay) is not a constant shift of a (query "
            "frame, key frame) block"
        )
    return None


def _fused_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(q k^T * scale + mask) @ v, logsumexp of each row [B, H, r] in float32)`` by
    torch's fused kernel for the device (CPU: flash; CUDA: memory-efficient, which takes any
    float mask). A row whose keys are all masked: output 0, log-sum-exp meaningless (the caller
    masks it)."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, attn_mask=mask, scale=scale
        )
        return out, lse.float()
    bias = None
    if mask is not None:  # the kernel wants the bias's rows 16-element aligned (as SDPA pads)
        n = mask.shape[-1]
        full = mask.expand(q.shape[0], q.shape[1], q.shape[2], n)
        bias = F.pad(full, (0, -n % 16))[..., :n]
    out, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, scale=scale
    )
    return out.nan_to_num(0.0), lse[..., : q.shape[2]].float()


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: attend) as an additive float mask; a float mask in ``dtype``."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, float("-inf")
        )
    return mask.to(dtype)


def _row_frame_max(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: TokenLayout,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """``[B, heads, Nv, F]`` float32: per video query, the maximum of its logits (mask added)
    over each frame's video keys -- a pass of ``q k^T`` in blocks of query rows x one key
    frame (blocks that stay in cache: about twice as fast as whole rows on CPU)."""
    B, H, S, _ = query.shape
    v0 = layout.video_start(S)
    Nv, Fr, T = layout.video, layout.frames, layout.per_frame
    kts = [
        key[:, :, v0 + j * T : v0 + (j + 1) * T].transpose(-1, -2).contiguous() for j in range(Fr)
    ]
    out = query.new_empty((B, H, Nv, Fr), dtype=torch.float32)
    step = max(1, min(Nv, MAX_BLOCK_ELEMENTS // max(1, B * H * T)))
    for a in range(0, Nv, step):
        b = min(Nv, a + step)
        q = query[:, :, v0 + a : v0 + b] * scale  # the scale on q: one pass less
        m = _mask_rows(mask, v0 + a, v0 + b)
        for j, kt in enumerate(kts):
            L = q @ kt
            if m is not None:
                L += m[..., v0 + j * T : v0 + (j + 1) * T]
            out[:, :, a:b, j] = L.amax(-1)
    return out


def _visible(mask: torch.Tensor | None, cols: list[tuple[int, int]]) -> torch.Tensor | None:
    """Per row, whether any key of each column block is unmasked (``[..., rows, blocks]``,
    broadcastable; None without a mask)."""
    if mask is None:
        return None
    return torch.stack([unmasked(mask[..., a:b]).any(-1) for a, b in cols], -1)


def _replace_target(
    rop: ReplaceOp, fq: torch.Tensor, vis: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A replacement's target rows ``M[f(q), :]`` under the mask: renormalised over the key
    frames each row can see (``vis [..., rows, F]``); and which rows it applies to (None: all;
    a row whose target puts nothing on a visible frame keeps its masses, and so does a row
    outside the op's ``rows``)."""
    # [rows, F]; a per-sample, per-head target [B, heads, F, F] (a map set at a hook point):
    # [B, heads, rows, F]
    M = rop.target.float()[fq] if rop.target.ndim == 2 else rop.target.float()[:, :, fq]
    rows = None if rop.rows is None else rop.rows[:, :, fq]  # [B, heads, rows]
    if vis is None:
        return M, rows
    Mv = M * vis
    total = Mv.sum(-1, keepdim=True)
    ok = total[..., 0] > 0
    return Mv / total.clamp_min(1e-38), ok if rows is None else ok & rows


def _replace_rows(
    rop: ReplaceOp, fq: torch.Tensor, vis: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_replace_target`, with the rows it applies to as one bool mask broadcastable to
    ``[B, heads, rows]``: its ``rows``, the mask's and its samples together."""
    M, ok = _replace_target(rop, fq, vis)
    on = torch.ones((), dtype=torch.bool, device=device) if ok is None else ok
    if rop.samples is not None:
        on = on & rop.samples.view(-1, 1, 1)
    return M, on


def _video_rows(vis: torch.Tensor | None, vr: slice) -> torch.Tensor | None:
    """The video rows ``vr`` of a block's key-block visibility (:func:`_visible`; a mask with one
    row for all queries stays as it is)."""
    return None if vis is None else (vis[..., vr, :] if vis.shape[-2] > 1 else vis)


def split_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: TokenLayout,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    bias: list[BiasOp] = (),  # type: ignore[assignment]
    replace: list[ReplaceOp | MixOp] = (),  # type: ignore[assignment]
    observe: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Joint attention, plain or with frame-level edits, and its frame masses, from torch's
    fused attention split by key frame and merged by log-sum-exp.

    Same arguments and results as :func:`edited_attention` (priors only: a :class:`BiasOp`
    with ``fn`` is refused by :func:`split_unsupported`). The keys are split into blocks --
    each latent frame's video tokens, and the text tokens -- and for each block of query rows
    and each key block ``j`` a fused call gives ``O_j`` (the softmax over block ``j``'s keys
    applied to its values) and ``lse_j`` (the row's log-sum-exp over them). Then, per row,
    with ``c_j`` the prior's constant for (query frame, key frame ``j``) and
    ``LSE = logsumexp_j (lse_j + c_j)``: frame masses ``w_j = exp(lse_j + c_j - LSE)``, a
    replacement sets the video ``w_j`` to ``(sum of video w) * M'[f(q), j]`` (``M'``: the
    target row renormalised over the frames the mask leaves visible), and the output is
    ``sum_j w_j O_j``. TAR's ``max`` comes from a first pass of ``q k^T`` (per-frame row
    maxima, from which every max mode and chained priors follow). With a :class:`MixOp`
    (SlidingWindow, SpectralBlend) every ``O_j`` of a block of query rows is kept until the
    row's ``w`` is known, the ops act on ``w`` in order (:func:`_apply_ops`), and SpectralBlend's
    filter over query frames runs once every row is done. Derivation: ``docs/attention-3d.md``.
    """
    B, H, S, d = query.shape
    scale = d**-0.5 if scale is None else scale
    v0 = layout.video_start(S)
    Nv, Fr, T = layout.video, layout.frames, layout.per_frame
    cols = [(v0 + j * T, v0 + (j + 1) * T) for j in range(Fr)]
    if v0 > 0:
        cols.append((0, v0))
    elif v0 + Nv < S:
        cols.append((v0 + Nv, S))
    nb = len(cols)
    has_text = layout.text != "cross"
    mask = _additive(attn_mask, query.dtype)
    dev = query.device
    frame_of = torch.arange(Nv, device=dev) // T

    # priors: per-frame row maxima first (every max mode and chained priors follow from them:
    # a prior adds a constant per query row and key frame, so the maxima of the logits after
    # each op are those before it plus its constant)
    fmax: torch.Tensor | None = None
    maxima: dict[int, torch.Tensor] = {}
    if bias:
        fmax = _row_frame_max(query, key, layout, mask, scale)
        after = fmax.clone()  # [B, H, Nv, F]: per-frame row maxima after the ops so far
        for i, op in enumerate(bias):
            assert op.dA is not None
            if op.max_mode != "row":
                head_max = after.amax(dim=(-2, -1))  # [B, H]
                if op.max_mode == "global":
                    sel = head_max if op.samples is None else head_max[op.samples]
                    head_max = sel.amax().expand(B, H)
                maxima[i] = head_max[:, :, None]
            mx = after.amax(-1, keepdim=True) if op.max_mode == "row" else maxima[i][..., None]
            c = op.scale * mx * op.dA.float()[frame_of]
            after += select(c, torch.zeros_like(c), op.samples)

    dv = value.shape[-1]
    out = value.new_empty((B, H, S, dv))
    mass = query.new_empty((B, H, Nv, Fr), dtype=torch.float32) if observe else None
    text = query.new_empty((B, H, Nv), dtype=torch.float32) if observe and has_text else None
    budget = max(SPLIT_BLOCK_ELEMENTS, B * H * S * dv // 16)
    mixing = any(isinstance(op, MixOp) for op in replace)
    step = max(1, min(S, budget // max(1, B * H * dv)))
    if mixing:
        # every key block's partial output is kept until the row's masses are known: as many
        # rows as keep them within half the output's size (within the same budget at least);
        # short blocks of query rows would cost the fused kernel more than the memory saves
        step = max(1, step // nb, min(step, S // (2 * nb)))
    blend: Blend | None = None
    for a in range(0, S, step):
        b = min(S, a + step)
        q = query[:, :, a:b]
        m = _mask_rows(mask, a, b)
        vis = _visible(m, cols)
        ra, rb = max(a, v0), min(b, v0 + Nv)  # video query rows in this block
        vr = slice(ra - a, rb - a)
        fq = frame_of[ra - v0 : rb - v0]
        # per (row, key block): the prior's constant
        shift = None
        if ra < rb and bias:
            assert fmax is not None
            cur = fmax[:, :, ra - v0 : rb - v0].clone()  # per-frame maxima of the current logits
            shift = torch.zeros((B, H, b - a, nb), dtype=torch.float32, device=dev)
            for i, op in enumerate(bias):
                assert op.dA is not None
                mx = cur.amax(-1, keepdim=True) if op.max_mode == "row" else maxima[i][..., None]
                c = op.scale * mx * op.dA.float()[fq]
                c = select(c, torch.zeros_like(c), op.samples)
                shift[:, :, vr, :Fr] += c
                cur += c
        # replacements: the target row of each video query (the last op that applies wins:
        # a replacement keeps each row's video mass, so a later one overrides an earlier)
        target = applied = None
        if ra < rb and replace and not mixing:
            vvis = _video_rows(vis, vr)
            fvis = None if vvis is None else vvis[..., :Fr]
            target = torch.zeros((B, H, b - a, Fr), dtype=torch.float32, device=dev)
            applied = torch.zeros((B, H, b - a), dtype=torch.bool, device=dev)
            for rop in replace:
                assert isinstance(rop, ReplaceOp)
                M, on = _replace_rows(rop, fq, fvis, dev)
                on = on.expand(B, H, rb - ra)
                target[:, :, vr] = torch.where(on[..., None], M, target[:, :, vr])
                applied[:, :, vr] |= on
        lse = torch.empty((B, H, b - a, nb), dtype=torch.float32, device=dev)
        acc = ref = acc_m = o_text = None
        parts: list[torch.Tensor] | None = [] if mixing else None
        for j, (c0, c1) in enumerate(cols):
            mj = None if m is None else m[..., c0:c1]
            o, lj = _fused_lse(q, key[:, :, c0:c1], value[:, :, c0:c1], mj, scale)
            if vis is not None:
                lj = lj.masked_fill(~vis[..., j], float("-inf"))
            lse[..., j] = lj
            if parts is not None:
                parts.append(o)
                continue
            if shift is not None:
                lj = lj + shift[..., j]
            # online merge (flash-decoding), rescaled lazily: acc = sum_j exp(lse_j - ref) O_j
            # with a per-row reference ref, moved (and acc rescaled) only when a block's
            # log-sum-exp exceeds it by more than _LAZY; the result is acc * exp(ref - LSE).
            # (A row whose keys in a block are all masked has O_j = 0 there.)
            if acc is None:
                acc, ref = o.float(), lj.nan_to_num(neginf=0.0)
            else:
                assert ref is not None
                if bool((lj - ref).amax() > _LAZY):
                    new_ref = torch.maximum(ref, lj)
                    acc.mul_((ref - new_ref).exp_()[..., None])
                    ref = new_ref
                acc.addcmul_(o, (lj - ref).exp_()[..., None])
            if target is not None:
                if j < Fr:
                    term = o * target[..., j, None]
                    acc_m = term.float() if acc_m is None else acc_m.add_(term)
                else:
                    o_text = o
        if shift is not None:
            lse = lse + shift
        total = lse.logsumexp(-1, keepdim=True)
        w = (lse - total).exp().nan_to_num_(0.0)  # [B, H, r, blocks]
        if parts is not None:
            blend = _mixed_rows(
                out, mass, text, blend, parts, w, a, b, v0, vr, fq, vis, replace, layout
            )
            continue
        if observe and ra < rb:
            assert mass is not None
            raw = w[:, :, vr, :Fr]
            if target is not None:
                assert applied is not None
                raw = torch.where(applied[:, :, vr, None], target[:, :, vr], raw)
            mass[:, :, ra - v0 : rb - v0] = raw / raw.sum(-1, keepdim=True)
            if text is not None:
                text[:, :, ra - v0 : rb - v0] = w[:, :, vr, Fr:].sum(-1)
        assert acc is not None and ref is not None
        factor = (ref - total[..., 0]).exp_()
        factor = torch.where(factor.isfinite(), factor, 0.0)[..., None]  # all masked: 0
        if target is None and acc.dtype == out.dtype:
            torch.mul(acc, factor, out=out[:, :, a:b])
            continue
        acc.mul_(factor)
        if acc_m is not None:
            assert applied is not None
            wt = w[..., Fr:].sum(-1, keepdim=True)  # text mass, kept
            edited = acc_m * (1 - wt)
            if o_text is not None:
                edited += o_text * wt
            acc = torch.where(applied[..., None], edited, acc)
        out[:, :, a:b] = acc
    if blend is not None:
        blend.finish(out, mass, text, v0, layout)
    return out, mass, text


def _mixed_rows(
    out, mass, text, blend, parts, w, a, b, v0, vr, fq, vis, ops, layout
) -> Blend | None:
    """One block of query rows ``a:b`` of :func:`split_attention` with a :class:`MixOp`: the
    replacement-stage ops on the video rows' block masses ``w``, the output ``sum_j w_j O_j``
    from the kept partial outputs ``parts``; SpectralBlend's rows go to ``blend`` (made on its
    first rows; returned)."""
    B, H = w.shape[:2]
    Fr = layout.frames
    new = local = op = None
    wn = w
    if vr.start < vr.stop:
        new, local, op = _apply_ops(w[:, :, vr], fq, ops, _video_rows(vis, vr))
        wn = w.clone()
        wn[:, :, vr] = new
    acc = torch.zeros(parts[0].shape, dtype=torch.float32, device=w.device)
    for j, o in enumerate(parts):
        acc.addcmul_(o.float(), wn[..., j, None])
    out[:, :, a:b] = acc.to(out.dtype)
    if new is None:
        return blend
    rows = slice(vr.start + a - v0, vr.stop + a - v0)
    if op is None:
        if mass is not None:
            store_masses(mass, text, new, rows, Fr)
        return blend
    assert local is not None
    if blend is None:
        blend = Blend(
            op, B, H, layout.video, acc.shape[-1], w.shape[-1], w.device, mass is not None
        )
    l_out = torch.zeros_like(acc[:, :, vr])
    for j, o in enumerate(parts):
        l_out.addcmul_(o[:, :, vr].float(), local[..., j, None])
    blend.put(rows, acc[:, :, vr], l_out, new, local)
    return blend


def to_rows(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[B, heads, F*T, C]`` per video query -> ``[B*T, heads, F, C]`` (rows ``b*T + y*w + x``),
    the temporal processors' layout, so recorders reduce joint maps like temporal ones."""
    B, H, _, C = x.shape
    return (
        x.reshape(B, H, layout.frames, layout.per_frame, C)
        .permute(0, 3, 1, 2, 4)
        .reshape(B * layout.per_frame, H, layout.frames, C)
    )


def frame_map(mass: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[B, heads, F*T, F]`` per video query -> ``[B, heads, F, F]``: the frame-level map of
    each query frame (its queries' renormalised frame masses averaged), the ``A[i, j]`` of
    ``docs/attention-3d.md``."""
    return mass.unflatten(2, (layout.frames, layout.per_frame)).mean(3)
