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

from .api import edit, hooks, record
from .control import CallContext, Controller, RunInfo
from .edits import PRESETS, TAR, Edit, EditError, Replace, Transfer, parse_edit
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
    # the organisms' classes import diffusers: load them on first use, not with ``import attnlab``
    if name in ("OrganismUNet", "PatchCodec"):
        from . import organisms

        return getattr(organisms, name)
    if name in ("evaluate", "load_evaluation"):  # video metrics (attnlab.evaluation)
        from . import evaluation

        return getattr(evaluation, name)
    # the converted paper models' classes: diffusers finds them here when loading a folder
    if name == "LaVieUNet":
        from . import lavie

        return lavie.LaVieUNet
    if name in ("VideoCrafter2UNet", "VideoCrafter2Scheduler", "VideoCrafter2Pipeline"):
        from . import videocrafter

        return getattr(videocrafter, name)
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
