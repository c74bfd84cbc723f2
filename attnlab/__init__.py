"""attnlab: observe, store, compare and edit the temporal attention of text-to-video diffusion models.

Implements the analysis and methods of VSTAR (Li et al., ICLR 2025): temporal attention maps of
real and synthetic videos, replacement probes, temporal attention regularization (TAR),
reference-dynamics transfer and video synopsis prompting, on diffusers pipelines.

Quick start::

    import attnlab
    print(attnlab.sites(pipe))                       # where temporal attention lives
    with attnlab.record(pipe, levels=[0]) as rec:    # record it
        pipe(prompt, num_frames=16)
    rec.save("run.zarr"); ds = attnlab.load("run.zarr")
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import TYPE_CHECKING

# public names -> the module that defines them; loaded on first use (PEP 562), so that
# ``import attnlab`` and the ``attnlab`` command line start without torch, diffusers or xarray
_EXPORTS: dict[str, str] = {
    # the instrument (attnlab.core)
    "edit": "attnlab.core.api",
    "hooks": "attnlab.core.api",
    "record": "attnlab.core.api",
    "CallContext": "attnlab.core.protocol",
    "RunInfo": "attnlab.core.protocol",
    "Controller": "attnlab.core.control",
    "active_patches": "attnlab.core.control",
    "is_instrumented": "attnlab.core.control",
    "Layers": "attnlab.core.selection",
    "SelectionError": "attnlab.core.selection",
    "Steps": "attnlab.core.selection",
    "Family": "attnlab.core.sites",
    "FrameLimitError": "attnlab.core.sites",
    "PositionalEncoding": "attnlab.core.sites",
    "PositionTerms": "attnlab.core.sites",
    "Site": "attnlab.core.sites",
    "SiteTable": "attnlab.core.sites",
    "UnsupportedModelError": "attnlab.core.sites",
    "register_family": "attnlab.core.sites",
    "sites": "attnlab.core.sites",
    "StoreError": "attnlab.core.store",
    "load": "attnlab.core.store",
    # the edits
    "PRESETS": "attnlab.edits",
    "TAR": "attnlab.edits",
    "Edit": "attnlab.edits",
    "EditError": "attnlab.edits",
    "Replace": "attnlab.edits",
    "Transfer": "attnlab.edits",
    "parse_edit": "attnlab.edits",
    "Synopsis": "attnlab.edits",
    "key_states_from_llm": "attnlab.edits",
    # the lab
    "record_real": "attnlab.lab.real",
    "evaluate": "attnlab.lab.evaluation",
    "load_evaluation": "attnlab.lab.evaluation",
    # the models: diffusers finds attnlab's own component classes here when loading a folder
    "OrganismUNet": "attnlab.models.organisms",
    "OrganismMotionUNet": "attnlab.models.organisms",
    "PatchCodec": "attnlab.models.organisms",
    "LaVieUNet": "attnlab.models.lavie",
    "VideoCrafter2UNet": "attnlab.models.videocrafter",
    "VideoCrafter2Scheduler": "attnlab.models.videocrafter",
    "VideoCrafter2Pipeline": "attnlab.models.videocrafter",
}

# Modules of the flat layout before the layered one (0.1): ``attnlab.organisms`` is
# ``attnlab.models.organisms`` and so on. Saved pipelines name their classes by module
# (``["attnlab.organisms", "OrganismUNet"]`` in model_index.json) and user scripts import the
# old paths, so both keep working; attnlab's own code imports the new paths only.
_MOVED: dict[str, str] = {
    "analysis": "attnlab.lab.analysis",
    "api": "attnlab.core.api",
    "bench": "attnlab.tools.bench",
    "bench_joint": "attnlab.tools.bench_joint",
    "cache": "attnlab.core.cache",
    "cli": "attnlab.tools.cli",
    "control": "attnlab.core.control",
    "convert": "attnlab.models.convert",
    "datasets": "attnlab.data.datasets",
    "demo": "attnlab.lab.demo",
    "dims": "attnlab.core.dims",
    "evaluation": "attnlab.lab.evaluation",
    "evaluation_plots": "attnlab.lab.evaluation_plots",
    "evaluator": "attnlab.data.evaluator",
    "experiments": "attnlab.lab.experiments",
    "joint": "attnlab.core.joint",
    "lavie": "attnlab.models.lavie",
    "locks": "attnlab.core.locks",
    "metrics": "attnlab.data.metrics",
    "organism_demo": "attnlab.lab.organism_demo",
    "organism_eval": "attnlab.lab.organism_eval",
    "organisms": "attnlab.models.organisms",
    "plots": "attnlab.lab.plots",
    "processor": "attnlab.core.processor",
    "quiet": "attnlab.core.quiet",
    "real": "attnlab.lab.real",
    "recording": "attnlab.core.recording",
    "selection": "attnlab.core.selection",
    "similarity": "attnlab.data.similarity",
    "store": "attnlab.core.store",
    "sweep": "attnlab.lab.sweep",
    "synopsis": "attnlab.edits.synopsis",
    "tiny": "attnlab.models.tiny",
    "tiny_dit": "attnlab.models.tiny_dit",
    "training": "attnlab.models.training",
    "video": "attnlab.data.video",
    "videocrafter": "attnlab.models.videocrafter",
    "world": "attnlab.data.world",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``attnlab.<old>`` as the module it moved to (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != __name__ or name not in _MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name.partition(".")[2]])

    def exec_module(self, module) -> None:
        pass

    # ``python -m attnlab.<old>`` (runpy asks the loader for the code to run as __main__)
    def get_code(self, fullname):
        target = _MOVED[fullname.partition(".")[2]]
        return importlib.util.find_spec(target).loader.get_code(target)

    def is_package(self, fullname) -> bool:
        return False


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

if TYPE_CHECKING:
    from attnlab.core.api import edit, hooks, record
    from attnlab.core.control import Controller, active_patches, is_instrumented
    from attnlab.core.protocol import CallContext, RunInfo
    from attnlab.core.selection import Layers, SelectionError, Steps
    from attnlab.core.sites import (
        Family,
        FrameLimitError,
        PositionalEncoding,
        PositionTerms,
        Site,
        SiteTable,
        UnsupportedModelError,
        register_family,
        sites,
    )
    from attnlab.core.store import StoreError, load
    from attnlab.edits import (
        PRESETS,
        TAR,
        Edit,
        EditError,
        Replace,
        Synopsis,
        Transfer,
        key_states_from_llm,
        parse_edit,
    )
    from attnlab.lab.evaluation import evaluate, load_evaluation
    from attnlab.lab.real import record_real
    from attnlab.models.lavie import LaVieUNet
    from attnlab.models.organisms import OrganismMotionUNet, OrganismUNet, PatchCodec
    from attnlab.models.videocrafter import (
        VideoCrafter2Pipeline,
        VideoCrafter2Scheduler,
        VideoCrafter2UNet,
    )

__all__ = [
    "PRESETS",
    "TAR",
    "CallContext",
    "Controller",
    "Edit",
    "EditError",
    "Family",
    "FrameLimitError",
    "LaVieUNet",
    "Layers",
    "OrganismMotionUNet",
    "OrganismUNet",
    "PatchCodec",
    "PositionTerms",
    "PositionalEncoding",
    "Replace",
    "RunInfo",
    "SelectionError",
    "Site",
    "SiteTable",
    "Steps",
    "StoreError",
    "Synopsis",
    "Transfer",
    "UnsupportedModelError",
    "VideoCrafter2Pipeline",
    "VideoCrafter2Scheduler",
    "VideoCrafter2UNet",
    "__version__",
    "active_patches",
    "edit",
    "evaluate",
    "hooks",
    "is_instrumented",
    "key_states_from_llm",
    "load",
    "load_evaluation",
    "parse_edit",
    "record",
    "record_real",
    "register_family",
    "sites",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        # subpackages and modules (attnlab.core, attnlab.plots, ...) as attributes
        if name in _MOVED or importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
