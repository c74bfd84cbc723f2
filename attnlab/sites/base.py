"""The site-table engine: where temporal (frame-axis) self-attention lives in a video model.

A *family* module (``unet3d.py``, ``motion.py``, ...) holds only data: the model class names,
a regular expression over module paths, and how to read the positional encoding from the
config. This module turns that data into a table of :class:`Site` rows for a concrete model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

# "transformer": the single level of patch-based transformers (Latte)
BLOCKS = ("in", "down", "mid", "up", "transformer")
# "rope+relative": RoPE on q, k and a learned relative bias on the logits (LaVie); "...3d": the
# frame axis of a full-3D attention DiT's encoding (3D RoPE; 3D sin-cos or learned, added to
# the tokens), details in attnlab.sites.dit.FramePE
PE_KINDS = (
    "none", "sinusoidal", "learned", "rope", "rope+relative", "rope3d", "sinusoidal3d", "learned3d",
)  # fmt: skip


# module-path prefixes of the diffusers video models -> block vocabulary
BLOCK_NAMES = {
    "transformer_in": "in",
    "image_latents_temporal_encoder": "in",
    "down_blocks": "down",
    "mid_block": "mid",
    "up_blocks": "up",
    "temporal_transformer_blocks": "transformer",
}


class FrameLimitError(ValueError):
    """More frames than a model's frame positional encoding has positions."""


@dataclass(frozen=True)
class PositionalEncoding:
    """Frame-axis positional encoding of a family: kind in ``PE_KINDS``, max length if bounded."""

    kind: str = "none"
    max_len: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Family:
    """Data describing one model family (see the modules beside this one)."""

    name: str
    model_classes: tuple[str, ...]
    examples: str
    # matches module paths of temporal self-attention; named groups: `block` (a path prefix
    # mapped to one of BLOCKS by `BLOCK_NAMES`) and optionally `index` (the block's index)
    path: str
    positional_encoding: Callable[[Any], PositionalEncoding]
    # spatial downsampling of level k relative to the latent: "unet" -> ceil(H / 2^k);
    # "patch" -> H / patch_size (transformers have one level)
    geometry: str = "unet"
    # axis layout of the denoiser's `sample` argument (for latent size and batch)
    sample_layout: str = "BCFHW"


