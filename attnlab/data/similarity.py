"""Inter-frame similarity matrices of a video (paper Sec. 4.1 "Transferring dynamics", App. A.1).

``similarity_matrix(frames, backend)`` returns an ``F x F`` :class:`xarray.DataArray` with dims
``(frame, frame2)``: symmetric, higher = more similar, the diagonal (a frame with itself) is
the maximum, 1. It can be drawn as in Fig. S.1, turned into the per-interval distributions of
Fig. S.2 with :func:`similarity_by_interval`, or resampled with :func:`resample_matrix` and
used as the TAR prior for a generated video of another length (Fig. 8).

Frames
    Read by :func:`attnlab.data.video.to_unit_frames`, the rule every frame input of attnlab
    follows: a :class:`~attnlab.data.video.Video`, uint8 in ``[0, 255]``, floats in
    ``[0, 1]`` (a pipeline's ``output_type="pt"`` / ``"np"``), or in ``[-1, 1]`` when any value
    is below 0 (up to 0.05 of decoder overshoot is clipped), or in ``value_range=(lo, hi)``
    when given (an all-bright ``[-1, 1]`` video needs ``value_range=(-1, 1)``); channels first
    or last. Anything else is an error naming what was received.

Backends (a registry; add one with :func:`register_backend`)
    ``"dreamsim"``  DreamSim (the paper's choice): cosine similarity of DreamSim embeddings,
                    equal to ``1 - DreamSim distance``. Needs local weights, never downloads.
    ``"stlpips"``   shift-tolerant LPIPS (PyPI ``stlpips-pytorch``, weights inside the wheel,
                    fully offline): ``exp(-d / tau)`` of the ST-LPIPS distance ``d``.
    ``"pixel"``     no weights: Pearson correlation of downsampled pixels between frames.

Results are cached on disk under ``$ATTNLAB_CACHE/similarity`` (or the user cache dir),
keyed by the frames as read, the backend name and every setting that changes the values.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import xarray as xr

from attnlab.core.dims import FRAME, FRAME2, OFFSET
from attnlab.data.metrics import resample_maps
from attnlab.util.cache import cache_dir

__all__ = [
    "DREAMSIM_ENV",
    "DREAMSIM_FILES",
    "DreamSimBackend",
    "DreamSimWeightsError",
    "PixelBackend",
    "STLPIPSBackend",
    "SimilarityBackend",
    "available_backends",
    "dreamsim_missing_files",
    "get_backend",
    "register_backend",
    "resample_matrix",
    "similarity_by_interval",
    "similarity_matrix",
]

DREAMSIM_ENV = "ATTNLAB_DREAMSIM_DIR"
SIMILARITY = "similarity"

# ---------------------------------------------------------------------------- frames


def _to_unit_frames(frames: Any, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """``frames`` read by :func:`attnlab.data.video.to_unit_frames` (the one rule for every
    frame input: uint8 in [0, 255], floats in [0, 1], or [-1, 1] when any value is below 0,
    or in ``value_range``), as a float32 CPU tensor ``(F, 3, H, W)`` in ``[0, 1]``."""
    from attnlab.data.video import to_unit_frames

    unit = to_unit_frames(frames, value_range)
    return torch.from_numpy(unit).permute(0, 3, 1, 2).contiguous()


def _resize(frames01: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(F, 3, H, W)`` frames, kept in [0, 1]."""
    if tuple(frames01.shape[-2:]) == tuple(size):
        return frames01
    out = torch.nn.functional.interpolate(
        frames01, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp(0.0, 1.0)


def _short_side_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


# ---------------------------------------------------------------------------- registry


class SimilarityBackend:
    """Base class of a similarity backend.

    Subclasses set ``name``, take their settings as keyword arguments in ``__init__`` (cheap:
    load models lazily), report the settings that change the values in :meth:`settings`, and
    implement :meth:`embed` (unit-norm embeddings; similarity = their dot products) or
    :meth:`matrix`. Both receive float32 frames ``(F, 3, H, W)`` in ``[0, 1]``.
    """

    name: ClassVar[str] = ""
    # bump when the computation changes, so old cache entries are not reused
    version: ClassVar[int] = 1
    definition: ClassVar[str] = "cosine similarity of unit-norm embeddings"
    value_range: ClassVar[str] = "[-1, 1]"

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings that change the values (cache key and attrs)."""
        return {}

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """``(F, D)`` unit-norm embeddings of ``(F, 3, H, W)`` frames in [0, 1]."""
        raise NotImplementedError(f"backend {self.name!r} implements neither embed nor matrix")

    def matrix(self, frames: torch.Tensor) -> np.ndarray:
        """``(F, F)`` similarity matrix; the default is the Gram matrix of :meth:`embed`."""
        emb = self.embed(frames).double()
        sim = (emb @ emb.T).cpu().numpy()
        np.fill_diagonal(sim, 1.0)
        return np.clip(sim, -1.0, 1.0)


_BACKENDS: dict[str, type[SimilarityBackend]] = {}


def register_backend(
    cls: type[SimilarityBackend] | None = None, *, name: str | None = None, overwrite: bool = False
) -> Any:
    """Register a :class:`SimilarityBackend` subclass (usable as a class decorator)."""

    def _register(c: type[SimilarityBackend]) -> type[SimilarityBackend]:
        key = name or c.name
        if not key:
            raise ValueError(f"{c.__name__} needs a non-empty `name` to be registered")
        if key in _BACKENDS and not overwrite and _BACKENDS[key] is not c:
            raise ValueError(f"similarity backend {key!r} is already registered")
        _BACKENDS[key] = c
        return c

    return _register(cls) if cls is not None else _register


def available_backends() -> list[str]:
    """Names of the registered similarity backends."""
    return sorted(_BACKENDS)


def get_backend(name: str, **kwargs: Any) -> SimilarityBackend:
    """Construct the backend registered as ``name`` with its settings."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown similarity backend {name!r}; available: {available_backends()}")
    return _BACKENDS[name](**kwargs)


