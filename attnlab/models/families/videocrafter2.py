"""VideoCrafter2UNet: VideoCrafter2 (lvdm), converted by ``attnlab convert videocrafter2``.

The ModelScope layout of ``UNet3DConditionModel`` (see ``unet3d.py``: both attentions of every
temporal transformer are self-attention over frames, plus ``transformer_in``, lvdm's
``init_attn``) with fps conditioning. No frame-axis positional encoding, as in the paper.
"""

from attnlab.core.sites import Family, PositionalEncoding
from attnlab.models.families.unet3d import FAMILY as UNET3D

FAMILY = Family(
    name="videocrafter2",
    model_classes=("VideoCrafter2UNet",),
    examples="VideoCrafter2 model.ckpt (AILab-CVC), via `attnlab convert videocrafter2`",
    path=UNET3D.path,
    positional_encoding=lambda config: PositionalEncoding("none"),
    classes={"VideoCrafter2UNet": "attnlab.models.videocrafter:VideoCrafter2UNet"},
)