@dataclass(frozen=True)
class Site:
    """One temporal self-attention module and where it sits.

    ``level`` 0 is the full latent resolution; ``h`` x ``w`` is its feature size for the latent
    size the table was built for (None when no size was given).
    """

    name: str
    family: str
    block: str
    block_index: int
    level: int
    heads: int
    head_dim: int
    pe: str
    pe_max_len: int | None
    h: int | None = None
    w: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SiteTable(Sequence):
    """The temporal-attention sites of one model, in module registration order."""

    family: Family
    sites: list[Site]
    model_class: str
    num_levels: int
    latent: tuple[int, int] | None = None
    patch_size: int = 1
    _by_name: dict[str, Site] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {s.name: s for s in self.sites}

    def __getitem__(self, i):  # type: ignore[override]
        return self.sites[i]

    def __len__(self) -> int:
        return len(self.sites)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Site:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    @property
    def levels(self) -> list[int]:
        return sorted({s.level for s in self.sites})

    @property
    def max_frames(self) -> int | None:
        """The most frames the temporal attention's positional encoding allows (None: no limit)."""
        limits = [s.pe_max_len for s in self.sites if s.pe_max_len]
        return min(limits) if limits else None

    def check_frames(self, frames: int) -> None:
        """A clear error before a run that diffusers would fail with an opaque size mismatch."""
        limit = self.max_frames
        if limit is not None and frames > limit:
            pe = next(s.pe for s in self.sites if s.pe_max_len == limit)
            raise FrameLimitError(
                f"{self.model_class}: {frames} frames exceed the frame positional encoding of its "
                f"temporal attention ({pe}, at most {limit} frames); generate at most {limit} frames "
                "with this model"
                + (
                    ", or extend its table first: attnlab.organisms.extend_frame_positions(unet, "
                    f"{frames})"
                    if self.model_class == "OrganismUNet"
                    else ""
                )
            )

    def level_size(self, level: int, latent: tuple[int, int] | None = None) -> tuple[int, int]:
        """Feature size (h, w) at ``level`` for a latent of ``latent`` = (H, W)."""
        H, W = latent or self.latent or (None, None)
        if H is None:
            raise ValueError("no latent size given: pass latent=(H, W)")
        if self.family.geometry == "patch":
            return H // self.patch_size, W // self.patch_size
        return math.ceil(H / 2**level), math.ceil(W / 2**level)

    def call_dims(self, sample: torch.Tensor, bound: dict[str, Any]) -> dict[str, int]:
        """Batch ``B``, frames ``F`` and latent ``H``, ``W`` of one denoiser call, read from its
        first argument (``sample``) in the family's layout; ``bound``: all call arguments."""
        layout = self.family.sample_layout
        if sample.ndim != len(layout):
            raise RuntimeError(f"attnlab expects 5D video latents, got {tuple(sample.shape)}")
        return {k: int(v) for k, v in zip(layout, sample.shape)}

    def level_from_rows(self, rows: int, batch: int, latent: tuple[int, int]) -> int | None:
        """Level whose feature size matches ``rows = batch * h * w`` at run time (None if none)."""
        for level in range(self.num_levels):
            h, w = self.level_size(level, latent)
            if batch * h * w == rows:
                return level
        return None

    def at_latent(self, latent: tuple[int, int]) -> SiteTable:
        """The same table with feature sizes for latent size ``latent`` = (H, W)."""
        sites = [
            replace(s, h=hw[0], w=hw[1])
            for s in self.sites
            for hw in [self.level_size(s.level, latent)]
        ]
        return SiteTable(
            self.family, sites, self.model_class, self.num_levels, latent, self.patch_size
        )

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([s.as_dict() for s in self.sites])

    def __str__(self) -> str:
        cols = ["name", "block", "level", "h", "w", "heads", "head_dim", "pe"]
        rows = [[str(getattr(s, c)) if c != "pe" else _pe_str(s) for c in cols] for s in self.sites]
        widths = [
            max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
        ]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        head = f"{self.model_class} ({self.family.name}): {len(self.sites)} temporal self-attention layers"
        if self.latent:
            head += f", latent {self.latent[0]}x{self.latent[1]}"
        lines = [head, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        return "\n".join(lines)


def _pe_str(s: Site) -> str:
    return f"{s.pe}(max {s.pe_max_len})" if s.pe_max_len else s.pe


def build_table(
    model: torch.nn.Module, family: Family, latent: tuple[int, int] | None = None
) -> SiteTable:
    """List the temporal self-attention sites of ``model`` according to ``family``."""
    from diffusers.models.attention_processor import Attention

    pattern = re.compile(family.path)
    config = getattr(model, "config", {})
    num_levels = len(config.get("block_out_channels", ())) or 1
    pe = family.positional_encoding(config)
    sites = []
    for name, module in model.named_modules():
        if not isinstance(module, Attention) or module.is_cross_attention:
            continue
        m = pattern.match(name)
        if m is None:
            continue
        block = BLOCK_NAMES[m.group("block")]
        index = int(m.group("index")) if m.groupdict().get("index") else 0
        level = _level(block, index, num_levels)
        inner = module.to_q.out_features
        sites.append(
            Site(
                name,
                family.name,
                block,
                index,
                level,
                module.heads,
                inner // module.heads,
                pe.kind,
                pe.max_len,
            )
        )
    patch = int(config.get("patch_size", 1) or 1) if family.geometry == "patch" else 1
    table = SiteTable(family, sites, type(model).__name__, num_levels, None, patch)
    return table.at_latent(latent) if latent else table


def _level(block: str, index: int, num_levels: int) -> int:
    # the level rule of the diffusers UNets: down i -> i, mid -> L-1, up j -> L-1-j, in -> 0
    if block == "down":
        return index
    if block == "mid":
        return num_levels - 1
    if block == "up":
        return num_levels - 1 - index
    return 0


def format_choices(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)
