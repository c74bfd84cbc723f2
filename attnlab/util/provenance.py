"""Provenance helpers that need no torch: the model name a pipeline was loaded as."""

from __future__ import annotations

from typing import Any

#: attribute of a pipeline loaded by ``attnlab.models.load_pipeline``: the model name as the
#: user gave it (written into the provenance of every run)
NAME_ATTR = "_attnlab_model"


def model_name(pipe: Any) -> str:
    """The model a pipeline was loaded from, as the user named it (``organism-none``, a hub id,
    a folder); pipelines not loaded by ``load_pipeline`` give their ``name_or_path``."""
    return str(getattr(pipe, NAME_ATTR, None) or getattr(pipe, "name_or_path", None) or "")