# ---------------------------------------------------------------------------- pixel


@register_backend
class PixelBackend(SimilarityBackend):
    """Pearson correlation of downsampled RGB pixels between two frames; needs no weights.

    Frames are resized to ``size x size`` (antialiased), flattened, mean-centred and scaled
    to unit norm; the similarity is their dot product, in [-1, 1]. Cheap and deterministic,
    but it measures appearance change only (camera motion lowers it as much as content
    change does). A constant frame has similarity 0 to every other frame.
    """

    name = "pixel"
    definition = "Pearson correlation of mean-centred downsampled RGB pixels"

    def __init__(self, size: int = 32) -> None:
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)

    def settings(self) -> dict[str, Any]:
        return {"size": self.size}

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        x = _resize(frames, (self.size, self.size)).double().flatten(1)
        x = x - x.mean(dim=1, keepdim=True)
        norm = x.norm(dim=1, keepdim=True)
        # pixel std below 1e-6 is resampling noise on a constant frame, not content
        flat = norm <= 1e-6 * math.sqrt(x.shape[1])
        return torch.where(flat, torch.zeros_like(x), x / norm.clamp_min(1e-30))


# ---------------------------------------------------------------------------- ST-LPIPS


def _stlpips_weight_file(net: str) -> Path:
    from stlpips_pytorch import stlpips

    return Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"


