"""Site tables: where temporal (frame-axis) self-attention lives in a video model.

``attnlab.sites(model_or_pipe)`` returns a :class:`SiteTable` of :class:`Site` rows. Support for
a model family is data, a :class:`Family` (the model class names, a regular expression over
module paths, how to read the frame positional encoding from the config, and the position terms
the model applies inside its temporal attention), registered with :func:`register_family` or
through the ``attnlab.families`` entry point (attnlab's own families live in
``attnlab.models.families`` and are registered that way). Models with no frame structure
attnlab can map get a clear :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from attnlab.core.denoisers import compiled_inner, denoiser_of

# "transformer": the single level of patch-based transformers (Latte)
BLOCKS = ("in", "down", "mid", "up", "transformer")
# "rope+relative": RoPE on q, k and a learned relative bias on the logits (LaVie); "...3d": the
# frame axis of a full-3D attention DiT's encoding (3D RoPE; 3D sin-cos or learned, added to
# the tokens), details in attnlab.core.joint_sites.FramePE
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
    # the model's own position terms inside each temporal attention (RoPE on q and k, an
    # additive logit bias), read from the attention module: the processor's explicit path
    # applies them exactly as the model's own processor does; None: the family has none
    position_terms: Callable[[torch.nn.Module], PositionTerms | None] | None = None
    # denoiser classes that diffusers does not define: class name -> "module:attribute", so a
    # config-only table (``attnlab.sites("folder")``) can build them on the meta device
    classes: dict[str, str] = field(default_factory=dict)
    # appended to the FrameLimitError of a model whose frame PE is too short
    frame_limit_hint: str = ""

    #: tables of this family use attnlab's temporal processor (joint families: their own)
    joint: ClassVar[bool] = False

    def build_table(
        self,
        model: torch.nn.Module,
        latent: tuple[int, int] | None = None,
        frames: int | None = None,
        temporal_compression: int | None = None,
    ) -> SiteTable:
        """The site table of ``model`` (``frames``: latent frames, ``temporal_compression``:
        the pipeline VAE's, both used by joint families)."""
        return build_table(model, self, latent)


@dataclass(frozen=True)
class PositionTerms:
    """Position terms a model adds inside one temporal attention, as the processor needs them.

    ``rotate(q, k) -> (q, k)`` on ``[rows, heads, F, head_dim]`` tensors (rotary embeddings);
    ``logit_bias(F, device) -> [heads, F, F]`` added to the logits before the softmax (a learned
    relative position bias). Either may be None.
    """

    rotate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    logit_bias: Callable[[int, torch.device], torch.Tensor] | None = None


def attribute_terms(attn: torch.nn.Module) -> PositionTerms | None:
    """The position terms a model keeps on its attention modules as ``attnlab_rope`` (rotate q
    and k) and ``attnlab_logit_bias`` (an additive ``[heads, F, F]`` logit term)."""
    rotate = getattr(attn, "attnlab_rope", None)
    bias = getattr(attn, "attnlab_logit_bias", None)
    if rotate is None and bias is None:
        return None
    return PositionTerms(rotate=rotate, logit_bias=bias)


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
    """The temporal-attention sites of one model, in module registration order.

    A sequence of :class:`Site` rows (``len(table)``, ``table[i]``, iteration), also indexed by
    module path (``name in table``, ``table.get(name)``); ``print(table)`` shows one line per
    site (name, block, level, ``h``, ``w``, heads, head_dim, pe), ``table.to_dataframe()`` the
    same as a pandas DataFrame. Built by :func:`attnlab.sites`, not by hand.

    Attributes:
        family (:class:`Family`): the model family the table was built with.
        sites (``list[Site]``): the rows; each has ``name`` (module path, the ``layer``
            coordinate of recorded maps), ``family``, ``block`` (one of ``BLOCKS``),
            ``block_index``, ``level`` (0 = full latent resolution), ``heads``, ``head_dim``,
            ``pe`` (kind in ``PE_KINDS``), ``pe_max_len`` and ``h``/``w`` (feature size, None
            without a latent size).
        model_class (``str``): the denoiser's class name, e.g. ``"UNet3DConditionModel"``.
        num_levels (``int``): resolution levels of the model (``len(block_out_channels)``;
            1 for patch transformers).
        latent (``tuple[int, int] | None``): the latent size ``(H, W)`` the feature sizes are
            for; None when none was given.
        patch_size (``int``): spatial patch size of patch transformers (1 for UNets).
        names (``list[str]``): module paths of the sites, in order.
        levels (``list[int]``): the levels that have sites, sorted.
        max_frames (``int | None``): most frames the frame positional encoding allows (None:
            no limit).
        text (``str``): ``"cross"`` (text by cross-attention); joint tables: ``"first"`` or
            ``"last"``.

    Example::

        table = attnlab.sites(pipe, height=320, width=512)
        print(table)                       # UNet3DConditionModel (unet3d): ... latent 40x64
        len(table), table.levels           # number of sites, e.g. [0, 1, 2, 3]
        site = table[0]                    # Site(name=..., level=0, h=40, w=64, ...)
        level0 = [s.name for s in table if s.level == 0]
        table.get(site.name).heads
        table.at_latent((32, 32)).level_size(1)    # (16, 16)
        table.to_dataframe()
    """

    family: Family
    sites: list[Site]
    model_class: str
    num_levels: int
    latent: tuple[int, int] | None = None
    patch_size: int = 1
    _by_name: dict[str, Site] = field(default_factory=dict, repr=False)

    #: whether the sites are joint space-time attentions, mapped to the frame level (their
    #: table is a :class:`~attnlab.core.joint_sites.JointSiteTable`)
    joint: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._by_name = {s.name: s for s in self.sites}

    def __getitem__(self, i):  # type: ignore[override]
        return self.sites[i]

    def __len__(self) -> int:
        return len(self.sites)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Site:
        """The site whose module path is ``name`` (``KeyError`` if none).

        Example::

            table.get("down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1").level  # 0
        """
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        """Module paths of the sites, in module registration order.

        Example::

            attnlab.sites(pipe).names[0]   # e.g. 'transformer_in.transformer_blocks.0.attn1'
        """
        return [s.name for s in self.sites]

    @property
    def text(self) -> str:
        """Where the text tokens of the sites' attention sequence are: "first" or "last" (joint
        tables with text in the sequence), else "cross" (not in it)."""
        return "cross"

    @property
    def levels(self) -> list[int]:
        """The resolution levels that have sites, sorted (0 = full latent resolution).

        Example::

            attnlab.sites(pipe).levels     # e.g. [0, 1, 2, 3]
        """
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
                "with this model" + self.family.frame_limit_hint.format(frames=frames)
            )

    def level_size(self, level: int, latent: tuple[int, int] | None = None) -> tuple[int, int]:
        """Feature size (h, w) at ``level`` for a latent of ``latent`` = (H, W)."""
        size = latent or self.latent
        if size is None:
            raise ValueError("no latent size given: pass latent=(H, W)")
        H, W = size
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
        """One pandas row per site, with the :class:`Site` fields as columns.

        Example::

            df = attnlab.sites(pipe, latent=(40, 64)).to_dataframe()
            df.groupby("level").size()
        """
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


