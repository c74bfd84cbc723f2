"""Loading pipelines by name: attnlab's embedded models, local folders and hub ids."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnlab.util.provenance import NAME_ATTR, model_name  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # torch and diffusers load inside the functions (the CLI imports this module)
    import torch

# the LaVie-shaped trained organism (temporal attention with RoPE, no temporal convolution): the
# one whose motion lives most clearly in its temporal attention, so that the demo's maps, probes
# and edits show real effects (organism-none's frame order lives in its convolutions:
# docs/organisms.md, "Where the motion lives")
DEFAULT_MODEL = "organism-rope"


def builtin_models() -> tuple[str, ...]:
    """Embedded model names: the trained organisms and the random-weight tiny pipelines."""
    from attnlab.models.organisms import ORGANISMS
    from attnlab.models.tiny import TINY_MODELS

    return (*ORGANISMS, *TINY_MODELS)


class UnknownModelError(ValueError):
    """A model name that is neither embedded, a local folder nor a reachable hub id."""


class AmbiguousModelError(ValueError):
    """An embedded model's name that is also a folder in the working directory."""


def _unknown(model: str, why: str) -> UnknownModelError:
    names = builtin_models()
    close = difflib.get_close_matches(model, names, n=1, cutoff=0.5)
    hint = f"; closest: {close[0]!r}" if close else ""
    return UnknownModelError(
        f"{why}; embedded models: {', '.join(names)}{hint} "
        "(or give a local pipeline folder or a hub id owner/name)"
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str) or isinstance(
            try_to_load_from_cache(repo_id, "unet/config.json"), str
        )
    except Exception:  # an id the hub library refuses is not in the cache
        return False


def resolve_model(model: str) -> str:
    """A loadable reference: embedded names become their saved folder; local folders and hub
    ids pass through. An embedded name that is also a folder in the working directory raises
    :class:`AmbiguousModelError` (``./name`` is the folder). A name that is none of these (a
    typo such as ``organism-nnone``), and a hub id while offline (``HF_HUB_OFFLINE``) that is
    not in the local hub cache, raise :class:`UnknownModelError` naming the embedded models
    and the closest match, before any network call."""
    from attnlab.core.model_refs import check_model_reference
    from attnlab.models.organisms import ORGANISMS
    from attnlab.models.tiny import TINY_MODELS

    model = str(model)
    if model in (*TINY_MODELS, *ORGANISMS) and Path(model).is_dir():
        folder = str(Path(model).absolute())
        raise AmbiguousModelError(
            f"{model!r} is both an embedded model and the folder {folder!r} in the working "
            f"directory: give {'./' + model!r} for the folder, or give {model!r} from a "
            "directory without such a folder for the embedded model"
        )
    if model in TINY_MODELS:
        from attnlab.models.tiny import tiny_path

        return str(tiny_path(model))
    if model in ORGANISMS:
        from attnlab.models.organisms import organism_path

        return str(organism_path(model))
    if Path(model).expanduser().exists():
        return model
    check_model_reference(model)  # path-shaped but missing: FileNotFoundError
    owner, _, name = model.partition("/")
    if not (owner and name):
        raise _unknown(
            model, f"unknown model {model!r}: not an embedded name, a folder or a hub id"
        )
    if _hub_offline() and not _in_hub_cache(model):
        raise _unknown(
            model, f"model {model!r} is not in the local hub cache and the hub is offline"
        )
    return model


def load_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    **kwargs: Any,
):
    """Load a diffusers video pipeline from an embedded name, a local folder or a hub id.
    ``progress=False``: no progress bars, neither the libraries' while loading nor the
    pipeline's while sampling."""
    ref = resolve_model(str(model))
    kwargs.update(dtype_kwargs(dtype))
    import contextlib

    from attnlab.util.quiet import no_loading_bars, quiet_library_logs

    bars = contextlib.nullcontext() if progress else no_loading_bars()
    with quiet_library_logs(), bars:
        try:
            pipe = _pipeline_class(ref).from_pretrained(ref, **kwargs)
        except OSError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if not Path(ref).expanduser().exists():  # a hub id the hub could not serve
                raise _unknown(str(model), f"cannot load model {str(model)!r} ({first})") from err
            raise FileNotFoundError(f"cannot load model {str(model)!r}: {first}") from err
        if device is not None:
            pipe = pipe.to(device)
    setattr(pipe, NAME_ATTR, str(model))
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    if hasattr(pipe, "vae") and hasattr(pipe.vae, "enable_slicing"):
        pipe.vae.enable_slicing()
    return pipe