@register_backend
class STLPIPSBackend(SimilarityBackend):
    """Shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022), fully offline.

    The PyPI wheel ``stlpips-pytorch`` 0.0.2 ships the whole network (anti-aliased
    AlexNet or VGG backbone and the linear calibration layers) in
    ``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``; the ``shift_tolerant``
    variant builds its backbone with random init and loads everything from that file, so
    nothing is fetched at run time (the plain LPIPS variant would download torchvision's
    ImageNet weights). The file is loaded here and checked to cover every parameter.

    Frames are resized so the short side is ``short_side`` (aspect kept) and scaled to
    [-1, 1]. ``d(a, b)`` is the ST-LPIPS distance (>= 0, typically < 1); the similarity is
    ``exp(-d / tau)`` in (0, 1], 1 on the diagonal, about ``1 - d`` for small ``d``.
    Backbone features are computed once per frame; all pairs then follow exactly from
    ``d = sum_l mean_hw sum_c w_lc (f_a - f_b)^2``.
    """

    name = "stlpips"
    definition = "exp(-d / tau), d = shift-tolerant LPIPS distance"
    value_range = "(0, 1]"

    def __init__(
        self,
        net: str = "alex",
        short_side: int = 224,
        tau: float = 1.0,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        if net not in ("alex", "vgg"):
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.net, self.short_side, self.tau = net, int(short_side), float(tau)
        self.device, self.batch_size = torch.device(device), int(batch_size)
        self._model: torch.nn.Module | None = None

    def settings(self) -> dict[str, Any]:
        return {"net": self.net, "short_side": self.short_side, "tau": self.tau}

    @property
    def model(self) -> torch.nn.Module:
        """The ST-LPIPS model with the wheel's weights (loaded on first use)."""
        if self._model is None:
            try:
                from stlpips_pytorch import stlpips
            except ImportError as err:
                raise ImportError(
                    "the 'stlpips' backend needs `pip install stlpips-pytorch torchsummary "
                    f"ipython` (stlpips imports the last two without declaring them): {err}"
                ) from err
            model = stlpips.LPIPS(
                pretrained=False, net=self.net, variant="shift_tolerant", verbose=False
            )
            state = torch.load(
                _stlpips_weight_file(self.net), map_location="cpu", weights_only=True
            )
            missing, unexpected = model.load_state_dict(state, strict=False)
            # `lins.k` are aliases of `link` (the same modules) and load through them
            missing = [k for k in missing if not k.startswith("lins.")]
            if missing or unexpected:
                raise RuntimeError(
                    f"ST-LPIPS weight file does not match the network: missing {missing}, "
                    f"unexpected {unexpected}"
                )
            self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    @torch.no_grad()
    def distances(self, frames: torch.Tensor) -> np.ndarray:
        """``(F, F)`` ST-LPIPS distances of ``(F, 3, H, W)`` frames in [0, 1]."""
        from stlpips_pytorch.utils import normalize_tensor

        model = self.model
        size = _short_side_size(frames.shape[-2], frames.shape[-1], self.short_side)
        x = _resize(frames, size) * 2.0 - 1.0
        feats: list[list[torch.Tensor]] = [[] for _ in range(model.L)]
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size].to(self.device)
            outs = model.net(model.scaling_layer(batch))
            for k in range(model.L):
                feats[k].append(normalize_tensor(outs[k]).flatten(2).float().cpu())
        n = len(x)
        dist = torch.zeros(n, n, dtype=torch.float64)
        for k in range(model.L):
            f = torch.cat(feats[k])  # (F, C, HW)
            w = model.lins[k].model[-1].weight.detach().float().cpu().view(1, -1, 1)
            hw = f.shape[-1]
            cross = ((f * w).flatten(1) @ f.flatten(1).T).double() / hw
            sq = torch.diagonal(cross)
            dist += sq[:, None] + sq[None, :] - 2.0 * cross
        dist = dist.clamp_min(0.0)
        dist.fill_diagonal_(0.0)
        return dist.numpy()

    def matrix(self, frames: torch.Tensor) -> np.ndarray:
        return np.exp(-self.distances(frames) / self.tau)


# ---------------------------------------------------------------------------- DreamSim


class DreamSimWeightsError(FileNotFoundError):
    """DreamSim weight files are missing; attnlab never downloads them."""


_LORA = ("adapter_config.json", "adapter_model.safetensors|adapter_model.bin")


def _lora(folder: str) -> list[str]:
    return [f"{folder}/{f}" for f in _LORA]


