"""Audio-video DiTs: the video stream of LTX-2 and of Kandinsky 6.

Both denoise a video and an audio latent together in fused blocks. attnlab maps the video
stream's self-attention only: it is a softmax over the frame-major video tokens (text in a
separate cross-attention). The audio self-attention, the text cross-attentions and the
audio <-> video cross-attentions are not sites (their keys are audio or text tokens, not a
frame grid of the video).

* **LTX-2** (``transformer_ltx2.py``): ``transformer_blocks.N.attn1`` over the pre-flattened
  video tokens ``[B, F*H*W, C]`` (the grid from ``num_frames``, ``height``, ``width``, as the
  LTX-2 pipelines pass them; an optional ``video_self_attention_mask`` is applied as given).
  ``LTX2AudioVideoRotaryPosEmbed``: one RoPE over the inner dim before the head split, its
  ``inner // 6`` frequencies ``theta^(i / (n - 1)) * pi / 2`` cycling t/h/w (the first
  ``inner % 6`` channels unrotated); angle ``freq * (2 g - 1)`` with ``g`` the patch's midpoint
  coordinate over ``base`` (``pos_embed_max_pos``, 20). The time coordinate is in seconds: a
  latent frame covers the pixel frames ``[c_t f + o - c_t, c_t (f + p_t) + o - c_t)`` (clamped
  at 0; ``c_t = vae_scale_factors[0]`` 8, ``o = causal_offset`` 1), divided by the call's
  ``fps``. So token frames ``k >= 1`` are ``c_t p_t / (fps x base)`` apart, and the first
  latent frame (one pixel frame of the causal VAE) sits at ``(c_t p_t + o - c_t) / 2 / fps``.
  ``rope_type="split"`` pairs channel ``j`` with ``j + D/2`` within each head; which
  frequencies each head gets is the same.
* **Kandinsky 6** (``transformer_kandinsky6.py``):
  ``visual_transformer_blocks.N.video_dec_block.self_attention`` over the video tokens
  (``hidden_states (B, F, H, W, C)``, patchified and flattened frame-major); ``Kandinsky6RoPE3D``
  ``axes_dims`` (32, 48, 48) per head, theta 10000, interleaved pairs, each axis's angles
  divided by the config's ``scale_factor`` (time: 1). Image conditioning appends the clean
  reference frame as an extra latent frame at time position 0 (a frame of the map like any
  other).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attnlab.core.joint_sites import FramePE, JointFamily
from attnlab.core.sites import PositionalEncoding

# ---- LTX-2 --------------------------------------------------------------------------------
#: the LTX-2 pipelines' default frame rate (``frame_rate``; the model's ``fps`` default too)
LTX2_FPS = 24.0


def _ltx2_pe(config: Any, temporal_compression: int = 8) -> FramePE:
    """The time share of ``LTX2AudioVideoRotaryPosEmbed`` (read from the config): per head,
    the angle each time pair turns per token frame ``k >= 1`` at the default frame rate."""
    heads = int(config.get("num_attention_heads", 32))
    D = int(config.get("attention_head_dim", 128))
    p_t = int(config.get("patch_size_t", 1))
    c_t = int(config.get("vae_scale_factors", (8, 32, 32))[0])
    base = float(config.get("pos_embed_max_pos", 20))
    offset = int(config.get("causal_offset", 1))
    theta = float(config.get("rope_theta", 10000.0))
    inner = heads * D
    n, pad = inner // 6, inner % 6
    step = c_t * p_t / (LTX2_FPS * base)  # coordinate per token frame (k >= 1)
    per_head: list[list[float]] = [[] for _ in range(heads)]
    for i in range(n):  # time pair i: channels pad + 6 i, + 1 (split: the same head)
        per_head[(pad + 6 * i) // D].append(math.pi * theta ** (i / max(1, n - 1)) * step)
    first = (c_t * p_t + offset - c_t) / 2
    return FramePE(
        "rope3d", 2 * n, 2 * n, 2 * n, theta, axes="interleaved", frame_step=step, fps=LTX2_FPS,
        frame_freqs=tuple(tuple(h) for h in per_head),
        note=f"time in seconds: token frame k >= 1 at pixel frame (c_t {c_t} x p_t {p_t} x "
        f"(k + 1/2) + {offset} - {c_t}) / fps / {base:g}, the first latent frame at pixel frame "
        f"{first:g} / fps / {base:g}; {pad} unrotated channels; rope_type "
        f"{config.get('rope_type', 'interleaved')}; the pipeline's frame_rate / motion_speed "
        "sets fps",
    )  # fmt: skip


def _ltx2_patch(config: Any) -> tuple[int, int, int]:
    p = int(config.get("patch_size", 1))
    return (int(config.get("patch_size_t", 1)), p, p)


def _ltx2_dims(sample: torch.Tensor, bound: dict[str, Any]) -> dict[str, int]:
    """LTX-2's transformer takes pre-flattened video tokens ``[B, N, C]`` and the latent grid
    as ``num_frames``, ``height``, ``width`` (as the LTX-2 pipelines pass them)."""
    grid = [bound.get(k) for k in ("num_frames", "height", "width")]
    if sample.ndim != 3 or any(g is None for g in grid):
        raise RuntimeError(
            "LTX-2: attnlab reads the latent grid from the transformer's num_frames, height and "
            f"width arguments and hidden_states [B, F*H*W, C]; got hidden_states "
            f"{tuple(sample.shape)}, num_frames={grid[0]}, height={grid[1]}, width={grid[2]}"
        )
    F, H, W = (int(g) for g in grid)  # type: ignore[arg-type]
    if sample.shape[1] > F * H * W:  # patching only ever makes fewer tokens than the grid
        raise RuntimeError(
            f"LTX-2: hidden_states has {sample.shape[1]} tokens, more than the latent grid "
            f"num_frames x height x width = {F} x {H} x {W} = {F * H * W}: tokens appended to "
            "the video grid (LTX2ConditionPipeline's keyframe tokens, IC-LoRA reference tokens) "
            "do not form one frame-major grid; attnlab maps calls over the grid alone"
        )
    return {"B": int(sample.shape[0]), "F": F, "H": H, "W": W}


LTX2 = JointFamily(
    name="ltx2",
    model_classes=("LTX2VideoTransformer3DModel",),
    examples="Lightricks/LTX-2",
    # attn1: the video self-attention; audio_attn1 (audio), attn2 / audio_attn2 (text) and
    # audio_to_video_attn / video_to_audio_attn (the other modality) are not sites
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BSC",
    text="cross",
    frame_pe=_ltx2_pe,
    patch=_ltx2_patch,
    # the RoPE's time coordinate uses the config's VAE factors; AutoencoderKLLTX2Video: 8x
    temporal_compression=lambda config: int(config.get("vae_scale_factors", (8, 32, 32))[0]),
    call_dims=_ltx2_dims,
)


# ---- Kandinsky 6 --------------------------------------------------------------------------
def _kandinsky6_pe(config: Any, temporal_compression: int = 4) -> FramePE:
    t, h, w = (int(d) for d in config.get("axes_dims", (32, 48, 48)))
    scale = float(config.get("scale_factor", (1.0, 2.0, 2.0))[0])
    return FramePE(
        "rope3d", t, h, w, 10000.0, 128, frame_step=1.0 / scale,
        note=f"interleaved pairs; time angles / scale_factor[0] ({scale:g}); an image-conditioned "
        "call appends the reference frame as a last latent frame at time position 0",
    )  # fmt: skip


KANDINSKY6 = JointFamily(
    name="kandinsky6",
    model_classes=("Kandinsky6Transformer3DModel",),
    examples="kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers",
    # the video stream's self-attention; audio_dec_block (audio), the cross-attentions to text
    # and va/av_cross_attention (the other modality) are not sites
    path=r"^visual_transformer_blocks\.(?P<index>\d+)\.video_dec_block\.self_attention$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BFHWC",
    text="cross",
    frame_pe=_kandinsky6_pe,
    patch=lambda config: tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),  # type: ignore[misc]
    temporal_compression=lambda config: 4,  # AutoencoderKLHunyuanVideo: 4x in time
)

AV_DITS: tuple[JointFamily, ...] = (LTX2, KANDINSKY6)
