"""Edits of temporal attention as declarative, composable, serialisable objects.

Apply with ``attnlab.edit(pipe, *edits)``. Every edit targets layers (``levels``, ``blocks``,
``names``), sampler steps (``steps`` indices and/or a timestep window ``t_min``..``t_max`` as
fractions of the training horizon T) and CFG halves (``cfg``: "both", "cond", "uncond").

Composition order inside each temporal layer (see :mod:`attnlab.processor`):

1. bias edits (:class:`TAR`, :class:`Transfer`) add to the logits, in the order given;
2. softmax;
3. replacement edits (:class:`Replace`) overwrite the probabilities, in the order given.

:class:`Synopsis` acts on the text conditioning instead (per-frame cross-attention context).

Every edit round-trips through JSON (``edit.to_json()`` / ``attnlab.edits.from_json``) with
all its arguments, and its spec is written into the provenance of every recorded run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .control import CallContext, Client, Controller, split_batch
from .selection import CFG_CHOICES, Layers, SelectionError, Steps, cfg_halves
from .sites import Site

REGISTRY: dict[str, type[Edit]] = {}


class EditError(ValueError):
    """Bad edit parameters (raised at construction or when the edit meets a model)."""


def register(cls: type[Edit]) -> type[Edit]:
    REGISTRY[cls.kind] = cls
    return cls


def from_spec(spec: dict[str, Any]) -> Edit:
    """Rebuild an edit from ``edit.spec()``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in REGISTRY:
        # edits defined in modules that build on this one register when imported: import them
        # (``import attnlab`` is lazy, so a fresh process may not have them yet)
        from . import synopsis  # noqa: F401
    if kind not in REGISTRY:
        raise EditError(f"unknown edit kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind].from_params(spec)


def from_json(text: str) -> Edit | list[Edit]:
    data = json.loads(text)
    return [from_spec(d) for d in data] if isinstance(data, list) else from_spec(data)


def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EditError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise EditError(f"{name} must be a positive finite number, got {value!r}")
    return v


class Edit(Client):
    """Base of all edits: targeting by layers, steps, timestep window and CFG half."""

    kind: ClassVar[str] = ""
    default_blocks: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        *,
        levels: Any = None,
        blocks: Any = "default",
        names: Any = None,
        steps: Any = None,
        t_min: float | None = None,
        t_max: float | None = None,
        cfg: str = "both",
    ):
        if blocks == "default":
            blocks = self.default_blocks
        self.layers = Layers.make(levels, blocks, names)
        self.steps = Steps.make(steps)
        for name, v in (("t_min", t_min), ("t_max", t_max)):
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise EditError(
                    f"{name} is a fraction of the training horizon T in [0, 1], got {v!r}"
                )
        if t_min is not None and t_max is not None and t_min > t_max:
            raise EditError(f"empty timestep window: t_min={t_min} > t_max={t_max}")
        self.t_min = None if t_min is None else float(t_min)
        self.t_max = None if t_max is None else float(t_max)
        if cfg not in CFG_CHOICES:
            raise EditError(f"cfg must be one of {', '.join(CFG_CHOICES)}; got {cfg!r}")
        self.cfg = cfg
        self._sites: set[str] = set()
        self._steps: set[int] | None = None

    # ---- serialisation -------------------------------------------------------------------
    def target_params(self) -> dict[str, Any]:
        d = self.layers.to_dict()
        return {
            **d,
            "steps": self.steps.to_json(),
            "t_min": self.t_min,
            "t_max": self.t_max,
            "cfg": self.cfg,
        }

    def params(self) -> dict[str, Any]:
        """The edit's own parameters (JSON-able); targeting is added by :meth:`spec`."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params(), **self.target_params()}

    def to_json(self) -> str:
        return json.dumps(self.spec())

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Edit:
        params = dict(params)
        steps = params.get("steps")
        if isinstance(steps, dict) and "slice" in steps:
            params["steps"] = slice(*steps["slice"])
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(json.dumps(self.spec(), sort_keys=True))

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.spec().items() if k != "kind" and v is not None
        )
        return f"{type(self).__name__}({args})"

    # ---- client protocol -----------------------------------------------------------------
    def bind(self, controller: Controller) -> None:
        self.controller = controller
        layers = self.layers
        if (
            self.default_blocks is not None
            and layers.blocks == tuple(self.default_blocks)
            and not any(s.block in self.default_blocks for s in controller.table)
        ):  # the default blocks are UNet blocks: a transformer's layers all count
            layers = Layers(layers.levels, None, layers.names)
        self._sites = {s.name for s in layers.resolve(controller.table)}

    def on_run_start(self, run) -> None:
        self._steps = self.steps.resolve(run.num_steps) if run.timesteps is not None else None
        self._run_halves = ["uncond", "cond"] if run.cfg else ["cond"]
        if not cfg_halves(self.cfg, self._run_halves):
            raise SelectionError(
                f"{self.kind}: cfg={self.cfg!r} but this run has no classifier-free guidance batch"
            )

    def on_steps_known(self, run) -> None:
        self._steps = self.steps.resolve(run.num_steps)

    def active(self, ctx: CallContext) -> bool:
        """Whether this edit acts during the current denoiser call."""
        steps = self._steps if self._steps is not None else self.steps.resolve(None)
        if steps is not None and ctx.step not in steps:
            return False
        if self.t_min is not None or self.t_max is not None:
            t = ctx.t_frac
            if t is None:
                raise EditError(f"{self.kind}: a timestep window needs the denoiser's timestep")
            if self.t_min is not None and t < self.t_min - 1e-9:
                return False
            if self.t_max is not None and t > self.t_max + 1e-9:
                return False
        return True

    def wants(self, site: Site, ctx: CallContext) -> bool:
        return (
            site.name in self._sites
            and bool(cfg_halves(self.cfg, ctx.halves()))  # a call may hold one CFG half only
            and self.active(ctx)
        )

    def _halves(self, ctx: CallContext) -> list[int] | None:
        """Batch halves to edit; None = all (no slicing needed)."""
        idx = cfg_halves(self.cfg, ctx.halves())
        return None if len(idx) == len(ctx.halves()) else idx

    def _apply(
        self,
        x: torch.Tensor,
        ctx: CallContext,
        site: Site,
        fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        halves = self._halves(ctx)
        if halves is None:
            return fn(x)
        out = x.clone()
        view = split_batch(out, ctx, site)
        for h in halves:
            view[h] = fn(view[h])
        return out


# ---------------------------------------------------------------------------------------
# Replacement probes (paper Sec. 3.2, Fig. 4)


@register
class Replace(Edit):
    """Replace the attention probabilities of the selected layers with a fixed N x N matrix.

    ``"identity"``: I_N, every frame attends only to itself (frames independent: more dynamic).
    ``"ones"``: the all-ones matrix J_N normalised so each row sums to 1, i.e. every entry 1/N
    (uniform attention over frames: full correlation, a quasi-static video).
    A matrix: any N x N array, finite and non-negative with positive row sums; its rows are
    normalised to sum to 1. Its N must equal the frame count of the run.
    """

    kind = "replace"
    stage = "replace"

    def __init__(
        self, matrix: str | np.ndarray | Sequence[Sequence[float]] = "identity", **target: Any
    ):
        super().__init__(**target)
        if isinstance(matrix, str):
            if matrix not in ("identity", "ones"):
                raise EditError(
                    f"Replace matrix must be 'identity', 'ones' or an N x N array; got {matrix!r}"
                )
            self.matrix: str | np.ndarray = matrix
        else:
            m = np.asarray(matrix, dtype=np.float64)
            if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
                raise EditError(f"Replace matrix must be square N x N, got shape {m.shape}")
            if not np.isfinite(m).all():
                raise EditError("Replace matrix has NaN or infinite entries")
            if (m < 0).any():
                raise EditError(
                    "Replace matrix has negative entries; attention probabilities are >= 0"
                )
            rows = m.sum(1)
            if (rows <= 0).any():
                raise EditError(
                    f"Replace matrix rows {np.flatnonzero(rows <= 0).tolist()} sum to 0; cannot normalise"
                )
            self.matrix = m / rows[:, None]
        self._cache: dict[tuple, torch.Tensor] = {}

    def params(self) -> dict[str, Any]:
        return {"matrix": self.matrix if isinstance(self.matrix, str) else self.matrix.tolist()}

    def target_matrix(self, frames: int) -> np.ndarray:
        if isinstance(self.matrix, str):
            return (
                np.eye(frames)
                if self.matrix == "identity"
                else np.full((frames, frames), 1.0 / frames)
            )
        if self.matrix.shape[0] != frames:
            raise EditError(
                f"Replace matrix is {self.matrix.shape[0]} x {self.matrix.shape[0]} but the run has {frames} frames"
            )
        return self.matrix

    def replace(self, site: Site, ctx: CallContext, probs: torch.Tensor) -> torch.Tensor:
        key = (ctx.frames, probs.device, probs.dtype)
        target = self._cache.get(key)
        if target is None:
            target = self._cache[key] = torch.as_tensor(
                self.target_matrix(ctx.frames), dtype=probs.dtype, device=probs.device
            )
        return self._apply(probs, ctx, site, lambda p: target.expand_as(p))


# ---------------------------------------------------------------------------------------
# Logit-bias edits: TAR (Sec. 3.3, Eq. 2-3) and reference transfer (Sec. 4.1)

MAX_MODES = ("row", "head", "global")
# the reference code's TAR window: first 14 of 25 DDIM steps (leading spacing, offset 1) = t >= 441
TAR_T_MIN = 0.441
_PRESET = re.compile(r"^(\d+)D(\d+(?:\.\d+)?)$")


def preset_sigma(name: str, full_resolution: int = 64) -> dict[int, float]:
    """Parse the paper code's preset names ("64D1", "64D1_32D8", ...) into {level: sigma}.

    ``<res>D<sigma>``: resolution ``res`` is the latent width at that level for a 320x512
    video (64, 32, 16, 8 = levels 0..3); ``full_resolution`` changes the width of level 0.
    """
    out: dict[int, float] = {}
    for part in name.split("_"):
        m = _PRESET.match(part)
        if m is None:
            raise EditError(
                f"bad TAR preset {name!r}: expected parts like '64D1' joined by '_' (e.g. '64D1_32D8')"
            )
        res, sigma = int(m.group(1)), float(m.group(2))
        level = math.log2(full_resolution / res) if res > 0 else -1
        if level < 0 or level != int(level):
            raise EditError(f"TAR preset {name!r}: resolution {res} is not {full_resolution}/2^k")
        out[int(level)] = sigma
    return out


PRESETS = ("64D1", "64D4", "64D8", "64D1_32D8", "64D1_32D1")


class _LogitBias(Edit):
    """``logits' = logits + scale * max(logits) * prior`` with a per-layer N x N prior."""

    stage = "bias"
    default_blocks = ("down", "mid", "up")  # the reference code never regularises transformer_in

    def __init__(self, *, max_mode: str = "row", scale: float = 1.0, **target: Any):
        super().__init__(**target)
        if max_mode not in MAX_MODES:
            raise EditError(f"max_mode must be one of {', '.join(MAX_MODES)}; got {max_mode!r}")
        self.max_mode = max_mode
        try:
            self.scale = float(scale)
        except (TypeError, ValueError):
            raise EditError(f"scale must be a number, got {scale!r}") from None
        if not math.isfinite(self.scale):
            raise EditError(f"scale must be finite, got {scale!r}")
        self._priors: dict[tuple, torch.Tensor] = {}

    def prior(self, site: Site, frames: int) -> np.ndarray:
        raise NotImplementedError

    def bias_params(self) -> dict[str, Any]:
        return {"max_mode": self.max_mode, "scale": self.scale}

    def bias(self, site: Site, ctx: CallContext, logits: torch.Tensor) -> torch.Tensor:
        key = (site.level, ctx.frames, logits.device, logits.dtype)
        dA = self._priors.get(key)
        if dA is None:
            dA = self._priors[key] = torch.as_tensor(
                self.prior(site, ctx.frames), dtype=logits.dtype, device=logits.device
            )
        return self._apply(
            logits, ctx, site, lambda x: regularise(x, dA, self.max_mode, self.scale)
        )


