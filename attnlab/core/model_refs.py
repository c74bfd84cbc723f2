"""A model named by reference (a local pipeline folder or a Hugging Face hub id), read from
its configs only: its denoiser built on the meta device (no weights), and its VAE's spatial
scale, for :func:`attnlab.core.sites.sites`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from attnlab.core.sites import _UNMAPPED, Family, UnsupportedModelError, family_of


def vae_scale(path: Path) -> int | None:
    """The spatial VAE scale factor of a local pipeline folder, as its pipeline derives it
    (else None): the VAE class of ``vae/config.json`` built on the meta device says its own
    spatial compression where it has one (LTX-Video: patch size times the scaling blocks,
    HunyuanVideo, Wan, Allegro, ...); otherwise ``2 ** (len(block_out_channels) - 1)``, the
    rule of the UNet pipelines and CogVideoX."""
    cfg = path / "vae" / "config.json"
    if not cfg.is_file():
        return None
    config = json.loads(cfg.read_text())
    ratio = _vae_compression(config)
    if ratio is not None:
        return ratio
    channels = config.get("block_out_channels")
    return 2 ** (len(channels) - 1) if channels else None


def _vae_compression(config: dict) -> int | None:
    """``spatial_compression_ratio`` of the diffusers VAE class ``config`` names, built on the
    meta device from ``config`` (None: not a diffusers class, cannot be built, or no such
    attribute)."""
    import diffusers

    cls = getattr(diffusers, str(config.get("_class_name", "")), None)
    if not (isinstance(cls, type) and hasattr(cls, "from_config")):
        return None
    try:
        with torch.device("meta"):
            vae = cls.from_config(config)
    except Exception:  # a config the installed class refuses: the rule of thumb instead
        return None
    # the instance's attribute, else the config's (Cosmos): not getattr, which warns when it
    # falls back to a config entry
    ratio = vars(vae).get("spatial_compression_ratio", vae.config.get("spatial_compression_ratio"))
    return ratio if isinstance(ratio, int) and not isinstance(ratio, bool) and ratio > 0 else None


def check_model_reference(ref: str) -> None:
    """Refuse, before any hub call, a local file (``ValueError``: diffusers loads folders and hub
    ids) and a reference that looks like a local path but does not exist
    (``FileNotFoundError``)."""
    path = Path(ref).expanduser()
    if path.is_file():
        raise ValueError(
            f"{ref!r} is a file, not a pipeline folder: give an embedded name, a diffusers "
            "pipeline folder (with model_index.json) or a hub id; original LaVie / "
            "VideoCrafter2 checkpoints convert with `attnlab convert`"
        )
    if path.exists():
        return
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref:
        raise FileNotFoundError(
            f"model folder {ref!r} does not exist (hub ids look like 'owner/name')"
        )


def meta_model(ref: str) -> torch.nn.Module:
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
        cls: Any = getattr(diffusers, cls_name, None)
        if cls is None:  # a class of another package, named with it in model_index.json
            cls = _library_class(path, sub, cls_name)
        if cls is None:
            family_of(cls_name)  # clear error for unsupported models before building anything
            cls = _class_of(family_of(cls_name), cls_name)  # attnlab's own (LaVie, ...)
        try:
            family_of(cls)  # (a subclass of a mapped class maps as its base)
        except UnsupportedModelError:
            if cls_name in _UNMAPPED:
                raise
            with torch.device("meta"):  # a renamed copy of a mapped DiT: found by structure
                model = cls.from_config(config)
            family_of(model)
            return model
        with torch.device("meta"):
            return cls.from_config(config)
    raise FileNotFoundError(
        f"no unet/config.json or transformer/config.json under {ref!r}: not a diffusers pipeline"
    )


def _library_class(path: Path, sub: str, name: str) -> type | None:
    """The class ``model_index.json`` of a local folder names for component ``sub``
    (``["library", "ClassName"]``, as diffusers resolves it) when it is ``name`` and not
    diffusers'; None when the folder does not say or the library cannot be imported."""
    import importlib

    index = path / "model_index.json"
    if not path.is_dir() or not index.exists():
        return None
    entry = json.loads(index.read_text()).get(sub)
    if not isinstance(entry, list) or len(entry) != 2 or entry[1] != name:
        return None
    if entry[0] in (None, "diffusers"):
        return None
    try:
        return getattr(importlib.import_module(entry[0]), name, None)
    except ImportError:
        return None


def _class_of(family: Family, name: str) -> type:
    """A denoiser class that diffusers does not define, from its family's ``classes``."""
    import importlib

    target = family.classes.get(name)
    if target is None:
        raise UnsupportedModelError(
            f"{name} is in the {family.name!r} family but the family does not say where the "
            "class is defined (Family.classes)"
        )
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


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
    with torch.device("meta"):  # config only: no weights for any of the three models
        unet2d = UNet2DConditionModel.from_config(unet_config)
        adapter = MotionAdapter.from_config(adapter_config)
        return UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
