"""More full-3D attention video transformers of diffusers 0.42: the Wan derivatives (SkyReels-V2,
Wan VACE, ChronoEdit, AnyFlow, Wan-Animate), HunyuanVideo 1.5, Kandinsky 5, ConsisID,
EasyAnimate, Allegro, Cosmos and MotifVideo.

Each is a :class:`~attnlab.core.joint_sites.JointFamily` (data only), read from diffusers'
code and checked on a tiny instance of the real class against the brute-force frame marginal
of the full softmax (``tests/models/test_families_video.py``; the tiny configs are in
:mod:`attnlab.models.tiny_dits`):

* **Wan derivatives** (``transformer_skyreels_v2.py``, ``transformer_wan_vace.py``,
  ``transformer_chronoedit.py``, ``transformer_anyflow.py``, ``transformer_wan_animate.py``):
  Wan's layout: ``blocks.N.attn1`` attends over the frame-major video tokens only (text in the
  cross-attention ``attn2``), 3D RoPE h = w = 2 (D // 6), t = the rest, theta 10000.
  SkyReels-V2's diffusion forcing passes one timestep per latent frame and, with
  ``num_frame_per_block > 1``, a block-causal frame mask: its maps are over the frames each
  query may see. Wan VACE's control branch (``vace_blocks.N.attn1``) attends over the control
  video's tokens, on the same grid (stream "vace"). ChronoEdit puts 2-frame inputs at frame
  positions 0 and ``rope_temporal_skip_len - 1``. AnyFlow takes ``(B, F, C, H, W)``.
  Wan-Animate's latent frame 0 is the reference image; its pose latents are added to the other
  frames' tokens and its face adapters cross-attend per frame (not sites).
* **HunyuanVideo 1.5** (``transformer_hunyuan_video15.py``): one attention per block over the
  video tokens followed by the text tokens (padding masked), 3D RoPE ``rope_axes_dim``
  (16, 56, 56), theta ``rope_theta`` (256).
* **Kandinsky 5** (``transformer_kandinsky.py``): ``visual_transformer_blocks.N.self_attention``
  over the video tokens (``hidden_states (B, F, H, W, C)``, text in ``cross_attention``), 3D RoPE
  ``axes_dims`` (16, 24, 24), theta 10000, time positions divided by the pipeline's
  ``scale_factor[0]`` (1). Its NABLA sparse mode (``attention_type="nabla"``) reorders the
  tokens fractally and masks blocks: refused.
* **ConsisID** (``consisid_transformer_3d.py``): CogVideoX's blocks and processor (text first),
  the pipeline's ``get_3d_rotary_pos_embed``; its face-identity cross-attention runs between
  blocks (not a site).
* **EasyAnimate** (``transformer_easyanimate.py``): ``transformer_blocks.N.attn1`` over
  ``[text, video]`` with no mask (MMDiT blocks project the text with their own weights), 3D RoPE
  from ``get_3d_rotary_pos_embed(attention_head_dim)`` inside the model (t D/4, h = w 3D/8).
* **Allegro** (``transformer_allegro.py``): ``attn1`` over the video tokens (text in ``attn2``),
  3D RoPE D/3 per axis in rotate-half pairs (``apply_rotary_emb_allegro``); AllegroPipeline
  computes the tables with time positions divided by ``interpolation_scale_t`` (2.2).
* **Cosmos** (``transformer_cosmos.py``): ``attn1`` over the video tokens (text in ``attn2``),
  ``CosmosRotaryPosEmbed``: h = w = 2 (D // 6), t the rest, rotate-half pairs, time base
  ``10000 x rope_scale[0]^(t/(t-2))`` (NTK), time positions ``frame x 24 / fps``; plus a
  learned absolute embedding (``extra_pos_embed_type="learnable"``).
* **MotifVideo** (``transformer_motif_video.py``): HunyuanVideo's layout (dual- and
  single-stream ``attn``, text appended, padding masked) and RoPE (``rope_axes_dim``, theta
  256). Decoder layers (``num_decoder_layers > 0``) attend to the encoder's video tokens in
  place of the text: refused.
"""

