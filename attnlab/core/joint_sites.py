"""The site types of full-3D (joint space-time) attention, generic over the DiT families.

A video DiT attends jointly over all ``F' x H' x W'`` latent patches (frame-major); attnlab maps
each such layer to the frame level (:mod:`attnlab.core.joint`). The families themselves (data
only) are in :mod:`attnlab.models.families.dit`.

* :class:`TokenLayout` - where the video (and text) tokens of one attention sequence are;
* :class:`JointAttentionError` - a call that does not fit the layout or attnlab's path;
* :class:`FramePE` - a DiT's frame-axis positional encoding, as data;
* :class:`JointFamily` - a full-3D attention family (text layout, patch sizes, frame PE);
* :class:`JointSite`, :class:`JointSiteTable` - its sites; the table's ``str`` is what
  ``attnlab sites`` prints;
* :func:`build_joint_table` - a family and a model -> a :class:`JointSiteTable`;
* :func:`site_pe` - the ``Site.pe`` kind of a frame PE.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, cast

import torch

from attnlab.core.sites import Family, Site, SiteTable, UnsupportedModelError

#: where the text tokens of a joint self-attention are
TEXT_LAYOUTS = ("first", "last", "cross")


class JointAttentionError(RuntimeError):
    """A joint-attention call that does not fit the site's token layout or attnlab's path."""


@dataclass(frozen=True)
class TokenLayout:
    """Where the video tokens of one joint-attention sequence are.

    ``frames`` token frames of ``per_frame`` patches each, frame-major; ``text``: "first" (text
    tokens before the video tokens), "last" (after them) or "cross" (none in this sequence).
    """

    frames: int
    per_frame: int
    text: str

    @property
    def video(self) -> int:
        return self.frames * self.per_frame

    def video_start(self, seq: int) -> int:
        """Index of the first video token in a sequence of ``seq`` tokens (checked)."""
        n = self.video
        if self.text == "cross":
            if seq != n:
                raise JointAttentionError(
                    f"expected {n} video tokens ({self.frames} frames x {self.per_frame}), got a "
                    f"sequence of {seq}"
                )
            return 0
        if seq < n:
            raise JointAttentionError(
                f"expected at least {n} video tokens ({self.frames} frames x {self.per_frame}) "
                f"in the joint sequence, got {seq}"
            )
        return seq - n if self.text == "first" else 0

    def membership(self, seq: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``E [seq, F (+1)]``: ``E[k, j] = 1`` when key ``k`` is a video token of frame ``j``;
        the last column marks text tokens (absent for "cross")."""
        v0 = self.video_start(seq)
        cols = self.frames + (self.text != "cross")
        E = torch.zeros(seq, cols, device=device, dtype=dtype)
        idx = torch.arange(self.video, device=device)
        E[v0 + idx, idx // self.per_frame] = 1
        if self.text != "cross":
            E[:v0, -1] = 1
            E[v0 + self.video :, -1] = 1
        return E


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
      (for "split", ``frame_step`` is the RoPE position step of one latent frame where it is
      not 1, e.g. a model that scales its time positions; None: 1)
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
            if self.frame_step is not None and self.frame_step != 1:
                text += f"; frame position step {self.frame_step:g} per latent frame"
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
    """A full-3D attention family, as data: the model classes, the module paths of the video
    self-attentions, where the text tokens are (``text``, one of :data:`TEXT_LAYOUTS`), the
    denoiser's sample layout, its patch sizes and its frame PE as a :class:`FramePE` (read
    from the model's config)."""

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
    # config -> why a model of this family with that config cannot be mapped (None: it can),
    # e.g. a sparse attention mode that reorders the tokens
    refuse: Callable[[Any], str | None] | None = None
    # structural lookup of an unregistered class (a renamed copy): "module.Class" names of the
    # attention modules at the sites and of the RoPE module that sets the frame PE; a model
    # whose site modules are all of ``site_classes`` and which holds a ``rope_classes`` module
    # belongs to this family (both must be given for the lookup to consider the family)
    site_classes: tuple[str, ...] = ()
    rope_classes: tuple[str, ...] = ()

    joint: ClassVar[bool] = True

    def build_table(
        self,
        model: torch.nn.Module,
        latent: tuple[int, int] | None = None,
        frames: int | None = None,
        temporal_compression: int | None = None,
    ) -> SiteTable:
        if self.refuse is not None:
            why = self.refuse(getattr(model, "config", {}))
            if why:
                raise UnsupportedModelError(why)
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

    family: JointFamily
    pe: FramePE = FramePE("none")
    patch3: tuple[int, int, int] = (1, 1, 1)
    temporal_compression: int = 4
    frames: int | None = None

    joint: ClassVar[bool] = True

    @property
    def text(self) -> str:
        return self.family.text

    def level_size(self, level: int, latent: tuple[int, int] | None = None) -> tuple[int, int]:
        size = latent or self.latent
        if size is None:
            raise ValueError("no latent size given: pass latent=(H, W)")
        H, W = size
        return H // self.patch3[1], W // self.patch3[2]

    def token_frames(self, latent_frames: int) -> int:
        """Token frames for ``latent_frames`` latent frames (temporal patching rounds up)."""
        return -(-latent_frames // self.patch3[0])

    def call_dims(self, sample: torch.Tensor, bound: dict[str, Any]) -> dict[str, int]:
        read = self.family.call_dims
        dims = read(sample, bound) if read is not None else super().call_dims(sample, bound)
        dims["F"] = self.token_frames(dims["F"])
        return dims

    def at_latent(self, latent: tuple[int, int], frames: int | None = None) -> JointSiteTable:
        h, w = self.level_size(0, latent)
        tf = self.token_frames(frames) if frames is not None else None
        # the sites of a joint table are JointSites (build_joint_table)
        sites: list[Site] = [
            replace(cast(JointSite, s), h=h, w=w, frames=tf, tokens_per_frame=h * w)
            for s in self.sites
        ]
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
    """The ``Site.pe`` kind (``attnlab.core.sites.PE_KINDS``) of a DiT's frame PE: "rope3d",
    "sinusoidal3d", "learned3d" (kept apart from the temporal PEs of UNets), else "none"."""
    if kind in ("rope3d", "sinusoidal", "learned"):
        return kind if kind.endswith("3d") else kind + "3d"
    return "none"


def _heads_and_dim(module: torch.nn.Module) -> tuple[int, int] | None:
    """Heads and head dim of an attention module: diffusers' ``to_q`` / ``heads`` (most
    families) or ``to_query`` / ``num_heads`` (Kandinsky 5); None: not an attention module."""
    proj = getattr(module, "to_q", None) or getattr(module, "to_query", None)
    heads = getattr(module, "heads", None) or getattr(module, "num_heads", None)
    if not isinstance(proj, torch.nn.Linear) or not isinstance(heads, int):
        return None
    return heads, proj.out_features // heads


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
    sites: list[Site] = []
    for name, module in model.named_modules():
        m = pattern.match(name)
        shape = _heads_and_dim(module) if m is not None else None
        if m is None or shape is None:
            continue
        heads, head_dim = shape
        sites.append(
            JointSite(
                name, family.name, "transformer", int(m.group("index")), 0, heads, head_dim,
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