# Files each dreamsim_type reads from its cache_dir (dreamsim 0.2.1, model.py and
# feature_extraction/). "a|b" means either file. DINO backbones come through
# torch.hub.load("facebookresearch/dino:main") with hub dir = cache_dir: a checkout of that
# repository (hubconf.py and the modules it imports) and the backbone checkpoint that its
# hubconf fetches with load_state_dict_from_url must be there too.
_DINO_HUB = [
    "facebookresearch_dino_main/hubconf.py",
    "checkpoints/dino_vitbase16_pretrain.pth",
]
DREAMSIM_FILES: dict[str, list[str]] = {
    "ensemble": [
        "dino_vitb16_pretrain.pth",
        "clip_vitb16_pretrain.pth.tar",
        "open_clip_vitb16_pretrain.pth.tar",
        *_lora("ensemble_lora"),
        *_DINO_HUB,
    ],
    "open_clip_vitb32": [
        "open_clip_vitb32_pretrain.pth.tar",
        *_lora("open_clip_vitb32_single_lora"),
    ],
    "clip_vitb32": ["clip_vitb32_pretrain.pth.tar", *_lora("clip_vitb32_single_lora")],
    "dino_vitb16": ["dino_vitb16_pretrain.pth", *_lora("dino_vitb16_single_lora"), *_DINO_HUB],
    "synclr_vitb16": ["synclr_vit_b_16.pth", *_lora("synclr_vitb16_single_lora")],
}
# dinov2 types are left out: torch.hub.load('facebookresearch/dinov2') names no branch, so
# torch.hub probes github.com for the default branch on every load, even with a local copy.


def dreamsim_missing_files(weights_dir: str | os.PathLike, dreamsim_type: str) -> list[str]:
    """The entries of :data:`DREAMSIM_FILES` for ``dreamsim_type`` absent from ``weights_dir``."""
    if dreamsim_type not in DREAMSIM_FILES:
        raise ValueError(
            f"unsupported dreamsim_type {dreamsim_type!r}; supported: {sorted(DREAMSIM_FILES)} "
            "(dinov2 types are not: torch.hub contacts github.com on every load)"
        )
    root = Path(weights_dir)
    return [
        entry
        for entry in DREAMSIM_FILES[dreamsim_type]
        if not any((root / alt).is_file() for alt in _alternatives(entry))
    ]


def _alternatives(entry: str) -> list[str]:
    folder, _, name = entry.rpartition("/")
    return [f"{folder}/{n}" if folder else n for n in name.split("|")]


def _pretty(entry: str) -> str:
    first, *others = _alternatives(entry)
    return first + "".join(f"  (or {Path(o).name})" for o in others)


def _layout_text(root: Path, dreamsim_type: str) -> str:
    return "\n".join([f"  {root}/", *(f"    {_pretty(e)}" for e in DREAMSIM_FILES[dreamsim_type])])


@contextlib.contextmanager
def _downloads_forbidden() -> Iterator[None]:
    """Make torch.hub downloads (dreamsim's zip, hub checkpoints) raise while loading."""

    def _refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise DreamSimWeightsError(f"attnlab refused a download of {url} while loading DreamSim")

    original = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = _refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


