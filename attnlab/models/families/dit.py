"""Full-3D attention video transformers (DiTs): CogVideoX, Wan 2.x, HunyuanVideo, LTX-Video, Mochi.

These models have no separate temporal attention: every video self-attention attends jointly
over all ``F' x H' x W'`` latent patches (frame-major), with the text tokens either in the same
sequence (CogVideoX: prepended; HunyuanVideo: appended, padding masked; Mochi: the valid text
tokens of each sample appended) or in a separate cross-attention (Wan, LTX-Video). attnlab maps
such a
layer to the frame level (see :mod:`attnlab.joint`): ``A[i, j]`` is the mean over the query
tokens of latent frame ``i`` of their attention mass on the key tokens of latent frame ``j``.

A :class:`JointFamily` is data only: model classes, the module paths of the video
self-attentions, where the text tokens are, the denoiser's sample layout, its patch sizes and
its frame-axis positional encoding as a :class:`FramePE` (read from the model's config).
:func:`build_joint_table` turns it into a :class:`JointSiteTable`, whose ``str`` is what
``attnlab sites`` prints.

Sources: diffusers 0.42 ``models/transformers/cogvideox_transformer_3d.py``,
``transformer_wan.py``, ``transformer_hunyuan_video.py``, ``transformer_ltx.py``
(``LTXVideoRotaryPosEmbed``), ``transformer_mochi.py`` (``MochiRoPE``), ``attention_processor.py``
(``MochiAttnProcessor2_0``), ``models/embeddings.py`` (``get_3d_rotary_pos_embed``,
``CogVideoXPatchEmbed``).
"""

from __future__ import annotations

