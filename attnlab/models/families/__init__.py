"""attnlab's own model families, registered through the ``attnlab.families`` entry point
(``pyproject.toml``) exactly as another package would register its families.

Each module beside this one is data: one :class:`~attnlab.core.sites.Family` (or, for full-3D
transformers, :class:`~attnlab.core.joint_sites.JointFamily` objects). See
``docs/extending.md`` for adding a family.
"""

from __future__ import annotations

from attnlab.core.sites import register_family, register_unmapped
from attnlab.models.families import (
    dit,
    i2vgenxl,
    latte,
    lavie,
    motion,
    organism,
    svd,
    unet3d,
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
)

# Other models with only joint space-time attention: not mapped (yet); a clear error names them.
FULL_3D_ATTENTION = {
    "AllegroTransformer3DModel": "Allegro",
    "HunyuanVideoFramepackTransformer3DModel": "HunyuanVideo FramePack",
    "WanVACETransformer3DModel": "Wan VACE",
    "SkyReelsV2Transformer3DModel": "SkyReels-V2",
    "ConsisIDTransformer3DModel": "ConsisID",
    "EasyAnimateTransformer3DModel": "EasyAnimate",
    "CosmosTransformer3DModel": "Cosmos",
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
    for cls, name in FULL_3D_ATTENTION.items():
        register_unmapped(
            cls,
            f"{name} ({cls}) uses full 3D attention over space and time jointly; it has no "
            "separate temporal self-attention with N x N frame maps, so temporal attention "
            "analysis, replacement probes and TAR do not apply, and attnlab has no frame-level "
            "mapping of its joint attention yet.",
        )
    for cls, name in IMAGE_TRANSFORMERS.items():
        register_unmapped(
            cls,
            f"{name} ({cls}) is an image transformer: its tokens are the patches of a single "
            "image, with no frame axis, so there is no temporal attention and no frame-level map "
            "of its attention; attnlab needs a video model whose latents have frames.",
        )