class UnsupportedModelError(ValueError):
    """The model has no separate temporal (frame-axis) self-attention."""


# ---- the family registry: the one extension point for model families ----------------------

#: entry-point group through which packages register model families (attnlab's own included)
ENTRY_POINT_GROUP = "attnlab.families"

_FAMILIES: dict[str, Family] = {}
_UNMAPPED: dict[str, str] = {}
_plugins_loaded = False


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Make ``family`` known to :func:`sites`, the recorders and the edits.

    A family is data (:class:`Family`): the denoiser class names, a regular expression over
    module paths of its temporal self-attentions, how to read its frame PE from the config,
    and optionally its position terms (:class:`PositionTerms`). Subclasses of a registered
    class belong to its family unless they are registered themselves. Registering a name
    twice raises unless ``replace=True``. See ``docs/extending.md``.
    """
    if not isinstance(family, Family):
        raise TypeError(f"register_family expects an attnlab Family, got {type(family).__name__}")
    if family.name in _FAMILIES and not replace and _FAMILIES[family.name] != family:
        raise ValueError(
            f"a model family named {family.name!r} is already registered; pass replace=True"
        )
    _FAMILIES[family.name] = family
    return family


def register_unmapped(class_name: str, why: str) -> None:
    """Name a denoiser class attnlab cannot map, with the reason its error should give."""
    _UNMAPPED[class_name] = why


def registered_families() -> tuple[Family, ...]:
    """Every registered family (loads the ``attnlab.families`` entry points on first use)."""
    _load_plugins()
    return tuple(_FAMILIES.values())


def _load_plugins() -> None:
    """Register the families of every installed package that declares them (attnlab's own
    families are declared the same way, in its ``pyproject.toml``)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        hook = ep.load()
        if callable(hook) and not isinstance(hook, Family):
            hook()
        else:
            for fam in hook if isinstance(hook, (list, tuple)) else (hook,):
                register_family(fam)


