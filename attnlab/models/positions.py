"""The frame positional encodings of every family, read from the models themselves, and the
hooks through which the positional-encoding edits (:mod:`attnlab.edits.positions`) change them.

:func:`pe_report` tabulates each distinct temporal encoding of a model, one row per frequency:
its period in latent and video frames and RIFLEx's intrinsic frequency for the training length.
The frequencies are read from the model's own modules, not re-typed:

* organism-rope (:class:`~attnlab.models.organisms.FrameRoPE`): measured from its own cos/sin
  (``_cos_sin``), rotate-half layout;
* LaVie (:class:`~attnlab.models.lavie.LaVieRoPE`): its ``freqs`` buffer, interleaved pairs;
* CogVideoX: diffusers' ``get_3d_rotary_pos_embed`` (what the pipeline calls) for the config's
  head dim, temporal share ``D // 4``;
* Wan: the ``WanRotaryPosEmbed`` buffers ``freqs_cos`` / ``freqs_sin``, temporal share
  ``t_dim``;
* HunyuanVideo: ``HunyuanVideoRotaryPosEmbed`` itself (``rope_dim[0]`` channels, its
  ``theta``);
* LTX-Video: ``LTXVideoRotaryPosEmbed``'s attributes (``dim // 6`` frequencies, ``theta``,
  ``base_num_frames``, ``patch_size_t``), per latent frame at the pipeline's frame rate;
* Mochi: the learned weights ``pos_frequencies[0]`` (heads x D/2);
* sinusoidal tables (AnimateDiff, organism-sinusoidal, Latte): measured from the stored table.

The edits go through the same places: a RoPE edit swaps a frequency buffer or cos/sin table for
the duration of the rotary module's call (LaVie, Wan), passes retuned frequencies into it
(Mochi), rewrites the temporal columns of the cos/sin it returns (HunyuanVideo, LTX-Video,
organism-rope) or of the cos/sin the pipeline hands to the transformer (CogVideoX). Only the
columns of a changed frequency are recomputed (``cos(position * w')`` in float64); every other
column is the model's own, bit for bit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from attnlab.core.sites import denoiser_of, family_of
from attnlab.edits.positions import (
    PositionHandler,
    Retune,
    TemporalPE,
    frequency_ranks,
    intrinsic_rank,
    latent_frames,
    periods,
    register_position_handler,
    token_frames,
)

#: positions probed to measure frequencies from a cos/sin table (powers of two up to this)
PROBE_POSITIONS = 1025
#: training lengths in video frames, as the families' papers and configs state them
TRAIN_FRAMES = {
    "organism": 16,  # attnlab.models.organisms.TRAIN_FRAMES
    "lavie": 16,
    "motion": 16,  # AnimateDiff: 16-frame clips (the table holds motion_max_seq_length)
    "unet3d": 16,
    "videocrafter2": 16,
    "i2vgenxl": 16,
    "wan": 81,  # Wan 2.1: 81 frames (21 latent)
    "hunyuanvideo": 129,  # 129 frames (33 latent)
}


# ---- measuring frequencies ----------------------------------------------------------------------
def measure_frequencies(cos: torch.Tensor, sin: torch.Tensor) -> np.ndarray:
    """The angular frequency of each column of a cos/sin table over positions ``0 .. P-1``
    (rows): the angle at position 1, refined by unwrapping at positions 2, 4, 8, ... (each
    step's prediction is far closer than pi), so the result has the table's precision divided
    by the largest position used. Frequencies up to pi per position."""
    c = cos.detach().to(torch.float64).cpu().numpy()
    s = sin.detach().to(torch.float64).cpu().numpy()
    w = np.arctan2(s[1], c[1])
    p = 2
    while p < c.shape[0]:
        a = np.arctan2(s[p], c[p])
        a = a + 2 * math.pi * np.round((w * p - a) / (2 * math.pi))
        w = a / p
        p *= 2
    return w


def _probe_len(limit: int | None = None) -> int:
    return min(PROBE_POSITIONS, limit) if limit else PROBE_POSITIONS


# ---- rewriting the temporal columns of a cos/sin table -----------------------------------------
def _rewrite(
    cos: torch.Tensor,
    sin: torch.Tensor,
    columns: list[tuple[int, ...]],
    pos: torch.Tensor,
    old: np.ndarray,
    new: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``cos``/``sin`` (positions along dim -2, broadcast against ``pos`` [..., S])
    with the columns of every frequency ``j`` where ``new[j] != old[j]`` set to
    ``cos/sin(pos * new[j])`` (float64, then the table's dtype)."""
    cos, sin = cos.clone(), sin.clone()
    p = pos.to(torch.float64)
    for j in np.flatnonzero(new != old):
        ang = p * float(new[j])
        for col in columns[j]:
            cos[..., col] = ang.cos().to(cos.dtype)
            sin[..., col] = ang.sin().to(sin.dtype)
    return cos, sin


def _interleaved(n: int, offset: int = 0, stride: int = 2) -> list[tuple[int, ...]]:
    """Columns of frequency ``j`` in an interleaved (``repeat_interleave``) table."""
    return [(offset + stride * j, offset + stride * j + 1) for j in range(n)]


def _undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    def undo() -> None:
        errors = []
        for u in reversed(undos):
            try:
                u()
            except Exception as err:  # restore everything, then report
                errors.append(err)
        if errors:
            raise RuntimeError(f"attnlab could not fully restore the positional encoding: {errors}")

    return undo


def _hooks(*handles: Any) -> Callable[[], None]:
    return _undo_all([h.remove for h in handles])


def _changed(retune: Retune, freqs: np.ndarray, length: int) -> np.ndarray | None:
    new = retune(freqs, int(length))
    if new is None or np.array_equal(new, freqs):
        return None
    return np.asarray(new, dtype=np.float64)


# ---- sinusoidal tables (AnimateDiff, organism-sinusoidal, Latte) --------------------------------
def _table_blocks(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    for name, module in model.named_modules():
        if isinstance(getattr(module, "pos_embed", None), SinusoidalPositionalEmbedding):
            yield name, module


def _table_pes(model: torch.nn.Module) -> list[TemporalPE]:
    """One :class:`TemporalPE` per distinct sinusoidal table (``pe[:, 0::2]`` sin,
    ``pe[:, 1::2]`` cos: diffusers' ``SinusoidalPositionalEmbedding``)."""
    out: dict[tuple, TemporalPE] = {}
    for name, block in _table_blocks(model):
        pe = block.pos_embed.pe[0]  # [L, C]
        key = (tuple(pe.shape), pe.device.type)
        if key in out:
            out[key].layers += 1
            continue
        w = measure_frequencies(pe[:, 1::2], pe[:, 0::2])
        out[key] = TemporalPE(
            "sinusoidal", f"{name}.pos_embed", w[None], base=_table_base(w, pe.shape[1]),
            table_len=int(pe.shape[0]), dim=int(pe.shape[1]),
            note="absolute, added to the hidden states before each temporal attention",
        )  # fmt: skip
    return list(out.values())


def _table_base(w: np.ndarray, dim: int) -> float | None:
    """The base ``b`` of ``w_i = b^(-2i/C)``, from the slowest measured frequency."""
    if len(w) < 2 or w[-1] <= 0:
        return None
    return float(round(math.exp(-math.log(w[-1]) * dim / (2 * (len(w) - 1))), 3))


def _install_table(model: torch.nn.Module, mode: str, frames: int) -> Callable[[], None]:
    """Rebuild every sinusoidal table for ``frames`` positions (organisms' extend / interpolate,
    or the table tiled); the undo puts back the stored tensors and the config."""
    from diffusers import UNetMotionModel

    from attnlab.models import organisms

    blocks = [b for _, b in _table_blocks(model)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no sinusoidal frame table")
    length = min(int(b.pos_embed.pe.shape[1]) for b in blocks)
    if frames <= length:
        return lambda: None  # within the stored table: nothing to change
    key = "motion_max_seq_length" if isinstance(model, UNetMotionModel) else "frame_pe_max_len"
    if key not in model.config:
        raise ValueError(
            f"{type(model).__name__}: attnlab rebuilds the frame tables of AnimateDiff "
            "(UNetMotionModel) and the sinusoidal organism only"
        )
    saved = [(b.pos_embed, b.pos_embed.pe) for b in blocks]
    old_len = model.config[key]

    def undo() -> None:
        for module, pe in saved:
            module.pe = pe
        model.register_to_config(**{key: old_len})

    try:
        if mode == "extend":
            organisms.extend_frame_positions(model, frames)  # type: ignore[arg-type]
        elif mode == "interpolate":
            organisms.interpolate_frame_positions(model, frames)  # type: ignore[arg-type]
        elif mode == "repeat":
            for module, pe in saved:
                module.pe = pe[:, torch.arange(frames, device=pe.device) % pe.shape[1]]
            model.register_to_config(**{key: frames})
        else:
            raise ValueError(f"mode must be extend, interpolate or repeat; got {mode!r}")
    except Exception:
        undo()
        raise
    return undo


def _latte_pes(model: torch.nn.Module) -> list[TemporalPE]:
    table = getattr(model, "temp_pos_embed", None)
    if not isinstance(table, torch.Tensor) or table.is_meta:
        return [TemporalPE("sinusoidal", "temp_pos_embed", note="table not materialised")]
    pe = table[0]  # [L, C]: sin over the first half of the channels, cos over the second
    half = pe.shape[1] // 2
    w = measure_frequencies(pe[:, half:], pe[:, :half])
    return [
        TemporalPE(
            "sinusoidal", "temp_pos_embed", w[None], table_len=int(pe.shape[0]),
            dim=int(pe.shape[1]), note="fixed sin-cos of exactly video_length frames",
        )
    ]  # fmt: skip


# ---- organism-rope: FrameRoPE (rotate-half layout) ----------------------------------------------
def _site_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from attnlab.core.sites import sites

    modules = dict(model.named_modules())
    return [(s.name, modules[s.name]) for s in sites(model)]


def _frame_ropes(model: torch.nn.Module) -> list[tuple[str, Any]]:
    from attnlab.models.organisms import FrameRoPE

    return [
        (name, attn.attnlab_rope)
        for name, attn in _site_modules(model)
        if isinstance(getattr(attn, "attnlab_rope", None), FrameRoPE)
    ]


def _frame_rope_freqs(rope: Any) -> np.ndarray:
    cos, sin = rope._cos_sin(_probe_len(), torch.device("cpu"), torch.float64)
    return measure_frequencies(cos[:, : rope.head_dim // 2], sin[:, : rope.head_dim // 2])


def _organism_pes(model: torch.nn.Module) -> list[TemporalPE]:
    kind = model.config.get("frame_pe", "none")
    if kind == "sinusoidal":
        return _table_pes(model)
    if kind != "rope":
        return [TemporalPE("none", "-", note="no frame positional encoding")]
    out: dict[tuple, TemporalPE] = {}
    for name, rope in _frame_ropes(model):
        key = (rope.head_dim, rope.base)
        if key in out:
            out[key].layers += 1
            continue
        out[key] = TemporalPE(
            "rope", f"{name}.attnlab_rope", _frame_rope_freqs(rope)[None], base=float(rope.base),
            dim=rope.head_dim, note="FrameRoPE on temporal q, k (rotate-half pairs j, j + d/2)",
        )  # fmt: skip
    return list(out.values())


def _install_frame_rope(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    undos: list[Callable[[], None]] = []
    for _, rope in _frame_ropes(model):
        freqs = _frame_rope_freqs(rope)[None]
        half = rope.head_dim // 2
        columns = [(j, j + half) for j in range(half)]
        own = rope._cos_sin  # the bound method of its class

        def cos_sin(frames, device, dtype, own=own, freqs=freqs, columns=columns):
            cos, sin = own(frames, device, dtype)
            new = _changed(retune, freqs, frames)
            if new is None:
                return cos, sin
            pos = torch.arange(frames, device=cos.device)[:, None]
            return _rewrite(cos, sin, columns, pos[:, 0], freqs[0], new[0])

        rope._cos_sin = cos_sin  # shadows the method on this instance only
        undos.append(lambda rope=rope: delattr(rope, "_cos_sin"))
    return _undo_all(undos)


# ---- LaVie: LaVieRoPE, its freqs buffer ---------------------------------------------------------
def _lavie_ropes(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from attnlab.models.lavie import LaVieRoPE

    out = []
    for name, attn in _site_modules(model):
        rope = getattr(attn, "attnlab_rope", None)
        if isinstance(rope, LaVieRoPE):
            out.append((name, rope))
    return out


def _lavie_pes(model: torch.nn.Module) -> list[TemporalPE]:
    out: dict[tuple, TemporalPE] = {}
    for name, rope in _lavie_ropes(model):
        w = rope.freqs.detach().double().cpu().numpy()
        key = tuple(w.tolist())
        if key in out:
            out[key].layers += 1
            continue
        out[key] = TemporalPE(
            "rope", f"{name}.rotary_emb", w[None], base=_table_base(w, rope.dim), dim=rope.dim,
            note="RoPE on the first dim channels of q, k (interleaved pairs) plus a learned "
            "relative position bias (not a frequency: not listed)",
        )  # fmt: skip
    return list(out.values())


def _install_lavie(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    handles = []
    for _, rope in _lavie_ropes(model):
        own = rope.freqs
        freqs = own.detach().double().cpu().numpy()[None]

        def pre(module, args, own=own, freqs=freqs):
            new = _changed(retune, freqs, args[0].shape[-2])
            if new is not None:
                changed = torch.from_numpy(new[0] != freqs[0]).to(own.device)
                module._buffers["freqs"] = torch.where(
                    changed, torch.from_numpy(new[0]).to(own.device, own.dtype), own
                )

        def post(module, args, output, own=own):
            module._buffers["freqs"] = own

        handles += [rope.register_forward_pre_hook(pre), rope.register_forward_hook(post)]
    return _hooks(*handles)


# ---- 3D RoPE DiTs ------------------------------------------------------------------------------
def _geometric(dim: int, theta: float) -> np.ndarray:
    """Frequencies of diffusers' ``get_1d_rotary_pos_embed(dim, ., theta)``, measured from it."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cos, sin = get_1d_rotary_pos_embed(
        dim, torch.arange(_probe_len(), dtype=torch.float64), theta, use_real=True,
        freqs_dtype=torch.float64,
    )  # fmt: skip
    return measure_frequencies(cos[:, 0::2], sin[:, 0::2])


def _cog_dims(model) -> tuple[int, int, int]:
    D = int(model.config.attention_head_dim)
    return D // 4, D // 8 * 3, D // 8 * 3


def _cog_theta() -> float:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    return float(inspect.signature(get_3d_rotary_pos_embed).parameters["theta"].default)


def _cog_pes(model: torch.nn.Module) -> list[TemporalPE]:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = model.config
    if not cfg.get("use_rotary_positional_embeddings", False):
        kind = "learned" if cfg.get("use_learned_positional_embeddings", False) else "sinusoidal"
        return [TemporalPE(kind, "patch_embed", note="absolute 3D embedding added to the tokens")]
    D = int(cfg.attention_head_dim)
    t, h, w = _cog_dims(model)
    theta = _cog_theta()
    # the pipeline's own call (_prepare_rotary_positional_embeddings), one patch per frame
    cos, sin = get_3d_rotary_pos_embed(
        D, None, (1, 1), _probe_len(), grid_type="slice", max_size=(1, 1)
    )
    return [
        TemporalPE(
            "rope3d", "get_3d_rotary_pos_embed (pipeline)",
            measure_frequencies(cos[:, 0:t:2], sin[:, 0:t:2])[None], base=theta,
            frame_step=int(cfg.get("patch_size_t") or 1), dim=t,
            layers=int(cfg.num_layers), spatial={"h": _geometric(h, theta), "w": _geometric(w, theta)},
            note=f"temporal share D/4 = {t} of head dim {D}",
        )
    ]  # fmt: skip


def _install_cog(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    t, _, _ = _cog_dims(model)
    freqs = _cog_pes(model)[0].freqs
    assert freqs is not None
    p_t = int(model.config.get("patch_size_t") or 1)
    sig = inspect.signature(model.forward)

    def pre(module, args, kwargs):
        bound = sig.bind_partial(*args, **kwargs)
        rope = bound.arguments.get("image_rotary_emb")
        hidden = bound.arguments.get("hidden_states")
        if rope is None or hidden is None:
            return None
        frames = max(1, hidden.shape[1] // p_t)
        new = _changed(retune, freqs, frames)
        if new is None:
            return None
        cos, sin = rope
        per_frame = cos.shape[-2] // frames
        pos = torch.arange(cos.shape[-2], device=cos.device) // per_frame
        bound.arguments["image_rotary_emb"] = _rewrite(
            cos, sin, _interleaved(t // 2), pos, freqs[0], new[0]
        )
        return bound.args, bound.kwargs

    return _hooks(model.register_forward_pre_hook(pre, with_kwargs=True))


def _wan_pes(model: torch.nn.Module) -> list[TemporalPE]:
    rope = model.rope
    t, h = rope.t_dim, rope.h_dim
    cos, sin = rope.freqs_cos, rope.freqs_sin  # [max_seq_len, D], interleaved pairs
    if cos.is_meta:
        return [TemporalPE("rope3d", "rope", note="buffers not materialised")]

    def axis(a: int, b: int) -> np.ndarray:
        return measure_frequencies(cos[: _probe_len(), a:b:2], sin[: _probe_len(), a:b:2])

    return [
        TemporalPE(
            "rope3d", "rope.freqs_cos / freqs_sin", axis(0, t)[None], base=_wan_theta(),
            frame_step=int(rope.patch_size[0]), dim=t, layers=len(model.blocks),
            spatial={"h": axis(t, t + h), "w": axis(t + h, t + 2 * h)},
            note=f"temporal share {t} of head dim {rope.attention_head_dim} (h = w = {h}); "
            f"table of {rope.max_seq_len} positions",
        )
    ]  # fmt: skip


def _wan_theta() -> float:
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    return float(inspect.signature(WanRotaryPosEmbed.__init__).parameters["theta"].default)


def _install_wan(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    rope = model.rope
    freqs = _wan_pes(model)[0].freqs
    assert freqs is not None
    own = (rope.freqs_cos, rope.freqs_sin)
    columns = _interleaved(rope.t_dim // 2)
    cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def pre(module, args):
        frames = args[0].shape[2] // module.patch_size[0]
        new = _changed(retune, freqs, frames)
        if new is None:
            return
        key = new.tobytes()
        if key not in cache:
            pos = torch.arange(own[0].shape[0], device=own[0].device)[:, None]
            cache[key] = _rewrite(own[0], own[1], columns, pos[:, 0], freqs[0], new[0])
        module._buffers["freqs_cos"], module._buffers["freqs_sin"] = cache[key]

    def post(module, args, output):
        module._buffers["freqs_cos"], module._buffers["freqs_sin"] = own

    return _hooks(rope.register_forward_pre_hook(pre), rope.register_forward_hook(post))


def _hunyuan_probe(rope: torch.nn.Module, axis: int) -> np.ndarray:
    """Frequencies of one axis, measured from ``HunyuanVideoRotaryPosEmbed`` itself."""
    shape = [1, 1, rope.patch_size_t, rope.patch_size, rope.patch_size]
    shape[2 + axis] *= _probe_len()
    cos, sin = rope(torch.zeros(shape))
    a = sum(rope.rope_dim[:axis])
    b = a + rope.rope_dim[axis]
    return measure_frequencies(cos[:, a:b:2], sin[:, a:b:2])


def _hunyuan_pes(model: torch.nn.Module) -> list[TemporalPE]:
    rope = model.rope
    t = rope.rope_dim[0]
    return [
        TemporalPE(
            "rope3d", "rope", _hunyuan_probe(rope, 0)[None], base=float(rope.theta),
            frame_step=int(rope.patch_size_t), dim=int(t),
            layers=len(model.transformer_blocks) + len(model.single_transformer_blocks),
            spatial={"h": _hunyuan_probe(rope, 1), "w": _hunyuan_probe(rope, 2)},
            note=f"rope_axes_dim {tuple(rope.rope_dim)}: temporal share {t}",
        )
    ]  # fmt: skip


def _install_hunyuan(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    rope = model.rope
    freqs = _hunyuan_pes(model)[0].freqs
    assert freqs is not None
    columns = _interleaved(rope.rope_dim[0] // 2)

    def post(module, args, output):
        _, _, F, H, W = args[0].shape
        frames = F // module.patch_size_t
        new = _changed(retune, freqs, frames)
        if new is None:
            return None
        cos, sin = output
        per_frame = (H // module.patch_size) * (W // module.patch_size)
        pos = torch.arange(cos.shape[-2], device=cos.device) // per_frame
        return _rewrite(cos, sin, columns, pos, freqs[0], new[0])

    return _hooks(rope.register_forward_hook(post))


#: LTXPipeline's default frame rate (its rope_interpolation_scale[0] is c_t / frame_rate)
LTX_FPS = 25.0


def _ltx_unit_freqs(rope: torch.nn.Module) -> torch.Tensor:
    """``LTXVideoRotaryPosEmbed``'s ``dim // 6`` frequencies per unit of coordinate, from its
    attributes as its forward computes them (angle = f * (2 * coordinate - 1))."""
    theta = rope.theta
    f = theta ** torch.linspace(
        math.log(1.0, theta), math.log(theta, theta), rope.dim // 6, dtype=torch.float32
    )
    return (f * math.pi / 2.0).double()


def _ltx_pes(model: torch.nn.Module, fps: float = LTX_FPS) -> list[TemporalPE]:
    rope = model.rope
    c_t = _ltx_compression(model)
    step = (c_t / fps) * rope.patch_size_t / rope.base_num_frames  # coordinate per token frame
    w = (2 * _ltx_unit_freqs(rope) * step).numpy()
    return [
        TemporalPE(
            "rope3d", "rope", w[None], base=float(rope.theta), frame_step=int(rope.patch_size_t),
            dim=2 * len(w), layers=len(model.transformer_blocks),
            note=f"one RoPE over the inner dim {rope.dim}, pairs cycling t/h/w ({rope.dim % 6} "
            f"unrotated channels first); frame coordinate fps-scaled: c_t {c_t} / {fps:g} fps x "
            f"p_t / {rope.base_num_frames} per latent frame (the pipeline's frame_rate)",
        )
    ]  # fmt: skip


def _ltx_compression(model: torch.nn.Module) -> int:
    return int(family_of(model).temporal_compression(model.config))  # type: ignore[attr-defined]


def _install_ltx(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    rope = model.rope
    unit = _ltx_unit_freqs(rope).numpy()
    pad = rope.dim % 6
    columns = _interleaved(len(unit), offset=pad, stride=6)
    sig = inspect.signature(rope.forward)

    def post(module, args, kwargs, output):
        a = sig.bind(*args, **kwargs).arguments
        coords = a.get("video_coords")
        if coords is None:
            grid = module._prepare_video_coords(
                a["hidden_states"].size(0), a["num_frames"], a["height"], a["width"],
                a.get("rope_interpolation_scale"), a["hidden_states"].device,
            )  # fmt: skip
            c = grid[..., 0]
        else:
            c = coords[:, 0] / module.base_num_frames
        steps = torch.unique(c)
        if steps.numel() < 2:
            return None
        step = float(steps[1] - steps[0])
        tok = 2 * unit * step
        new = _changed(retune, tok[None], steps.numel())
        if new is None:
            return None
        cos, sin = output
        return _rewrite(cos, sin, columns, 2 * c - 1, unit, new[0] / (2 * step))

    return _hooks(rope.register_forward_hook(post, with_kwargs=True))


def _mochi_pes(model: torch.nn.Module) -> list[TemporalPE]:
    pf = model.pos_frequencies
    if pf.is_meta:
        return [TemporalPE("rope3d", "pos_frequencies", note="learned; weights not loaded")]
    return [
        TemporalPE(
            "rope3d", "pos_frequencies[0]", pf.detach()[0].double().cpu().numpy(),
            dim=2 * int(pf.shape[-1]), layers=len(model.transformer_blocks),
            note="learned per head: every pair turns with t, h and w at once (the t part listed)",
        )
    ]  # fmt: skip


def _install_mochi(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    def pre(module, args, kwargs):
        a = inspect.signature(module.forward).bind(*args, **kwargs)
        pf = a.arguments["pos_frequencies"]
        freqs = pf.detach()[0].double().cpu().numpy()
        new = _changed(retune, freqs, a.arguments["num_frames"])
        if new is None:
            return None
        edited = pf.detach().clone()
        mask = torch.from_numpy(new != freqs).to(pf.device)
        edited[0] = torch.where(mask, torch.from_numpy(new).to(pf.device, pf.dtype), edited[0])
        a.arguments["pos_frequencies"] = edited
        return a.args, a.kwargs

    return _hooks(model.rope.register_forward_pre_hook(pre, with_kwargs=True))


# ---- handlers ----------------------------------------------------------------------------------
def _none(note: str = "no frame positional encoding") -> Callable[[Any], list[TemporalPE]]:
    return lambda model: [TemporalPE("none", "-", note=note)]


def _joint_compression(obj: Any) -> int:
    model = denoiser_of(obj)
    for attr in (
        "vae_scale_factor_temporal",
        "vae_temporal_compression_ratio",
        "vae_temporal_scale_factor",
    ):
        value = getattr(obj, attr, None)
        if isinstance(value, int):
            return value
    return int(family_of(model).temporal_compression(model.config))  # type: ignore[attr-defined]


def _cog_train(config: Any) -> int | None:
    return int(config.get("sample_frames", 49))


def _latte_train(config: Any) -> int | None:
    return int(config.get("video_length", 16))


def _svd_train(config: Any) -> int | None:
    return int(config.get("num_frames", 25))


HANDLERS: dict[str, PositionHandler] = {
    "organism": PositionHandler(
        _organism_pes,
        lambda c: TRAIN_FRAMES["organism"],
        install_rope=_install_frame_rope,
        install_table=_install_table,
    ),
    "lavie": PositionHandler(_lavie_pes, lambda c: TRAIN_FRAMES["lavie"], install_rope=_install_lavie),
    "motion": PositionHandler(
        lambda m: _table_pes(m) or [TemporalPE("none", "-", note="motion_pos_embed_type None")],
        lambda c: TRAIN_FRAMES["motion"],
        install_table=_install_table,
    ),
    "unet3d": PositionHandler(_none(), lambda c: TRAIN_FRAMES["unet3d"]),
    "videocrafter2": PositionHandler(_none(), lambda c: TRAIN_FRAMES["videocrafter2"]),
    "i2vgenxl": PositionHandler(_none(), lambda c: TRAIN_FRAMES["i2vgenxl"]),
    "svd": PositionHandler(
        lambda m: [TemporalPE("learned", "time_pos_embed", note="sinusoidal frame index through a learned MLP")],
        _svd_train,
    ),
    "latte": PositionHandler(_latte_pes, _latte_train),
    "cogvideox": PositionHandler(_cog_pes, _cog_train, _joint_compression, install_rope=_install_cog),
    "wan": PositionHandler(
        _wan_pes, lambda c: TRAIN_FRAMES["wan"], _joint_compression, install_rope=_install_wan
    ),
    "hunyuanvideo": PositionHandler(
        _hunyuan_pes, lambda c: TRAIN_FRAMES["hunyuanvideo"], _joint_compression,
        install_rope=_install_hunyuan,
    ),
    "ltx-video": PositionHandler(_ltx_pes, lambda c: None, _joint_compression, install_rope=_install_ltx),
    "mochi": PositionHandler(_mochi_pes, lambda c: None, _joint_compression, install_rope=_install_mochi),
}  # fmt: skip


def register_builtin() -> None:
    """Register the handlers of attnlab's own families (called with the families)."""
    for name, handler in HANDLERS.items():
        register_position_handler(name, handler)


# ---- the report --------------------------------------------------------------------------------
COLUMNS = (
    "family", "pe", "source", "axis", "head", "k", "theta", "base", "period_latent",
    "period_frames", "train_frames", "train_latent", "intrinsic", "repeat_frame", "table_len",
    "dim", "layers",
)  # fmt: skip


def pe_report(model_or_pipe: Any, train_frames: int | None = None):
    """The frame positional encodings of a model, one row per frequency.

    Every distinct temporal encoding (1D RoPE, the temporal slice of a 3D RoPE, learned
    frequencies, a sinusoidal table) gives one row per frequency (per head where the heads
    differ: Mochi); an encoding without frequencies (learned absolute, "none") one row.
    Frequencies are read from the model's own modules (see the module docstring); the spatial
    axes of a split 3D RoPE are listed (``axis`` "h", "w") and never edited.

    Args:
        model_or_pipe: a diffusers pipeline (``.unet`` / ``.transformer``; its VAE's temporal
            compression is used) or a denoiser module.
        train_frames (``int | None``): the training length in video frames; None: the family's
            (CogVideoX: the config's ``sample_frames``; Wan 2.1: 81; HunyuanVideo: 129; the
            UNets and organisms: 16; LTX-Video and Mochi: unknown, pass it).

    Returns:
        ``pandas.DataFrame`` with the columns of :data:`COLUMNS`: ``pe`` (kind: rope, rope3d,
        sinusoidal, learned, none), ``source`` (where it lives), ``axis`` ("t", "h", "w"),
        ``head`` (<NA>: shared by the heads), ``k`` (RIFLEx's ``j``: rank by decreasing
        frequency, 1 = the fastest), ``theta`` (the frequency, radians per latent frame; per
        patch for h, w), ``base`` (the RoPE / table base), ``period_latent`` (``2 pi / theta``
        in latent frames), ``period_frames`` (in video frames, through the VAE's temporal
        compression), ``train_frames`` / ``train_latent`` (the training length),
        ``intrinsic`` (RIFLEx's intrinsic frequency: the period nearest at or above the training
        length), ``repeat_frame`` (on intrinsic rows: the video frame offset at which frame 0's
        position recurs, where repetition is predicted), ``table_len`` (positions of a table),
        ``dim`` (channels), ``layers`` (attention layers sharing it). ``df.attrs`` holds the
        family, the temporal compression and the training length.

    Example::

        df = attnlab.pe_report(pipe)                     # e.g. HunyuanVideo
        df[df.axis == "t"][["k", "period_latent", "period_frames", "intrinsic"]]
        df[df.intrinsic]                                 # k = 4, period 50.3 latent frames
    """
    import pandas as pd

    model = denoiser_of(model_or_pipe)
    family = family_of(model)
    handler = HANDLERS.get(family.name)
    if handler is None:  # a family registered by another package
        from attnlab.edits.positions import position_handler

        handler = position_handler(model)
    c = int(handler.temporal_compression(model_or_pipe))
    if train_frames is not None and (isinstance(train_frames, bool) or int(train_frames) < 1):
        raise ValueError(
            f"train_frames must be a positive number of video frames, got {train_frames!r}"
        )
    train = int(train_frames) if train_frames is not None else handler.train_frames(model.config)
    train_lat = latent_frames(train, c) if train is not None else None
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    for pe in handler.describe(model):
        base = {
            "family": family.name, "pe": pe.kind, "source": pe.source, "base": pe.base,
            "train_frames": train, "train_latent": train_lat, "table_len": pe.table_len,
            "dim": pe.dim, "layers": pe.layers,
        }  # fmt: skip
        if pe.freqs is None:
            rows.append({**base, "axis": "t", "intrinsic": False, "note": pe.note})
            continue
        heads = pe.freqs.shape[0]
        for h, row in enumerate(pe.freqs):
            ranks = frequency_ranks(row)
            tok_train = token_frames(train, c, pe.frame_step) if train is not None else None
            k0 = intrinsic_rank(row, tok_train) if tok_train is not None else None
            per = periods(row) * pe.frame_step
            for j in np.argsort(ranks):
                intrinsic = k0 is not None and ranks[j] == k0
                rows.append({
                    **base, "axis": "t", "head": h if heads > 1 else None, "k": int(ranks[j]),
                    "theta": abs(float(row[j])) / pe.frame_step, "period_latent": float(per[j]),
                    "period_frames": float(per[j]) * c, "intrinsic": intrinsic,
                    "repeat_frame": float(per[j]) * c if intrinsic else nan, "note": pe.note,
                })  # fmt: skip
        for axis, freqs in pe.spatial.items():
            ranks = frequency_ranks(freqs)
            for j in np.argsort(ranks):
                rows.append({
                    **base, "axis": axis, "head": None, "k": int(ranks[j]),
                    "theta": abs(float(freqs[j])), "period_latent": float(periods(freqs)[j]),
                    "period_frames": nan, "train_frames": None, "train_latent": None,
                    "intrinsic": False, "repeat_frame": nan, "note": "spatial: never edited",
                })  # fmt: skip
    df = pd.DataFrame(rows, columns=[*COLUMNS, "note"])
    df["head"] = df["head"].astype("Int64")
    df["k"] = df["k"].astype("Int64")
    df["intrinsic"] = df["intrinsic"].fillna(False).astype(bool)
    df.attrs.update(
        family=family.name, model=type(model).__name__, temporal_compression=c,
        train_frames=train, train_latent=train_lat,
    )  # fmt: skip
    return df
