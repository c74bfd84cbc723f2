"""UNetMotionModel (+ MotionAdapter): AnimateDiff and its variants (PIA, SparseCtrl, ...).

Temporal attention: ``AnimateDiffTransformer3D`` motion modules; attn1 and attn2 are both
self-attention over frames. A sinusoidal absolute positional encoding (a buffer of length
``motion_max_seq_length``) is added to the hidden states before each; more frames than that
fail inside diffusers with a size mismatch.
"""

from attnlab.core.sites import Family, PositionalEncoding


def _pe(config) -> PositionalEncoding:
    kind = (
        config.get("motion_pos_embed_type", "sinusoidal")
        if hasattr(config, "get")
        else "sinusoidal"
    )
    if kind in (None, "none"):
        return PositionalEncoding("none")
    return PositionalEncoding("sinusoidal", int(config.get("motion_max_seq_length", 32)))


FAMILY = Family(
    name="motion",
    model_classes=("UNetMotionModel",),
    examples="guoyww/animatediff-motion-adapter-v1-5-2 on an SD1.5 checkpoint",
    path=r"^(?P<block>down_blocks|mid_block|up_blocks)(?:\.(?P<index>\d+))?"
    r"\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]$",
    positional_encoding=_pe,
    frame_limit_hint=(
        ", or set its table first: attnlab.models.organisms.extend_frame_positions(unet, "
        "{frames}) (new positions) or interpolate_frame_positions (the trained range stretched)"
    ),
)