def family_of(model: torch.nn.Module | type | str) -> Family:
    """The family of a denoiser (module, class or class name), or a clear error saying why
    not.

    In order: a family naming the class; a class attnlab refuses by name (the reason); a
    subclass of a family's class (UNets always; full-3D transformers when the subclass keeps
    its base's ``forward``, which lays out the tokens); for a module, a renamed copy of a
    full-3D family found by structure (its site modules and its RoPE module are the family's
    classes, :func:`structural_family`). Otherwise the error says what was looked for and how
    to register a family.
    """
    families = registered_families()
    klass = model if isinstance(model, type) else type(model)
    name = model if isinstance(model, str) else klass.__name__
    for fam in families:
        if name in fam.model_classes:
            return fam
    supported = ", ".join(c for f in families for c in f.model_classes)
    if name in _UNMAPPED:
        raise UnsupportedModelError(f"{_UNMAPPED[name]} Supported: {supported}")
    # subclasses of a registered class (e.g. a user's UNet3D subclass) belong to its family
    overridden = None
    if not isinstance(model, str):
        for cls in klass.__mro__[1:]:
            for fam in families:
                if cls.__name__ not in fam.model_classes:
                    continue
                if not fam.joint or getattr(klass, "forward", None) is getattr(
                    cls, "forward", None
                ):
                    return fam
                overridden = overridden or (cls.__name__, fam)
    if isinstance(model, torch.nn.Module):
        found = structural_family(model, families)
        if found is not None:
            return found
    register = (
        "register it with attnlab.register_family (for a full-3D transformer a "
        "attnlab.core.joint_sites.JointFamily: the module paths of its video self-attentions, "
        "where its text tokens are, its sample layout, patch sizes and frame PE, as "
        "attnlab/models/families/dit.py does; docs/extending.md)"
    )
    if overridden is not None:
        base, fam = overridden
        raise UnsupportedModelError(
            f"{name} subclasses {base} (family {fam.name!r}) but overrides forward, which lays "
            "out the tokens of its joint attention, so attnlab cannot tell that its layout is "
            f"{base}'s; if it is, register it: attnlab.register_family(dataclasses.replace("
            f"attnlab.core.sites.family_of({base!r}), name=..., model_classes=({name!r},)))"
        )
    looked = (
        "attnlab looked for a registered family naming its class or one of its base classes"
        + (
            ", and for a full-3D family whose attention and RoPE module classes it uses"
            if isinstance(model, torch.nn.Module)
            else ""
        )
    )
    if "Transformer3D" in name:
        raise UnsupportedModelError(
            f"{name} looks like a full-3D attention video transformer (one attention over "
            f"text and frame-major video tokens), for which attnlab has no family: {looked}. To "
            f"map it, {register}. Supported denoisers: {supported}"
        )
    raise UnsupportedModelError(
        f"{name} has no temporal attention that attnlab knows of: {looked}. Supported "
        f"denoisers: {supported}. To add one, {register}."
    )


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def structural_family(model: torch.nn.Module, families: Sequence[Family]) -> Family | None:
    """The full-3D family of an unregistered denoiser found by structure (a renamed copy of a
    mapped DiT), or None.

    A family that declares ``site_classes`` and ``rope_classes`` matches when the modules at
    its site paths exist, are all of its ``site_classes``, and the model holds a module of one
    of its ``rope_classes`` (the frame PE). Exactly one family must match (several: None, and
    the caller's error says how to register one).
    """
    modules = list(model.named_modules())
    kinds = {_qualname(m) for _, m in modules}
    hits = []
    for fam in families:
        site_classes = getattr(fam, "site_classes", ())
        rope_classes = getattr(fam, "rope_classes", ())
        if not (site_classes and rope_classes) or not kinds.intersection(rope_classes):
            continue
        pattern = re.compile(fam.path)
        at_sites = [_qualname(m) for n, m in modules if pattern.match(n)]
        if at_sites and all(k in site_classes for k in at_sites):
            hits.append(fam)
    return hits[0] if len(hits) == 1 else None


