"""Tiny random-weight full-3D attention video models (CogVideoX, Wan, HunyuanVideo, LTX-Video,
Mochi), built offline.

The transformers have the real layer structure (joint text+video attention with 3D RoPE in
CogVideoX; video self-attention with 3D RoPE and a separate text cross-attention in Wan) at a
tiny width (configs follow diffusers' own tests, with at least 3 latent frames). The pipelines
are the real diffusers pipelines with a tiny VAE, a tiny T5 encoder and, as tokenizer, the
offline CLIP tokenizer of :func:`attnlab.models.tiny.clip_tokenizer` (same call interface as T5's,
whose sentencepiece model no package registry ships).
"""

from __future__ import annotations

import functools

import torch

from attnlab.models import tiny

TEXT_DIM = 16  # the tiny T5's width = the transformers' text embedding width


def cogvideox_transformer(seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 16):
    """``CogVideoXTransformer3DModel``: heads 2 x 16 (3D RoPE needs D/4 and 3D/8 even)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=TEXT_DIM,
        num_layers=layers,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=8,
        use_rotary_positional_embeddings=True,
    ).eval()


def wan_transformer(seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 12):
    """``WanTransformer3DModel``: patch (1, 2, 2), heads 2 x 12, qk RMS norm across heads."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def hunyuan_transformer(seed: int = 0):
    """``HunyuanVideoTransformer3DModel``: 1 dual- and 1 single-stream block, heads 2 x 10,
    rope_axes_dim (2, 4, 4), patch 1 (diffusers' test config)."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    ).eval()


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The offline CLIP tokenizer, built once per process (building its vocabulary takes seconds)."""
    return tiny.clip_tokenizer()


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=49408,  # the CLIP vocabulary of the offline tokenizer
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
        )
    ).eval()


def cogvideox_pipeline(seed: int = 0):
    """A ``CogVideoXPipeline`` (tiny transformer, ``AutoencoderKLCogVideoX``, T5, DDIM)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

    transformer = cogvideox_transformer(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    pipe = CogVideoXPipeline(
        tokenizer=clip_tokenizer(),
        text_encoder=_t5(),
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_pipeline(seed: int = 0):
    """A ``WanPipeline`` (tiny transformer, ``AutoencoderKLWan``, T5, flow-matching Euler)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer = wan_transformer(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()  # fmt: skip
    pipe = WanPipeline(
        tokenizer=clip_tokenizer(),
        text_encoder=_t5(),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_transformer(seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 8):
    """``LTXVideoTransformer3DModel``: heads 2 x 8, patch 1 (diffusers' test config at 2 layers)."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=TEXT_DIM,
        num_layers=layers,
        caption_channels=TEXT_DIM,
    ).eval()


def mochi_transformer(seed: int = 0, *, layers: int = 2):
    """``MochiTransformer3DModel``: patch 2, heads 2 x 8, RMS q/k norm; its learned RoPE
    frequencies ``pos_frequencies`` (zeros at init) are drawn at random so that the RoPE acts."""
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    model = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=layers,
        pooled_projection_dim=16,
        in_channels=4,
        qk_norm="rms_norm",
        text_embed_dim=TEXT_DIM,
        time_embed_dim=4,
        max_sequence_length=8,
    ).eval()
    with torch.no_grad():
        model.pos_frequencies.normal_(0.0, 0.5)
    return model


def ltx_pipeline(seed: int = 0):
    """An ``LTXPipeline`` (tiny transformer, ``AutoencoderKLLTXVideo`` with 4x spatial and 4x
    temporal compression, T5, flow-matching Euler)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline

    transformer = ltx_transformer(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False), layers_per_block=(1, 1, 1, 1, 1),
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    pipe = LTXPipeline(
        tokenizer=clip_tokenizer(),
        text_encoder=_t5(),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mochi_pipeline(seed: int = 0):
    """A ``MochiPipeline`` (tiny transformer, ``AutoencoderKLMochi`` at width 32 (its group norms
    use 32 groups), T5, flow-matching Euler)."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

    transformer = mochi_transformer(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLMochi(
        latent_channels=4, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
    ).eval()  # fmt: skip
    pipe = MochiPipeline(
        tokenizer=clip_tokenizer(),
        text_encoder=_t5(),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_pipeline(seed: int = 0):
    """A ``HunyuanVideoPipeline`` (tiny transformer, ``AutoencoderKLHunyuanVideo`` with 8x
    spatial and 4x temporal compression, a tiny Llama and CLIP text encoder, flow-matching
    Euler with shift 7)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    transformer = hunyuan_transformer(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    ).eval()  # fmt: skip
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=49408, hidden_size=transformer.config.text_embed_dim,
            intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=128,
        )
    ).eval()  # fmt: skip
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=transformer.config.pooled_projection_dim,
            intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77,
        )
    ).eval()  # fmt: skip
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=clip_tokenizer(),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip,
        tokenizer_2=clip_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- audio-video DiTs: the video stream is mapped (attnlab.models.families.av_dits) ---------
#: latent frames and (H, W) of the audio-video calls below; audio latent frames
AV_FRAMES = 3
AV_LATENT = (2, 4)
AV_AUDIO = 5