def regularise(
    logits: torch.Tensor, dA: torch.Tensor, max_mode: str = "row", scale: float = 1.0
) -> torch.Tensor:
    """Eq. 3 before the softmax: ``logits + scale * max(logits) * dA``.

    ``logits``: ``[..., heads, F, F]``. ``max_mode``: "row" (per query frame, as the paper's
    code), "head" (per head and position: one max per N x N map), or "global" (one max over
    the whole tensor: every row, position and head of this layer call).
    """
    if max_mode == "row":
        m = logits.amax(dim=-1, keepdim=True)
    elif max_mode == "head":
        m = logits.amax(dim=(-2, -1), keepdim=True)
    else:
        m = logits.amax()
    bias = (scale * m) * dA
    if bias.shape == logits.shape and bias.dtype == torch.result_type(logits, bias):
        return bias.add_(logits)  # == logits + bias (addition commutes), one allocation fewer
    return logits + bias


@register
class TAR(_LogitBias):
    """Temporal Attention Regularization (paper Eq. 2-3).

    ``dA[i, j] = exp(-0.5 ((j - i) / sigma)^2)`` per level, added as
    ``logits + scale * max(logits) * dA`` before the softmax. Defaults follow the paper's code:
    per-row max, both CFG halves, the down/mid/up temporal layers at the given levels (not
    ``transformer_in``), active while ``t >= 0.441 T`` (the code's first 14 of 25 DDIM steps;
    the window is on the timestep so it means the same for any scheduler, step count, and
    for bare denoiser calls as in real-video analysis). ``sigma``: a number (level 0), a
    ``{level: sigma}`` dict, or a preset name: ``TAR("64D1_32D8")``.
    """

    kind = "tar"

    def __init__(
        self,
        sigma: float | dict[int, float] | str = "64D1",
        *,
        t_min: float | None = TAR_T_MIN,
        max_mode: str = "row",
        scale: float = 1.0,
        **target: Any,
    ):
        self.preset = sigma if isinstance(sigma, str) else None
        if isinstance(sigma, str):
            sigma = preset_sigma(sigma)
        elif not isinstance(sigma, dict):
            sigma = {0: sigma}
        if not sigma:
            raise EditError("TAR needs at least one level with a sigma")
        self.sigma = {int(k): _positive(f"sigma at level {k}", v) for k, v in sigma.items()}
        if target.get("levels") is not None and sorted(
            Layers.make(target["levels"]).levels or ()
        ) != sorted(self.sigma):
            raise EditError(
                f"TAR levels come from sigma's keys {sorted(self.sigma)}; do not pass levels={target['levels']!r}"
            )
        target["levels"] = sorted(self.sigma)
        super().__init__(t_min=t_min, max_mode=max_mode, scale=scale, **target)

    def params(self) -> dict[str, Any]:
        sigma: Any = self.preset or {str(k): v for k, v in self.sigma.items()}
        return {"sigma": sigma, **self.bias_params()}

    def target_params(self) -> dict[str, Any]:
        d = super().target_params()
        d.pop("levels")  # implied by sigma
        return d

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Edit:
        params = dict(params)
        if isinstance(params.get("sigma"), dict):
            params["sigma"] = {int(k): v for k, v in params["sigma"].items()}
        return super().from_params(params)

    def prior(self, site: Site, frames: int) -> np.ndarray:
        from .metrics import gaussian_prior

        return gaussian_prior(frames, self.sigma[site.level])


