"""I2VGenXLUNet: I2VGen-XL (image-to-video).

Temporal attention as in UNet3D (``transformer_in`` and ``temp_attentions``), plus
``image_latents_temporal_encoder.attn1`` over the image latents at full latent resolution.
No frame-axis positional encoding.
"""

from attnlab.core.sites import Family, PositionalEncoding

FAMILY = Family(
    name="i2vgenxl",
    model_classes=("I2VGenXLUNet",),
    examples="ali-vilab/i2vgen-xl",
    path=r"^(?P<block>transformer_in|image_latents_temporal_encoder|down_blocks|mid_block|up_blocks)"
    r"(?:\.(?P<index>\d+))?(?:\.temp_attentions\.\d+)?(?:\.transformer_blocks\.\d+)?\.attn[12]$",
    positional_encoding=lambda config: PositionalEncoding("none"),
)
