"""Tiny random-weight video pipelines, built from configs, for offline tests and the demo.

They have the real layer structure of ModelScope (``UNet3DConditionModel``) and AnimateDiff
(``UNetMotionModel``) at a fraction of the width, a tokenizer with the real CLIP vocabulary
(open_clip ships its BPE merges), and are saved with ``save_pretrained`` and loaded back with
``from_pretrained`` so the real loading path is exercised.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch

from attnlab.util.cache import cache_dir, saved_once

TINY_MODELS = ("tiny-modelscope", "tiny-animatediff")


def clip_tokenizer():
    """A ``CLIPTokenizer`` with the real 49,408-token CLIP vocabulary, built offline."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=merges,
        model_max_length=77,
    )


def _text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def kl_vae(
    block_out_channels: tuple[int, ...] = (8, 8, 8, 8),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    sample_size: int = 64,
):
    """A random-weight 4-level ``AutoencoderKL`` (factor 8, 4 latent channels); the defaults
    are the tiny pipelines' VAE."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        layers_per_block=layers_per_block,
        sample_size=sample_size,
    )


# the UNet shape shared by both tiny families: 4 levels, like the real models
_UNET = dict(
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=4,
    sample_size=32,
)


def ddim_scheduler():
    """ModelScope's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps), DDIM."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny(kind: str, seed: int = 0):
    """Build a tiny pipeline of ``kind`` (one of ``TINY_MODELS``) in memory with fixed weights."""
    torch.manual_seed(seed)
    scheduler = ddim_scheduler()
    common = dict(
        vae=kl_vae(), text_encoder=_text_encoder(), tokenizer=clip_tokenizer(), scheduler=scheduler
    )
    if kind == "tiny-modelscope":
        from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

        unet = UNet3DConditionModel(**_UNET)
        return TextToVideoSDPipeline(unet=unet, **common)
    if kind == "tiny-animatediff":
        from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

        unet = UNet2DConditionModel(
            **_UNET,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        adapter = MotionAdapter(
            block_out_channels=(32, 32, 64, 64),
            motion_layers_per_block=1,
            motion_norm_num_groups=8,
            motion_num_attention_heads=4,
            motion_max_seq_length=32,
        )
        return AnimateDiffPipeline(unet=unet, motion_adapter=adapter, **common)
    raise ValueError(f"unknown tiny model {kind!r}; available: {', '.join(TINY_MODELS)}")


def tiny_path(kind: str, root: str | os.PathLike | None = None) -> Path:
    """Directory of the saved tiny pipeline ``kind``, building and saving it on first use."""
    if kind not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {kind!r}; available: {', '.join(TINY_MODELS)}")
    from attnlab.util.quiet import no_loading_bars, quiet_library_logs

    path = Path(root) if root is not None else cache_dir("models") / kind
    with quiet_library_logs(), no_loading_bars():
        return saved_once(path, lambda tmp: build_tiny(kind).save_pretrained(tmp))
