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

from typing import TYPE_CHECKING

# public names -> the module that defines them; loaded on first use (PEP 562), so that
# ``import attnlab`` and the ``attnlab`` command line start without torch, diffusers or xarray
_EXPORTS: dict[str, str] = {
    "edit": "api",
    "hooks": "api",
    "record": "api",
    "CallContext": "control",
    "Controller": "control",
    "RunInfo": "control",
    "PRESETS": "edits",
    "TAR": "edits",
    "Edit": "edits",
    "EditError": "edits",
    "Replace": "edits",
    "Transfer": "edits",
    "parse_edit": "edits",
    "record_real": "real",
    "Layers": "selection",
    "SelectionError": "selection",
    "Steps": "selection",
    "FrameLimitError": "sites",
    "Site": "sites",
    "SiteTable": "sites",
    "UnsupportedModelError": "sites",
    "sites": "sites",
    "StoreError": "store",
    "load": "store",
    "Synopsis": "synopsis",
    "key_states_from_llm": "synopsis",
    "OrganismUNet": "organisms",
    "PatchCodec": "organisms",
    "evaluate": "evaluation",
    "load_evaluation": "evaluation",
    # the converted paper models' classes: diffusers finds them here when loading a folder
    "LaVieUNet": "lavie",
    "VideoCrafter2UNet": "videocrafter",
    "VideoCrafter2Scheduler": "videocrafter",
    "VideoCrafter2Pipeline": "videocrafter",
}

if TYPE_CHECKING:
    from .api import edit, hooks, record
    from .control import CallContext, Controller, RunInfo
    from .edits import PRESETS, TAR, Edit, EditError, Replace, Transfer, parse_edit
    from .evaluation import evaluate, load_evaluation
    from .organisms import OrganismUNet, PatchCodec
    from .real import record_real
    from .selection import Layers, SelectionError, Steps
    from .sites import FrameLimitError, Site, SiteTable, UnsupportedModelError, sites
    from .store import StoreError, load
    from .synopsis import Synopsis, key_states_from_llm

__all__ = [
    "PRESETS",
    "TAR",
    "CallContext",
    "Controller",
    "Edit",
    "EditError",
    "FrameLimitError",
    "Layers",
    "OrganismUNet",
    "PatchCodec",
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
    "__version__",
    "edit",
    "evaluate",
    "hooks",
    "key_states_from_llm",
    "load",
    "load_evaluation",
    "parse_edit",
    "record",
    "record_real",
    "sites",
]


def __getattr__(name: str):
    import importlib
    import importlib.util

    module = _EXPORTS.get(name)
    if module is None:
        # submodules (attnlab.edits, attnlab.plots, ...) as eager imports used to provide them
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