from __future__ import annotations

from dataclasses import replace

from attnlab.core.joint_sites import FramePE, JointFamily
from attnlab.core.sites import PositionalEncoding
from attnlab.models.families.dit import COGVIDEOX, HUNYUAN, WAN

_T = "diffusers.models.transformers."


def _wan_like(name: str, cls: str, examples: str, module: str, rope: str, **changes) -> JointFamily:
    """Wan's family with another class name and the structure of ``module``."""
    attention = changes.pop("attention", "WanAttention")
    return replace(
        WAN,
        name=name,
        model_classes=(cls,),
        examples=examples,
        site_classes=(f"{_T}{module}.{attention}",),
        rope_classes=(f"{_T}{module}.{rope}",),
        **changes,
    )


# ---- the Wan derivatives ------------------------------------------------------------------
SKYREELS_V2 = _wan_like(
    "skyreels-v2",
    "SkyReelsV2Transformer3DModel",
    "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers, Skywork/SkyReels-V2-T2V-14B-720P-Diffusers",
    "transformer_skyreels_v2",
    "SkyReelsV2RotaryPosEmbed",
    attention="SkyReelsV2Attention",
)

WAN_VACE = replace(
    WAN,
    name="wan-vace",
    model_classes=("WanVACETransformer3DModel",),
    examples="Wan-AI/Wan2.1-VACE-1.3B-diffusers, Wan-AI/Wan2.1-VACE-14B-diffusers",
    # the main blocks and the VACE control blocks (over the control video's tokens, same grid)
    path=r"^(?:vace_)?blocks\.(?P<index>\d+)\.attn1$",
    stream=lambda name: "vace" if name.startswith("vace_") else "video",
    # its attention and RoPE modules are Wan's own: found by name only (no structure)
    site_classes=(),
    rope_classes=(),
)


def _chronoedit_pe(config, temporal_compression: int = 4) -> FramePE:
    D = int(config.get("attention_head_dim", 128))
    hw = D // 3  # ChronoEditRotaryPosEmbed.forward splits (D - 2 (D // 3), D // 3, D // 3)
    skip = int(config.get("rope_temporal_skip_len", 8))
    return FramePE(
        "rope3d", D - 2 * hw, hw, hw, 10000.0, int(config.get("rope_max_seq_len", 1024)),
        note=f"a 2-frame input sits at frame positions 0 and {skip - 1} (rope_temporal_skip_len)",
    )  # fmt: skip


CHRONOEDIT = _wan_like(
    "chronoedit",
    "ChronoEditTransformer3DModel",
    "nvidia/ChronoEdit-14B-Diffusers",
    "transformer_chronoedit",
    "ChronoEditRotaryPosEmbed",
    frame_pe=_chronoedit_pe,
)

ANYFLOW = _wan_like(
    "anyflow",
    "AnyFlowTransformer3DModel",
    "AnyFlow bidirectional flow-map checkpoints (pipeline AnyFlowPipeline)",
    "transformer_anyflow",
    "AnyFlowRotaryPosEmbed",
    attention="AnyFlowAttention",
    sample_layout="BFCHW",
)


# ---- HunyuanVideo 1.5 ---------------------------------------------------------------------
HUNYUAN15 = replace(
    HUNYUAN,
    name="hunyuanvideo15",
    model_classes=("HunyuanVideo15Transformer3DModel",),
    examples="hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn$",
    stream=lambda name: "video",
    # its attention modules are diffusers' generic Attention: found by name only
    site_classes=(),
    rope_classes=(),
)


