"""Site tables: every temporal self-attention module of a diffusers video model.

``attnlab.sites(model_or_pipe)`` returns a :class:`SiteTable`. Support for a model family is a
data module beside this one; full-3D attention DiTs are mapped to latent frames (``dit.py``);
the rest (unmapped full-3D models, image models without a frame axis) get a clear
:class:`UnsupportedModelError` naming the reason.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

from . import dit, i2vgenxl, latte, lavie, motion, svd, unet3d, videocrafter2
from .base import (
    BLOCK_NAMES,
    BLOCKS,
    PE_KINDS,
    Family,
    FrameLimitError,
    PositionalEncoding,
    Site,
    SiteTable,
    build_table,
)

FAMILIES: tuple[Family, ...] = (
    unet3d.FAMILY,
    motion.FAMILY,
    svd.FAMILY,
    i2vgenxl.FAMILY,
    latte.FAMILY,
    lavie.FAMILY,
    videocrafter2.FAMILY,
)

# full-3D attention models that attnlab maps to the frame level (attnlab.joint)
JOINT_FAMILIES = dit.JOINT_FAMILIES

# Other models with only joint space-time attention: not mapped (yet); a clear error names them.
FULL_3D_ATTENTION = {
    "AllegroTransformer3DModel": "Allegro",
    "HunyuanVideoFramepackTransformer3DModel": "HunyuanVideo FramePack",
    "WanVACETransformer3DModel": "Wan VACE",
    "SkyReelsV2Transformer3DModel": "SkyReels-V2",
    "ConsisIDTransformer3DModel": "ConsisID",
    "EasyAnimateTransformer3DModel": "EasyAnimate",
    "CosmosTransformer3DModel": "Cosmos",
}

# Image transformers: their tokens are the patches of one image, with no frame axis at all.
IMAGE_TRANSFORMERS = {
    "SD3Transformer2DModel": "Stable Diffusion 3",
    "FluxTransformer2DModel": "Flux",
    "PixArtTransformer2DModel": "PixArt",
    "SanaTransformer2DModel": "Sana",
    "DiTTransformer2DModel": "DiT",
    "HunyuanDiT2DModel": "Hunyuan-DiT",
    "AuraFlowTransformer2DModel": "AuraFlow",
    "Lumina2Transformer2DModel": "Lumina 2",
    "QwenImageTransformer2DModel": "Qwen-Image",
}

__all__ = [
    "BLOCKS",
    "BLOCK_NAMES",
    "FAMILIES",
    "PE_KINDS",
    "Family",
    "FrameLimitError",
    "PositionalEncoding",
    "Site",
    "SiteTable",
    "UnsupportedModelError",
    "denoiser_of",
    "family_of",
    "sites",
]


class UnsupportedModelError(ValueError):
    """The model has no separate temporal (frame-axis) self-attention."""


def family_of(model: torch.nn.Module | str) -> Family:
    """The family of a denoiser (module or class name), or a clear error saying why not."""
    name = model if isinstance(model, str) else type(model).__name__
    for fam in FAMILIES + JOINT_FAMILIES:
        if name in fam.model_classes:
            return fam
    # subclasses of a supported class (e.g. attnlab's organisms) belong to its family
    if not isinstance(model, str):
        for cls in type(model).__mro__:
            for fam in FAMILIES:
                if cls.__name__ in fam.model_classes:
                    return fam
    if name in FULL_3D_ATTENTION:
        raise UnsupportedModelError(
            f"{FULL_3D_ATTENTION[name]} ({name}) uses full 3D attention over space and time jointly; "
            "it has no separate temporal self-attention with N x N frame maps, so temporal attention "
            "analysis, replacement probes and TAR do not apply, and attnlab has no frame-level "
            "mapping of its joint attention yet. Supported: "
            + ", ".join(c for f in FAMILIES + JOINT_FAMILIES for c in f.model_classes)
        )
    if name in IMAGE_TRANSFORMERS:
        raise UnsupportedModelError(
            f"{IMAGE_TRANSFORMERS[name]} ({name}) is an image transformer: its tokens are the "
            "patches of a single image, with no frame axis, so there is no temporal attention "
            "and no frame-level map of its attention; attnlab needs a video model whose latents "
            "have frames. Supported: "
            + ", ".join(c for f in FAMILIES + JOINT_FAMILIES for c in f.model_classes)
        )
    raise UnsupportedModelError(
        f"{name} has no temporal attention that attnlab knows of. Supported denoisers: "
        + ", ".join(c for f in FAMILIES + JOINT_FAMILIES for c in f.model_classes)
    )


def denoiser_of(obj: Any) -> torch.nn.Module:
    """The denoiser module of a pipeline (``unet`` or ``transformer``), or ``obj`` itself."""
    if isinstance(obj, torch.nn.Module):
        return obj
    for attr in ("unet", "transformer"):
        model = getattr(obj, attr, None)
        if isinstance(model, torch.nn.Module):
            return model
    raise TypeError(
        f"expected a diffusers pipeline (with .unet or .transformer) or a denoiser module, "
        f"got {type(obj).__name__}"
    )


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
    :class:`~attnlab.sites.dit.JointSiteTable` of their video
    self-attentions; ``frames`` (latent frames) adds each site's token frames.
    """
    pipe = model_or_pipe
    scale = None
    if isinstance(model_or_pipe, (str, os.PathLike)):
        pipe = _meta_model(str(model_or_pipe))
        scale = _vae_scale(Path(model_or_pipe).expanduser())
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
    if isinstance(fam, dit.JointFamily):
        table: SiteTable = dit.build_joint_table(
            model, fam, latent, frames, temporal_compression=_temporal_compression(pipe)
        )
    else:
        table = build_table(model, fam, latent)
    if not table.sites:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no temporal self-attention module found"
        )
    return table


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


