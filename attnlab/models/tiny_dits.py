"""Tiny random-weight instances of the full-3D attention families of
:mod:`attnlab.models.families.video_dits`, built offline from diffusers' own classes, with one
denoiser call's inputs each.

``TINY[name]`` is a :class:`TinyDiT`: ``build(seed)`` makes the transformer (1-2 layers, 2 heads
of head dim 10-16, in eval mode), ``inputs(seed, batch)`` the keyword arguments of one call on
``FRAMES`` latent frames of a ``LATENT`` latent (``2 x 4`` patches per frame with patch 2: a
non-square grid, so a swapped height and width would show). ``call(model, kwargs)`` runs it
without gradients and returns the sample.

Example::

    from attnlab.models.tiny_dits import TINY
    tiny = TINY["skyreels-v2"]
    model = tiny.build()
    out = tiny.call(model, tiny.inputs())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: latent frames and latent (H, W) of the calls; the text embedding width
FRAMES = 3
LATENT = (4, 8)
TEXT_DIM = 16
TEXT_TOKENS = 6


@dataclass(frozen=True)
class TinyDiT:
    """One tiny denoiser: how to build it and the arguments of one call."""

    build: Callable[..., torch.nn.Module]
    inputs: Callable[..., dict[str, Any]]
    #: latent frames per token frame and patch (h, w): the grid of the call
    patch: tuple[int, int, int] = (1, 2, 2)

    def call(self, model: torch.nn.Module, kwargs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            out = model(**kwargs, return_dict=False)
        return out[0] if isinstance(out, (tuple, list)) else out

    @property
    def tokens_per_frame(self) -> int:
        return (LATENT[0] // self.patch[1]) * (LATENT[1] // self.patch[2])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _wan_kwargs(heads: int = 2, head_dim: int = 12, layers: int = 2) -> dict[str, Any]:
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip


def _video(g: torch.Generator, batch: int, channels: int = 4) -> torch.Tensor:
    return torch.randn(batch, channels, FRAMES, *LATENT, generator=g)


def _text(g: torch.Generator, batch: int) -> torch.Tensor:
    return torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g)


def _text_mask(batch: int) -> torch.Tensor:
    """The text attention mask ``[batch, TEXT_TOKENS]``: sample 0 has two padded tokens."""
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
    mask[0, -2:] = 0
    return mask


# ---- SkyReels-V2 (diffusion forcing: per-frame timesteps, block-causal frames) ---------------
def skyreels_v2_transformer(seed: int = 0, *, num_frame_per_block: int = 1) -> torch.nn.Module:
    """``SkyReelsV2Transformer3DModel``: Wan's tiny config; ``num_frame_per_block > 1`` makes
    its diffusion forcing mask block-causal over latent frames."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    return SkyReelsV2Transformer3DModel(
        **_wan_kwargs(), num_frame_per_block=num_frame_per_block
    ).eval()


def skyreels_v2_inputs(
    seed: int = 0, batch: int = 2, *, forcing: bool = True, frames: int = FRAMES
) -> dict[str, Any]:
    """Diffusion forcing (``forcing``): one timestep per latent frame, the earlier frames
    cleaner, as SkyReelsV2DiffusionForcingPipeline passes them."""
    g = _gen(seed)
    t = torch.linspace(100.0, 900.0, frames)
    return dict(
        hidden_states=torch.randn(batch, 4, frames, *LATENT, generator=g),
        timestep=t.repeat(batch, 1) if forcing else torch.full((batch,), 500.0),
        encoder_hidden_states=_text(g, batch),
        enable_diffusion_forcing=forcing,
    )


# ---- Wan VACE ------------------------------------------------------------------------------
def wan_vace_transformer(seed: int = 0) -> torch.nn.Module:
    """``WanVACETransformer3DModel``: 2 main blocks, one VACE control block (at layer 0)."""
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(seed)
    return WanVACETransformer3DModel(**_wan_kwargs(), vace_layers=[0], vace_in_channels=8).eval()


def wan_vace_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    return dict(
        hidden_states=_video(g, batch),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=_text(g, batch),
        control_hidden_states=_video(g, batch, channels=8),
    )


