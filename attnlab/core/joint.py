"""Frame-level maps, probes and TAR for full-3D (joint space-time) attention.

A video DiT (CogVideoX, Wan, ...) attends jointly over all ``S`` tokens of a clip: ``F``
latent frames of ``T`` patches each (frame-major: token ``v`` of the video part lies in frame
``v // T``), plus text tokens in the same sequence (CogVideoX: first) or in a separate
cross-attention (Wan). attnlab reads such a layer at the frame level.

**The frame-level map.** For query token ``q`` (a video token of frame ``f(q)``) and head ``h``
let ``p_q(k) = softmax_k(q . k / sqrt(d) + mask)`` over all keys of the sequence, and

* ``m_q(j) = sum over video keys k of frame j of p_q(k)`` (frame mass),
* ``tau_q = sum over text keys of p_q(k)`` (text mass; 0 without joint text).

The recorded map is, per head, ``A[i, j] = mean over video queries q of frame i of
m_q(j) / sum_j' m_q(j')``: each query's mass renormalised over the video keys, then averaged
(rows sum to 1, comparable with the ``N x N`` temporal maps of UNets); ``text_mass[i] = mean
over the same queries of tau_q``. With one token per frame and no text, ``A`` is exactly the
attention matrix. The per-query rows ``m_q / sum m_q`` are what the recorder sees (laid out
``[B * T, heads, F, F]`` like temporal maps, ``T`` spatial positions), so its ``mean``,
``head`` and ``spatial`` reductions apply unchanged.

**How it is computed.** ``p_q @ E`` with the one-hot membership matrix ``E[k, j] = 1`` when
key ``k`` is in frame ``j`` (and a last column for the text keys) *is* ``(m_q, tau_q)``: one
fused ``scaled_dot_product_attention`` call with ``E`` as its value, blocked over queries, in
``O(S x F)`` memory; the ``S x S`` probabilities are never stored. ``logits=True`` records the
mean pre-softmax logit over the key tokens of frame ``j``, ``q . mean_{k in j}(k) / sqrt(d)``
(linear in ``k``, so exact without the ``S x S`` logits).

**Each family's own math.** attnlab does not re-implement a model's attention: while a
selected layer runs its *original* processor, attnlab intercepts that processor's call to
``torch.nn.functional.scaled_dot_product_attention`` and receives the very ``q, k, v`` and mask
it would have used (after the model's own projections, q/k norms, RoPE and text layout). When
only recording, the original fused call produces the layer output (bit-identical to the
untouched model) and one more call with ``E`` gives the map. When an edit is active, the
output is computed explicitly in blocks of queries (``[B, heads, rows, S]`` logits per block)
with the edit applied (equal to the fused call up to float rounding when the edit is neutral).
This needs diffusers' native attention backend (the default); another backend gets a clear
error. Not thread-safe (the patch is process-global for the duration of one layer call).

**Edits on joint attention** (video query rows only; text queries and text keys untouched;
same presets, levels (every DiT layer is level 0), timestep windows and CFG halves as on
UNets):

* :class:`~attnlab.edits.TAR` / :class:`~attnlab.edits.Transfer`: on video-video pairs,
  ``logits[q, k] += scale * max * dA[f(q), f(k)]`` before the softmax, with ``max`` the
  maximum of the video-key logits of row ``q`` ("row"), of the head's whole video-video block
  ("head") or of the layer call ("global") -- the paper's Eq. 3 at the frame level;
* :class:`~attnlab.edits.Replace` with an ``F x F`` target ``M`` (identity, ones = ``J/F`` or a
  matrix): each video query's frame masses become ``M[f(q), :]`` times its video mass
  ``V_q = sum_j m_q(j)``, keeping the distribution inside each frame and the text mass:
  ``p'_q(k) = p_q(k) * V_q * M[f(q), f(k)] / m_q(f(k))`` for video keys (uniform inside a
  frame whose mass underflowed to 0). Identity: each video token attends only to its own
  latent frame (plus text where joint) -- frames independent. Ones: every frame gets the
  same total mass ``V_q / F`` -- frames fully mixed. With one token per frame and no text
  these are exactly ``I_N`` and ``J_N / N``.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from attnlab.core.protocol import (
    BiasClient,
    CallContext,
    Plan,
    ReplaceClient,
    target_matrix,
)
from attnlab.core.sites import Site

if TYPE_CHECKING:
    from attnlab.core.control import Controller

#: elements of one block's ``[B, heads, rows, S]`` logits, per device type (CPU: 16 MiB float32)
BLOCK_ELEMENTS: dict[str, int] = {"cpu": 1 << 22}
DEFAULT_BLOCK_ELEMENTS = 1 << 28


class JointAttentionError(RuntimeError):
    """A joint-attention call that does not fit the site's token layout or attnlab's path."""


@dataclass(frozen=True)
class TokenLayout:
    """Where the video tokens of one joint-attention sequence are.

    ``frames`` token frames of ``per_frame`` patches each, frame-major; ``text``: "first" (text
    tokens before the video tokens), "last" (after them) or "cross" (none in this sequence).
    """

    frames: int
    per_frame: int
    text: str

    @property
    def video(self) -> int:
        return self.frames * self.per_frame

    def video_start(self, seq: int) -> int:
        """Index of the first video token in a sequence of ``seq`` tokens (checked)."""
        n = self.video
        if self.text == "cross":
            if seq != n:
                raise JointAttentionError(
                    f"expected {n} video tokens ({self.frames} frames x {self.per_frame}), got a "
                    f"sequence of {seq}"
                )
            return 0
        if seq < n:
            raise JointAttentionError(
                f"expected at least {n} video tokens ({self.frames} frames x {self.per_frame}) "
                f"in the joint sequence, got {seq}"
            )
        return seq - n if self.text == "first" else 0

    def membership(self, seq: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``E [seq, F (+1)]``: ``E[k, j] = 1`` when key ``k`` is a video token of frame ``j``;
        the last column marks text tokens (absent for "cross")."""
        v0 = self.video_start(seq)
        cols = self.frames + (self.text != "cross")
        E = torch.zeros(seq, cols, device=device, dtype=dtype)
        idx = torch.arange(self.video, device=device)
        E[v0 + idx, idx // self.per_frame] = 1
        if self.text != "cross":
            E[:v0, -1] = 1
            E[v0 + self.video :, -1] = 1
        return E


def _block_rows(batch: int, heads: int, seq: int, rows: int, device: torch.device) -> int:
    budget = BLOCK_ELEMENTS.get(device.type, DEFAULT_BLOCK_ELEMENTS)
    return max(1, min(rows, budget // max(1, batch * heads * seq)))


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
    step = _block_rows(B, H, S, Nv, q.device)
    for c in range(0, width, d):
        Ex = E[:, c : c + d].expand(B, H, S, d)
        for a in range(0, Nv, step):
            b = min(Nv, a + step)
            out[:, :, a:b, c : c + d] = _ORIGINAL_SDPA(
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


@dataclass
class BiasOp:
    """A TAR-style logit bias: ``dA [F, F]``, max mode, scale, samples it applies to."""

    dA: torch.Tensor
    max_mode: str = "row"
    scale: float = 1.0
    samples: torch.Tensor | None = None  # bool [B]; None = all


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
    logits ``q k^T * scale + mask`` -> bias ops on the video-row x video-key part -> softmax
    (float32) -> replacement ops on the video rows -> ``@ v``. See the module docstring for
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
    step = _block_rows(B, H, S, S, query.device)
    blocks = [(a, min(S, a + step)) for a in range(0, S, step)]

    def logits_of(a: int, b: int) -> torch.Tensor:
        L = (query[:, :, a:b] @ key.transpose(-1, -2)) * scale
        m = _mask_rows(attn_mask, a, b)
        return L if m is None else L + m

    # the maxima that need every row first ("head": per sample and head; "global": per call)
    maxima: dict[int, torch.Tensor] = {}
    if any(op.max_mode != "row" for op in bias):
        head_max = query.new_full((B, H), float("-inf"))
        for a, b in blocks:
            ra, rb = max(a, v0), min(b, v0 + Nv)
            if ra >= rb:
                continue
            L = logits_of(ra, rb)[..., v0 : v0 + Nv]
            head_max = torch.maximum(head_max, L.amax(dim=(-2, -1)))
        for i, op in enumerate(bias):
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


def brute_force_frame_map(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: TokenLayout,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: the full ``S x S`` softmax in float64, summed over frame blocks and averaged
    over each frame's queries. ``([B, heads, F, F], [B, heads, F] or None)``. For tests."""
    S, d = query.shape[-2:]
    v0 = layout.video_start(S)
    scale = d**-0.5 if scale is None else scale
    L = (query.double() @ key.double().transpose(-1, -2)) * scale
    if attn_mask is not None:
        L = (
            L.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else L + attn_mask.double()
        )
    P = L.softmax(-1)[:, :, v0 : v0 + layout.video]  # video query rows
    Fr, T = layout.frames, layout.per_frame
    per_frame = P[..., v0 : v0 + layout.video].unflatten(-1, (Fr, T)).sum(-1)  # [B, H, Nv, F]
    text = P.sum(-1) - per_frame.sum(-1)
    A = (per_frame / per_frame.sum(-1, keepdim=True)).unflatten(2, (Fr, T)).mean(3)
    tm = text.unflatten(2, (Fr, T)).mean(3) if layout.text != "cross" else None
    return A, tm


_ORIGINAL_SDPA = F.scaled_dot_product_attention


class _Intercept:
    """Patches ``torch.nn.functional.scaled_dot_product_attention`` for one layer call."""

    def __init__(self, proc: JointAttnProcessor, plan: Plan, ctx: CallContext):
        self.proc = proc
        self.plan = plan
        self.ctx = ctx
        self.calls = 0
        self.samples = 0
        self.results: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []

    def __enter__(self) -> _Intercept:
        self.saved = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = self.sdpa
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.nn.functional.scaled_dot_product_attention = self.saved

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
        if query.ndim != 4 or key.shape[-2] != query.shape[-2]:
            raise JointAttentionError(
                f"{site.name}: expected a self-attention call [B, heads, S, d] with as many keys "
                f"as queries, got query {tuple(query.shape)}, key {tuple(key.shape)}"
            )
        if dropout_p or is_causal or enable_gqa or key.shape[1] != query.shape[1]:
            raise JointAttentionError(
                f"{site.name}: attnlab maps joint attention without dropout, causal masks or "
                "grouped heads (put the model in eval mode)"
            )
        layout = self.proc.layout(self.ctx)
        B = query.shape[0]
        offset = self.samples
        self.calls += 1
        self.samples += B
        plan = self.plan
        observe = bool(plan.observe)
        mass: torch.Tensor | None
        if not plan.bias and not plan.replace:
            out = self.saved(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
            )  # fmt: skip
            mass, text = frame_mass(query, key, layout, attn_mask=attn_mask, scale=scale)
        else:
            dev = query.device
            bias = [self.proc.bias_op(c, self.ctx, offset, B, dev) for c in plan.bias]
            repl = [self.proc.replace_op(c, self.ctx, offset, B, dev) for c in plan.replace]
            out, mass, text = edited_attention(
                query, key, value, layout, attn_mask=attn_mask, scale=scale,
                bias=bias, replace=repl, observe=observe,
            )  # fmt: skip
        if observe:
            logits = None
            if any(c.logits for c in plan.observe):
                logits = frame_logits(query, key, layout, scale)
            self.results.append((mass, text, logits))  # type: ignore[arg-type]
        return out

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
        if not self.plan.observe:
            return
        layout = self.proc.layout(self.ctx)
        mass = torch.cat([r[0] for r in self.results])
        text = _cat([r[1] for r in self.results])
        logits = _cat([r[2] for r in self.results])
        probs = to_rows(mass, layout)
        tm = to_rows(text[..., None], layout) if text is not None else None
        lg = to_rows(logits, layout) if logits is not None else None
        for client in self.plan.observe:
            client.observe(site, self.ctx, lg, probs, text_mass=tm)


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Concatenate per-call results that are all tensors or all None."""
    tensors = [p for p in parts if p is not None]
    return torch.cat(tensors) if tensors else None


def to_rows(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[B, heads, F*T, C]`` per video query -> ``[B*T, heads, F, C]`` (rows ``b*T + y*w + x``),
    the temporal processors' layout, so recorders reduce joint maps like temporal ones."""
    B, H, _, C = x.shape
    return (
        x.reshape(B, H, layout.frames, layout.per_frame, C)
        .permute(0, 3, 1, 2, 4)
        .reshape(B * layout.per_frame, H, layout.frames, C)
    )


class JointAttnProcessor:
    """Processor for one joint (space-time) self-attention site; the original when idle.

    When the controller's plan for this layer is empty the original processor runs untouched
    (bit-identical output). Otherwise the original still runs, with its attention call
    intercepted (see the module docstring).
    """

    def __init__(self, controller: Controller, site: Site, original: Any):
        self.controller = controller
        self.site = site
        self.original = original
        self._consts: dict[tuple, torch.Tensor] = {}
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
        plan = self.controller.plan(self.site.name)
        if plan is None:
            return self.original(attn, hidden_states, *args, **kwargs)
        ctx = self.controller.ctx
        assert ctx is not None
        with _Intercept(self, plan, ctx) as icpt:
            out = self.original(attn, hidden_states, *args, **kwargs)
        icpt.finish()
        return out

    def layout(self, ctx: CallContext) -> TokenLayout:
        table = self.controller.table
        h, w = table.level_size(0, ctx.latent)
        return TokenLayout(ctx.frames, h * w, table.text)  # type: ignore[attr-defined]

    def _samples(self, client: Any, ctx: CallContext, offset: int, n: int) -> torch.Tensor | None:
        halves = client.halves(ctx)
        if halves is None:
            return None
        per_half = ctx.batch // len(ctx.halves())
        idx = torch.arange(offset, offset + n) // per_half
        return torch.isin(idx, torch.tensor(halves))

    def _const(self, kind: str, client: Any, ctx: CallContext, make) -> torch.Tensor:
        key = (kind, id(client), ctx.frames)
        t = self._consts.get(key)
        if t is None:
            t = self._consts[key] = torch.as_tensor(make(), dtype=torch.float32)
        return t

    def bias_op(
        self, client: BiasClient, ctx: CallContext, offset: int, n: int, device: torch.device
    ) -> BiasOp:
        prior = client.logit_prior(self.site, ctx)
        if prior is None:
            raise JointAttentionError(
                f"{self.site.name}: {type(client).__name__} does not say its logit bias as a "
                "prior (logit_prior); on joint attention attnlab applies logit priors (TAR, "
                "Transfer) and fixed replacements (Replace)"
            )
        dA = self._const("bias", client, ctx, lambda: prior.dA)
        samples = self._samples(client, ctx, offset, n)
        return BiasOp(
            dA.to(device),
            prior.max_mode,
            prior.scale,
            None if samples is None else samples.to(device),
        )

    def replace_op(
        self, client: ReplaceClient, ctx: CallContext, offset: int, n: int, device: torch.device
    ) -> ReplaceOp:
        target = client.target(ctx)
        if target is None:
            raise JointAttentionError(
                f"{self.site.name}: {type(client).__name__} replaces probabilities with values "
                "that depend on the input; on joint attention attnlab supports replacements "
                "that fix the frame mass (a target: identity, ones or a matrix)"
            )
        M = self._const("replace", client, ctx, lambda: target_matrix(target, ctx.frames))
        samples = self._samples(client, ctx, offset, n)
        return ReplaceOp(M.to(device), None if samples is None else samples.to(device))