@register_backend
class DreamSimBackend(SimilarityBackend):
    """DreamSim (Fu et al., NeurIPS 2023) embeddings from local weights, as in the paper.

    ``weights_dir`` (or env ``ATTNLAB_DREAMSIM_DIR``) is the folder DreamSim calls its
    ``cache_dir``; :data:`DREAMSIM_FILES` lists what each ``dreamsim_type`` needs in it.
    All files are checked before DreamSim is called: anything missing raises
    :class:`DreamSimWeightsError` listing the files and the layout, and downloads are
    refused while loading, so DreamSim never fetches its zip from GitHub. ``torch.hub``'s
    directory, which DreamSim sets globally for DINO types, is restored afterwards.

    Frames go through DreamSim's own preprocessing (PIL bicubic resize to 224 x 224, values
    in [0, 1]). The similarity is the cosine of the DreamSim embeddings, which equals
    ``1 - DreamSim distance``; in [-1, 1], 1 on the diagonal.
    """

    name = "dreamsim"
    definition = "cosine of DreamSim embeddings = 1 - DreamSim distance"

    def __init__(
        self,
        weights_dir: str | os.PathLike | None = None,
        dreamsim_type: str = "ensemble",
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if dreamsim_type not in DREAMSIM_FILES:
            raise ValueError(
                f"unsupported dreamsim_type {dreamsim_type!r}; supported: "
                f"{sorted(DREAMSIM_FILES)} (dinov2 types are not: torch.hub contacts "
                "github.com on every load)"
            )
        if weights_dir is None:
            weights_dir = os.environ.get(DREAMSIM_ENV) or None
        if weights_dir is None:
            raise DreamSimWeightsError(
                f"DreamSim needs a local weights folder: pass weights_dir= or set "
                f"${DREAMSIM_ENV}. Expected layout for dreamsim_type={dreamsim_type!r}:\n"
                + _layout_text(Path("<weights_dir>"), dreamsim_type)
            )
        self.weights_dir = Path(weights_dir).expanduser().resolve()
        self.dreamsim_type = dreamsim_type
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._preprocess: Callable[[Any], torch.Tensor] | None = None

    def settings(self) -> dict[str, Any]:
        # the weights are part of the key: their path and size
        sizes = {}
        for entry in DREAMSIM_FILES[self.dreamsim_type]:
            for alt in _alternatives(entry):
                path = self.weights_dir / alt
                if path.is_file():
                    sizes[alt] = path.stat().st_size
        return {
            "dreamsim_type": self.dreamsim_type,
            "weights_dir": str(self.weights_dir),
            "file_sizes": sizes,
        }

    def check_files(self) -> None:
        """Raise :class:`DreamSimWeightsError` unless every required file is present."""
        missing = dreamsim_missing_files(self.weights_dir, self.dreamsim_type)
        if not missing:
            return
        from dreamsim.config import dreamsim_weights

        url = dreamsim_weights.get(self.dreamsim_type, "<see dreamsim/config.py>")
        listed = "\n".join(f"  - {_pretty(m)}" for m in missing)
        hub = (
            "\nThe DINO backbone comes through torch.hub with its dir set to this folder: the "
            "facebookresearch/dino repository (branch main) and its dino_vitbase16_pretrain.pth "
            "checkpoint must be there as well."
            if any(m.startswith(("facebookresearch", "checkpoints")) for m in missing)
            else ""
        )
        raise DreamSimWeightsError(
            f"DreamSim weights for dreamsim_type={self.dreamsim_type!r} are incomplete in "
            f"{self.weights_dir}; missing:\n{listed}\nExpected layout:\n"
            f"{_layout_text(self.weights_dir, self.dreamsim_type)}\n"
            "attnlab never downloads weights. On a machine with internet, download "
            f"{url} and unzip it into that folder, or run dreamsim.dreamsim(pretrained=True, "
            f"cache_dir=<folder>, dreamsim_type={self.dreamsim_type!r}) once there.{hub}"
        )

    def load(self) -> Any:
        """Check the files and load the DreamSim model with dreamsim's own loader."""
        if self._model is None:
            self.check_files()
            from dreamsim import dreamsim

            # DINO types call torch.hub.set_dir(cache_dir) globally: put the old value back
            hub_dir = getattr(torch.hub, "_hub_dir", None)
            try:
                with (
                    _downloads_forbidden(),
                    contextlib.redirect_stdout(io.StringIO()),
                    warnings.catch_warnings(),
                ):
                    # dreamsim wraps the model in peft twice; peft warns about it
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    model, preprocess = dreamsim(
                        pretrained=True,
                        device=str(self.device),
                        cache_dir=str(self.weights_dir),
                        dreamsim_type=self.dreamsim_type,
                    )
            finally:
                torch.hub._hub_dir = hub_dir
            self._model, self._preprocess = model, preprocess
        return self._model

    @torch.no_grad()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        model = self.load()
        assert self._preprocess is not None
        as_uint8 = (frames * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        batch = torch.cat([self._preprocess(Image.fromarray(f.numpy())) for f in as_uint8])
        out = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size].to(self.device)
            out.append(model.embed(chunk).reshape(len(chunk), -1).float().cpu())
        emb = torch.cat(out)
        # DreamSim already returns unit-norm embeddings; renormalise against rounding
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------- API


def _frames_digest(frames: torch.Tensor | np.ndarray) -> str:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    t = frames.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    # bytes through a uint8 view: works for every dtype, bfloat16 included
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cache_key(frames_digest: str, backend: SimilarityBackend) -> str:
    spec = {
        "frames": frames_digest,
        "backend": backend.name,
        "version": backend.version,
        "settings": backend.settings(),
    }
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def similarity_matrix(
    frames: Any,
    backend: str | SimilarityBackend = "dreamsim",
    *,
    value_range: tuple[float, float] | None = None,
    cache: bool = True,
    **backend_kwargs: Any,
) -> xr.DataArray:
    """``(frame, frame2)`` similarity matrix of a video's frames.

    ``frames``: anything :func:`attnlab.data.video.to_unit_frames` reads, by its one rule
    (a :class:`~attnlab.data.video.Video`; uint8 in [0, 255]; floats in [0, 1], or in
    [-1, 1] when any value is below 0, or in ``value_range``; channels first or last). ``backend``: a
    registered name (settings as keyword arguments) or a backend instance (reuse it to load
    a model once for many videos). The result is symmetric, higher = more similar, with the
    maximum 1 on the diagonal; its range is in ``attrs["value_range"]``, and the attrs name
    the backend, its settings (JSON) and the definition. ``cache=False`` bypasses the disk
    cache (keyed by the frame bytes, backend name and value-changing settings).
    """
    if isinstance(backend, str):
        impl = get_backend(backend, **backend_kwargs)
    elif isinstance(backend, SimilarityBackend):
        if backend_kwargs:
            raise TypeError("settings go to the backend's constructor when passing an instance")
        impl = backend
    else:
        raise TypeError(f"backend must be a name or a SimilarityBackend, got {type(backend)}")
    unit = _to_unit_frames(frames, value_range)
    digest = _frames_digest(unit)  # of the frames as read: one rule, one key
    attrs = {
        "backend": impl.name,
        "backend_settings": json.dumps(impl.settings(), sort_keys=True, default=str),
        "similarity": impl.definition,
        "value_range": impl.value_range,
        "frames_sha256": digest,
    }
    path = cache_dir("similarity") / f"{_cache_key(digest, impl)}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            sim = data["matrix"]
    else:
        sim = np.asarray(impl.matrix(unit), dtype=np.float64)
        n = unit.shape[0]
        if sim.shape != (n, n):
            raise ValueError(f"backend {impl.name!r} returned shape {sim.shape}, expected {(n, n)}")
        sim = 0.5 * (sim + sim.T)
        if path is not None:
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, matrix=sim)
            os.replace(tmp, path)
    n = sim.shape[0]
    return xr.DataArray(
        sim,
        dims=(FRAME, FRAME2),
        coords={FRAME: np.arange(n), FRAME2: np.arange(n)},
        name=SIMILARITY,
        attrs=attrs,
    )