# ---- ChronoEdit ----------------------------------------------------------------------------
def chronoedit_transformer(seed: int = 0) -> torch.nn.Module:
    """``ChronoEditTransformer3DModel``: Wan's tiny config (head dim 12: its RoPE split and
    Wan's agree)."""
    from diffusers import ChronoEditTransformer3DModel

    torch.manual_seed(seed)
    return ChronoEditTransformer3DModel(**_wan_kwargs(), rope_temporal_skip_len=8).eval()


def wan_like_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    return dict(
        hidden_states=_video(g, batch),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=_text(g, batch),
    )


# ---- AnyFlow (bidirectional) ---------------------------------------------------------------
def anyflow_transformer(seed: int = 0) -> torch.nn.Module:
    """``AnyFlowTransformer3DModel``: Wan's tiny config; ``hidden_states (B, F, C, H, W)``."""
    from diffusers import AnyFlowTransformer3DModel

    torch.manual_seed(seed)
    kw = _wan_kwargs()
    kw.pop("qk_norm")
    return AnyFlowTransformer3DModel(**kw).eval()


def anyflow_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    return dict(
        hidden_states=_video(g, batch).transpose(1, 2).contiguous(),
        timestep=torch.full((batch, FRAMES), 700.0),  # one per latent frame
        r_timestep=torch.full((batch, FRAMES), 400.0),
        encoder_hidden_states=_text(g, batch),
    )