import math
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

    ``kind``: "rope3d" (rotary embedding turned by the frame, row and column index),
    "sinusoidal" (absolute 3D sin-cos added to the tokens), "learned" (absolute, learned).
    For "rope3d", ``axes`` says how the rotary pairs are shared among the axes:

    * "split" (CogVideoX, Wan, HunyuanVideo): contiguous t/h/w slices of each head's dim;
      ``t_dim``/``h_dim``/``w_dim`` are the head-dim channels rotated by the frame, row and
      column index, ``theta`` the RoPE base;
    * "interleaved" (LTX-Video): one RoPE over the whole inner dim before the head split, its
      frequency pairs cycling t, h, w (``t_dim``/``h_dim``/``w_dim`` count inner-dim channels;
      the first ``inner % 6`` are not rotated), so each head gets its own subset of frame
      frequencies; the frame coordinate is fps-scaled: ``frame_step`` is the coordinate step
      of one latent frame at ``fps``;
    * "mixture" (Mochi): learned frequencies ``(3, heads, D/2)``; every pair of every head
      turns with t, h and w at once (no separate frame slice).

    ``frame_freqs``: per head, the angle (radians) by which each rotary pair turns per token
    frame -- the frame axis's share of the encoding, comparable across families (filled for
    "interleaved" from the config, for "mixture" from the weights). ``max_frames``: most token
    frames the encoding has positions for (None: computed for any length).
    """

    kind: str
    t_dim: int | None = None
    h_dim: int | None = None
    w_dim: int | None = None
    theta: float | None = None
    max_frames: int | None = None
    note: str = ""
    axes: str = "split"
    frame_step: float | None = None
    fps: float | None = None
    frame_freqs: tuple[tuple[float, ...], ...] | None = None

    def describe(self) -> str:
        if self.kind == "rope3d" and self.axes == "split":
            text = (
                f"3D RoPE: t {self.t_dim} / h {self.h_dim} / w {self.w_dim} of head dim "
                f"{(self.t_dim or 0) + (self.h_dim or 0) + (self.w_dim or 0)}, theta {self.theta:g}"
            )
        elif self.kind == "rope3d" and self.axes == "interleaved":
            text = (
                f"3D RoPE over the inner dim, pairs interleaved t/h/w: t {self.t_dim} / h "
                f"{self.h_dim} / w {self.w_dim} channels, theta {self.theta:g}; frame coordinate "
                f"step {self.frame_step:g} per latent frame at {self.fps:g} fps"
            )
        elif self.kind == "rope3d" and self.axes == "mixture":
            text = "3D RoPE with learned per-head frequencies mixing t/h/w"
            if self.frame_freqs is None:
                text += " (weights not loaded: frame frequencies unknown)"
        else:
            text = self.kind
        if self.frame_freqs is not None:
            means = ", ".join(
                f"{sum(abs(f) for f in head) / max(1, len(head)):.3g}" for head in self.frame_freqs
            )
            text += f"; mean frame angle per head (rad/frame): {means}"
        if self.max_frames:
            text += f", at most {self.max_frames} latent frames"
        return text + (f" ({self.note})" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JointFamily(Family):
    """A full-3D attention family: see the module docstring."""

    text: str = "first"
    # (config, the VAE's temporal compression) -> the frame PE
    frame_pe: Callable[[Any, int], FramePE] = lambda config, tc: FramePE("none")
    # (p_t, p_h, p_w) from the config
    patch: Callable[[Any], tuple[int, int, int]] = lambda config: (1, 1, 1)
    # frames of video per latent frame (the VAE's temporal compression)
    temporal_compression: Callable[[Any], int] = lambda config: 4
    # the name of the stream of a site (dual-/single-stream blocks), from its module path
    stream: Callable[[str], str] = lambda name: "video"
    # refines the frame PE from the model's weights (learned frequencies); None: config only
    frame_pe_weights: Callable[[torch.nn.Module, FramePE], FramePE] | None = None
    # batch ``B``, latent frames ``F`` and latent ``H``, ``W`` of one denoiser call from its
    # arguments, for denoisers whose ``sample`` is not a 5D video (None: ``sample_layout``)
    call_dims: Callable[[torch.Tensor, dict[str, Any]], dict[str, int]] | None = None

    joint: ClassVar[bool] = True

    def build_table(
        self,
        model: torch.nn.Module,
        latent: tuple[int, int] | None = None,
        frames: int | None = None,
        temporal_compression: int | None = None,
    ) -> SiteTable:
        return build_joint_table(
            model, self, latent, frames, temporal_compression=temporal_compression
        )


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
        read = self.family.call_dims  # type: ignore[attr-defined]
        dims = read(sample, bound) if read is not None else super().call_dims(sample, bound)
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


def site_pe(kind: str) -> str:
    """The ``Site.pe`` kind (``attnlab.sites.PE_KINDS``) of a DiT's frame PE: "rope3d",
    "sinusoidal3d", "learned3d" (kept apart from the temporal PEs of UNets), else "none"."""
    if kind in ("rope3d", "sinusoidal", "learned"):
        return kind if kind.endswith("3d") else kind + "3d"
    return "none"


def build_joint_table(
    model: torch.nn.Module,
    family: JointFamily,
    latent: tuple[int, int] | None = None,
    frames: int | None = None,
    *,
    temporal_compression: int | None = None,
) -> JointSiteTable:
    """List the video self-attention sites of a full-3D attention ``model``
    (``temporal_compression``: the pipeline's VAE's, when known; else the family's)."""
    pattern = re.compile(family.path)
    config = getattr(model, "config", {})
    tc = temporal_compression or family.temporal_compression(config)
    pe = family.frame_pe(config, tc)
    if family.frame_pe_weights is not None:
        pe = family.frame_pe_weights(model, pe)
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
                site_pe(pe.kind), pe.max_frames,
                stream=family.stream(name), text=family.text,
            )
        )  # fmt: skip
    patch3 = family.patch(config)
    table = JointSiteTable(
        family, sites, type(model).__name__, 1, None, patch3[1],
        pe=pe, patch3=patch3, temporal_compression=tc,
    )  # fmt: skip
    return table.at_latent(latent, frames) if latent else table


