"""LaVieUNet: LaVie's base model (Vchitect/LaVie, converted by ``attnlab convert lavie``).

Temporal attention: ``attn_temp`` inside every spatial transformer block
(``{down_blocks.i,mid_block,up_blocks.j}.attentions.k.transformer_blocks.0.attn_temp``), 16
layers on SD 1.4's layout. Frame positions enter twice, both inside the attention logits:
rotary embeddings (32 channels per head, interleaved pairs) on q and k, and a learned T5-style
relative position bias (32 buckets, ``max_distance`` 32; logarithmic buckets capped so that all
offsets of 27 frames or more share their direction's last bucket): any frame count runs, and
beyond that offset the bias no longer depends on it.
"""

from attnlab.core.sites import Family, PositionalEncoding, attribute_terms

FAMILY = Family(
    name="lavie",
    model_classes=("LaVieUNet",),
    examples="lavie_base.pt + CompVis/stable-diffusion-v1-4, via `attnlab convert lavie`",
    path=r"^(?P<block>down_blocks|mid_block|up_blocks)(?:\.(?P<index>\d+))?"
    r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn_temp$",
    positional_encoding=lambda config: PositionalEncoding(
        "rope+relative",
        None,
        f"RoPE ({config.get('rope_dim', 32)} channels) on q, k plus a learned relative position "
        "bias (32 buckets, max distance 32; offsets >= 27 frames share the last bucket): "
        "no frame limit",
    ),
    position_terms=attribute_terms,
    classes={"LaVieUNet": "attnlab.models.lavie:LaVieUNet"},
)