# ---- HunyuanVideo 1.5 ----------------------------------------------------------------------
def hunyuan15_transformer(seed: int = 0) -> torch.nn.Module:
    """``HunyuanVideo15Transformer3DModel``: 1 block, heads 2 x 10, rope_axes_dim (2, 4, 4),
    patch 2."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
        num_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        text_embed_dim=TEXT_DIM, text_embed_2_dim=8, image_embed_dim=8,
        rope_axes_dim=(2, 4, 4), target_size=32, task_type="t2v",
    ).eval()  # fmt: skip


def hunyuan15_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    mask = _text_mask(batch)
    return dict(
        hidden_states=_video(g, batch),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=_text(g, batch),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.randn(batch, 3, 8, generator=g),
        encoder_attention_mask_2=torch.ones(batch, 3, dtype=torch.long),
        image_embeds=torch.zeros(batch, 4, 8),
    )


# ---- Kandinsky 5 ---------------------------------------------------------------------------
def kandinsky5_transformer(seed: int = 0) -> torch.nn.Module:
    """``Kandinsky5Transformer3DModel``: 1 text and 2 visual blocks, heads 2 x 16
    (axes_dims 4 / 6 / 6), patch (1, 2, 2), regular attention. Its modulation layers start at
    zero (every attention gate 0: the output would not depend on the attention); they are
    drawn at random so that the attention acts."""
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=TEXT_DIM, in_text_dim2=8, time_dim=16,
        patch_size=(1, 2, 2), model_dim=32, ff_dim=32, num_text_blocks=1, num_visual_blocks=2,
        axes_dims=(4, 6, 6),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modulation" in name and not param.any():
                param.normal_(0.0, 0.2)
    return model


def kandinsky5_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    H, W = LATENT
    return dict(
        hidden_states=torch.randn(batch, FRAMES, H, W, 4, generator=g),
        encoder_hidden_states=_text(g, batch),
        timestep=torch.full((batch,), 500.0),
        pooled_projections=torch.randn(batch, 8, generator=g),
        visual_rope_pos=[torch.arange(FRAMES), torch.arange(H // 2), torch.arange(W // 2)],
        text_rope_pos=torch.arange(TEXT_TOKENS),
    )


# ---- Wan-Animate ---------------------------------------------------------------------------
#: face video frames of one call: the face encoder's two stride-2 convolutions turn 5 frames into
#: 2 motion frames, + 1 for the reference frame = FRAMES (as 77 face frames give 21 latent frames)
FACE_FRAMES = 5


def wan_animate_transformer(seed: int = 0) -> torch.nn.Module:
    """``WanAnimateTransformer3DModel``: Wan's tiny config, latent channels 4 (input 2 x 4 + 4),
    a 4 x 4 face motion encoder and a face adapter after every block."""
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    kw = _wan_kwargs()
    kw.pop("in_channels")
    return WanAnimateTransformer3DModel(
        **kw, in_channels=None, latent_channels=4, image_dim=None,
        motion_encoder_channel_sizes={"4": 8}, motion_encoder_size=4, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=8, face_encoder_num_heads=2,
        inject_face_latents_blocks=1,
    ).eval()  # fmt: skip


def wan_animate_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    """Latent frame 0 is the reference image; the pose latents cover the other frames."""
    g = _gen(seed)
    return dict(
        hidden_states=_video(g, batch, channels=12),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=_text(g, batch),
        pose_hidden_states=torch.randn(batch, 4, FRAMES - 1, *LATENT, generator=g),
        face_pixel_values=torch.randn(batch, 3, FACE_FRAMES, 4, 4, generator=g),
    )


# ---- ConsisID (the pipeline computes the 3D RoPE) -------------------------------------------
CONSISID_CONFIG: dict[str, Any] = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
    time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=2, sample_width=8, sample_height=4,
    sample_frames=9, patch_size=2, max_text_seq_length=TEXT_TOKENS,
    use_rotary_positional_embeddings=True, is_train_face=True, cross_attn_interval=1,
    cross_attn_dim_head=8, cross_attn_num_heads=2, LFE_id_dim=8, LFE_vit_dim=8, LFE_depth=5,
    LFE_dim_head=4, LFE_num_heads=2, LFE_num_id_token=2, LFE_num_querie=4, LFE_output_dim=21,
    LFE_ff_mult=1, LFE_num_scale=5,
)  # fmt: skip
"""heads 2 x 16 (inner 32: the face cross-attention's key width int(32 / 3 * 2) = 21 is
LFE_output_dim), identity conditioning on (``is_train_face``) with a tiny facial extractor"""


def consisid_transformer(seed: int = 0) -> torch.nn.Module:
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(seed)
    return ConsisIDTransformer3DModel(**CONSISID_CONFIG).eval()


def _pipeline_rope(pipeline: type, config: dict[str, Any], *args: Any) -> Any:
    """A pipeline's own ``_prepare_rotary_positional_embeddings`` for a transformer ``config``
    (VAE spatial factor 8), without building the pipeline."""
    from types import SimpleNamespace

    owner = SimpleNamespace(
        vae_scale_factor_spatial=8, transformer=SimpleNamespace(config=SimpleNamespace(**config))
    )
    return pipeline._prepare_rotary_positional_embeddings(owner, *args)


def consisid_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    from diffusers import ConsisIDPipeline

    g = _gen(seed)
    H, W = LATENT
    return dict(
        hidden_states=_video(g, batch).transpose(1, 2).contiguous(),
        encoder_hidden_states=_text(g, batch),
        timestep=torch.full((batch,), 500, dtype=torch.long),
        image_rotary_emb=_pipeline_rope(
            ConsisIDPipeline, CONSISID_CONFIG, 8 * H, 8 * W, FRAMES, "cpu"
        ),
        id_cond=torch.randn(batch, 8, generator=g),
        id_vit_hidden=[torch.randn(batch, 5, 8, generator=g) for _ in range(5)],
    )


# ---- EasyAnimate ---------------------------------------------------------------------------
def easyanimate_transformer(seed: int = 0) -> torch.nn.Module:
    """``EasyAnimateTransformer3DModel``: heads 2 x 16, one MMDiT block (text through its own
    projections) and one shared-weight block."""
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(seed)
    return EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        patch_size=2, num_layers=2, mmdit_layers=1, time_embed_dim=16, text_embed_dim=TEXT_DIM,
    ).eval()  # fmt: skip


def easyanimate_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    return dict(
        hidden_states=_video(g, batch),
        timestep=torch.full((batch,), 500, dtype=torch.long),
        encoder_hidden_states=_text(g, batch),
    )


# ---- Allegro (the pipeline computes the 3D RoPE) -------------------------------------------
ALLEGRO_CONFIG: dict[str, Any] = dict(
    patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12, in_channels=4,
    out_channels=4, num_layers=2, cross_attention_dim=24, caption_channels=TEXT_DIM,
    sample_height=4, sample_width=8, sample_frames=FRAMES, interpolation_scale_t=2.2,
    interpolation_scale_h=2.0, interpolation_scale_w=2.0,
)  # fmt: skip
"""heads 2 x 12 (t / h / w 4 each), the real interpolation_scale_t 2.2"""


def allegro_transformer(seed: int = 0) -> torch.nn.Module:
    from diffusers import AllegroTransformer3DModel

    torch.manual_seed(seed)
    return AllegroTransformer3DModel(**ALLEGRO_CONFIG).eval()


def allegro_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    from diffusers import AllegroPipeline

    g = _gen(seed)
    H, W = LATENT
    mask = _text_mask(batch)  # sample 0: two padded text tokens (cross-attention only)
    return dict(
        hidden_states=_video(g, batch),
        encoder_hidden_states=_text(g, batch),
        timestep=torch.full((batch,), 500, dtype=torch.long),
        encoder_attention_mask=mask,
        image_rotary_emb=_pipeline_rope(
            AllegroPipeline, ALLEGRO_CONFIG, batch, 8 * H, 8 * W, FRAMES, "cpu"
        ),
    )


# ---- Cosmos --------------------------------------------------------------------------------
def cosmos_transformer(seed: int = 0) -> torch.nn.Module:
    """``CosmosTransformer3DModel`` (Cosmos 1's layout: padding-mask channel, learned absolute
    positions besides the RoPE): heads 2 x 12 (t / h / w 4 each), rope_scale (2, 1, 1). The
    learned position tables start at zero; they are drawn at random so that they act."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
        num_layers=2, mlp_ratio=2.0, text_embed_dim=TEXT_DIM, adaln_lora_dim=8,
        max_size=(16, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=True, extra_pos_embed_type="learnable",
    ).eval()  # fmt: skip
    with torch.no_grad():
        for param in model.learnable_pos_embed.parameters():
            param.normal_()
    return model