# ---- Kandinsky 5 --------------------------------------------------------------------------
def _kandinsky_pe(config, temporal_compression: int = 4) -> FramePE:
    t, h, w = (int(d) for d in config.get("axes_dims", (16, 24, 24)))
    return FramePE(
        "rope3d", t, h, w, 10000.0, 128,
        note="time positions arange(F) / scale_factor[0] (Kandinsky5T2VPipeline: 1)",
    )  # fmt: skip


def _kandinsky_refuse(config) -> str | None:
    kind = config.get("attention_type", "regular")
    if kind == "regular":
        return None
    return (
        f"Kandinsky5Transformer3DModel with attention_type={kind!r} (NABLA sparse attention) "
        "reorders the video tokens fractally and masks attention blocks chosen from the input, "
        "so its attention is not a softmax over a frame-major token grid; attnlab maps the "
        "regular attention (attention_type='regular') only."
    )


KANDINSKY5 = JointFamily(
    name="kandinsky5",
    model_classes=("Kandinsky5Transformer3DModel",),
    examples="kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers",
    path=r"^visual_transformer_blocks\.(?P<index>\d+)\.self_attention$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BFHWC",
    text="cross",
    frame_pe=_kandinsky_pe,
    patch=lambda config: tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),  # type: ignore[misc]
    temporal_compression=lambda config: 4,  # AutoencoderKLHunyuanVideo: 4x in time
    refuse=_kandinsky_refuse,
    site_classes=(f"{_T}transformer_kandinsky.Kandinsky5Attention",),
    rope_classes=(f"{_T}transformer_kandinsky.Kandinsky5RoPE3D",),
)

# ---- Wan-Animate ---------------------------------------------------------------------------
WAN_ANIMATE = _wan_like(
    "wan-animate",
    "WanAnimateTransformer3DModel",
    "Wan-AI/Wan2.2-Animate-14B-Diffusers",
    "transformer_wan_animate",
    "WanRotaryPosEmbed",
)


# ---- ConsisID (CogVideoX's layout) --------------------------------------------------------
CONSISID = replace(
    COGVIDEOX,
    name="consisid",
    model_classes=("ConsisIDTransformer3DModel",),
    examples="BestWishYsh/ConsisID-preview",
)