def check_device(text: str, *, here: bool = True) -> None:
    """Refuse (``ValueError`` naming it) a device torch cannot name, ``meta`` (it holds no
    data), and with ``here`` one this machine does not have: CUDA without a CUDA device or
    with too few, MPS or another accelerator torch does not report available."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{text!r} is not a torch device: give cpu, cuda, cuda:N or mps") from None
    if device.type == "meta":
        raise ValueError(f"{text!r}: 'meta' holds no data and cannot generate")
    if not here or device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "" if torch.version.cuda else ", a torch built without CUDA"
            raise ValueError(
                f"{text!r}: CUDA is not available on this machine (no CUDA device; torch "
                f"{torch.__version__}{built}); use cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{text!r}: this machine has {count} CUDA device"
                f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
        return
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{text!r}: MPS is not available on this machine")
        return
    available = getattr(getattr(torch, device.type, None), "is_available", None)
    if not callable(available):
        raise ValueError(
            f"{text!r}: attnlab runs on cpu, cuda, cuda:N, mps or another accelerator torch "
            "reports available"
        )
    if not available():
        raise ValueError(f"{text!r}: {device.type} is not available on this machine")


def dtype_kwargs(dtype: torch.dtype | None, library: str = "diffusers") -> dict[str, Any]:
    """The keyword argument that sets the dtype of ``library``'s ``from_pretrained``
    (``"diffusers"`` or ``"transformers"``): ``dtype=`` where the installed version takes it
    (diffusers 0.42 deprecates ``torch_dtype=`` with a FutureWarning, transformers 4.56
    renamed it), else ``torch_dtype=``; empty for None."""
    if dtype is None:
        return {}
    from importlib.metadata import version

    from packaging.version import Version

    first = Version("0.42") if library == "diffusers" else Version("4.56")
    return {"dtype" if Version(version(library)) >= first else "torch_dtype": dtype}


def _pipeline_class(ref: str):
    """DiffusionPipeline, or attnlab's own pipeline class named in a local model_index.json
    (diffusers looks pipeline classes up in its own namespace only); a converted LaVie folder
    (a ``TextToVideoSDPipeline`` with a ``LaVieUNet``) loads as
    :class:`~attnlab.models.lavie.LaViePipeline`."""
    from diffusers import DiffusionPipeline

    index = Path(ref).expanduser() / "model_index.json"
    if index.is_file():
        try:
            spec = json.loads(index.read_text())
        except ValueError as err:
            raise ValueError(f"{index} is not valid JSON ({err})") from None
        for component, value in spec.items():
            # attnlab's own components (e.g. ["attnlab.models.lavie", "LaVieUNet"]): diffusers
            # resolves them from sys.modules only, so import attnlab's module first
            if isinstance(value, list) and value and str(value[0]).startswith("attnlab."):
                importlib.import_module(_component_module(index, component, str(value[0])))
        if spec.get("_class_name") == "OrganismPipeline":  # a saved organism folder
            from attnlab.models.organisms import OrganismPipeline

            return OrganismPipeline
        if spec.get("_class_name") == "VideoCrafter2Pipeline":
            from attnlab.models.videocrafter import VideoCrafter2Pipeline

            return VideoCrafter2Pipeline
        unet = spec.get("unet")
        if spec.get("_class_name") in ("TextToVideoSDPipeline", "LaViePipeline") and (
            isinstance(unet, list) and unet[-1:] == ["LaVieUNet"]
        ):  # a converted LaVie folder: LaVie's 320 x 512 by default, its UNet type declared
            from attnlab.models.lavie import LaViePipeline

            return LaViePipeline
    return DiffusionPipeline


# module paths of attnlab 0.1's flat layout that folders saved by it name in model_index.json
# (diffusers writes a component's ``type(obj).__module__`` there)
_FLAT_LAYOUT_MODULES = {
    "attnlab.organisms": "attnlab.models.organisms",
    "attnlab.lavie": "attnlab.models.lavie",
    "attnlab.videocrafter": "attnlab.models.videocrafter",
}


def _component_module(index: Path, component: str, module: str) -> str:
    """``module`` if attnlab has it; otherwise one error naming the folder's file and the fix."""
    if module in _FLAT_LAYOUT_MODULES:
        new = _FLAT_LAYOUT_MODULES[module]
        raise ValueError(
            f"{index} names the module {module!r} for its component {component!r}: a module "
            f'path of attnlab before 0.2, now {new!r}; replace "{module}" by "{new}" in '
            "that file (or write the folder again with `attnlab convert`)"
        )
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise ValueError(
            f"{index} names the module {module!r} for its component {component!r}, which "
            "attnlab does not have; attnlab's components live in "
            + ", ".join(sorted(set(_FLAT_LAYOUT_MODULES.values())))
        )
    return module