def cosmos_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    """At 30 fps (CosmosTextToWorldPipeline's default): time positions 24 / 30 per frame."""
    g = _gen(seed)
    return dict(
        hidden_states=_video(g, batch),
        timestep=torch.full((batch,), 0.5),
        encoder_hidden_states=_text(g, batch),
        fps=30,
        padding_mask=torch.zeros(1, 1, *LATENT),
    )


# ---- MotifVideo ----------------------------------------------------------------------------
def motif_video_transformer(seed: int = 0) -> torch.nn.Module:
    """``MotifVideoTransformer3DModel``: one dual- and one single-stream block, heads 2 x 10,
    rope_axes_dim (2, 4, 4), patch 2."""
    from diffusers import MotifVideoTransformer3DModel

    torch.manual_seed(seed)
    return MotifVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
        num_layers=1, num_single_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        text_embed_dim=TEXT_DIM, rope_axes_dim=(2, 4, 4),
    ).eval()  # fmt: skip


def motif_video_inputs(seed: int = 0, batch: int = 2) -> dict[str, Any]:
    g = _gen(seed)
    mask = _text_mask(batch)
    return dict(
        hidden_states=_video(g, batch),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=_text(g, batch),
        encoder_attention_mask=mask,
    )


TINY: dict[str, TinyDiT] = {
    "skyreels-v2": TinyDiT(skyreels_v2_transformer, skyreels_v2_inputs),
    "wan-vace": TinyDiT(wan_vace_transformer, wan_vace_inputs),
    "chronoedit": TinyDiT(chronoedit_transformer, wan_like_inputs),
    "anyflow": TinyDiT(anyflow_transformer, anyflow_inputs),
    "hunyuanvideo15": TinyDiT(hunyuan15_transformer, hunyuan15_inputs),
    "kandinsky5": TinyDiT(kandinsky5_transformer, kandinsky5_inputs),
    "wan-animate": TinyDiT(wan_animate_transformer, wan_animate_inputs),
    "consisid": TinyDiT(consisid_transformer, consisid_inputs),
    "easyanimate": TinyDiT(easyanimate_transformer, easyanimate_inputs),
    "allegro": TinyDiT(allegro_transformer, allegro_inputs),
    "cosmos": TinyDiT(cosmos_transformer, cosmos_inputs),
    "motif-video": TinyDiT(motif_video_transformer, motif_video_inputs),
}