def ltx2_transformer(
    seed: int = 0, *, layers: int = 2, rope_type: str = "interleaved", perturbed_attn: bool = False
):
    """``LTX2VideoTransformer3DModel``: video heads 2 x 10 (inner 20: 3 frequencies per axis,
    2 unrotated channels, head 0 holds two time pairs and head 1 one), audio heads 2 x 4, patch
    1, the default VAE factors (8, 32, 32) and RoPE base 20 (what the time coordinate uses).
    ``perturbed_attn``: the blocks take spatio-temporal guidance (LTX-2.3's STG)."""
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(seed)
    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=10, cross_attention_dim=20, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
        num_layers=layers, caption_channels=TEXT_DIM, rope_type=rope_type,
        perturbed_attn=perturbed_attn,
    ).eval()  # fmt: skip


def ltx2_inputs(
    seed: int = 0,
    batch: int = 2,
    *,
    frames: int = AV_FRAMES,
    fps: float = 24.0,
    self_mask: bool = False,
) -> dict:
    """One call of the tiny LTX-2 transformer as ``LTX2Pipeline`` makes it: packed video tokens
    ``[B, F*H*W, C]`` with the latent grid, audio tokens, text (2 padded tokens in sample 0).
    ``self_mask``: a multiplicative ``video_self_attention_mask`` (IC-LoRA style) that halves
    nothing and masks the last frame's keys for the first frame's queries."""
    g = torch.Generator().manual_seed(seed)
    H, W = AV_LATENT
    n = frames * H * W
    text_mask = torch.ones(batch, 6)
    text_mask[0, 4:] = 0
    kw = dict(
        hidden_states=torch.randn(batch, n, 4, generator=g),
        audio_hidden_states=torch.randn(batch, AV_AUDIO, 4, generator=g),
        encoder_hidden_states=torch.randn(batch, 6, TEXT_DIM, generator=g),
        audio_encoder_hidden_states=torch.randn(batch, 6, TEXT_DIM, generator=g),
        timestep=torch.full((batch,), 500.0),
        encoder_attention_mask=text_mask,
        audio_encoder_attention_mask=text_mask,
        num_frames=frames,
        height=H,
        width=W,
        fps=fps,
        audio_num_frames=AV_AUDIO,
    )
    if self_mask:
        mask = torch.ones(batch, n, n)
        T = H * W
        mask[:, :T, (frames - 1) * T :] = 0  # frame 0's queries do not see the last frame
        kw["video_self_attention_mask"] = mask
    return kw


def kandinsky6_transformer(
    seed: int = 0, *, layers: int = 2, scale_factor: tuple[float, float, float] = (1.0, 2.0, 2.0)
):
    """``Kandinsky6Transformer3DModel``: ``axes_dims`` (4, 6, 6) (head dim 16), width 32 (2
    heads), patch (1, 2, 2), the released checkpoints' switches (``ca_rope``, ``cross_gates``,
    ``fix_modulation``, ``visual_cond``) and 2 token types (image conditioning's tail frame)."""
    from diffusers import Kandinsky6Transformer3DModel

    torch.manual_seed(seed)
    return Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=TEXT_DIM, in_text_dim2=8, time_dim=16,
        patch_size=(1, 2, 2), model_dim=32, ff_dim=32, num_text_blocks=1,
        num_visual_blocks=layers, axes_dims=(4, 6, 6), in_audio_dim=4, out_audio_dim=4,
        scale_factor=scale_factor, text_token_padding=True, ca_rope=True, cross_gates=True,
        fix_modulation=True, visual_token_type_num_embeddings=2,
    ).eval()  # fmt: skip


def kandinsky6_inputs(
    seed: int = 0,
    batch: int = 2,
    *,
    frames: int = AV_FRAMES,
    latent: tuple[int, int] = (4, 8),
    audio: bool = True,
    reference: bool = False,
) -> dict:
    """One call as ``Kandinsky6TI2VAPipeline`` makes it: ``hidden_states (B, F, H, W, 2C + 1)``
    (latent, conditioning latent, mask), text, pooled text, audio latents. ``reference``: image
    conditioning, i.e. the reference frame appended as a last latent frame that reuses time
    position 0 and carries token type 1 (``frames`` then counts it)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(
        hidden_states=torch.randn(batch, frames, *latent, 9, generator=g),
        encoder_hidden_states=torch.randn(batch, 6, TEXT_DIM, generator=g),
        pooled_projections=torch.randn(batch, 8, generator=g),
        timestep=torch.full((batch,), 500.0),
        audio_hidden_states=torch.randn(batch, AV_AUDIO, 4, generator=g) if audio else None,
    )
    if reference:
        types = torch.zeros(batch, frames, dtype=torch.long)
        types[:, -1] = 1
        kw["visual_token_type_ids"] = types
        kw["visual_rope_pos"] = (
            torch.cat([torch.arange(frames - 1), torch.zeros(1, dtype=torch.long)]),
            torch.arange(latent[0] // 2),
            torch.arange(latent[1] // 2),
        )
    return kw
