"""UNetSpatioTemporalConditionModel: Stable Video Diffusion (image-to-video).

Temporal attention: ``TemporalBasicTransformerBlock.attn1`` inside each
``TransformerSpatioTemporalModel``; its attn2 is cross-attention to one image token and is
excluded. Frame positions enter as a sinusoidal frame-index embedding through a learned MLP
(``time_pos_embed``), added to the hidden states: no maximum length.
"""

from attnlab.core.sites import Family, PositionalEncoding

FAMILY = Family(
    name="svd",
    model_classes=("UNetSpatioTemporalConditionModel",),
    examples="stabilityai/stable-video-diffusion-img2vid-xt",
    path=r"^(?P<block>down_blocks|mid_block|up_blocks)(?:\.(?P<index>\d+))?"
    r"\.attentions\.\d+\.temporal_transformer_blocks\.\d+\.attn1$",
    positional_encoding=lambda config: PositionalEncoding(
        "learned", None, "sinusoidal frame index through a learned MLP"
    ),
    sample_layout="BFCHW",
)
