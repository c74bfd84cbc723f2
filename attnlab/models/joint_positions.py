"""The frame positional encodings of the full-3D attention transformers (DiTs), read from the
models' own RoPE modules, and the hooks through which the positional-encoding edits
(:mod:`attnlab.edits.positions`) change them; :mod:`attnlab.models.positions` registers them
with the UNets' and builds the report (:func:`attnlab.pe_report`).

* CogVideoX: diffusers' ``get_3d_rotary_pos_embed`` (what the pipeline calls) for the config's
  head dim, temporal share ``D // 4``;
* ConsisID as CogVideoX; EasyAnimate: ``EasyAnimateRotaryPosEmbed`` (the same function inside
  the model); Allegro: ``get_3d_rotary_pos_embed_allegro`` as AllegroPipeline calls it;
* Wan and its derivatives (SkyReels-V2, Wan VACE, ChronoEdit, Wan-Animate): the
  ``WanRotaryPosEmbed``-style buffers ``freqs_cos`` / ``freqs_sin``, temporal share ``t_dim``;
  AnyFlow: its complex table ``_build_freqs``;
* HunyuanVideo (1 and 1.5) and MotifVideo: the rotary module itself (``rope_dim[0]``
  channels, its ``theta``);
* Cosmos: ``CosmosRotaryPosEmbed`` itself at its base frame rate, and its learned table;
* LTX-Video: ``LTXVideoRotaryPosEmbed``'s attributes (``dim // 6`` frequencies, ``theta``,
  ``base_num_frames``, ``patch_size_t``), per latent frame at the pipeline's frame rate;
* Mochi: the learned weights ``pos_frequencies[0]`` (heads x D/2);
* Kandinsky 5: ``Kandinsky5RoPE3D``'s angle tables ``args_0/1/2``; Kandinsky 6:
  ``Kandinsky6RoPE3D``'s ``angles_0/1/2`` over the config's ``scale_factor``;
* LTX-2 (video stream): ``LTX2AudioVideoRotaryPosEmbed``'s attributes (``dim // 6``
  frequencies, ``theta``, the VAE factor, ``base_num_frames``), per token frame at 24 fps
  (time in seconds).

The edits swap a frequency or angle table for the duration of the rotary module's call (Wan,
Kandinsky 5 and 6), pass retuned frequencies into it (Mochi), rewrite the temporal columns of
what it returns (HunyuanVideo, LTX-Video, LTX-2, EasyAnimate, Cosmos, AnyFlow) or of the
tables the pipeline hands to the transformer (CogVideoX, ConsisID, Allegro). Only the columns
of a changed frequency are recomputed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attnlab.core.denoisers import denoiser_of
from attnlab.core.sites import family_of
from attnlab.edits.positions import PositionHandler, Retune, TemporalPE
from attnlab.models.rope_tables import (
    hooks,
    interleaved,
    measure_frequencies,
    probe_len,
    retuned,
    rewrite_columns,
)

#: training lengths in video frames, as the families' papers and configs state them
JOINT_TRAIN_FRAMES = {
    "wan": 81,  # Wan 2.1 and Wan 2.2 A14B: 81 frames (21 latent)
    "hunyuanvideo": 129,  # 129 frames (33 latent)
}

#: Wan 2.2 TI2V-5B (its 48-channel VAE): 121 frames at 24 fps (31 latent; Wan 2.2's
#: ``ti2v_5B`` config, ``frame_num = 121``)
WAN22_TI2V_FRAMES = 121


def _wan_train(config: Any) -> int:
    """Wan's training length: the TI2V-5B (48 latent channels) 121 frames, the others 81."""
    return (
        WAN22_TI2V_FRAMES if int(config.get("in_channels", 16)) == 48 else JOINT_TRAIN_FRAMES["wan"]
    )


