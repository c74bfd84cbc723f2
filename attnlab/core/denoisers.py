"""Where a pipeline keeps its denoisers: the ``unet`` / ``transformer`` components (Wan 2.2
A14B's ``transformer_2`` too), each without ``torch.compile``'s wrapper.

* :func:`denoiser_of` - the denoiser of a pipeline (its first), or a module itself;
* :func:`denoisers_of` - every denoiser of a pipeline, by component name;
* :func:`uncompiled`, :func:`compiled_wrappers`, :func:`compiled_inner` - ``torch.compile``'s
  wrappers (``OptimizedModule``) and the modules they wrap.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

#: name prefixes of a pipeline's denoiser components (``unet``, ``transformer``, Wan 2.2
#: A14B's ``transformer_2``)
DENOISER_PREFIXES = ("unet", "transformer")
#: the expert name of a denoiser that is not a component of any pipeline attnlab has seen
BARE_DENOISER = "denoiser"


def compiled_inner(module: Any) -> Any:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) wraps, or None."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # no wrapper before it is imported
    optimized = getattr(eval_frame, "OptimizedModule", None)
    if optimized is not None and isinstance(module, optimized):
        return module._orig_mod
    return None


def uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` without its ``torch.compile`` wrappers: ``torch.compile(unet)`` returns an
    ``OptimizedModule`` around ``unet``; attnlab maps and instruments ``unet`` itself."""
    while (inner := compiled_inner(module)) is not None:
        module = inner
    return module


def compiled_wrappers(obj: Any) -> list[torch.nn.Module]:
    """The ``torch.compile`` wrappers (``OptimizedModule``) around the denoisers of ``obj`` (a
    pipeline's components, or ``obj`` itself), outermost first: while attnlab is attached they
    run their module eagerly (the controller's patches)."""
    found: list[torch.nn.Module] = []
    for module in _denoiser_components(obj).values():
        while (inner := compiled_inner(module)) is not None:
            if all(module is not w for w in found):
                found.append(module)
            module = inner
    return found


def denoiser_of(obj: Any) -> torch.nn.Module:
    """The denoiser module of a pipeline (``unet`` or ``transformer``; every denoiser of a
    pipeline: :func:`denoisers_of`), or ``obj`` itself; without ``torch.compile``'s wrapper
    (:func:`uncompiled`)."""
    if isinstance(obj, torch.nn.Module):
        return uncompiled(obj)
    for attr in ("unet", "transformer"):
        model = getattr(obj, attr, None)
        if isinstance(model, torch.nn.Module):
            return uncompiled(model)
    raise TypeError(
        f"expected a diffusers pipeline (with .unet or .transformer) or a denoiser module, "
        f"got {type(obj).__name__}"
    )


def _denoiser_components(obj: Any) -> dict[str, torch.nn.Module]:
    """A pipeline's denoiser components as it holds them (a compiled one as its wrapper)."""
    if isinstance(obj, torch.nn.Module):
        return {BARE_DENOISER: obj}
    try:  # diffusers' `components` raises on a pipeline whose modules and config disagree
        components = getattr(obj, "components", None)
    except ValueError:
        components = None
    if not isinstance(components, dict):
        components = vars(obj)
    return {
        key: value
        for key, value in components.items()
        if isinstance(value, torch.nn.Module) and key.startswith(DENOISER_PREFIXES)
    }


def denoisers_of(obj: Any) -> dict[str, torch.nn.Module]:
    """Every denoiser of a pipeline, by component name, in the pipeline's component order
    (Wan 2.2 A14B: ``{"transformer": ..., "transformer_2": ...}``): the components whose name
    starts with ``unet`` or ``transformer`` and that are modules (without ``torch.compile``'s
    wrapper); a module held under two names is listed once. A bare denoiser module:
    ``{"denoiser": obj}``.

    Example::

        list(attnlab.core.denoisers.denoisers_of(pipe))   # ['transformer', 'transformer_2']
    """
    out: dict[str, torch.nn.Module] = {}
    for key, value in _denoiser_components(obj).items():
        value = uncompiled(value)
        if all(value is not m for m in out.values()):
            out[key] = value
    return out