def similarity_by_interval(sim: xr.DataArray | np.ndarray) -> pd.DataFrame:
    """Fig. S.2 data: every frame pair ``(i, j = i + d)``, ``d = 1..F-1``, in long format.

    Columns: any extra dims of ``sim`` (e.g. ``run``), ``frame`` (i), ``frame2`` (j),
    ``offset`` (d) and ``similarity``; sorted by the extra dims, offset and frame. Only the
    upper triangle is listed (the matrix is symmetric), so each interval ``d`` has
    ``F - d`` rows per matrix. Frames are numbered by position.
    """
    if not isinstance(sim, xr.DataArray):
        arr = np.asarray(sim)
        if arr.ndim != 2:
            raise ValueError(f"expected an (F, F) matrix, got shape {arr.shape}")
        sim = xr.DataArray(arr, dims=(FRAME, FRAME2))
    for d in (FRAME, FRAME2):
        if d not in sim.dims:
            raise ValueError(f"similarity matrix needs dims {FRAME!r}, {FRAME2!r}; got {sim.dims}")
    n = sim.sizes[FRAME]
    if sim.sizes[FRAME2] != n:
        raise ValueError(f"similarity matrix must be square, got {n} x {sim.sizes[FRAME2]}")
    sim = sim.assign_coords({FRAME: np.arange(n), FRAME2: np.arange(n)})
    df = sim.rename(SIMILARITY).to_dataframe().reset_index()
    df = df[df[FRAME2] > df[FRAME]].copy()
    df[OFFSET] = df[FRAME2] - df[FRAME]
    extra = [d for d in sim.dims if d not in (FRAME, FRAME2)]
    df = df[[*extra, FRAME, FRAME2, OFFSET, SIMILARITY]]
    return df.sort_values([*extra, OFFSET, FRAME], kind="stable").reset_index(drop=True)


