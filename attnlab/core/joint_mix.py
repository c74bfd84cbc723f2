"""Input-dependent mixtures of window softmaxes on joint space-time attention (SlidingWindow,
SpectralBlend): the op, the mixture of a row's masses per key block, SpectralBlend's filter over
query frames, and moving a probability row's block masses. Used by both joint paths of
:mod:`attnlab.core.joint_math`; derivation in ``docs/attention-3d.md`` (*Window fusions*).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlab.core.joint_sites import TokenLayout

#: an additive mask value at or below this masks its key: ``-inf``, ``finfo.min`` and diffusers'
#: finite convention ``(1 - m) * -10000.0`` (LTX-2's ``video_self_attention_mask``, Allegro;
#: -9984 once rounded to bfloat16); a key that far below the others gets no weight anyway
MASKED = -1000.0


def unmasked(mask: torch.Tensor) -> torch.Tensor:
    """Which entries of an additive attention mask leave their key visible (:data:`MASKED`)."""
    return mask > MASKED


@dataclass
class MixOp:
    """An input-dependent mixture of window softmaxes on the video query rows (SlidingWindow,
    SpectralBlend). Per video query of frame ``i``, with ``w`` its attention mass on each key
    block (each latent frame's video tokens, and the text tokens): the softmax restricted to
    window ``n`` (its key frames ``keys[n]`` and the text) is ``w`` renormalised over them, and
    the mixture is ``sum_n coef[i, n] * that``.

    Without ``lowpass`` (FreeNoise's window fusion) the mixture is the row's new block masses.
    With ``lowpass [F, F]`` (FreeLong's SpectralBlend, ``coef`` the identity: each query frame's
    own local window) the mixture is the local branch and the output is
    ``local + Lo @ (global - local)`` over the query frames at each token position (``global``:
    the attention before this op); a ``lowpass`` op must be the call's last edit."""

    coef: torch.Tensor  # [F (query frame), W]
    keys: torch.Tensor  # bool [W, F (key frame)]
    lowpass: torch.Tensor | None = None
    samples: torch.Tensor | None = None


def mix(w: torch.Tensor, fq: torch.Tensor, op: MixOp, vis: torch.Tensor | None) -> torch.Tensor:
    """``w [B, heads, r, F (+1)]`` block masses of video rows of query frames ``fq`` -> the
    mixture of their window softmaxes (``op``; the text block, when there is one, in every
    window). A window whose whole mass underflowed gets the uniform distribution over its blocks
    that the mask leaves visible (``vis [..., r, F (+1)]``; the limit of equal logits there); a
    window with none visible is left out and the other windows' weights renormalised."""
    Fr = op.keys.shape[1]
    keys = op.keys.to(torch.float32)
    if w.shape[-1] > Fr:  # text: in every window
        keys = torch.cat([keys, keys.new_ones(keys.shape[0], w.shape[-1] - Fr)], 1)
    coef = op.coef.float()[fq]  # [r, W]
    S = w @ keys.T  # [B, H, r, W]
    empty = S <= 0
    c = torch.where(empty, torch.zeros((), dtype=w.dtype), coef / torch.where(empty, 1, S))
    out = w * (c @ keys)
    if bool(empty.any()):
        # the visible blocks of each window, per row
        vk = keys if vis is None else vis.float()[..., None, :] * keys  # [..., r, W, nb]
        n = vk.sum(-1)  # [..., r, W]
        u = torch.where(empty & (n > 0), coef, torch.zeros((), dtype=w.dtype))
        out = out + (u[..., None] * vk / n.clamp_min(1)[..., None]).sum(-2)
        out = out / out.sum(-1, keepdim=True)  # windows with nothing visible left out
    return select(out, w, op.samples)


def select(new: torch.Tensor, old: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    """``new`` for the samples (first axis) selected by ``samples`` (bool; None: all), ``old``
    for the others."""
    if samples is None:
        return new
    return torch.where(samples.view(-1, *([1] * (new.ndim - 1))), new, old)


def lowpass_frames(x: torch.Tensor, lowpass: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``Lo @ x`` over the query-frame axis of ``x [B, heads, F*T, C]`` (frame-major video
    rows) at each token position."""
    xf = x.unflatten(2, (layout.frames, layout.per_frame))
    return torch.einsum("if,bhftc->bhitc", lowpass.to(xf.dtype), xf).flatten(2, 3)


def block_masses(
    Pv: torch.Tensor, v0: int, layout: TokenLayout, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probability rows ``Pv [B, heads, r, S]`` of video queries -> their mass on each key
    block (each frame's video tokens, then the text tokens when the sequence has any:
    ``[B, heads, r, F (+1)]``) and which blocks the mask rows ``mask`` leave visible (None
    without a mask)."""
    Nv = layout.video
    S = Pv.shape[-1]
    frames = Pv[..., v0 : v0 + Nv].unflatten(-1, (layout.frames, layout.per_frame)).sum(-1)
    text = Nv < S
    w = frames
    if text:
        text_mass = Pv[..., :v0].sum(-1) + Pv[..., v0 + Nv :].sum(-1)
        w = torch.cat([frames, text_mass[..., None]], -1)
    if mask is None:
        return w, None
    seen = unmasked(mask)
    vis = seen[..., v0 : v0 + Nv].unflatten(-1, (layout.frames, layout.per_frame)).any(-1)
    if text:
        tvis = seen[..., :v0].any(-1) | seen[..., v0 + Nv :].any(-1)
        vis = torch.cat([vis, tvis[..., None]], -1)
    return w, vis


def with_masses(
    Pv: torch.Tensor,
    old: torch.Tensor,
    new: torch.Tensor,
    v0: int,
    layout: TokenLayout,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """``Pv [B, heads, r, S]`` with each key block's mass moved from ``old`` to ``new``
    (``[B, heads, r, F (+1)]``), the distribution within each block kept (a block whose mass was
    0 gets the uniform distribution over its keys the mask leaves visible)."""
    Nv, Fr, T = layout.video, layout.frames, layout.per_frame
    S = Pv.shape[-1]
    seen = None if mask is None else unmasked(mask).to(Pv.dtype)
    ratio = torch.where(old > 0, new / old.clamp_min(1e-38), torch.zeros((), dtype=Pv.dtype))
    out = Pv.clone()
    vid = Pv[..., v0 : v0 + Nv].unflatten(-1, (Fr, T)) * ratio[..., :Fr, None]
    zero = (old[..., :Fr] <= 0) & (new[..., :Fr] > 0)
    if bool(zero.any()):
        sv = Pv.new_ones(T) if seen is None else seen[..., v0 : v0 + Nv].unflatten(-1, (Fr, T))
        u = sv / sv.sum(-1, keepdim=True).clamp_min(1)
        vid = torch.where(zero[..., None], u * new[..., :Fr, None], vid)
    out[..., v0 : v0 + Nv] = vid.flatten(-2)
    if Nv < S:
        rt = ratio[..., Fr, None]
        out[..., :v0] = Pv[..., :v0] * rt
        out[..., v0 + Nv :] = Pv[..., v0 + Nv :] * rt
        tz = (old[..., Fr] <= 0) & (new[..., Fr] > 0)
        if bool(tz.any()):
            is_text = torch.ones(S, dtype=torch.bool, device=Pv.device)
            is_text[v0 : v0 + Nv] = False
            st = is_text.to(Pv.dtype) if seen is None else seen * is_text
            u = st / st.sum(-1, keepdim=True).clamp_min(1)
            out = torch.where(tz[..., None] & is_text, u * new[..., Fr, None], out)
    return out


class Blend:
    """SpectralBlend's video rows until every row is done: the local branch's output and masses,
    and the global branch's minus the local's (the filter over query frames needs them all)."""

    def __init__(self, op: MixOp, B: int, H: int, Nv: int, dv: int, nb: int, dev, observe: bool):
        assert op.lowpass is not None
        self.lowpass = op.lowpass
        f32 = torch.float32
        self.out = torch.zeros((B, H, Nv, dv), dtype=f32, device=dev)
        self.diff = torch.zeros((B, H, Nv, dv), dtype=f32, device=dev)
        self.w = torch.zeros((B, H, Nv, nb), dtype=f32, device=dev) if observe else None
        self.wdiff = torch.zeros((B, H, Nv, nb), dtype=f32, device=dev) if observe else None

    def put(self, rows: slice, g_out, l_out, g_w, l_w) -> None:
        self.out[:, :, rows] = l_out
        self.diff[:, :, rows] = g_out - l_out
        if self.w is not None and self.wdiff is not None:
            self.w[:, :, rows] = l_w
            self.wdiff[:, :, rows] = g_w - l_w

    def finish(self, out, mass, text, v0: int, layout: TokenLayout) -> None:
        """``local + Lo @ (global - local)`` over query frames, into ``out`` (and the masses)."""
        blended = self.out + lowpass_frames(self.diff, self.lowpass, layout)
        out[:, :, v0 : v0 + layout.video] = blended.to(out.dtype)
        if mass is not None and self.w is not None and self.wdiff is not None:
            eff = self.w + lowpass_frames(self.wdiff, self.lowpass, layout)
            store_masses(mass, text, eff, slice(0, layout.video), layout.frames)


def store_masses(mass, text, w: torch.Tensor, rows: slice, Fr: int) -> None:
    """Block masses ``w [B, heads, r, F (+1)]`` of video rows -> renormalised frame masses
    and text mass, into the observed results."""
    raw = w[..., :Fr]
    mass[:, :, rows] = raw / raw.sum(-1, keepdim=True)
    if text is not None:
        text[:, :, rows] = w[..., Fr:].sum(-1)
