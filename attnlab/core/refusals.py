"""Configurations attnlab cannot yet record or edit faithfully, refused when an attnlab context
is entered, with the reason and what to do: never a recording that is silently incomplete.

* :class:`UnsupportedConfigurationError` - the error (a ``ValueError``)
* :func:`check_recordable` - the checks, run by :meth:`attnlab.Controller.of`

What is refused (each case has a test in ``tests/core/test_refusals.py``):

* diffusers' caching and skipping hooks on the denoiser (FirstBlockCache, PyramidAttentionBroadcast,
  FasterCache, TaylorSeerCache, MagCache, SeaCache, TextKVCache, layer skip / skip-layer
  guidance, smoothed energy guidance): they reuse or skip attention on some steps and layers,
  so its maps would be missing or stale;
* a pipeline with a second denoiser (Wan 2.2 A14B's ``transformer_2``): its steps would not be
  seen;
* AnimateDiff's FreeNoise: it calls the denoiser on windows of frames;
* joint-attention models set to an attention backend other than PyTorch's native SDPA: the
  frame maps are read from the native call.
"""

from __future__ import annotations

from typing import Any

import torch

# diffusers hook name (diffusers/hooks/*.py) -> the technique users know it as
HOOK_TECHNIQUES = {
    "fbc_leader_block_hook": "FirstBlockCache",
    "fbc_block_hook": "FirstBlockCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "faster_cache_denoiser": "FasterCache",
    "faster_cache_block": "FasterCache",
    "taylorseer_cache": "TaylorSeerCache",
    "mag_cache_leader_block_hook": "MagCache",
    "mag_cache_block_hook": "MagCache",
    "sea_cache_root": "SeaCache",
    "sea_cache_leader_block": "SeaCache",
    "sea_cache_block": "SeaCache",
    "sea_cache_post_norm": "SeaCache",
    "text_kv_cache_transformer": "TextKVCache",
    "text_kv_cache_block": "TextKVCache",
    "layer_skip_hook": "layer skip (apply_layer_skip, skip-layer guidance)",
    "smoothed_energy_guidance_hook": "smoothed energy guidance",
}

# denoiser components a pipeline may hold besides the one attnlab instruments
_DENOISER_PREFIXES = ("unet", "transformer")


class UnsupportedConfigurationError(ValueError):
    """A pipeline configuration attnlab cannot record or edit faithfully (yet)."""


def _hooks(model: torch.nn.Module) -> dict[str, str]:
    """diffusers hook name -> the module path it sits on, for the hooks of ``HOOK_TECHNIQUES``."""
    found: dict[str, str] = {}
    for path, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in getattr(registry, "hooks", {}) or {}:
            if name in HOOK_TECHNIQUES:
                found.setdefault(name, path or type(model).__name__)
    return found


def _backend_name(backend: Any) -> str:
    return str(getattr(backend, "value", backend) or "native")


def _is_native(backend: Any) -> bool:
    return _backend_name(backend).lstrip("_").startswith("native")


def check_recordable(obj: Any, model: torch.nn.Module, *, joint: bool) -> None:
    """Raise :class:`UnsupportedConfigurationError` for a configuration attnlab would record
    incompletely or wrongly (see the module docstring). ``obj``: the pipeline or the denoiser
    the user passed; ``model``: its denoiser; ``joint``: whether the model has joint attention.
    """
    name = type(model).__name__
    hooks = _hooks(model)
    if hooks:
        techniques = sorted({HOOK_TECHNIQUES[h] for h in hooks})
        where = ", ".join(f"{h!r} on {p}" for h, p in sorted(hooks.items()))
        raise UnsupportedConfigurationError(
            f"{name} has diffusers' {' and '.join(techniques)} applied ({where}): it reuses or "
            "skips attention on some steps or layers, so attnlab would record maps of attention "
            "that did not run; attnlab does not record under these hooks yet: remove them for "
            "the recorded runs (e.g. model.disable_cache(), or a fresh pipeline)"
        )
    if obj is not model:
        components = getattr(obj, "components", None) or vars(obj)
        extra = sorted(
            key
            for key, value in components.items()
            if isinstance(value, torch.nn.Module)
            and value is not model
            and key.startswith(_DENOISER_PREFIXES)
        )
        if extra:
            raise UnsupportedConfigurationError(
                f"{type(obj).__name__} has more than one denoiser ({', '.join(extra)} besides "
                f"the instrumented {name}), e.g. Wan 2.2's two experts: attnlab instruments one "
                "denoiser and would miss the steps the others run; record a pipeline with one "
                "denoiser"
            )
        if getattr(obj, "_free_noise_context_length", None) is not None:
            raise UnsupportedConfigurationError(
                f"{type(obj).__name__} has FreeNoise enabled (enable_free_noise): it runs the "
                "denoiser on windows of frames, which attnlab does not record yet; call "
                "pipe.disable_free_noise() for the recorded runs"
            )
    if joint:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        backends = {
            _backend_name(getattr(m.processor, "_attention_backend", None))
            for m in model.modules()
            if hasattr(m, "processor")
            and not _is_native(getattr(m.processor, "_attention_backend", None))
        }
        active, _ = _AttentionBackendRegistry.get_active_backend()
        if not _is_native(active):
            backends.add(_backend_name(active))
        if backends:
            raise UnsupportedConfigurationError(
                f"{name} is set to the attention backend {', '.join(sorted(backends))}: attnlab "
                "reads joint attention from PyTorch's native scaled_dot_product_attention; use "
                'the native backend for the recorded runs (model.set_attention_backend("native"), which '
                "also resets diffusers' process-wide default)"
            )