# ---- EasyAnimate --------------------------------------------------------------------------
def _easyanimate_pe(config, temporal_compression: int = 4) -> FramePE:
    D = int(config.get("attention_head_dim", 64))
    # EasyAnimateRotaryPosEmbed calls get_3d_rotary_pos_embed(attention_head_dim, ...)
    return FramePE("rope3d", D // 4, D // 8 * 3, D // 8 * 3, 10000.0)


EASYANIMATE = JointFamily(
    name="easyanimate",
    model_classes=("EasyAnimateTransformer3DModel",),
    examples="alibaba-pai/EasyAnimateV5.1-7b-zh-diffusers",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    text="first",  # EasyAnimateAttnProcessor2_0: [text, video], no mask
    frame_pe=_easyanimate_pe,
    patch=lambda config: (
        1,
        int(config.get("patch_size") or 2),
        int(config.get("patch_size") or 2),
    ),
    temporal_compression=lambda config: 4,  # AutoencoderKLMagvit: 4x in time
    # its attention modules are diffusers' generic Attention: found by name only
)


# ---- Allegro ------------------------------------------------------------------------------
def _allegro_scale_t(config) -> float:
    scale = config.get("interpolation_scale_t", 2.2)
    return float(scale if scale is not None else 2.2)


def _allegro_pe(config, temporal_compression: int = 4) -> FramePE:
    D = int(config.get("attention_head_dim", 96))
    scale = _allegro_scale_t(config)
    return FramePE(
        "rope3d", D // 3, D // 3, D // 3, 10000.0, frame_step=1.0 / scale,
        note=f"rotate-half pairs per axis; time positions = latent frame / {scale:g} "
        "(interpolation_scale_t; AllegroPipeline computes the tables)",
    )  # fmt: skip


ALLEGRO = JointFamily(
    name="allegro",
    model_classes=("AllegroTransformer3DModel",),
    examples="rhymes-ai/Allegro",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",  # attn2: cross-attention to text
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    text="cross",
    frame_pe=_allegro_pe,
    patch=lambda config: (
        int(config.get("patch_size_t", 1)),
        int(config.get("patch_size", 2)),
        int(config.get("patch_size", 2)),
    ),
    temporal_compression=lambda config: 4,  # AutoencoderKLAllegro: 4x in time
)


# ---- Cosmos (1, 2, 2.5) -------------------------------------------------------------------
#: CosmosRotaryPosEmbed's base frame rate: time positions are latent frame x base_fps / fps
COSMOS_BASE_FPS = 24


def _cosmos_pe(config, temporal_compression: int = 8) -> FramePE:
    D = int(config.get("attention_head_dim", 128))
    hw = D // 6 * 2  # CosmosRotaryPosEmbed: h = w = D // 6 * 2, t = the rest
    t = D - 2 * hw
    scale_t = float(config.get("rope_scale", (2.0, 1.0, 1.0))[0])
    theta = 10000.0 * scale_t ** (t / (t - 2))  # NTK-scaled time base
    learned = config.get("extra_pos_embed_type", "learnable") == "learnable"
    return FramePE(
        "rope3d", t, hw, hw, theta,
        max_frames=int(config.get("max_size", (128, 240, 240))[0])
        // int(config.get("patch_size", (1, 2, 2))[0]),
        note=f"rotate-half pairs; time base 10000 x rope_scale[0] {scale_t:g}^(t/(t-2)); time "
        f"positions = latent frame x {COSMOS_BASE_FPS} / fps (the pipeline's fps)"
        + ("; plus a learned absolute t/h/w embedding added to the tokens" if learned else ""),
    )  # fmt: skip


COSMOS = JointFamily(
    name="cosmos",
    model_classes=("CosmosTransformer3DModel",),
    examples="nvidia/Cosmos-1.0-Diffusion-7B-Text2World, nvidia/Cosmos-Predict2-2B-Video2World",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",  # attn2: cross-attention to text
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    text="cross",
    frame_pe=_cosmos_pe,
    patch=lambda config: tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),  # type: ignore[misc]
    # Cosmos 1's tokenizer compresses 8x in time, Cosmos 2's Wan VAE 4x: a pipeline's own
    # vae_scale_factor_temporal is used where there is one
    temporal_compression=lambda config: 8,
)


# ---- MotifVideo (HunyuanVideo's layout) ---------------------------------------------------
def _motif_refuse(config) -> str | None:
    n = int(config.get("num_decoder_layers", 0) or 0)
    if n == 0:
        return None
    return (
        f"MotifVideoTransformer3DModel with num_decoder_layers={n}: its last {n} single-stream "
        "blocks attend from a copy of the input video tokens to the encoder's output video "
        "tokens in place of the text, so their keys are two video grids, not video + text; "
        "attnlab maps MotifVideo without decoder layers only."
    )


MOTIF_VIDEO = replace(
    HUNYUAN,
    name="motif-video",
    model_classes=("MotifVideoTransformer3DModel",),
    examples="Motif-Technologies/Motif-Video-2B",
    refuse=_motif_refuse,
    site_classes=(f"{_T}transformer_motif_video.MotifVideoAttention",),
    rope_classes=(f"{_T}transformer_motif_video.MotifVideoRotaryPosEmbed",),
)

VIDEO_DITS: tuple[JointFamily, ...] = (
    SKYREELS_V2,
    WAN_VACE,
    CHRONOEDIT,
    ANYFLOW,
    HUNYUAN15,
    KANDINSKY5,
    WAN_ANIMATE,
    CONSISID,
    EASYANIMATE,
    ALLEGRO,
    COSMOS,
    MOTIF_VIDEO,
)