def _geometric(dim: int, theta: float) -> np.ndarray:
    """Frequencies of diffusers' ``get_1d_rotary_pos_embed(dim, ., theta)``, measured from it."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    cos, sin = get_1d_rotary_pos_embed(
        dim, torch.arange(probe_len(), dtype=torch.float64), theta, use_real=True,
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
        D, None, (1, 1), probe_len(), grid_type="slice", max_size=(1, 1)
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
        new = retuned(retune, freqs, frames)
        if new is None:
            return None
        cos, sin = rope
        per_frame = cos.shape[-2] // frames
        pos = torch.arange(cos.shape[-2], device=cos.device) // per_frame
        bound.arguments["image_rotary_emb"] = rewrite_columns(
            cos, sin, interleaved(t // 2), pos, freqs[0], new[0]
        )
        return bound.args, bound.kwargs

    return hooks(model.register_forward_pre_hook(pre, with_kwargs=True))


def _wan_split(rope: torch.nn.Module) -> tuple[int, int]:
    """The temporal and per-axis spatial channels of a Wan-style RoPE table: its ``t_dim`` /
    ``h_dim`` (Wan, SkyReels-V2, Wan VACE), else the split its forward uses (ChronoEdit:
    ``D - 2 (D // 3)``, ``D // 3``)."""
    D = int(rope.attention_head_dim)
    if hasattr(rope, "t_dim"):
        return int(rope.t_dim), int(rope.h_dim)
    return D - 2 * (D // 3), D // 3


def _wan_pes(model: torch.nn.Module) -> list[TemporalPE]:
    rope = model.rope
    t, h = _wan_split(rope)
    cos, sin = rope.freqs_cos, rope.freqs_sin  # [max_seq_len, D], interleaved pairs
    if cos.is_meta:
        return [TemporalPE("rope3d", "rope", note="buffers not materialised")]

    def axis(a: int, b: int) -> np.ndarray:
        return measure_frequencies(cos[: probe_len(), a:b:2], sin[: probe_len(), a:b:2])

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


def _install_wan(
    model: torch.nn.Module,
    retune: Retune,
    span: Callable[[torch.nn.Module, int], int] = lambda module, frames: frames,
) -> Callable[[], None]:
    """Swaps Wan's ``freqs_cos`` / ``freqs_sin`` tables for the rotary module's call (rows:
    positions); ``span(module, frames)``: the positions a call of ``frames`` token frames
    spans (ChronoEdit puts 2 frames at 0 and ``temporal_skip_len - 1``)."""
    rope = model.rope
    freqs = _wan_pes(model)[0].freqs
    assert freqs is not None
    own = (rope.freqs_cos, rope.freqs_sin)
    columns = interleaved(_wan_split(rope)[0] // 2)
    cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def pre(module, args):
        frames = args[0].shape[2] // module.patch_size[0]
        new = retuned(retune, freqs, span(module, frames))
        if new is None:
            return
        key = new.tobytes()
        if key not in cache:
            pos = torch.arange(own[0].shape[0], device=own[0].device)[:, None]
            cache[key] = rewrite_columns(own[0], own[1], columns, pos[:, 0], freqs[0], new[0])
        module._buffers["freqs_cos"], module._buffers["freqs_sin"] = cache[key]

    def post(module, args, output):
        module._buffers["freqs_cos"], module._buffers["freqs_sin"] = own

    # (the post hook runs also when the call raises: the model never keeps the retuned table)
    return hooks(
        rope.register_forward_pre_hook(pre), rope.register_forward_hook(post, always_call=True)
    )


def _install_chronoedit(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    def span(module: torch.nn.Module, frames: int) -> int:
        return int(module.temporal_skip_len) if frames == 2 else frames

    return _install_wan(model, retune, span)


def _hunyuan_probe(rope: torch.nn.Module, axis: int) -> np.ndarray:
    """Frequencies of one axis, measured from ``HunyuanVideoRotaryPosEmbed`` itself."""
    shape = [1, 1, rope.patch_size_t, rope.patch_size, rope.patch_size]
    shape[2 + axis] *= probe_len()
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
            layers=len(model.transformer_blocks) + len(getattr(model, "single_transformer_blocks", ())),
            spatial={"h": _hunyuan_probe(rope, 1), "w": _hunyuan_probe(rope, 2)},
            note=f"rope_axes_dim {tuple(rope.rope_dim)}: temporal share {t}",
        )
    ]  # fmt: skip


def _install_hunyuan(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    rope = model.rope
    freqs = _hunyuan_pes(model)[0].freqs
    assert freqs is not None
    columns = interleaved(rope.rope_dim[0] // 2)

    def post(module, args, output):
        _, _, F, H, W = args[0].shape
        frames = F // module.patch_size_t
        new = retuned(retune, freqs, frames)
        if new is None:
            return None
        cos, sin = output
        per_frame = (H // module.patch_size) * (W // module.patch_size)
        pos = torch.arange(cos.shape[-2], device=cos.device) // per_frame
        return rewrite_columns(cos, sin, columns, pos, freqs[0], new[0])

    return hooks(rope.register_forward_hook(post))


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
    columns = interleaved(len(unit), offset=pad, stride=6)
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
        # the last gap: LTXConditionPipeline's causal fix puts the first frames 1/c_t apart
        # (pixel-frame coordinates 0, 1, 9, 17, ...), the others one token frame
        step = float(steps[-1] - steps[-2])
        tok = 2 * unit * step
        new = retuned(retune, tok[None], steps.numel())
        if new is None:
            return None
        cos, sin = output
        return rewrite_columns(cos, sin, columns, 2 * c - 1, unit, new[0] / (2 * step))

    return hooks(rope.register_forward_hook(post, with_kwargs=True))


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
        new = retuned(retune, freqs, a.arguments["num_frames"])
        if new is None:
            return None
        edited = pf.detach().clone()
        mask = torch.from_numpy(new != freqs).to(pf.device)
        edited[0] = torch.where(mask, torch.from_numpy(new).to(pf.device, pf.dtype), edited[0])
        a.arguments["pos_frequencies"] = edited
        return a.args, a.kwargs

    return hooks(model.rope.register_forward_pre_hook(pre, with_kwargs=True))


def _anyflow_pes(model: torch.nn.Module) -> list[TemporalPE]:
    """AnyFlow's RoPE: complex frequencies ``AnyFlowRotaryPosEmbed._build_freqs`` (positions x
    D/2: the t, h, w pairs in that order), not interleaved."""
    rope = model.rope
    D = int(rope.attention_head_dim)
    h = D // 6
    t = D // 2 - 2 * h  # pairs
    if any(b.is_meta for b in model.buffers()) or next(model.parameters()).is_meta:
        return [TemporalPE("rope3d", "rope", note="built on the meta device")]
    f = rope._build_freqs(torch.device("cpu"))[: probe_len()]
    cos, sin = f.real, f.imag

    def axis(a: int, b: int) -> np.ndarray:
        return measure_frequencies(cos[:, a:b], sin[:, a:b])

    return [
        TemporalPE(
            "rope3d", "rope._build_freqs", axis(0, t)[None], base=float(rope.theta),
            frame_step=int(rope.patch_size[0]), dim=2 * t, layers=len(model.blocks),
            spatial={"h": axis(t, t + h), "w": axis(t + h, t + 2 * h)},
            note=f"temporal share {2 * t} of head dim {D} (h = w = {2 * h})",
        )
    ]  # fmt: skip


def _kandinsky_pes(model: torch.nn.Module) -> list[TemporalPE]:
    """Kandinsky 5's ``Kandinsky5RoPE3D``: angle tables ``args_0/1/2 = outer(positions,
    freqs)``; the pipeline divides the time angles by ``scale_factor[0]`` (1)."""
    rope = model.visual_rope_embeddings
    if rope.args_0.is_meta:
        return [TemporalPE("rope3d", "visual_rope_embeddings", note="buffers not materialised")]
    t, h, w = (int(d) for d in rope.axes_dims)

    def axis(args: torch.Tensor) -> np.ndarray:
        a = args[: probe_len()].double()
        return measure_frequencies(a.cos(), a.sin())

    return [
        TemporalPE(
            "rope3d", "visual_rope_embeddings.args_0", axis(rope.args_0)[None],
            base=float(rope.max_period), dim=t, layers=len(model.visual_transformer_blocks),
            spatial={"h": axis(rope.args_1), "w": axis(rope.args_2)},
            note=f"axes_dims {(t, h, w)}: temporal share {t}; time positions / scale_factor[0]",
        )
    ]  # fmt: skip


def _install_anyflow(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    """AnyFlow's rotary module returns complex frequencies ``{"query", "key"}`` [1, 1, S, D/2]
    (temporal pairs first); the pairs of a changed frequency become ``exp(i pos w')``."""
    rope = model.rope
    freqs = _anyflow_pes(model)[0].freqs
    assert freqs is not None
    sig = inspect.signature(rope.forward)

    def post(module, args, kwargs, output):
        frames = int(sig.bind(*args, **kwargs).arguments["layout_cfg"]["total_frames"])
        new = retuned(retune, freqs, frames)
        if new is None:
            return None
        q = output["query"]
        pos = torch.arange(q.shape[-2], device=q.device, dtype=torch.float64) // (
            q.shape[-2] // frames
        )
        edited = q.clone()
        for j in np.flatnonzero(new[0] != freqs[0]):
            ang = pos * float(new[0][j])
            edited[..., j] = torch.polar(torch.ones_like(ang), ang).to(q.dtype)
        return {**output, "query": edited, "key": edited}

    return hooks(rope.register_forward_hook(post, with_kwargs=True))


def _swap_angle_table(
    rope: torch.nn.Module,
    name: str,
    retune: Retune,
    freqs_at: Callable[[dict[str, Any]], tuple[np.ndarray, float]],
) -> Callable[[], None]:
    """Swaps the rotary module's time angle table ``name`` (rows: positions) for its call (the
    Kandinsky modules): with ``freqs_at(arguments)`` the frequencies per position unit and the
    call's position scaling, a changed frequency's column becomes ``position * w' * scale``
    (the module divides by the scaling again); restored after the call."""
    own = rope._buffers[name]
    sig = inspect.signature(rope.forward)
    cache: dict[bytes, torch.Tensor] = {}

    def pre(module, args, kwargs):
        a = sig.bind(*args, **kwargs).arguments
        freqs, scale = freqs_at(a)
        frames = int(torch.as_tensor(a["pos"][0]).max()) + 1
        new = retuned(retune, freqs, frames)
        if new is None:
            return None
        key = new.tobytes() + np.float64(scale).tobytes()
        if key not in cache:
            edited = own.clone()
            pos = torch.arange(own.shape[0], device=own.device, dtype=torch.float64)
            for j in np.flatnonzero(new[0] != freqs[0]):
                edited[:, j] = (pos * float(new[0][j]) * scale).to(own.dtype)
            cache[key] = edited
        module._buffers[name] = cache[key]
        return None

    def post(module, args, kwargs, output):
        module._buffers[name] = own

    return hooks(
        rope.register_forward_pre_hook(pre, with_kwargs=True),
        rope.register_forward_hook(post, with_kwargs=True, always_call=True),  # (also on raise)
    )


def _install_kandinsky(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    """Swaps Kandinsky 5's time angle table ``args_0`` (rows: positions) for the rotary
    module's call; a changed frequency's column becomes ``position * w'``."""
    freqs = _kandinsky_pes(model)[0].freqs
    assert freqs is not None
    return _swap_angle_table(model.visual_rope_embeddings, "args_0", retune, lambda a: (freqs, 1.0))


# ---- EasyAnimate: EasyAnimateRotaryPosEmbed (get_3d_rotary_pos_embed inside the model) ----
def _easyanimate_pes(model: torch.nn.Module) -> list[TemporalPE]:
    rope = model.rope_embedding
    D, p = int(rope.rope_dim), int(rope.patch_size)
    t, h = D // 4, D // 8 * 3
    cos, sin = rope(torch.zeros(1, 1, probe_len(), p, p))  # one patch per frame: rows = frames
    return [
        TemporalPE(
            "rope3d", "rope_embedding", measure_frequencies(cos[:, 0:t:2], sin[:, 0:t:2])[None],
            base=_cog_theta(), dim=t, layers=len(model.transformer_blocks),
            spatial={"h": _geometric(h, _cog_theta()), "w": _geometric(h, _cog_theta())},
            note=f"get_3d_rotary_pos_embed: temporal share D/4 = {t} of head dim {D}",
        )
    ]  # fmt: skip


def _install_easyanimate(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    freqs = _easyanimate_pes(model)[0].freqs
    assert freqs is not None
    columns = interleaved(int(model.rope_embedding.rope_dim) // 8)

    def post(module, args, output):
        frames = args[0].shape[2]
        new = retuned(retune, freqs, frames)
        if new is None:
            return None
        cos, sin = output
        pos = torch.arange(cos.shape[-2], device=cos.device) // (cos.shape[-2] // frames)
        return rewrite_columns(cos, sin, columns, pos, freqs[0], new[0])

    return hooks(model.rope_embedding.register_forward_hook(post))


# ---- Allegro: get_3d_rotary_pos_embed_allegro (AllegroPipeline) ------------------------------
def _allegro_scale(config: Any) -> float:
    scale = config.get("interpolation_scale_t", 2.2)
    return float(scale if scale is not None else 2.2)


def _allegro_pes(model: torch.nn.Module) -> list[TemporalPE]:
    """The time table as AllegroPipeline computes it (rows: latent frames, positions divided
    by ``interpolation_scale_t``; rotate-half: columns ``j`` and ``j + t/2``)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    cfg = model.config
    D, scale = int(cfg.attention_head_dim), _allegro_scale(cfg)
    (cos, sin), *_ = get_3d_rotary_pos_embed_allegro(
        D, ((0, 0), (1, 1)), (1, 1), probe_len(), interpolation_scale=(scale, 1.0, 1.0)
    )
    t = D // 3
    return [
        TemporalPE(
            "rope3d", "get_3d_rotary_pos_embed_allegro (pipeline)",
            measure_frequencies(cos[:, : t // 2], sin[:, : t // 2])[None], base=10000.0,
            frame_step=int(cfg.get("patch_size_t", 1)), dim=t, layers=int(cfg.num_layers),
            spatial={"h": _geometric(t, 10000.0), "w": _geometric(t, 10000.0)},
            note=f"temporal share D/3 = {t} of head dim {D}; time positions = latent frame / "
            f"{scale:g} (interpolation_scale_t)",
        )
    ]  # fmt: skip


def _install_allegro(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    freqs = _allegro_pes(model)[0].freqs
    assert freqs is not None
    half = int(model.config.attention_head_dim) // 3 // 2
    columns = [(j, j + half) for j in range(half)]
    p_t = int(model.config.get("patch_size_t", 1))
    sig = inspect.signature(model.forward)

    def pre(module, args, kwargs):
        bound = sig.bind_partial(*args, **kwargs)
        rope = bound.arguments.get("image_rotary_emb")
        hidden = bound.arguments.get("hidden_states")
        if rope is None or hidden is None:
            return None
        new = retuned(retune, freqs, max(1, hidden.shape[2] // p_t))
        if new is None:
            return None
        ((cos, sin), *spatial), positions = rope
        pos = torch.arange(cos.shape[0], device=cos.device)
        edited = rewrite_columns(cos, sin, columns, pos, freqs[0], new[0])
        bound.arguments["image_rotary_emb"] = ((edited, *spatial), positions)
        return bound.args, bound.kwargs

    return hooks(model.register_forward_pre_hook(pre, with_kwargs=True))


# ---- Cosmos: CosmosRotaryPosEmbed (NTK-scaled, fps-scaled time) ------------------------------
def _cosmos_probe(rope: torch.nn.Module, axis: int) -> np.ndarray:
    """Frequencies of one axis per position, measured from ``CosmosRotaryPosEmbed`` at its
    base frame rate (time positions = frame index); rotate-half: columns ``[t | h | w]*2``."""
    size = [int(p) for p in rope.patch_size]
    size[axis] *= probe_len(max(rope.max_size))
    cos, sin = rope(torch.zeros(1, 1, *size), fps=rope.base_fps)
    a = (rope.dim_t // 2, rope.dim_h // 2, rope.dim_w // 2)
    lo = sum(a[:axis])
    return measure_frequencies(cos[:, lo : lo + a[axis]], sin[:, lo : lo + a[axis]])


def _cosmos_pes(model: torch.nn.Module) -> list[TemporalPE]:
    rope = model.rope
    out = [
        TemporalPE(
            "rope3d", "rope", _cosmos_probe(rope, 0)[None],
            base=10000.0 * float(rope.t_ntk_factor), frame_step=int(rope.patch_size[0]),
            dim=int(rope.dim_t), layers=len(model.transformer_blocks),
            spatial={"h": _cosmos_probe(rope, 1), "w": _cosmos_probe(rope, 2)},
            note=f"NTK-scaled time base; listed at fps = base_fps {rope.base_fps}: a call at "
            f"fps f turns every time frequency by {rope.base_fps} / f per latent frame",
        )
    ]  # fmt: skip
    table = getattr(model, "learnable_pos_embed", None)
    if table is not None:
        out.append(
            TemporalPE(
                "learned", "learnable_pos_embed.pos_emb_t", table_len=int(table.pos_emb_t.shape[0]),
                dim=int(table.pos_emb_t.shape[1]),
                note="absolute t/h/w embedding added to the tokens (no frequencies; not edited)",
            )
        )  # fmt: skip
    return out


def _install_cosmos(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    rope = model.rope
    unit = _cosmos_probe(rope, 0)[None]  # per position (= latent frame at base_fps)
    half = rope.dim_t // 2
    D = rope.dim_t + rope.dim_h + rope.dim_w
    columns = [(j, D // 2 + j) for j in range(half)]
    sig = inspect.signature(rope.forward)

    def post(module, args, kwargs, output):
        a = sig.bind(*args, **kwargs).arguments
        fps = a.get("fps")
        step = module.base_fps / fps if fps else 1.0  # time position per token frame
        frames = a["hidden_states"].shape[2] // module.patch_size[0]
        per_frame = unit * step
        new = retuned(retune, per_frame, frames)
        if new is None:
            return None
        # per position; the unchanged frequencies stay the model's own exactly
        new_unit = np.where(new[0] != per_frame[0], new[0] / step, unit[0])
        cos, sin = output
        pos = torch.arange(cos.shape[-2], device=cos.device) // (cos.shape[-2] // frames) * step
        return rewrite_columns(cos, sin, columns, pos, unit[0], new_unit)

    return hooks(rope.register_forward_hook(post, with_kwargs=True))


# ---- LTX-2: LTX2AudioVideoRotaryPosEmbed (time coordinate in seconds) -----------------------
#: the LTX-2 pipelines' default frame rate (the transformer's ``fps`` default too)
LTX2_FPS = 24.0


def _ltx2_unit_freqs(rope: torch.nn.Module) -> np.ndarray:
    """``LTX2AudioVideoRotaryPosEmbed``'s ``dim // 6`` video frequencies per unit of coordinate,
    as its forward computes them: ``theta ** linspace(0, 1, n) * pi / 2`` (float64 when
    ``double_precision``), cast to float32; the angle is ``f * (2 g - 1)``."""
    dtype = torch.float64 if rope.double_precision else torch.float32
    f = torch.pow(rope.theta, torch.linspace(0.0, 1.0, rope.dim // 6, dtype=dtype))
    return (f * torch.pi / 2.0).to(torch.float32).double().numpy()


def _ltx2_step(rope: torch.nn.Module, fps: float) -> float:
    """Coordinate ``g`` between token frames ``k >= 1``: ``c_t p_t / fps / base``."""
    return float(rope.scale_factors[0]) * rope.patch_size_t / fps / rope.base_num_frames


def _ltx2_pes(model: torch.nn.Module, fps: float = LTX2_FPS) -> list[TemporalPE]:
    rope = model.rope
    c_t, o, base = int(rope.scale_factors[0]), int(rope.causal_offset), rope.base_num_frames
    w = 2 * _ltx2_unit_freqs(rope) * _ltx2_step(rope, fps)
    first = (c_t * rope.patch_size_t + o - c_t) / 2
    return [
        TemporalPE(
            "rope3d", "rope", w[None], base=float(rope.theta), frame_step=int(rope.patch_size_t),
            dim=2 * len(w), layers=len(model.transformer_blocks),
            note=f"one RoPE over the inner dim {rope.dim}, pairs cycling t/h/w ({rope.dim % 6} "
            f"unrotated channels first, rope_type {rope.rope_type}); time in seconds: pixel frame "
            f"/ fps / {base}, listed at {fps:g} fps (c_t {c_t} x p_t {rope.patch_size_t} pixel "
            f"frames per token frame); the first latent frame sits at pixel frame {first:g}",
        )
    ]  # fmt: skip


def _ltx2_columns(rope: torch.nn.Module) -> list[tuple[int, ...]]:
    """Columns of time frequency ``i`` in the flattened ``[..., N, dim or dim / 2]`` table:
    interleaved, channels ``pad + 6 i, + 1``; split, pair ``dim / 2 - 3 n + 3 i``."""
    n = rope.dim // 6
    if rope.rope_type == "interleaved":
        return interleaved(n, offset=rope.dim % 6, stride=6)
    pad = rope.dim // 2 - 3 * n
    return [(pad + 3 * i,) for i in range(n)]


def _install_ltx2(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    """Rewrites the time columns of what the video rotary module ``model.rope`` returns (the
    audio and the audio-video cross-attention RoPEs are left alone). The time coordinate ``g``
    of each token is read from the coordinates the module was given; the frequency per token
    frame is the one over the gap between the last two token frames."""
    rope = model.rope
    unit = _ltx2_unit_freqs(rope)
    columns = _ltx2_columns(rope)
    sig = inspect.signature(rope.forward)

    def post(module, args, kwargs, output):
        coords = sig.bind(*args, **kwargs).arguments["coords"]
        if coords.ndim == 4:  # patch bounds [start, end): the midpoint, as the module takes it
            coords = coords.mean(-1)
        g = coords[:, 0].double() / module.base_num_frames  # [B, N]
        steps = torch.unique(g[0])
        if steps.numel() < 2:
            return None
        step = float(steps[-1] - steps[-2])
        tok = 2 * unit * step
        new = retuned(retune, tok[None], steps.numel())
        if new is None:
            return None
        new_unit = np.where(new[0] != tok, new[0] / (2 * step), unit)
        cos, sin = output
        if module.rope_type == "split":  # [B, H, N, D/2] -> [B, N, H * D/2] and back
            B, H, N, r = cos.shape
            flat = [t.swapaxes(1, 2).reshape(B, N, H * r) for t in (cos, sin)]
            cos, sin = rewrite_columns(*flat, columns, 2 * g - 1, unit, new_unit)
            return tuple(t.reshape(B, N, H, r).swapaxes(1, 2) for t in (cos, sin))
        return rewrite_columns(cos, sin, columns, 2 * g - 1, unit, new_unit)

    return hooks(rope.register_forward_hook(post, with_kwargs=True))


# ---- Kandinsky 6: Kandinsky6RoPE3D (angle tables angles_0/1/2) ------------------------------
def _kandinsky6_pes(model: torch.nn.Module) -> list[TemporalPE]:
    """``Kandinsky6RoPE3D``'s angle tables ``angles_i = outer(positions, freqs)``; the model
    divides each axis's angles by its config's ``scale_factor`` (time: ``scale_factor[0]``)."""
    rope = model.visual_rope_embeddings
    if rope.angles_0.is_meta:
        return [TemporalPE("rope3d", "visual_rope_embeddings", note="buffers not materialised")]
    t, h, w = (int(d) for d in rope.axes_dims)
    scale = tuple(float(s) for s in model.scale_factor)

    def axis(angles: torch.Tensor, s: float) -> np.ndarray:
        a = angles[: probe_len()].double() / s
        return measure_frequencies(a.cos(), a.sin())

    return [
        TemporalPE(
            "rope3d", "visual_rope_embeddings.angles_0", axis(rope.angles_0, scale[0])[None],
            base=float(rope.max_period), frame_step=int(model.config.patch_size[0]), dim=t,
            layers=len(model.visual_transformer_blocks),
            spatial={"h": axis(rope.angles_1, scale[1]), "w": axis(rope.angles_2, scale[2])},
            table_len=int(rope.angles_0.shape[0]),
            note=f"axes_dims {(t, h, w)}: temporal share {t} of head dim {t + h + w}; time "
            f"positions / scale_factor[0] ({scale[0]:g})",
        )
    ]  # fmt: skip


def _install_kandinsky6(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    """Swaps Kandinsky 6's time angle table ``angles_0`` (rows: positions) for the rotary
    module's call; a changed frequency's column becomes ``position * w' * scale_factor[0]``
    (the module divides it by ``scale_factor[0]`` again)."""
    rope = model.visual_rope_embeddings
    probe = rope.angles_0[: probe_len()].double()
    unit = measure_frequencies(probe.cos(), probe.sin())  # per position, before the scaling

    def freqs_at(a: dict[str, Any]) -> tuple[np.ndarray, float]:
        scale = float(a.get("scale_factor", (1.0, 1.0, 1.0))[0])
        return (unit / scale)[None], scale

    return _swap_angle_table(rope, "angles_0", retune, freqs_at)


# ---- handlers ----------------------------------------------------------------------------
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


def _allegro_train(config: Any) -> int | None:
    """Allegro's 88 frames: the config's ``sample_frames`` (22 latent) x 4."""
    return 4 * int(config.get("sample_frames", 22))


def _handler(
    describe: Callable[[torch.nn.Module], list[TemporalPE]],
    train: str | Callable[[Any], int | None],
    install: Callable[[torch.nn.Module, Retune], Callable[[], None]] | None = None,
) -> PositionHandler:
    """A DiT family's handler: ``train`` names the family whose training length applies
    (:data:`JOINT_TRAIN_FRAMES`, None where unknown) or reads it from the config."""
    train_frames = train if callable(train) else (lambda config: JOINT_TRAIN_FRAMES.get(train))
    return PositionHandler(describe, train_frames, _joint_compression, install_rope=install)


JOINT_HANDLERS: dict[str, PositionHandler] = {
    "cogvideox": _handler(_cog_pes, _cog_train, _install_cog),
    "wan": _handler(_wan_pes, _wan_train, _install_wan),
    "hunyuanvideo": _handler(_hunyuan_pes, "hunyuanvideo", _install_hunyuan),
    "ltx-video": _handler(_ltx_pes, "ltx-video", _install_ltx),
    "mochi": _handler(_mochi_pes, "mochi", _install_mochi),
    # the Wan derivatives hold Wan's RoPE tables (ChronoEdit: its own split of them)
    "skyreels-v2": _handler(_wan_pes, "skyreels-v2", _install_wan),
    "wan-vace": _handler(_wan_pes, "wan", _install_wan),
    "chronoedit": _handler(_wan_pes, "chronoedit", _install_chronoedit),
    "anyflow": _handler(_anyflow_pes, "anyflow", _install_anyflow),
    "hunyuanvideo15": _handler(_hunyuan_pes, "hunyuanvideo15", _install_hunyuan),
    "kandinsky5": _handler(_kandinsky_pes, "kandinsky5", _install_kandinsky),
    "wan-animate": _handler(_wan_pes, "wan-animate", _install_wan),
    # ConsisID: CogVideoX's pipeline-computed 3D RoPE; training length: the config's frames
    "consisid": _handler(_cog_pes, _cog_train, _install_cog),
    "easyanimate": _handler(_easyanimate_pes, "easyanimate", _install_easyanimate),
    "allegro": _handler(_allegro_pes, _allegro_train, _install_allegro),
    "cosmos": _handler(_cosmos_pes, "cosmos", _install_cosmos),
    # MotifVideo's rotary module is HunyuanVideo's in all but name (rope_dim, theta, patches)
    "motif-video": _handler(_hunyuan_pes, "motif-video", _install_hunyuan),
    # the audio-video DiTs: the video stream's RoPE
    "ltx2": _handler(_ltx2_pes, "ltx2", _install_ltx2),
    "kandinsky6": _handler(_kandinsky6_pes, "kandinsky6", _install_kandinsky6),
}