# ---- CogVideoX ----------------------------------------------------------------------------
def _cog_pe(config, temporal_compression: int = 4) -> FramePE:
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
    positional_encoding=lambda config: PositionalEncoding(site_pe(_cog_pe(config).kind)),
    geometry="patch",
    sample_layout="BFCHW",
    text="first",
    frame_pe=_cog_pe,
    patch=_cog_patch,
    temporal_compression=lambda config: int(config.get("temporal_compression_ratio", 4)),
)


# ---- Wan 2.x ------------------------------------------------------------------------------
def _wan_pe(config, temporal_compression: int = 4) -> FramePE:
    D = int(config.get("attention_head_dim", 128))
    hw = 2 * (D // 6)  # WanRotaryPosEmbed: h = w = 2 * (D // 6), t = the rest
    return FramePE("rope3d", D - 2 * hw, hw, hw, 10000.0, int(config.get("rope_max_seq_len", 1024)))


WAN = JointFamily(
    name="wan",
    model_classes=("WanTransformer3DModel",),
    examples="Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.1-T2V-14B-Diffusers",
    path=r"^blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    text="cross",
    frame_pe=_wan_pe,
    patch=lambda config: tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
    temporal_compression=lambda config: 4,  # AutoencoderKLWan: 4x in time
)


# ---- HunyuanVideo -------------------------------------------------------------------------
def _hunyuan_pe(config, temporal_compression: int = 4) -> FramePE:
    t, h, w = (int(d) for d in config.get("rope_axes_dim", (16, 56, 56)))
    return FramePE("rope3d", t, h, w, float(config.get("rope_theta", 256.0)))


HUNYUAN = JointFamily(
    name="hunyuanvideo",
    model_classes=("HunyuanVideoTransformer3DModel",),
    examples="hunyuanvideo-community/HunyuanVideo",
    # dual-stream blocks (text through add_q/k/v_proj) and single-stream blocks (text
    # concatenated); the token refiner's text-only attention is not a video site
    path=r"^(?:single_)?transformer_blocks\.(?P<index>\d+)\.attn$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
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


# ---- LTX-Video ----------------------------------------------------------------------------
#: LTXPipeline's default frame rate and LTXVideoRotaryPosEmbed's base frame count
LTX_FPS = 25.0
LTX_BASE_FRAMES = 20


def _ltx_pe(config, temporal_compression: int = 8) -> FramePE:
    """LTXVideoRotaryPosEmbed: one RoPE over the inner dim ``heads * D`` before the head split.
    ``n = inner // 6`` frequencies ``theta^(i / (n - 1)) * pi / 2`` (theta 10000); the pairs of
    channels ``inner % 6 + 2p, + 1`` cycle over the axes (p % 3: t, h, w; frequency p // 3);
    the angle is ``freq * (2 * coord - 1)`` with the frame coordinate ``f * c_t / fps * p_t /
    20`` (LTXPipeline passes ``rope_interpolation_scale[0] = c_t / frame_rate``). So one latent
    frame turns a frame pair of frequency ``i`` by ``pi * theta^(i / (n - 1)) * step``."""
    heads = int(config.get("num_attention_heads", 32))
    D = int(config.get("attention_head_dim", 64))
    p_t = int(config.get("patch_size_t", 1))
    inner, theta = heads * D, 10000.0
    n, pad = inner // 6, inner % 6
    step = temporal_compression * p_t / (LTX_FPS * LTX_BASE_FRAMES)
    per_head: list[list[float]] = [[] for _ in range(heads)]
    for p in range(0, 3 * n, 3):  # the frame pairs
        i = p // 3
        head = (pad + 2 * p) // D
        per_head[head].append(math.pi * theta ** (i / max(1, n - 1)) * step)
    return FramePE(
        "rope3d", 2 * n, 2 * n, 2 * n, theta, axes="interleaved", frame_step=step, fps=LTX_FPS,
        frame_freqs=tuple(tuple(h) for h in per_head),
        note=f"{pad} unrotated channels; frame step = c_t {temporal_compression} x p_t {p_t} / "
        f"(fps x {LTX_BASE_FRAMES}), the pipeline's frame_rate sets fps",
    )  # fmt: skip


def _ltx_dims(sample: torch.Tensor, bound: dict[str, Any]) -> dict[str, int]:
    """LTX-Video's transformer takes pre-flattened tokens ``[B, F * H * W, C]`` and the latent
    grid as ``num_frames``, ``height``, ``width`` (as LTXPipeline passes them)."""
    grid = [bound.get(k) for k in ("num_frames", "height", "width")]
    if sample.ndim != 3 or any(g is None for g in grid):
        raise RuntimeError(
            "LTX-Video: attnlab reads the latent grid from the transformer's num_frames, height "
            f"and width arguments and hidden_states [B, F*H*W, C]; got hidden_states "
            f"{tuple(sample.shape)}, num_frames={grid[0]}, height={grid[1]}, width={grid[2]}"
        )
    F, H, W = (int(g) for g in grid)  # type: ignore[arg-type]
    if sample.shape[1] != F * H * W:
        raise RuntimeError(
            f"LTX-Video: hidden_states has {sample.shape[1]} tokens, the grid num_frames x height "
            f"x width = {F} x {H} x {W} = {F * H * W}"
        )
    return {"B": int(sample.shape[0]), "F": F, "H": H, "W": W}


LTX = JointFamily(
    name="ltx-video",
    model_classes=("LTXVideoTransformer3DModel",),
    examples="Lightricks/LTX-Video",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",  # attn2: cross-attention to text
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BSC",
    text="cross",
    frame_pe=_ltx_pe,
    patch=lambda config: (
        int(config.get("patch_size_t", 1)),
        int(config.get("patch_size", 1)),
        int(config.get("patch_size", 1)),
    ),
    temporal_compression=lambda config: 8,  # AutoencoderKLLTXVideo: 8x in time
    call_dims=_ltx_dims,
)


# ---- Mochi --------------------------------------------------------------------------------
def _mochi_pe(config, temporal_compression: int = 6) -> FramePE:
    return FramePE(
        "rope3d", axes="mixture",
        note="pos_frequencies (3, heads, D/2), learned: each pair of a head turns by "
        "t f_t + h f_h + w f_w (t: latent frame index; h, w: patch centres scaled to 192 x 192)",
    )  # fmt: skip


def _mochi_pe_weights(model: torch.nn.Module, pe: FramePE) -> FramePE:
    """Mochi's frame frequencies are weights: ``pos_frequencies[0]`` (heads x D/2), in radians
    per latent frame (MochiRoPE: positions ``t = arange(frames)``)."""
    freqs = getattr(model, "pos_frequencies", None)
    if not isinstance(freqs, torch.Tensor) or freqs.is_meta:
        return pe  # a model built without weights (attnlab sites on a config)
    t = freqs.detach()[0].float().cpu()
    return replace(pe, frame_freqs=tuple(tuple(float(v) for v in head) for head in t))


MOCHI = JointFamily(
    name="mochi",
    model_classes=("MochiTransformer3DModel",),
    examples="genmo/mochi-1-preview",
    path=r"^transformer_blocks\.(?P<index>\d+)\.attn1$",
    positional_encoding=lambda config: PositionalEncoding("rope3d"),
    geometry="patch",
    sample_layout="BCFHW",
    # MochiAttnProcessor2_0: per sample, the valid text tokens appended after the video tokens
    text="last",
    frame_pe=_mochi_pe,
    patch=lambda config: (1, int(config.get("patch_size", 2)), int(config.get("patch_size", 2))),
    temporal_compression=lambda config: 6,  # AutoencoderKLMochi: 6x in time
    frame_pe_weights=_mochi_pe_weights,
)

JOINT_FAMILIES: tuple[JointFamily, ...] = (COGVIDEOX, WAN, HUNYUAN, LTX, MOCHI)
