"""Configurations attnlab cannot yet record or edit faithfully, refused when an attnlab context
is entered, with the reason and what to do: never a recording that is silently incomplete.

* :class:`UnsupportedConfigurationError` - the error (a ``ValueError``)
* :func:`check_recordable` - the checks, run by :meth:`attnlab.Controller.of`

What is refused (each case has a test in ``tests/core/test_refusals.py``):

* diffusers' context and tensor parallelism on a denoiser (``enable_parallelism``,
  ``parallel_config``): each process attends over a shard of the sequence or of the heads, so
  no process holds a whole map;
* a pipeline whose denoisers (Wan 2.2 A14B's ``transformer`` and ``transformer_2``) have
  different attention-layer tables, or one of which attnlab cannot map: one ``layer`` axis and
  one set of edit targets must fit every step (denoisers with equal tables are recorded, each
  step with its ``expert``);
* joint-attention models set to an attention backend whose kernel is not PyTorch's
  ``scaled_dot_product_attention`` (flash, sage, xformers, flex, npu, xla...): the frame maps
  are read from that call;
* AnimateDiff's FreeNoise split inference (``enable_free_noise_split_inference``) and a
  ``torch.compile`` wrapper on a block inside the denoiser (:func:`check_hidden_layers`;
  tested in ``tests/core/test_freenoise.py`` and ``tests/core/test_compiled.py``): the layers
  they wrap are not where the site table maps them, and split inference runs each layer once
  per chunk of its rows, so no call holds its whole map.

Recorded, not refused: diffusers' caching hooks (``CACHE_HOOKS``: what the cache answered is a
marked gap, ``tests/core/test_caching_hooks.py``), layer skip / skip-layer guidance / PAG and
smoothed energy guidance (``docs/reliability.md``), AnimateDiff's FreeNoise (windows, edits
under it refused by the controller, ``tests/core/test_freenoise.py``), a denoiser compiled as
a whole or blocks compiled in place (run eagerly while attnlab is attached,
``tests/core/test_compiled.py``), guidance turned off mid-run
(``tests/core/test_guidance_cutoff.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from attnlab.core.denoisers import denoisers_of
from attnlab.core.sites import SiteTable, UnsupportedModelError, hidden_layers, sites

# diffusers' caching hooks (diffusers/hooks/*.py), by hook name -> the technique users know it
# as. attnlab records under them: each decides per call whether a block, an attention module or
# the whole denoiser step is computed or answered from its cache, and attnlab records the
# attention that was computed; a layer (or step, or guidance half) the cache answered is a
# marked gap in the store (``ran`` False), and the run's ``caches`` attribute names the hooks
CACHE_HOOKS = {
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
}
# diffusers hooks refused at entry: hook name -> (technique, why attnlab cannot record under
# it). None at present: diffusers' smoothed energy guidance blurs a layer's query projection
# output, and attnlab records the attention of the blurred queries (the attention that ran);
# layer skip / skip-layer guidance / PAG are recorded as not run where they skip
REFUSED_HOOKS: dict[str, tuple[str, str]] = {}
# diffusers' context-parallel hooks: their names start with these (diffusers/hooks/context_parallel.py)
CONTEXT_PARALLEL_HOOK_PREFIXES = ("cp_input---", "cp_output---")
# every diffusers hook attnlab knows by name -> technique
HOOK_TECHNIQUES = {**CACHE_HOOKS, **{k: v[0] for k, v in REFUSED_HOOKS.items()}}
# the attention backends whose kernel is torch's scaled_dot_product_attention (diffusers'
# attention_dispatch): attnlab reads joint attention from that call
SDPA_BACKENDS = ("native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math")


class UnsupportedConfigurationError(ValueError):
    """A pipeline configuration attnlab cannot record or edit faithfully (yet)."""


def _hooks(model: torch.nn.Module, names: Any) -> dict[str, str]:
    """diffusers hook name -> the module path it sits on, for the hooks of ``model`` named in
    ``names`` (a mapping or a predicate on the name)."""
    wanted = names if callable(names) else names.__contains__
    found: dict[str, str] = {}
    for path, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in getattr(registry, "hooks", {}) or {}:
            if wanted(name):
                found.setdefault(name, path or type(model).__name__)
    return found


def cache_techniques(model: torch.nn.Module) -> list[str]:
    """The diffusers caching techniques applied to ``model`` (``CACHE_HOOKS``), sorted."""
    return sorted({CACHE_HOOKS[h] for h in _hooks(model, CACHE_HOOKS)})


def _backend_name(backend: Any) -> str:
    return str(getattr(backend, "value", backend) or "native")


def _is_native(backend: Any) -> bool:
    return _backend_name(backend) in SDPA_BACKENDS


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
        component = key if len(every) > 1 else None
        _check_parallel(module, component)
        _check_hooks(module, component)
    for key, other in every.items():
        if other is not model:
            _check_same_table(obj, primary, model, key, other)
    if joint:
        for key, module in every.items():
            _check_backend(module, key if len(every) > 1 else None)


def check_hidden_layers(obj: Any) -> None:
    """Raise :class:`UnsupportedConfigurationError` where a wrapper module inside a denoiser
    moves temporal attention layers away from the paths its family maps
    (:func:`~attnlab.core.sites.hidden_layers`): diffusers' ``SplitInferenceModule``
    (AnimateDiff's FreeNoise split inference runs each layer once per chunk of its rows: no
    call holds its whole map) or a ``torch.compile`` wrapper on a block. Checked before the
    denoiser's site table is built, which would silently leave those layers out. ``obj``: the
    pipeline or the denoiser the user passed."""
    every = denoisers_of(obj)
    for key, model in every.items():
        why = hidden_layers(model)
        if why is not None:
            of = f" (component {key!r})" if len(every) > 1 else ""
            raise UnsupportedConfigurationError(f"{type(model).__name__}{of}: {why}")


def _check_hooks(model: torch.nn.Module, component: str | None) -> None:
    hooks = _hooks(model, REFUSED_HOOKS)
    if hooks:
        name, path = sorted(hooks.items())[0]
        technique, why = REFUSED_HOOKS[name]
        of = f" (component {component!r})" if component else ""
        raise UnsupportedConfigurationError(
            f"{type(model).__name__}{of} has diffusers' {technique} applied ({name!r} on "
            f"{path}): {why}; attnlab does not record under it: remove the hook for the "
            "recorded runs (e.g. a fresh pipeline)"
        )


def _check_parallel(model: torch.nn.Module, component: str | None) -> None:
    """diffusers' context parallelism (``enable_parallelism`` / ``parallel_config`` with a
    ``ContextParallelConfig``) splits each attention call's sequence across processes, tensor
    parallelism its heads: no process holds a whole map."""
    config = getattr(model, "_parallel_config", None)
    cp_hooks = _hooks(model, lambda n: n.startswith(CONTEXT_PARALLEL_HOOK_PREFIXES))
    if config is None and not cp_hooks:
        return
    of = f" (component {component!r})" if component else ""
    context = cp_hooks or getattr(config, "context_parallel_config", None) is not None
    if context:
        what = (
            "context parallelism (a ContextParallelConfig: enable_parallelism or "
            "from_pretrained(parallel_config=...))"
        )
        why = (
            "each process computes attention over its shard of the sequence (ring / Ulysses "
            "exchange of keys and values between processes), so no process sees the whole "
            "query x key map that attnlab records, and attnlab records in one process"
        )
    else:
        what = "tensor parallelism (a TensorParallelConfig)"
        why = (
            "each process computes the attention of its share of the heads, so a map averaged "
            "over heads in one process would silently miss the others"
        )
    raise UnsupportedConfigurationError(
        f"{type(model).__name__}{of} is set up for diffusers' {what}: {why}; record with the "
        "model on one device, without a parallel_config"
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

    backends = set()
    for m in model.modules():
        processor = getattr(m, "processor", None)
        if processor is None:
            continue
        if "xformers" in type(processor).__name__.lower():  # the older processor-class API
            backends.add("xformers")
        elif not _is_native(getattr(processor, "_attention_backend", None)):
            backends.add(_backend_name(processor._attention_backend))
    active, _ = _AttentionBackendRegistry.get_active_backend()
    if not _is_native(active):
        backends.add(_backend_name(active))
    if backends:
        of = f" (component {component!r})" if component else ""
        raise UnsupportedConfigurationError(
            f"{type(model).__name__}{of} is set to the attention backend "
            f"{', '.join(sorted(backends))}: attnlab reads joint attention from PyTorch's "
            "scaled_dot_product_attention, which that backend does not call (attnlab records "
            f"under the backends {', '.join(SDPA_BACKENDS)}); use the native backend for the "
            'recorded runs (model.set_attention_backend("native"), which also resets '
            "diffusers' process-wide default)"
        )