def check_setting(name: str, value: Any) -> Any:
    """``value`` if it is allowed for the generation setting ``name`` (``frames``, ``steps``:
    whole numbers >= 1; ``height``, ``width``: None or multiples of 8, as the VAEs of every family
    attnlab knows shrink a video 8 times or more; ``guidance``: a finite number); otherwise one
    ``ValueError`` naming the setting, the value and the rule."""
    import math
    import numbers

    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if name in ("frames", "steps"):
        if not whole or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    elif name in ("height", "width"):
        if value is not None and (not whole or value < 8 or value % 8):
            raise ValueError(
                f"{name} must be a multiple of 8 pixels (8, 16, 24, ...), got {value!r}"
            )
    elif name == "guidance":
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not real or not math.isfinite(value):
            raise ValueError(f"guidance must be a finite number, got {value!r}")
    else:
        raise KeyError(f"no generation setting {name!r}")
    return value


def check_generation(
    *,
    frames: Any,
    steps: Any,
    guidance: Any = 1.0,
    height: Any = None,
    width: Any = None,
    record_steps: Any = None,
) -> None:
    """Refuse generation settings no pipeline can run, before any model is loaded (see
    :func:`check_setting`; the command line checks its options with the same rules).
    ``record_steps`` (a step selection as :class:`attnlab.core.selection.Steps` takes it) is
    checked against ``steps``."""
    for name, value in dict(
        frames=frames, steps=steps, guidance=guidance, height=height, width=width
    ).items():
        if not (name == "guidance" and value is None):  # None: the pipeline's own
            check_setting(name, value)
    if record_steps is not None:
        from attnlab.core.selection import Steps

        Steps.make(record_steps).resolve(steps)


def default_device() -> str:
    import torch

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
    guidance: float | None = None,
    negative_prompt: str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Run a text-to-video pipeline with a seeded generator; frames ``[F, H, W, 3]`` in [0, 1].

    Only this helper's arguments differ between pipelines; extra ``kwargs`` go to the pipeline.
    ``guidance`` None (and ``height`` / ``width`` None) leave the pipeline's own default.
    """
    import torch

    from attnlab.core.denoisers import denoiser_of
    from attnlab.core.sites import family_of
    from attnlab.core.sites import sites as sites_of

    check_generation(frames=frames, steps=steps, guidance=guidance, height=height, width=width)
    model = denoiser_of(pipe)
    family_of(model)  # a clear error for models without temporal attention
    sites_of(model).check_frames(frames)  # a clear error before any work
    device = getattr(pipe, "_execution_device", None) or "cpu"
    generator = torch.Generator(device="cpu" if str(device) == "mps" else device).manual_seed(seed)
    # a size only when given: None would override the pipeline's own default (VideoCrafter2's
    # 320 x 512; others derive theirs from the denoiser's config)
    size = {k: v for k, v in dict(height=height, width=width).items() if v is not None}
    scale = {} if guidance is None else {"guidance_scale": guidance}
    out = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_frames=frames,
        num_inference_steps=steps,
        generator=generator,
        output_type="pt",
        **size,
        **scale,
        **kwargs,
    )
    video = out.frames
    video = video[0] if isinstance(video, (list, tuple)) or video.ndim == 5 else video
    # pipelines disagree on [F, C, H, W] vs [F, H, W, C]; normalise to channels last
    if video.shape[1] in (1, 3) and video.shape[-1] not in (1, 3):
        video = video.permute(0, 2, 3, 1)
    return video.float().clamp(0, 1).cpu()