def _vae_scale(path: Path) -> int | None:
    """The VAE scale factor of a local pipeline folder, as diffusers derives it (else None)."""
    cfg = path / "vae" / "config.json"
    if not cfg.is_file():
        return None
    channels = json.loads(cfg.read_text()).get("block_out_channels")
    return 2 ** (len(channels) - 1) if channels else None


def check_model_reference(ref: str) -> None:
    """Refuse a reference that looks like a local path but does not exist (before any hub call)."""
    if Path(ref).expanduser().exists():
        return
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref:
        raise FileNotFoundError(
            f"model folder {ref!r} does not exist (hub ids look like 'owner/name')"
        )


def _meta_model(ref: str) -> torch.nn.Module:
    """Instantiate only the denoiser of a local dir or hub id on the meta device (no weights)."""
    import diffusers

    check_model_reference(ref)
    path = Path(ref).expanduser()
    for sub in ("unet", "transformer"):
        try:
            if path.is_dir():
                if not (path / sub / "config.json").exists():
                    continue
                config = json.loads((path / sub / "config.json").read_text())
            else:
                from huggingface_hub import hf_hub_download

                config = json.loads(Path(hf_hub_download(ref, f"{sub}/config.json")).read_text())
        except Exception as err:
            if sub == "transformer":
                raise FileNotFoundError(
                    f"cannot read a denoiser config from {ref!r}: expected unet/config.json or "
                    f"transformer/config.json in a local directory or on the Hugging Face Hub ({err})"
                ) from err
            continue
        cls_name = config.get("_class_name", "")
        if cls_name == "UNet2DConditionModel":
            return _meta_motion(ref, path, config)
        family_of(cls_name)  # clear error for unsupported models before building anything
        cls = getattr(diffusers, cls_name, None)
        if cls is None:  # attnlab's own denoisers (the model organisms)
            import attnlab

            cls = getattr(attnlab, cls_name)
        with torch.device("meta"):
            return cls.from_config(config)
    raise FileNotFoundError(
        f"no unet/config.json or transformer/config.json under {ref!r}: not a diffusers pipeline"
    )


def _meta_motion(ref: str, path: Path, unet_config: dict) -> torch.nn.Module:
    """AnimateDiff folders hold a 2D UNet plus a motion adapter: combine them as diffusers does."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    if path.is_dir():
        cfg_file = path / "motion_adapter" / "config.json"
        if not cfg_file.exists():
            raise UnsupportedModelError(
                f"{ref}: a 2D image UNet without a motion adapter has no temporal attention"
            )
        adapter_config = json.loads(cfg_file.read_text())
    else:
        from huggingface_hub import hf_hub_download

        adapter_config = json.loads(
            Path(hf_hub_download(ref, "motion_adapter/config.json")).read_text()
        )
    unet2d = UNet2DConditionModel.from_config(unet_config)
    adapter = MotionAdapter.from_config(adapter_config)
    return UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)


class _CallableModule(types.ModuleType):
    """``attnlab.sites`` is this package and the function :func:`sites` at once: ``import
    attnlab`` loads its submodules lazily, and importing this package makes ``attnlab.sites``
    the module, so calling the module calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> SiteTable:
        return sites(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
