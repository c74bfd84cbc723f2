"""attnlab's own model families, registered through the ``attnlab.families`` entry point
(``pyproject.toml``) exactly as another package would register its families.

Each module beside this one is data: one :class:`~attnlab.core.sites.Family` (or, for full-3D
transformers, :class:`~attnlab.core.joint_sites.JointFamily` objects). See
``docs/extending.md`` for adding a family.
"""

from __future__ import annotations

from attnlab.core.sites import register_family, register_unmapped
from attnlab.models.families import (
    av_dits,
    dit,
    i2vgenxl,
    latte,
    lavie,
    motion,
    organism,
    svd,
    unet3d,
    video_dits,
    videocrafter2,
)

FAMILIES = (
    unet3d.FAMILY,
    motion.FAMILY,
    svd.FAMILY,
    i2vgenxl.FAMILY,
    latte.FAMILY,
    lavie.FAMILY,
    videocrafter2.FAMILY,
    organism.FAMILY,
    *dit.JOINT_FAMILIES,
    *video_dits.VIDEO_DITS,
    *av_dits.AV_DITS,
)

# Video denoisers whose attention is not a softmax over one frame-major token grid: the reason,
# one sentence each (read in diffusers 0.42's code).
OTHER_ATTENTION = {
    "SanaVideoTransformer3DModel": "Sana-Video's self-attention is linear attention (ReLU "
    "feature maps of q and k, no softmax), so there are no attention probabilities whose frame "
    "marginal attnlab could record or edit.",
    "SanaWMTransformer3DModel": "SANA-WM's blocks run linear (gated delta-net) attention, "
    "with a camera-conditioned softmax attention only every softmax_every_n-th block, so most "
    "layers have no attention probabilities to map.",
    "SanaWMLTX2RefinerTransformer3DModel": "the SANA-WM refiner runs its self-attention "
    "chunk-causally against a sliding-window KV cache of earlier refined frames, so one call "
    "sees a window of cached keys, not the video's frame-major token grid.",
    "Cosmos3OmniTransformer": "Cosmos 3 Omni packs understanding and generation tokens of "
    "several modalities (text, vision, sound, action) into per-item sequences with a causal "
    "and a full attention pathway, so there is no single frame-major video token grid.",
    "MiniMaxH3Transformer3DModel": "MiniMax H3 denoises packed rows of video and audio tokens "
    "addressed by index lists, so an attention call's keys are not a frame-major video grid.",
    "HunyuanVideoFramepackTransformer3DModel": "HunyuanVideo FramePack appends history "
    "frames compressed at several patch sizes (mixed-resolution history tokens) to the current "
    "section's tokens, so the key tokens do not form one frame grid.",
    "HeliosTransformer3DModel": "Helios attends over short, mid and long history tokens "
    "patchified at different resolutions beside the current frames (mixed-resolution history), "
    "so the key tokens do not form one frame grid.",
    "AnyFlowFARTransformer3DModel": "AnyFlow FAR generates chunk by chunk with causal "
    "attention through a flex-attention BlockMask and a KV cache, which never calls torch's "
    "scaled_dot_product_attention that attnlab intercepts (the bidirectional "
    "AnyFlowTransformer3DModel is mapped).",
    "WanAnimate2Transformer3DModel": "Wan-Animate-2 attends over the generation tokens and a "
    "KV cache of the reference video through a flex-attention BlockMask, which never calls "
    "torch's scaled_dot_product_attention that attnlab intercepts.",
    "Kandinsky6SRTransformer3DModel": "Kandinsky 6 SR runs NABLA sparse block attention on "
    "the flex backend over locally regrouped tiles of the latent, so its keys are neither a "
    "frame-major grid nor seen through torch's scaled_dot_product_attention.",
}

# Image transformers: their tokens are the patches of one image, with no frame axis at all.
IMAGE_TRANSFORMERS = {
    "SD3Transformer2DModel": "Stable Diffusion 3",
    "FluxTransformer2DModel": "Flux",
    "PixArtTransformer2DModel": "PixArt",
    "SanaTransformer2DModel": "Sana",
    "DiTTransformer2DModel": "DiT",
    "HunyuanDiT2DModel": "Hunyuan-DiT",
    "AuraFlowTransformer2DModel": "AuraFlow",
    "Lumina2Transformer2DModel": "Lumina 2",
    "QwenImageTransformer2DModel": "Qwen-Image",
}


def register_builtin() -> None:
    """Register attnlab's families (the ``attnlab.families`` entry point calls this)."""
    from attnlab.models import positions

    for family in FAMILIES:
        register_family(family)
    positions.register_builtin()  # how each family's frame positional encoding is read and edited
    for cls, why in OTHER_ATTENTION.items():
        register_unmapped(cls, f"{cls}: {why[0].upper()}{why[1:]}")
    for cls, name in IMAGE_TRANSFORMERS.items():
        register_unmapped(
            cls,
            f"{name} ({cls}) is an image transformer: its tokens are the patches of a single "
            "image, with no frame axis, so there is no temporal attention and no frame-level map "
            "of its attention; attnlab needs a video model whose latents have frames.",
        )