def _wrapping(model: torch.nn.Module, pattern: re.Pattern, inner_of: Callable) -> list[str]:
    """Paths of the modules of ``model`` that wrap (``inner_of(module)``: the wrapped module,
    else None) a module holding attention at a path ``pattern`` maps once the wrapper's own
    path segment is left out."""
    found = []
    for name, module in model.named_modules():
        inner = inner_of(module)
        if inner is not None and any(
            pattern.match(f"{name}.{sub}" if sub else name) for sub, _ in inner.named_modules()
        ):
            found.append(name)
    return found


def _split_inner(module: Any) -> Any:
    """The module diffusers' ``SplitInferenceModule`` wraps, or None."""
    return module.module if type(module).__name__ == "SplitInferenceModule" else None


def hidden_layers(model: torch.nn.Module) -> str | None:
    """Why temporal attention layers of ``model`` are not where its family maps them, in
    words; None where none is hidden. A wrapper module inside the denoiser moves them:

    * diffusers' ``SplitInferenceModule`` (AnimateDiff's FreeNoise split inference,
      ``pipe.enable_free_noise_split_inference``) runs each wrapped block, and so each of its
      attention layers, once per chunk of its rows;
    * a ``torch.compile`` wrapper (``OptimizedModule``) on a block was traced through the
      model's own processors (the denoiser compiled as a whole, or blocks compiled in place,
      are recorded: the controller runs them eagerly)."""
    try:
        pattern = re.compile(family_of(model).path)
    except UnsupportedModelError:
        return None
    split = _wrapping(model, pattern, _split_inner)
    if split:
        size = model.get_submodule(split[0]).split_size
        return (
            f"diffusers' SplitInferenceModule wraps {len(split)} block"
            f"{'s' if len(split) > 1 else ''} holding its temporal attention (AnimateDiff's "
            "FreeNoise split inference, pipe.enable_free_noise_split_inference; the first: "
            f"{split[0]}, {size} rows per chunk), which calls each temporal attention layer "
            "once per chunk of its batch x positions rows: no call holds a layer's whole map, "
            "and the layers are not at the module paths attnlab maps. attnlab records and "
            "edits whole layer calls: use a pipeline without split inference (diffusers "
            "cannot undo it: load the pipeline again and call only pipe.enable_free_noise(...), "
            "which attnlab records window by window; the attention is the same, split "
            "inference only lowers the peak memory)"
        )
    compiled = _wrapping(model, pattern, compiled_inner)
    if compiled:
        return (
            f"torch.compile wraps {compiled[0]} inside it (an OptimizedModule; "
            f"{len(compiled)} in all), so the temporal attention layers there are not at the "
            "module paths attnlab maps (they gain '_orig_mod') and their compiled graph was "
            "traced through the model's own attention processors; compile the denoiser as a "
            "whole (pipe.unet = torch.compile(pipe.unet), or pipe.unet.compile()) or its "
            "blocks in place (block.compile(), as diffusers' compile_repeated_blocks does): "
            "attnlab records those, running them eagerly while it is attached"
        )
    return None


