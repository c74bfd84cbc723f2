"""Full-3D attention video transformers (DiTs): CogVideoX, Wan 2.x, HunyuanVideo, LTX-Video, Mochi.

These models have no separate temporal attention: every video self-attention attends jointly
over all ``F' x H' x W'`` latent patches (frame-major), with the text tokens either in the same
sequence (CogVideoX: prepended; HunyuanVideo: appended, padding masked; Mochi: the valid text
tokens of each sample appended) or in a separate cross-attention (Wan, LTX-Video). attnlab maps
such a layer to the frame level (see :mod:`attnlab.core.joint`).

Each family is a :class:`~attnlab.core.joint_sites.JointFamily` (data only) with its readers of
the model's config: :data:`COGVIDEOX`, :data:`WAN`, :data:`HUNYUAN`, :data:`LTX`, :data:`MOCHI`
(all in :data:`JOINT_FAMILIES`).

Sources: diffusers 0.42 ``models/transformers/cogvideox_transformer_3d.py``,
``transformer_wan.py``, ``transformer_hunyuan_video.py``, ``transformer_ltx.py``
(``LTXVideoRotaryPosEmbed``), ``transformer_mochi.py`` (``MochiRoPE``), ``attention_processor.py``
(``MochiAttnProcessor2_0``), ``models/embeddings.py`` (``get_3d_rotary_pos_embed``,
``CogVideoXPatchEmbed``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from attnlab.core.joint_sites import FramePE, JointFamily, site_pe
from attnlab.core.sites import PositionalEncoding


# ---- CogVideoX ----------------------------------------------------------------------------
def _cog_pe(config, temporal_compression: int = 4) -> FramePE:
    D = int(config.get("attention_head_dim", 64))
    if config.get("use_rotary_positional_embeddings", False):
        # get_3d_rotary_pos_embed: dim_t = D // 4, dim_h = dim_w = D // 8 * 3, theta 10000
        return FramePE("rope3d", D // 4, D // 8 * 3, D // 8 * 3, 10000.0)
    if config.get("use_learned_positional_embeddings", False):
        frames = (int(config.get("sample_frames", 49)) - 1) // int(
            config.get("temporal_compression_ratio", 4)
        ) + 1
        return FramePE("learned", max_frames=frames, note="absolute, added to the tokens")
    return FramePE("sinusoidal", note="absolute 3D sin-cos added to the tokens")


def _cog_patch(config) -> tuple[int, int, int]:
    p = int(config.get("patch_size", 2))
    return (int(config.get("patch_size_t") or 1), p, p)


COGVIDEOX = JointFamily(
    name="cogvideox",
    model_classes=("CogVideoXTransformer3DModel",),
    examples="THUDM/CogVideoX-2b, THUDM/CogVideoX-5b, THUDM/CogVideoX1.5-5B",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding(site_pe(_cog_pe(config).kind)),
    geometry="patch",
    sample_layout="BFCHW",
    text="first",
    frame_pe=_cog_pe,
    patch=_cog_patch,
    temporal_compression=lambda config: int(config.get("temporal_compression_ratio", 4)),
)


# ---- Wan 2.x ------------------------------------------------------------------------------
def _wan_pe(config, temporal_compression: int = 4) -> FramePE:
    D = int(config.get("attention_head_dim", 128))
    hw = 2 * (D // 6)  # WanRotaryPosEmbed: h = w = 2 * (D // 6), t = the rest
    return FramePE("rope3d", D - 2 * hw, hw, hw, 10000.0, int(config.get("rope_max_seq_len", 1024)))


WAN = JointFamily(
    name="wan",
    model_classes=("WanTransformer3DModel",),
    examples="Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.1-T2V-14B-Diffusers",
    path=r"^blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    text="cross",
    frame_pe=_wan_pe,
    patch=lambda config: tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
    temporal_compression=lambda config: 4,  # AutoencoderKLWan: 4x in time
    site_classes=("diffusers.models.transformers.transformer_wan.WanAttention",),
    rope_classes=("diffusers.models.transformers.transformer_wan.WanRotaryPosEmbed",),
)


# ---- HunyuanVideo -------------------------------------------------------------------------
def _hunyuan_pe(config, temporal_compression: int = 4) -> FramePE:
    t, h, w = (int(d) for d in config.get("rope_axes_dim", (16, 56, 56)))
    return FramePE("rope3d", t, h, w, float(config.get("rope_theta", 256.0)))


HUNYUAN = JointFamily(
    name="hunyuanvideo",
    model_classes=("HunyuanVideoTransformer3DModel",),
    examples="hunyuanvideo-community/HunyuanVideo",
    # dual-stream blocks (text through add_q/k/v_proj) and single-stream blocks (text
    # concatenated); the token refiner's text-only attention is not a video site
    path=r"^(?:single_)?transformer_blocks\.(?P<index>\d+)\.attn$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    text="last",
    frame_pe=_hunyuan_pe,
    patch=lambda config: (
        int(config.get("patch_size_t", 1)),
        int(config.get("patch_size", 2)),
        int(config.get("patch_size", 2)),
    ),
    temporal_compression=lambda config: 4,  # AutoencoderKLHunyuanVideo: 4x in time
    stream=lambda name: "single" if name.startswith("single_") else "dual",
)


# ---- LTX-Video ----------------------------------------------------------------------------
#: LTXPipeline's default frame rate and LTXVideoRotaryPosEmbed's base frame count
LTX_FPS = 25.0
LTX_BASE_FRAMES = 20


def _ltx_pe(config, temporal_compression: int = 8) -> FramePE:
    """LTXVideoRotaryPosEmbed: one RoPE over the inner dim ``heads * D`` before the head split.
    ``n = inner // 6`` frequencies ``theta^(i / (n - 1)) * pi / 2`` (theta 10000); the pairs of
    channels ``inner % 6 + 2p, + 1`` cycle over the axes (p % 3: t, h, w; frequency p // 3);
    the angle is ``freq * (2 * coord - 1)`` with the frame coordinate ``f * c_t / fps * p_t /
    20`` (LTXPipeline passes ``rope_interpolation_scale[0] = c_t / frame_rate``). So one latent
    frame turns a frame pair of frequency ``i`` by ``pi * theta^(i / (n - 1)) * step``."""
    heads = int(config.get("num_attention_heads", 32))
    D = int(config.get("attention_head_dim", 64))
    p_t = int(config.get("patch_size_t", 1))
    inner, theta = heads * D, 10000.0
    n, pad = inner // 6, inner % 6
    step = temporal_compression * p_t / (LTX_FPS * LTX_BASE_FRAMES)
    per_head: list[list[float]] = [[] for _ in range(heads)]
    for p in range(0, 3 * n, 3):  # the frame pairs
        i = p // 3
        head = (pad + 2 * p) // D
        per_head[head].append(math.pi * theta ** (i / max(1, n - 1)) * step)
    return FramePE(
        "rope3d", 2 * n, 2 * n, 2 * n, theta, axes="interleaved", frame_step=step, fps=LTX_FPS,
        frame_freqs=tuple(tuple(h) for h in per_head),
        note=f"{pad} unrotated channels; frame step = c_t {temporal_compression} x p_t {p_t} / "
        f"(fps x {LTX_BASE_FRAMES}), the pipeline's frame_rate sets fps",
    )  # fmt: skip


def _ltx_dims(sample: torch.Tensor, bound: dict[str, Any]) -> dict[str, int]:
    """LTX-Video's transformer takes pre-flattened tokens ``[B, F * H * W, C]`` and the latent
    grid as ``num_frames``, ``height``, ``width`` (as LTXPipeline passes them)."""
    grid = [bound.get(k) for k in ("num_frames", "height", "width")]
    if sample.ndim != 3 or any(g is None for g in grid):
        raise RuntimeError(
            "LTX-Video: attnlab reads the latent grid from the transformer's num_frames, height "
            f"and width arguments and hidden_states [B, F*H*W, C]; got hidden_states "
            f"{tuple(sample.shape)}, num_frames={grid[0]}, height={grid[1]}, width={grid[2]}"
        )
    F, H, W = (int(g) for g in grid)  # type: ignore[arg-type]
    if sample.shape[1] != F * H * W:
        raise RuntimeError(
            f"LTX-Video: hidden_states has {sample.shape[1]} tokens, the grid num_frames x height "
            f"x width = {F} x {H} x {W} = {F * H * W}"
        )
    return {"B": int(sample.shape[0]), "F": F, "H": H, "W": W}


LTX = JointFamily(
    name="ltx-video",
    model_classes=("LTXVideoTransformer3DModel",),
    examples="Lightricks/LTX-Video",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",  # attn2: cross-attention to text
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BSC",
    text="cross",
    frame_pe=_ltx_pe,
    patch=lambda config: (
        int(config.get("patch_size_t", 1)),
        int(config.get("patch_size", 1)),
        int(config.get("patch_size", 1)),
    ),
    temporal_compression=lambda config: 8,  # AutoencoderKLLTXVideo: 8x in time
    call_dims=_ltx_dims,
)


# ---- Mochi --------------------------------------------------------------------------------
def _mochi_pe(config, temporal_compression: int = 6) -> FramePE:
    return FramePE(
        "rope3d", axes="mixture",
        note="pos_frequencies (3, heads, D/2), learned: each pair of a head turns by "
        "t f_t + h f_h + w f_w (t: latent frame index; h, w: patch centres scaled to 192 x 192)",
    )  # fmt: skip


def _mochi_pe_weights(model: torch.nn.Module, pe: FramePE) -> FramePE:
    """Mochi's frame frequencies are weights: ``pos_frequencies[0]`` (heads x D/2), in radians
    per latent frame (MochiRoPE: positions ``t = arange(frames)``)."""
    freqs = getattr(model, "pos_frequencies", None)
    if not isinstance(freqs, torch.Tensor) or freqs.is_meta:
        return pe  # a model built without weights (attnlab sites on a config)
    t = freqs.detach()[0].float().cpu()
    return replace(pe, frame_freqs=tuple(tuple(float(v) for v in head) for head in t))


MOCHI = JointFamily(
    name="mochi",
    model_classes=("MochiTransformer3DModel",),
    examples="genmo/mochi-1-preview",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    # MochiAttnProcessor2_0: per sample, the valid text tokens appended after the video tokens
    text="last",
    frame_pe=_mochi_pe,
    patch=lambda config: (1, int(config.get("patch_size", 2)), int(config.get("patch_size", 2))),
    temporal_compression=lambda config: 6,  # AutoencoderKLMochi: 6x in time
    frame_pe_weights=_mochi_pe_weights,
)

JOINT_FAMILIES: tuple[JointFamily, ...] = (COGVIDEOX, WAN, HUNYUAN, LTX, MOCHI)
