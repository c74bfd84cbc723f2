"""LatteTransformer3DModel: Latte (text-to-video transformer).

Temporal attention: ``temporal_transformer_blocks.i.attn1`` over frames of each patch; one
resolution level (the patch grid, latent / patch_size). A fixed sin-cos frame embedding of
length ``video_length`` is added before the first temporal block: any other frame count fails.
"""

from attnlab.core.sites import Family, PositionalEncoding

FAMILY = Family(
    name="latte",
    model_classes=("LatteTransformer3DModel",),
    examples="maxin-cn/Latte-1",
    path=r"^(?P<block>temporal_transformer_blocks)\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding(
        "sinusoidal",
        int(config.get("video_length", 16)),
        "fixed sin-cos, exactly video_length frames",
    ),
    geometry="patch",
)
