"""Full-3D attention video transformers (DiTs): CogVideoX, Wan 2.x, HunyuanVideo.

These models have no separate temporal attention: every video self-attention attends jointly
over all ``F' x H' x W'`` latent patches (frame-major), with the text tokens either in the same
sequence (CogVideoX: prepended; HunyuanVideo: appended, padding masked) or in a separate
cross-attention (Wan). attnlab maps such a
layer to the frame level (see :mod:`attnlab.joint`): ``A[i, j]`` is the mean over the query
tokens of latent frame ``i`` of their attention mass on the key tokens of latent frame ``j``.

A :class:`JointFamily` is data only: model classes, the module paths of the video
self-attentions, where the text tokens are, the denoiser's sample layout, its patch sizes and
its frame-axis positional encoding as a :class:`FramePE` (read from the model's config).
:func:`build_joint_table` turns it into a :class:`JointSiteTable`, whose ``str`` is what
``attnlab sites`` prints.

Sources: diffusers 0.42 ``models/transformers/cogvideox_transformer_3d.py``,
``transformer_wan.py``, ``transformer_hunyuan_video.py``, ``models/embeddings.py`` (``get_3d_rotary_pos_embed``,
``CogVideoXPatchEmbed``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch

from attnlab.core.sites import Family, PositionalEncoding, Site, SiteTable

#: where the text tokens of a joint self-attention are
TEXT_LAYOUTS = ("first", "last", "cross")


@dataclass(frozen=True)
class FramePE:
    """The frame-axis positional encoding of a DiT, as data.

    ``kind``: "rope3d" (rotary embedding on separate t/h/w slices of each head's dim),
    "sinusoidal" (absolute 3D sin-cos added to the tokens), "learned" (absolute, learned).
    For "rope3d": ``t_dim``/``h_dim``/``w_dim`` are the head-dim channels rotated by the
    frame, row and column index; ``theta`` the RoPE base. ``max_frames``: most token frames
    the encoding has positions for (None: computed for any length).
    """

    kind: str
    t_dim: int | None = None
    h_dim: int | None = None
    w_dim: int | None = None
    theta: float | None = None
    max_frames: int | None = None
    note: str = ""

    def describe(self) -> str:
        if self.kind == "rope3d":
            text = (
                f"3D RoPE: t {self.t_dim} / h {self.h_dim} / w {self.w_dim} of head dim "
                f"{(self.t_dim or 0) + (self.h_dim or 0) + (self.w_dim or 0)}, theta {self.theta:g}"
            )
        else:
            text = self.kind
        if self.max_frames:
            text += f", at most {self.max_frames} latent frames"
        return text + (f" ({self.note})" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JointFamily(Family):
    """A full-3D attention family: see the module docstring."""

    text: str = "first"
    frame_pe: Callable[[Any], FramePE] = lambda config: FramePE("none")
    # (p_t, p_h, p_w) from the config
    patch: Callable[[Any], tuple[int, int, int]] = lambda config: (1, 1, 1)
    # frames of video per latent frame (the VAE's temporal compression)
    temporal_compression: Callable[[Any], int] = lambda config: 4
    # the name of the stream of a site (dual-/single-stream blocks), from its module path
    stream: Callable[[str], str] = lambda name: "video"

    joint: ClassVar[bool] = True

    def build_table(
        self,
        model: torch.nn.Module,
        latent: tuple[int, int] | None = None,
        frames: int | None = None,
        temporal_compression: int | None = None,
    ) -> SiteTable:
        return build_joint_table(model, self, latent, frames)


@dataclass(frozen=True)
class JointSite(Site):
    """One joint (space-time) self-attention over video tokens.

    ``text``: where the text tokens are ("first"/"last": in this attention's sequence; "cross":
    a separate cross-attention). ``frames`` and ``tokens_per_frame``: latent (token) frames
    and patches per frame for the size the table was built for (None when no size was given).
    """

    stream: str = "video"
    text: str = "cross"
    frames: int | None = None
    tokens_per_frame: int | None = None


@dataclass
class JointSiteTable(SiteTable):
    """Site table of a full-3D attention model; its layers are mapped to the frame level."""

    pe: FramePE = FramePE("none")
    patch3: tuple[int, int, int] = (1, 1, 1)
    temporal_compression: int = 4
    frames: int | None = None

    joint = True

    @property
    def processor_class(self):
        from attnlab.core.joint import JointAttnProcessor

        return JointAttnProcessor

    @property
    def text(self) -> str:
        return self.family.text  # type: ignore[attr-defined]

    def level_size(self, level: int, latent: tuple[int, int] | None = None) -> tuple[int, int]:
        H, W = latent or self.latent or (None, None)
        if H is None:
            raise ValueError("no latent size given: pass latent=(H, W)")
        return H // self.patch3[1], W // self.patch3[2]

    def token_frames(self, latent_frames: int) -> int:
        """Token frames for ``latent_frames`` latent frames (temporal patching rounds up)."""
        return -(-latent_frames // self.patch3[0])

    def call_dims(self, sample: torch.Tensor, bound: dict[str, Any]) -> dict[str, int]:
        dims = super().call_dims(sample, bound)
        dims["F"] = self.token_frames(dims["F"])
        return dims

    def at_latent(self, latent: tuple[int, int], frames: int | None = None) -> JointSiteTable:
        h, w = self.level_size(0, latent)
        tf = self.token_frames(frames) if frames is not None else None
        sites = [replace(s, h=h, w=w, frames=tf, tokens_per_frame=h * w) for s in self.sites]
        return JointSiteTable(
            self.family, sites, self.model_class, 1, latent, self.patch_size,
            pe=self.pe, patch3=self.patch3, temporal_compression=self.temporal_compression,
            frames=tf,
        )  # fmt: skip

    def __str__(self) -> str:
        cols = [
            "name",
            "stream",
            "block",
            "heads",
            "head_dim",
            "text",
            "frames",
            "tokens_per_frame",
        ]
        rows = [[str(getattr(s, c)) for c in cols] for s in self.sites]
        widths = [
            max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
        ]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        head = (
            f"{self.model_class} ({self.family.name}): {len(self.sites)} joint space-time "
            f"self-attention layers, mapped to latent frames"
        )
        if self.latent:
            head += f"; latent {self.latent[0]}x{self.latent[1]}"
            if self.frames:
                head += f" x {self.frames} frames"
        info = [
            f"frame PE: {self.pe.describe()}",
            f"text tokens: {_TEXT_WORDS[self.text]}",
            f"patch (t, h, w): {self.patch3}; temporal compression of the VAE: "
            f"{self.temporal_compression}x (latent frame = {self.temporal_compression} video frames)",
        ]
        lines = [head, *info, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        return "\n".join(lines)


_TEXT_WORDS = {
    "first": "joint, prepended to the video tokens (text mass recorded)",
    "last": "joint, appended after the video tokens (text mass recorded)",
    "cross": "separate cross-attention (not part of these maps)",
}


def build_joint_table(
    model: torch.nn.Module,
    family: JointFamily,
    latent: tuple[int, int] | None = None,
    frames: int | None = None,
) -> JointSiteTable:
    """List the video self-attention sites of a full-3D attention ``model``."""
    pattern = re.compile(family.path)
    config = getattr(model, "config", {})
    pe = family.frame_pe(config)
    sites = []
    for name, module in model.named_modules():
        m = pattern.match(name)
        if m is None or not hasattr(module, "to_q"):
            continue
        inner = module.to_q.out_features
        heads = int(module.heads)
        sites.append(
            JointSite(
                name, family.name, "transformer", int(m.group("index")), 0, heads, inner // heads,
                pe.kind if pe.kind != "rope3d" else "rope", pe.max_frames,
                stream=family.stream(name), text=family.text,
            )
        )  # fmt: skip
    patch3 = family.patch(config)
    table = JointSiteTable(
        family, sites, type(model).__name__, 1, None, patch3[1],
        pe=pe, patch3=patch3, temporal_compression=family.temporal_compression(config),
    )  # fmt: skip
    return table.at_latent(latent, frames) if latent else table


# ---- CogVideoX ----------------------------------------------------------------------------
def _cog_pe(config) -> FramePE:
    D = int(config.get("attention_head_dim", 64))
    if config.get("use_rotary_positional_embeddings", False):
        # get_3d_rotary_pos_embed: dim_t = D // 4, dim_h = dim_w = D // 8 * 3, theta 10000
        return FramePE("rope3d", D // 4, D // 8 * 3, D // 8 * 3, 10000.0)
    if config.get("use_learned_positional_embeddings", False):
        frames = (int(config.get("sample_frames", 49)) - 1) // int(
            config.get("temporal_compression_ratio", 4)
        ) + 1
        return FramePE("learned", max_frames=frames, note="absolute, added to the tokens")
    return FramePE("sinusoidal", note="absolute 3D sin-cos added to the tokens")


def _cog_patch(config) -> tuple[int, int, int]:
    p = int(config.get("patch_size", 2))
    return (int(config.get("patch_size_t") or 1), p, p)


COGVIDEOX = JointFamily(
    name="cogvideox",
    model_classes=("CogVideoXTransformer3DModel",),
    examples="THUDM/CogVideoX-2b, THUDM/CogVideoX-5b, THUDM/CogVideoX1.5-5B",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding(_cog_pe(config).kind),
    geometry="patch",
    sample_layout="BFCHW",
    text="first",
    frame_pe=_cog_pe,
    patch=_cog_patch,
    temporal_compression=lambda config: int(config.get("temporal_compression_ratio", 4)),
)


# ---- Wan 2.x ------------------------------------------------------------------------------
def _wan_pe(config) -> FramePE:
    D = int(config.get("attention_head_dim", 128))
    hw = 2 * (D // 6)  # WanRotaryPosEmbed: h = w = 2 * (D // 6), t = the rest
    return FramePE("rope3d", D - 2 * hw, hw, hw, 10000.0, int(config.get("rope_max_seq_len", 1024)))


WAN = JointFamily(
    name="wan",
    model_classes=("WanTransformer3DModel",),
    examples="Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.1-T2V-14B-Diffusers",
    path=r"^blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope"),
    geometry="patch",
    sample_layout="BCFHW",
    text="cross",
    frame_pe=_wan_pe,
    patch=lambda config: tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
    temporal_compression=lambda config: 4,  # AutoencoderKLWan: 4x in time
)


# ---- HunyuanVideo -------------------------------------------------------------------------
def _hunyuan_pe(config) -> FramePE:
    t, h, w = (int(d) for d in config.get("rope_axes_dim", (16, 56, 56)))
    return FramePE("rope3d", t, h, w, float(config.get("rope_theta", 256.0)))


HUNYUAN = JointFamily(
    name="hunyuanvideo",
    model_classes=("HunyuanVideoTransformer3DModel",),
    examples="hunyuanvideo-community/HunyuanVideo",
    # dual-stream blocks (text through add_q/k/v_proj) and single-stream blocks (text
    # concatenated); the token refiner's text-only attention is not a video site
    path=r"^(?:single_)?transformer_blocks\.(?P<index>\d+)\.attn$",
    positional_encoding=lambda config: PositionalEncoding("rope"),
    geometry="patch",
    sample_layout="BCFHW",
    text="last",
    frame_pe=_hunyuan_pe,
    patch=lambda config: (
        int(config.get("patch_size_t", 1)),
        int(config.get("patch_size", 2)),
        int(config.get("patch_size", 2)),
    ),
    temporal_compression=lambda config: 4,  # AutoencoderKLHunyuanVideo: 4x in time
    stream=lambda name: "single" if name.startswith("single_") else "dual",
)

JOINT_FAMILIES: tuple[JointFamily, ...] = (COGVIDEOX, WAN, HUNYUAN)