def sites(
    model_or_pipe: Any,
    latent: tuple[int, int] | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
) -> SiteTable:
    """The temporal self-attention sites of a pipeline, denoiser, local directory or hub id.

    Give ``latent=(H, W)`` (latent size) or ``height``/``width`` (video size, with a pipeline's
    VAE scale factor) to get each site's feature size ``h x w``. Full-3D attention models
    (CogVideoX, Wan, HunyuanVideo, LTX-Video, Mochi) give a
    :class:`~attnlab.core.joint_sites.JointSiteTable` of their video
    self-attentions; ``frames`` (latent frames) adds each site's token frames.

    A local directory or hub id is read from its config only: the denoiser is built on the
    meta device, no weights are loaded.

    Args:
        model_or_pipe (pipeline, ``torch.nn.Module``, ``str`` or ``os.PathLike``): a diffusers
            pipeline (its ``.unet`` or ``.transformer``), a denoiser module, a local pipeline
            folder (with ``unet/config.json`` or ``transformer/config.json``) or a Hugging Face
            hub id (``"owner/name"``).
        latent (``tuple[int, int] | None``, default None): latent size ``(H, W)``; takes
            precedence over ``height``/``width``.
        height (``int | None``, default None): video height in pixels; used only together with
            ``width``, divided (rounding up) by the VAE scale factor (the pipeline's, the
            folder's ``vae/config.json``, else 8).
        width (``int | None``, default None): video width in pixels, as ``height``.
        frames (``int | None``, default None): latent frames; used by full-3D (joint) families
            only, ignored by the others.

    Returns:
        :class:`SiteTable`: one :class:`Site` per temporal self-attention module, in module
        registration order; ``site.h``/``site.w`` are set when a size was given, else None.

    Raises:
        UnsupportedModelError: the denoiser has no temporal attention attnlab knows of (no
            registered :class:`Family`, or no matching module).
        TypeError: ``model_or_pipe`` is neither a pipeline, a module nor a path / hub id.
        FileNotFoundError: a path that does not exist, or a folder / hub id without a denoiser
            config.

    Example::

        table = attnlab.sites(pipe, height=320, width=512)    # latent 40 x 64
        print(table)
        table.levels, [s.name for s in table if s.level == 0]
        attnlab.sites(pipe.unet, latent=(40, 64))             # the same, from the denoiser
        attnlab.sites("~/models/modelscope-t2v")              # config only, no weights
    """
    pipe = model_or_pipe
    scale = None
    if isinstance(model_or_pipe, (str, os.PathLike)):
        from attnlab.core.model_refs import meta_model, vae_scale

        pipe = meta_model(str(model_or_pipe))
        scale = vae_scale(Path(model_or_pipe).expanduser())
    model = denoiser_of(pipe)
    fam = family_of(model)
    if latent is None and height is not None and width is not None:
        scale = (
            scale
            or getattr(pipe, "vae_scale_factor", None)
            or getattr(pipe, "vae_scale_factor_spatial", None)
            or getattr(pipe, "vae_spatial_compression_ratio", None)  # LTX-Video
            or getattr(pipe, "vae_spatial_scale_factor", None)  # Mochi
            or 8
        )
        latent = (-(-height // scale), -(-width // scale))
    hidden = hidden_layers(model)
    if hidden is not None:
        raise UnsupportedModelError(f"{type(model).__name__}: {hidden}")
    table = fam.build_table(model, latent, frames, _temporal_compression(pipe))
    if not table.sites:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no temporal self-attention module found"
        )
    return table


def default_latent(model_or_pipe: Any) -> tuple[int, int] | None:
    """The latent size ``(H, W)`` a model generates at by default, as its denoiser's config
    states it (``sample_size`` of a UNet; ``sample_height``/``sample_width`` of CogVideoX), or
    None where the config does not say (most full-3D transformers take the size per call).
    Accepts what :func:`sites` accepts; a path or hub id is read from its config only."""
    if isinstance(model_or_pipe, (str, os.PathLike)):
        from attnlab.core.model_refs import meta_model

        model_or_pipe = meta_model(str(model_or_pipe))
    config = getattr(denoiser_of(model_or_pipe), "config", None)
    size = getattr(config, "sample_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    h, w = getattr(config, "sample_height", None), getattr(config, "sample_width", None)
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def _temporal_compression(pipe: Any) -> int | None:
    """The VAE's temporal compression as a pipeline states it (None: not a pipeline)."""
    for attr in (
        "vae_scale_factor_temporal",  # CogVideoX, Wan, HunyuanVideo
        "vae_temporal_compression_ratio",  # LTX-Video
        "vae_temporal_scale_factor",  # Mochi
    ):
        value = getattr(pipe, attr, None)
        if isinstance(value, int):
            return value
    return None
