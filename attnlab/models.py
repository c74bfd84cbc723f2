"""Loading pipelines by name: attnlab's embedded models, local folders and hub ids."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .organisms import ORGANISMS, organism_path
from .sites import check_model_reference
from .sites import sites as sites_of
from .tiny import TINY_MODELS, tiny_path

# the trained organism without a frame PE, like ModelScope / VideoCrafter2 (the paper's subject)
DEFAULT_MODEL = "organism-none"


def builtin_models() -> tuple[str, ...]:
    """Embedded model names: the trained organisms and the random-weight tiny pipelines."""
    return (*ORGANISMS, *TINY_MODELS)


def resolve_model(model: str) -> str:
    """A loadable reference: embedded names become their saved folder; others pass through."""
    if model in TINY_MODELS:
        return str(tiny_path(model))
    if model in ORGANISMS:
        return str(organism_path(model))
    return model


def load_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    **kwargs: Any,
):
    """Load a diffusers video pipeline from an embedded name, a local folder or a hub id."""
    ref = resolve_model(str(model))
    check_model_reference(ref)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = _pipeline_class(ref).from_pretrained(ref, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"cannot load model {str(model)!r}: {err}") from err
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    if hasattr(pipe, "vae") and hasattr(pipe.vae, "enable_slicing"):
        pipe.vae.enable_slicing()
    return pipe


def _pipeline_class(ref: str):
    """DiffusionPipeline, or attnlab's own pipeline class named in a local model_index.json
    (diffusers looks pipeline classes up in its own namespace only)."""
    from diffusers import DiffusionPipeline

    index = Path(ref).expanduser() / "model_index.json"
    if index.is_file():
        spec = json.loads(index.read_text())
        for value in spec.values():
            # attnlab's own components (e.g. ["attnlab.lavie", "LaVieUNet"]): diffusers resolves
            # them from sys.modules only, so import attnlab's module first
            if isinstance(value, list) and value and str(value[0]).startswith("attnlab."):
                importlib.import_module(str(value[0]))
        if spec.get("_class_name") == "VideoCrafter2Pipeline":
            from .videocrafter import VideoCrafter2Pipeline

            return VideoCrafter2Pipeline
    return DiffusionPipeline


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def generate(
    pipe: Any,
    prompt: str | list[str],
    *,
    frames: int = 16,
    steps: int = 25,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    guidance: float = 7.5,
    negative_prompt: str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Run a text-to-video pipeline with a seeded generator; frames ``[F, H, W, 3]`` in [0, 1].

    Only this helper's arguments differ between pipelines; extra ``kwargs`` go to the pipeline.
    """
    from .sites import denoiser_of, family_of

    model = denoiser_of(pipe)
    family_of(model)  # a clear error for models without temporal attention
    sites_of(model).check_frames(frames)  # a clear error before any work
    device = getattr(pipe, "_execution_device", None) or "cpu"
    generator = torch.Generator(device="cpu" if str(device) == "mps" else device).manual_seed(seed)
    out = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        generator=generator,
        output_type="pt",
        **kwargs,
    )
    video = out.frames
    video = video[0] if isinstance(video, (list, tuple)) or video.ndim == 5 else video
    # pipelines disagree on [F, C, H, W] vs [F, H, W, C]; normalise to channels last
    if video.shape[1] in (1, 3) and video.shape[-1] not in (1, 3):
        video = video.permute(0, 2, 3, 1)
    return video.float().clamp(0, 1).cpu()
