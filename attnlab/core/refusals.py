"""Configurations attnlab cannot yet record or edit faithfully, refused when an attnlab context
is entered, with the reason and what to do: never a recording that is silently incomplete.

* :class:`UnsupportedConfigurationError` - the error (a ``ValueError``)
* :func:`check_recordable` - the checks, run by :meth:`attnlab.Controller.of`

What is refused (each case has a test in ``tests/core/test_refusals.py``):

* diffusers' caching and skipping hooks on the denoiser (FirstBlockCache, PyramidAttentionBroadcast,
  FasterCache, TaylorSeerCache, MagCache, SeaCache, TextKVCache, smoothed energy guidance):
  they reuse or change attention on some steps and layers, so its maps would be missing or
  stale (diffusers' layer skip / skip-layer guidance / PAG is not refused: it stays in force
  under attnlab and a skipped layer is recorded as not run, see ``docs/reliability.md``);
* a pipeline whose denoisers (Wan 2.2 A14B's ``transformer`` and ``transformer_2``) have
  different attention-layer tables, or one of which attnlab cannot map: one ``layer`` axis and
  one set of edit targets must fit every step (denoisers with equal tables are recorded, each
  step with its ``expert``);
* AnimateDiff's FreeNoise: it calls the denoiser on windows of frames;
* joint-attention models set to an attention backend other than PyTorch's native SDPA: the
  frame maps are read from the native call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from attnlab.core.sites import SiteTable, UnsupportedModelError, denoisers_of, sites

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
    "smoothed_energy_guidance_hook": "smoothed energy guidance",
}


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


def table_difference(a: SiteTable, b: SiteTable) -> str | None:
    """The first difference between two site tables, in words (None: equal)."""
    if a == b:
        return None
    if type(a) is not type(b):
        return f"{type(a).__name__} vs {type(b).__name__}"
    if a.names != b.names:
        only_a = [n for n in a.names if n not in b]
        only_b = [n for n in b.names if n not in a]
        if only_a or only_b:
            return (
                f"{len(a)} vs {len(b)} attention layers"
                + (f"; only in the first: {only_a[0]}" if only_a else "")
                + (f"; only in the second: {only_b[0]}" if only_b else "")
            )
        return "the same layers in another order"
    for x, y in zip(a.sites, b.sites):
        for f in dataclasses.fields(x):
            if getattr(x, f.name) != getattr(y, f.name):
                return f"layer {x.name}: {f.name} {getattr(x, f.name)!r} vs {getattr(y, f.name)!r}"
    for f in dataclasses.fields(a):
        if f.name not in ("sites", "_by_name") and getattr(a, f.name) != getattr(b, f.name):
            return f"{f.name} {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}"
    return "the tables differ"  # pragma: no cover - every field was compared


def check_recordable(obj: Any, model: torch.nn.Module, *, joint: bool) -> None:
    """Raise :class:`UnsupportedConfigurationError` for a configuration attnlab would record
    incompletely or wrongly (see the module docstring). ``obj``: the pipeline or the denoiser
    the user passed; ``model``: its denoiser (the primary one of a pipeline with several);
    ``joint``: whether the model has joint attention. Every denoiser of the pipeline is checked.
    """
    denoisers = denoisers_of(obj) if obj is not model else {}
    primary = next((k for k, m in denoisers.items() if m is model), type(model).__name__)
    every = {primary: model, **{k: m for k, m in denoisers.items() if m is not model}}
    for key, module in every.items():
        _check_hooks(module, key if len(every) > 1 else None)
    for key, other in every.items():
        if other is not model:
            _check_same_table(obj, primary, model, key, other)
    if obj is not model and getattr(obj, "_free_noise_context_length", None) is not None:
        raise UnsupportedConfigurationError(
            f"{type(obj).__name__} has FreeNoise enabled (enable_free_noise): it runs the "
            "denoiser on windows of frames, which attnlab does not record yet; call "
            "pipe.disable_free_noise() for the recorded runs"
        )
    if joint:
        for key, module in every.items():
            _check_backend(module, key if len(every) > 1 else None)


def _check_hooks(model: torch.nn.Module, component: str | None) -> None:
    hooks = _hooks(model)
    if hooks:
        techniques = sorted({HOOK_TECHNIQUES[h] for h in hooks})
        where = ", ".join(f"{h!r} on {p}" for h, p in sorted(hooks.items()))
        of = f" (component {component!r})" if component else ""
        raise UnsupportedConfigurationError(
            f"{type(model).__name__}{of} has diffusers' {' and '.join(techniques)} applied "
            f"({where}): it reuses or skips attention on some steps or layers, so attnlab would "
            "record maps of attention that did not run; attnlab does not record under these "
            "hooks yet: remove them for the recorded runs (e.g. model.disable_cache(), or a "
            "fresh pipeline)"
        )


def _check_same_table(
    obj: Any, primary: str, model: torch.nn.Module, key: str, other: torch.nn.Module
) -> None:
    """A second denoiser (an expert) is recorded along the first one's ``layer`` axis: its
    site table must be the same."""
    pipeline = type(obj).__name__
    try:
        theirs = sites(other)
    except UnsupportedModelError as err:
        raise UnsupportedConfigurationError(
            f"{pipeline} has a second denoiser {key!r} ({type(other).__name__}) that attnlab "
            f"cannot map: {err}"
        ) from err
    difference = table_difference(sites(model), theirs)
    if difference is not None:
        raise UnsupportedConfigurationError(
            f"{pipeline}'s denoisers {primary!r} and {key!r} have different attention-layer "
            f"tables ({difference}): attnlab records the experts of one pipeline along one "
            "layer axis and targets edits by one table, so it records pipelines whose denoisers "
            "share their layer table (as Wan 2.2 A14B's do); record such a denoiser on its own "
            f"(attnlab.record(pipe.{key}) records its calls) or use a pipeline with one denoiser"
        )


def _check_backend(model: torch.nn.Module, component: str | None) -> None:
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
        of = f" (component {component!r})" if component else ""
        raise UnsupportedConfigurationError(
            f"{type(model).__name__}{of} is set to the attention backend "
            f"{', '.join(sorted(backends))}: attnlab reads joint attention from PyTorch's native "
            "scaled_dot_product_attention; use the native backend for the recorded runs "
            '(model.set_attention_backend("native"), which also resets diffusers\' process-wide '
            "default)"
        )