def resample_matrix(
    mat: xr.DataArray | np.ndarray, n: int, *, keep_diagonal: bool = True
) -> xr.DataArray | np.ndarray:
    """Resample an ``F x F`` similarity matrix to ``n x n`` (returns the input's type).

    Bilinear with corners aligned (first and last frames map onto each other), computed as
    ``R S R^T`` so symmetric input stays symmetric; see :func:`attnlab.data.metrics.resample_maps`.
    Plain bilinear would blend each diagonal entry with its off-diagonal neighbours; with
    ``keep_diagonal=True`` the diagonal is instead the 1-D interpolation of the source
    diagonal (a frame compared with itself stays at the maximum, 1). Use it to turn a
    reference video's similarity into a TAR prior for a video of another length.
    """
    is_numpy = not isinstance(mat, xr.DataArray)
    if is_numpy:
        arr = np.asarray(mat, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"expected an (F, F) matrix, got shape {arr.shape}")
        da = xr.DataArray(arr, dims=(FRAME, FRAME2))
    else:
        da = mat
    out = resample_maps(da, n, row_dim=FRAME, col_dim=FRAME2)
    if keep_diagonal:
        src = da.values.astype(np.float64)
        # np.diagonal puts the diagonal last, other axes keep their order
        diag_src = np.diagonal(src, axis1=da.get_axis_num(FRAME), axis2=da.get_axis_num(FRAME2))
        n_src = da.sizes[FRAME]
        pos = np.arange(n) * (n_src - 1) / (n - 1) if n > 1 else np.array([(n_src - 1) / 2])
        diag_new = np.apply_along_axis(lambda v: np.interp(pos, np.arange(n_src), v), -1, diag_src)
        eye = xr.DataArray(np.eye(n), dims=(FRAME, FRAME2))
        other = [d for d in da.dims if d not in (FRAME, FRAME2)]
        diag = xr.DataArray(
            diag_new,
            dims=[*other, FRAME],
            coords={d: da.coords[d] for d in other if d in da.coords},
        )
        out = (out * (1 - eye) + eye * diag).transpose(*da.dims)
    ax_r, ax_c = da.get_axis_num(FRAME), da.get_axis_num(FRAME2)
    if np.allclose(da.values, np.swapaxes(da.values, ax_r, ax_c)):
        vals = out.values  # same dim order as da
        out = out.copy(data=0.5 * (vals + np.swapaxes(vals, ax_r, ax_c)))
    out = out.assign_coords({FRAME: np.arange(n), FRAME2: np.arange(n)}).assign_attrs(da.attrs)
    return out.values if is_numpy else out
