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
