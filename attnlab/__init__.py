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
    attnlab.report("run.zarr", "run.html")           # see it: one self-contained page
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from attnlab._version import __version__

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
    "joint_paths": "attnlab.core.joint",
    "StoreError": "attnlab.core.store",
    "load": "attnlab.core.store",
    "verify_store": "attnlab.core.store",
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
    "RIFLEx": "attnlab.edits",
    "RopeScale": "attnlab.edits",
    "FramePositions": "attnlab.edits",
    "WindowDecay": "attnlab.edits",
    "SlidingWindow": "attnlab.edits",
    "SpectralBlend": "attnlab.edits",
    "pe_report": "attnlab.models.positions",
    # the lab
    "record_real": "attnlab.lab.real",
    "evaluate": "attnlab.lab.evaluation",
    "load_evaluation": "attnlab.lab.evaluation",
    "report": "attnlab.lab.report",
    # the models: diffusers finds attnlab's own component classes here when loading a folder
    "OrganismUNet": "attnlab.models.organisms",
    "OrganismMotionUNet": "attnlab.models.organisms",
    "PatchCodec": "attnlab.models.organisms",
    "LaVieUNet": "attnlab.models.lavie",
    "VideoCrafter2UNet": "attnlab.models.videocrafter",
    "VideoCrafter2Scheduler": "attnlab.models.videocrafter",
    "VideoCrafter2Pipeline": "attnlab.models.videocrafter",
}

if TYPE_CHECKING:
    from attnlab.core.api import edit, hooks, record
    from attnlab.core.control import Controller, active_patches, is_instrumented
    from attnlab.core.joint import joint_paths
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
    from attnlab.core.store import StoreError, load, verify_store
    from attnlab.edits import (
        PRESETS,
        TAR,
        Edit,
        EditError,
        FramePositions,
        Replace,
        RIFLEx,
        RopeScale,
        SlidingWindow,
        SpectralBlend,
        Synopsis,
        Transfer,
        WindowDecay,
        key_states_from_llm,
        parse_edit,
    )
    from attnlab.lab.evaluation import evaluate, load_evaluation
    from attnlab.lab.real import record_real
    from attnlab.lab.report import report
    from attnlab.models.lavie import LaVieUNet
    from attnlab.models.organisms import OrganismMotionUNet, OrganismUNet, PatchCodec
    from attnlab.models.positions import pe_report
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
    "FramePositions",
    "LaVieUNet",
    "Layers",
    "OrganismMotionUNet",
    "OrganismUNet",
    "PatchCodec",
    "PositionTerms",
    "PositionalEncoding",
    "RIFLEx",
    "Replace",
    "RopeScale",
    "RunInfo",
    "SelectionError",
    "Site",
    "SiteTable",
    "SlidingWindow",
    "SpectralBlend",
    "Steps",
    "StoreError",
    "Synopsis",
    "Transfer",
    "UnsupportedModelError",
    "VideoCrafter2Pipeline",
    "VideoCrafter2Scheduler",
    "VideoCrafter2UNet",
    "WindowDecay",
    "__version__",
    "active_patches",
    "edit",
    "evaluate",
    "hooks",
    "is_instrumented",
    "joint_paths",
    "key_states_from_llm",
    "load",
    "load_evaluation",
    "parse_edit",
    "pe_report",
    "record",
    "record_real",
    "register_family",
    "report",
    "sites",
    "verify_store",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        # subpackages and modules (attnlab.core, attnlab.lab.plots, ...) as attributes
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
