"""UNet3DConditionModel: ModelScope text-to-video, VideoCrafter2 ports, VideoToVideoSD.

Temporal attention: ``TransformerTemporalModel`` blocks, both attn1 and attn2 are self-attention
over frames (``double_self_attention``); an extra one (``transformer_in``) sits before the first
down block. No frame-axis positional encoding, except in attnlab's model organisms
(``OrganismUNet``), whose config names one (``frame_pe``, ``frame_pe_max_len``).
"""

from .base import Family, PositionalEncoding


def _pe(config) -> PositionalEncoding:
    kind = config.get("frame_pe", "none") if hasattr(config, "get") else "none"
    if kind == "sinusoidal":
        return PositionalEncoding("sinusoidal", int(config.get("frame_pe_max_len", 16)))
    return PositionalEncoding(kind or "none")


FAMILY = Family(
    name="unet3d",
    model_classes=("UNet3DConditionModel", "OrganismUNet"),
    examples="damo-vilab/text-to-video-ms-1.7b, adamdad/videocrafterv2_diffusers",
    path=r"^(?P<block>transformer_in|down_blocks|mid_block|up_blocks)(?:\.(?P<index>\d+))?"
    r"(?:\.temp_attentions\.\d+)?\.transformer_blocks\.\d+\.attn[12]$",
    positional_encoding=_pe,
)