@register
class Transfer(_LogitBias):
    """Reference-dynamics transfer (paper Sec. 4.1, Fig. 8): TAR with a reference video's
    inter-frame similarity matrix as ``dA`` instead of the Gaussian band.

    ``reference``: a video path (read with :func:`attnlab.video.read_video`), a sample clip
    name (``cup``, ``box``, ...; see ``attnlab datasets list``), frames
    (``[F, H, W, 3]`` uint8 or ``[F, 3, H, W]`` in [-1, 1]) or a precomputed F x F similarity
    matrix. The matrix (from ``similarity`` backend: "dreamsim", "stlpips", "pixel", ...) is
    resampled to the generated frame count and ``normalise``d: "minmax" (to [0, 1], the band's
    range), "max" (divide by the maximum) or "none". ``frames``: how many frames to take from a
    reference video (evenly over the clip). Similarity matrices are cached on disk.
    """

    kind = "transfer"

    def __init__(
        self,
        reference: str | Path | np.ndarray | torch.Tensor,
        *,
        similarity: str = "stlpips",
        normalise: str = "minmax",
        frames: int | None = 16,
        levels: Any = 0,
        t_min: float | None = TAR_T_MIN,
        max_mode: str = "row",
        scale: float = 1.0,
        similarity_kwargs: dict[str, Any] | None = None,
        **target: Any,
    ):
        if normalise not in ("minmax", "max", "none"):
            raise EditError(f"normalise must be 'minmax', 'max' or 'none'; got {normalise!r}")
        super().__init__(levels=levels, t_min=t_min, max_mode=max_mode, scale=scale, **target)
        self.similarity = similarity
        self.normalise = normalise
        self.frames = frames
        self.similarity_kwargs = dict(similarity_kwargs or {})
        self.reference_matrix: np.ndarray | None = None
        if isinstance(reference, (str, Path)):
            self.reference: str | None = str(reference)
            if not Path(reference).exists():
                from .datasets import list_samples

                names = [s.name for s in list_samples()]
                if str(reference) not in names:
                    raise EditError(
                        f"reference video {str(reference)!r} not found: not a file or frame "
                        f"folder, and not a sample clip ({', '.join(names)})"
                    )
        else:
            self.reference = None
            arr = (
                reference.detach().cpu().numpy()
                if torch.is_tensor(reference)
                else np.asarray(reference)
            )
            if arr.ndim == 2:
                if arr.shape[0] != arr.shape[1] or not np.isfinite(arr).all():
                    raise EditError(
                        f"a reference similarity matrix must be square and finite, got shape {arr.shape}"
                    )
                self.reference_matrix = arr.astype(np.float64)
            elif arr.ndim == 4:
                self.reference_matrix = self._similarity_of(arr)
            else:
                raise EditError(
                    f"reference must be a video path, frames [F,H,W,3]/[F,3,H,W] or an F x F matrix; got shape {arr.shape}"
                )

    def _similarity_of(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        from .similarity import similarity_matrix

        return similarity_matrix(frames, self.similarity, **self.similarity_kwargs).values

    def reference_similarity(self) -> np.ndarray:
        """The reference's F_ref x F_ref similarity matrix (computed once, cached on disk)."""
        if self.reference_matrix is None:
            from .video import read_video

            assert self.reference is not None
            if Path(self.reference).exists():
                video = read_video(self.reference, frames=self.frames)
            else:  # a sample clip name (checked in __init__), fetched on first use
                from .datasets import read_sample

                video = read_sample(self.reference, frames=self.frames)
            self.reference_matrix = self._similarity_of(video.frames)
        return self.reference_matrix

    def params(self) -> dict[str, Any]:
        ref: Any = (
            self.reference if self.reference is not None else self.reference_similarity().tolist()
        )
        return {
            "reference": ref,
            "similarity": self.similarity,
            "normalise": self.normalise,
            "frames": self.frames,
            "similarity_kwargs": self.similarity_kwargs,
            **self.bias_params(),
        }

    def prior(self, site: Site, frames: int) -> np.ndarray:
        from .similarity import resample_matrix

        sim = self.reference_similarity()
        dA = resample_matrix(sim, frames) if sim.shape[0] != frames else sim
        dA = np.asarray(dA, dtype=np.float64)
        if self.normalise == "minmax":
            lo, hi = dA.min(), dA.max()
            dA = (dA - lo) / (hi - lo) if hi > lo else np.ones_like(dA)
        elif self.normalise == "max":
            dA = dA / dA.max()
        return dA


def parse_edit(text: str) -> Edit:
    """Parse a command-line edit: ``KIND:ARG[@LEVELS]``.

    ``tar:64D1`` (a preset) or ``tar:1.5@0,1`` (sigma at levels), ``replace:identity@0``,
    ``replace:ones@0,1``, ``transfer:clip.mp4@0``, ``synopsis:a young boy|an old man``.
    """
    kind, _, rest = text.partition(":")
    arg, _, levels_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        levels = [int(v) for v in levels_text.split(",") if v] or None
    except ValueError:
        raise EditError(f"bad levels in edit {text!r}: expected '@0' or '@0,1'") from None
    if kind == "tar":
        if levels is None:
            return TAR(arg or "64D1")
        return TAR({lv: _positive("sigma", arg or 1) for lv in levels})
    if kind == "replace":
        return Replace(arg or "identity", levels=levels)
    if kind == "transfer":
        return Transfer(arg, levels=levels if levels is not None else 0)
    if kind == "synopsis":
        from .synopsis import Synopsis

        return Synopsis([s.strip() for s in arg.split("|") if s.strip()])
    raise EditError(f"unknown edit {text!r}: expected tar:, replace:, transfer: or synopsis:")
