"""OrganismUNet: attnlab's model organisms (``attnlab.models.organisms``).

The ModelScope layout of ``UNet3DConditionModel`` (see ``unet3d.py``) plus a frame-axis
positional encoding named in the config (``frame_pe``: none, sinusoidal with a table of
``frame_pe_max_len`` positions, or rope). The RoPE organism's rotation is a position term of
its temporal attention: the attention module carries it as ``attnlab_rope``.
"""

from __future__ import annotations

from typing import Any

from attnlab.core.sites import Family, PositionalEncoding, attribute_terms
from attnlab.models.families.unet3d import FAMILY as UNET3D


def _pe(config: Any) -> PositionalEncoding:
    kind = config.get("frame_pe", "none") if hasattr(config, "get") else "none"
    if kind == "sinusoidal":
        return PositionalEncoding("sinusoidal", int(config.get("frame_pe_max_len", 16)))
    return PositionalEncoding(kind or "none")


FAMILY = Family(
    name="organism",
    model_classes=("OrganismUNet",),
    examples="organism-none, organism-sinusoidal, organism-rope (embedded)",
    path=UNET3D.path,
    positional_encoding=_pe,
    position_terms=attribute_terms,
    classes={"OrganismUNet": "attnlab.models.organisms:OrganismUNet"},
    frame_limit_hint=(
        ", or extend its table first: attnlab.models.organisms.extend_frame_positions(unet, {frames})"
    ),
)
