"""UNet3DConditionModel: ModelScope text-to-video, VideoCrafter2 ports, VideoToVideoSD.

Temporal attention: ``TransformerTemporalModel`` blocks, both attn1 and attn2 are self-attention
over frames (``double_self_attention``); an extra one (``transformer_in``) sits before the first
down block. No frame-axis positional encoding.
"""

from attnlab.core.sites import Family, PositionalEncoding

FAMILY = Family(
    name="unet3d",
    model_classes=("UNet3DConditionModel",),
    examples="damo-vilab/text-to-video-ms-1.7b, adamdad/videocrafterv2_diffusers",
    path=r"^(?P<block>transformer_in|down_blocks|mid_block|up_blocks)(?:\.(?P<index>\d+))?"
    r"(?:\.temp_attentions\.\d+)?\.transformer_blocks\.\d+\.attn[12]$",
    positional_encoding=lambda config: PositionalEncoding("none"),
)
