"""Logit-bias edits: TAR (paper Sec. 3.3, Eq. 2-3) and reference-dynamics transfer (Sec. 4.1)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.core.protocol import CallContext, LogitPrior, Stage
from attnlab.core.selection import Layers
from attnlab.core.sites import Site
from attnlab.edits.base import Edit, EditError, _positive, register

MAX_MODES = ("row", "head", "global")
# the reference code's TAR window: first 14 of 25 DDIM steps (leading spacing, offset 1) = t >= 441
TAR_T_MIN = 0.441
#: TAR's compatibility modes: ``"vstar"``, the reference code's own rule (see :class:`TAR`)
COMPAT_MODES = ("vstar",)
#: VSTAR's ``until_time``: it regularises while the sampler's loop index is <= 13
VSTAR_UNTIL_STEP = 13
#: the latent height / width VSTAR's width rule assumes (40 x 64: 320 x 512 video)
VSTAR_ASPECT = 40.0 / 64.0
_PRESET = re.compile(r"^(\d+)D(\d+(?:\.\d+)?)$")


def _preset_parts(name: str) -> list[tuple[int, float]]:
    """``"64D1_32D8"`` -> ``[(64, 1.0), (32, 8.0)]``."""
    out = []
    for part in name.split("_"):
        m = _PRESET.match(part)
        if m is None:
            raise EditError(
                f"bad TAR preset {name!r}: expected parts like '64D1' joined by '_' (e.g. '64D1_32D8')"
            )
        out.append((int(m.group(1)), float(m.group(2))))
    return out


def preset_sigma(name: str, full_resolution: int = 64) -> dict[int, float]:
    """Parse the paper code's preset names ("64D1", "64D1_32D8", ...) into {level: sigma}.

    ``<res>D<sigma>``: resolution ``res`` is the latent width at that level for a 320x512
    video (64, 32, 16, 8 = levels 0..3); ``full_resolution`` changes the width of level 0.
    """
    out: dict[int, float] = {}
    for res, sigma in _preset_parts(name):
        level = math.log2(full_resolution / res) if res > 0 else -1
        if level < 0 or level != int(level):
            raise EditError(f"TAR preset {name!r}: resolution {res} is not {full_resolution}/2^k")
        out[int(level)] = sigma
    return out


def preset_widths(name: str) -> dict[int, float]:
    """Parse a preset name as VSTAR's code reads it: ``{width: sigma}`` (``"64D1_32D8"`` ->
    ``{64: 1.0, 32: 8.0}``, its ``regularize_res_list`` with ``diag_<width>``)."""
    out: dict[int, float] = {}
    for width, sigma in _preset_parts(name):
        if width <= 0:
            raise EditError(f"TAR preset {name!r}: width {width} must be positive")
        out[width] = sigma
    return out


def vstar_width(rows: int) -> int:
    """The "resolution" VSTAR's code gives a temporal layer from its row count alone.

    VSTAR (``utils/attention_utils.py``, ``process_sim``) takes the rows of one layer call,
    ``h_w = sim.shape[0] // heads`` (= videos per pass x h x w), and computes
    ``int(sqrt(h_w / (40 / 64)))``: the feature width *if* the latent were 40:64 and one video
    ran per pass. At 320 x 512 that is 64, 32, 16, 8 for levels 0..3; at other sizes it is not
    the width (a 16 x 40 latent: 32 at level 0, 16 at level 1).
    """
    return int(math.sqrt(rows / VSTAR_ASPECT))


PRESETS = ("64D1", "64D4", "64D8", "64D1_32D8", "64D1_32D1")


class LogitBias(Edit):
    """``logits' = logits + scale * max(logits) * prior`` with a per-layer N x N prior."""

    stage = Stage.BIAS
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

    def row_local(self, ctx: CallContext) -> bool:
        """Per-row and per-map maxima act on each map alone; a global max needs the whole
        tensor, and editing one CFG half needs the batch layout."""
        return self.max_mode != "global" and self.halves(ctx) is None

    def prior_at(self, site: Site, ctx: CallContext) -> np.ndarray:
        """``dA`` for ``site`` during the call ``ctx`` (by default :meth:`prior` of its frames)."""
        return self.prior(site, ctx.frames)

    def prior_key(self, site: Site, ctx: CallContext) -> tuple:
        """What :meth:`prior_at` depends on (the cache key of the ``dA`` tensors)."""
        return (site.level, ctx.frames)

    def logit_prior(self, site: Site, ctx: CallContext) -> LogitPrior:
        return LogitPrior(self.prior_at(site, ctx), self.max_mode, self.scale)

    def bias(self, site: Site, ctx: CallContext, logits: torch.Tensor) -> torch.Tensor:
        key = (*self.prior_key(site, ctx), logits.device, logits.dtype)
        dA = self._priors.get(key)
        if dA is None:
            dA = self._priors[key] = torch.as_tensor(
                self.prior_at(site, ctx), dtype=logits.dtype, device=logits.device
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
class TAR(LogitBias):
    """Temporal Attention Regularization (paper Eq. 2-3).

    ``dA[i, j] = exp(-0.5 ((j - i) / sigma)^2)`` per level, added as
    ``logits + scale * max(logits) * dA`` before the softmax. Defaults follow the paper's code:
    per-row max, both CFG halves, the down/mid/up temporal layers at the given levels (not
    ``transformer_in``), active while ``t >= 0.441 T`` (the code's first 14 of 25 DDIM steps;
    the window is on the timestep so it means the same for any scheduler, step count, and
    for bare denoiser calls as in real-video analysis). ``sigma``: a number (level 0), a
    ``{level: sigma}`` dict, or a preset name: ``TAR("64D1_32D8")``.

    ``dA`` is ``F x F`` for a run of ``F`` (latent) frames, the same for every head and spatial
    position; smaller ``sigma`` = stronger regularisation (more dynamic video).

    **VSTAR's own rule** (``compat="vstar"``): the reference code (boschresearch/VSTAR,
    ``utils/attention_utils.py``) names *widths*, not levels, and computes a layer's width from
    its row count as if the latent were 40 x 64 (:func:`vstar_width`:
    ``int(sqrt(h * w / (40 / 64)))``, one video per pass); and it regularises while the
    sampler's loop index is ``<= 13`` (``until_time``), whatever the step count. At 320 x 512
    with 25 DDIM steps both modes do the same; elsewhere they differ: a 16 x 40 latent (128 x
    320 video) has VSTAR widths 32, 16, 8, 4 at levels 0..3, so ``"64D1"`` regularises nothing
    and ``"64D1_32D8"`` puts sigma 8 on level 0 only; with 50 steps VSTAR acts on steps 0..13
    (``t >= 721`` on VideoCrafter2's schedule), the default on steps 0..27 (``t >= 441``). In
    this mode ``sigma``'s keys are widths, every down/mid/up temporal layer whose width is a
    key is regularised with that key's sigma, and there is no timestep window (``t_min`` is
    None; ``steps`` and ``t_max`` still narrow it).

    Args:
        sigma (``float | dict[int, float] | str``, default ``"64D1"``): the band width in
            frames, positive: a number (level 0 only; ``compat="vstar"``: width 64),
            ``{level: sigma}`` (``compat="vstar"``: ``{width: sigma}``), or a preset
            ``<res>D<sigma>`` joined by ``_`` (``res`` = latent width of the level for a
            320 x 512 video: 64, 32, 16, 8 = levels 0..3; ``compat="vstar"``: the width as
            :func:`vstar_width` computes it at any size), e.g. ``"64D1"``, ``"64D4"``,
            ``"64D8"``, ``"64D1_32D8"``, ``"64D1_32D1"`` (``attnlab.PRESETS``). The levels
            (widths) regularised are sigma's keys.
        t_min (``float | None``, default ``0.441``): act only while the timestep
            ``t >= t_min * T`` (``T``: the scheduler's training horizon); None: every step.
            With ``compat="vstar"``: always None (leave it out; another value raises).
        max_mode (``str``, default ``"row"``): the ``max(logits)`` of Eq. 3: ``"row"`` (per
            query frame, as the paper's code), ``"head"`` (one per ``F x F`` map: per head and
            position) or ``"global"`` (one over the layer call's whole tensor).
        scale (``float``, default 1.0): finite factor on the bias.
        compat (``str | None``, default None, keyword): None: attnlab's level semantics above;
            ``"vstar"``: VSTAR's width rule and step-index window.
        until_step (``int | None``, default None, keyword): ``compat="vstar"`` only: act while
            the step index (0 = the first, noisiest denoiser call of a run) is
            ``<= until_step``; None there means VSTAR's 13.
        levels: not to be passed (the levels are sigma's keys); if passed, it must equal them
            (``compat="vstar"``: not at all).
        blocks (``str | list[str] | None``, default ``("down", "mid", "up")``): blocks among
            ``"in"``, ``"down"``, ``"mid"``, ``"up"``, ``"transformer"``; None: all. On a model
            with none of the default blocks (a transformer) every layer of the levels counts.
        names (``str | list[str] | None``, default None): regexes searched in module paths.
        steps (default None): sampler-step indices (int, list, ``range``, ``slice``); None: all.
        t_max (``float | None``, default None): act only while ``t <= t_max * T``.
        cfg (``str``, default ``"both"``): the CFG half edited: ``"both"``, ``"cond"`` or
            ``"uncond"``.

    Raises:
        EditError: a bad preset name, a non-positive or non-numeric sigma, ``levels`` other
            than sigma's keys (any ``levels`` with ``compat="vstar"``), a ``compat`` other than
            None or ``"vstar"``, ``until_step`` without ``compat="vstar"`` or not an int >= 0,
            a ``t_min`` other than None / 0.441 with ``compat="vstar"``,
            a ``max_mode`` not in ``("row", "head", "global")``, a non-finite ``scale``,
            ``t_min``/``t_max`` outside [0, 1] or crossed, or a bad ``cfg``.

    Example::

        from attnlab import TAR
        with attnlab.edit(pipe, TAR("64D1")):                  # the paper's default
            video = pipe("a polar bear playing drums", num_frames=48).frames
        TAR({0: 1.0, 1: 8.0})                                  # the dA of TAR("64D1_32D8")
        TAR(2.0, t_min=None, cfg="cond", max_mode="head")      # level 0, every step, cond only
        TAR("64D1_32D8", compat="vstar")                       # VSTAR's widths and steps 0..13
        TAR("64D1").to_json()    # '{"kind": "tar", "sigma": "64D1", "max_mode": "row", ...}'
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
        # keyword arguments of **target, so that the signature of 0.1's public API stays as is
        compat: str | None = target.pop("compat", None)
        until_step: int | None = target.pop("until_step", None)
        if compat is not None and compat not in COMPAT_MODES:
            raise EditError(
                f"TAR compat must be None (attnlab's levels) or 'vstar' (VSTAR's widths and "
                f"step window); got {compat!r}"
            )
        self.compat = compat
        if compat is None:
            if until_step is not None:
                raise EditError(
                    "until_step is VSTAR's step-index window: pass compat='vstar' with it "
                    "(or select steps with steps=...)"
                )
        elif until_step is None:
            until_step = VSTAR_UNTIL_STEP
        elif isinstance(until_step, bool) or not isinstance(until_step, int) or until_step < 0:
            raise EditError(f"until_step must be an int >= 0, got {until_step!r}")
        self.until_step = until_step
        if compat == "vstar":
            if t_min is not None and t_min != TAR_T_MIN:
                raise EditError(
                    "TAR(compat='vstar') windows by the step index (until_step), not by the "
                    f"timestep: leave t_min out (or None); got t_min={t_min!r}"
                )
            t_min = None
        self.preset = sigma if isinstance(sigma, str) else None
        unit = "width" if compat == "vstar" else "level"
        if isinstance(sigma, str):
            sigma = preset_widths(sigma) if compat == "vstar" else preset_sigma(sigma)
        elif not isinstance(sigma, dict):
            sigma = {64 if compat == "vstar" else 0: sigma}
        if not sigma:
            raise EditError(f"TAR needs at least one {unit} with a sigma")
        for k in sigma:
            ok = isinstance(k, (int, np.integer, str)) and str(k).strip().isdigit()
            if not ok or (compat == "vstar" and int(k) <= 0):
                what = "a positive int" if compat == "vstar" else "an int >= 0"
                raise EditError(f"TAR sigma keys are {unit}s, {what}; got {k!r}")
        self.sigma = {int(k): _positive(f"sigma at {unit} {k}", v) for k, v in sigma.items()}
        if compat == "vstar":
            if target.get("levels") is not None:
                raise EditError(
                    "TAR(compat='vstar') picks layers by VSTAR's width (sigma's keys); "
                    f"do not pass levels={target['levels']!r}"
                )
            target["levels"] = None
        else:
            if target.get("levels") is not None and sorted(
                Layers.make(target["levels"]).levels or ()
            ) != sorted(self.sigma):
                raise EditError(
                    f"TAR levels come from sigma's keys {sorted(self.sigma)}; do not pass levels={target['levels']!r}"
                )
            target["levels"] = sorted(self.sigma)
        super().__init__(t_min=t_min, max_mode=max_mode, scale=scale, **target)
        self._widths_checked: set[tuple[int, int]] = set()

    def params(self) -> dict[str, Any]:
        sigma: Any = self.preset or {str(k): v for k, v in self.sigma.items()}
        compat = {"compat": self.compat, "until_step": self.until_step} if self.compat else {}
        return {"sigma": sigma, **compat, **self.bias_params()}

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

    # ---- VSTAR's rule ------------------------------------------------------------------------
    def width(self, site: Site, ctx: CallContext | None = None) -> int:
        """VSTAR's width of ``site`` (:func:`vstar_width` of its ``h * w``) for the latent of
        the call ``ctx``, else of the site table's latent size."""
        if ctx is not None:
            h, w = self.controller.table.level_size(site.level, ctx.latent)
        elif site.h is not None and site.w is not None:
            h, w = site.h, site.w
        else:
            raise EditError(
                f"{site.name}: VSTAR's width needs the latent size (build the site table with "
                "height and width)"
            )
        return vstar_width(h * w)

    def sigma_of(self, site: Site, ctx: CallContext | None = None) -> float | None:
        """The sigma ``site`` gets (None: not regularised there, by its level or width)."""
        key = self.width(site, ctx) if self.compat == "vstar" else site.level
        return self.sigma.get(key)

    def active(self, ctx: CallContext) -> bool:
        if self.compat == "vstar" and ctx.step > (self.until_step or 0):
            return False
        return super().active(ctx)

    def on_call(self, ctx: CallContext) -> None:
        super().on_call(ctx)
        if self.compat != "vstar" or ctx.latent in self._widths_checked:
            return
        # VSTAR's widths are the layers' sizes as if the latent were 40 x 64: at another size
        # (the organisms' 8 x 8 latent: 10, 5, 2, 1) sigma's widths may name no layer at all
        widths = sorted(
            {self.width(s, ctx) for s in self.controller.table if s.name in self._sites}
        )
        if not any(w in self.sigma for w in widths):
            # VSTAR's own code does nothing there too (the mode reproduces it): say so once
            warnings.warn(
                f"TAR(compat='vstar') regularises VSTAR widths {sorted(self.sigma)}, and at this "
                f"call's latent {ctx.latent[0]} x {ctx.latent[1]} the selected layers have "
                f"widths {widths}: no layer is regularised, as in VSTAR's code at this size. "
                "Name levels instead (TAR without compat), or generate at VSTAR's 320 x 512",
                stacklevel=2,
            )
        self._widths_checked.add(ctx.latent)

    def wants(self, site: Site, ctx: CallContext) -> bool:
        if not super().wants(site, ctx):
            return False
        return self.compat is None or self.sigma_of(site, ctx) is not None

    def prior_key(self, site: Site, ctx: CallContext) -> tuple:
        return (self.sigma_of(site, ctx), ctx.frames)

    def prior_at(self, site: Site, ctx: CallContext) -> np.ndarray:
        from attnlab.data.metrics import gaussian_prior

        sigma = self.sigma_of(site, ctx)
        if sigma is None:
            raise EditError(f"TAR does not regularise {site.name} in this call")
        return gaussian_prior(ctx.frames, sigma)

    def prior(self, site: Site, frames: int) -> np.ndarray:
        from attnlab.data.metrics import gaussian_prior

        sigma = self.sigma_of(site)
        if sigma is None:
            raise EditError(f"TAR does not regularise {site.name}")
        return gaussian_prior(frames, sigma)


@register
class Transfer(LogitBias):
    """Reference-dynamics transfer (paper Sec. 4.1, Fig. 8): TAR with a reference video's
    inter-frame similarity matrix as ``dA`` instead of the Gaussian band.

    ``reference``: a video path (read with :func:`attnlab.data.video.read_video`), a sample clip
    name (``cup``, ``box``, ...; see ``attnlab datasets list``), a world clip
    (``"world:<caption>"`` or ``"world:<seed>"``, :func:`attnlab.data.world.world_video`), frames
    (``[F, H, W, 3]`` uint8 or ``[F, 3, H, W]`` in [-1, 1]) or a precomputed F x F similarity
    matrix. The matrix (from ``similarity`` backend: "dreamsim", "stlpips", "pixel", ...) is
    resampled to the generated frame count and ``normalise``d: "minmax" (to [0, 1], the band's
    range), "max" (divide by the maximum) or "none". ``frames``: how many frames to take from a
    reference video (consecutive frames from its first: ``read_video(reference, frames=frames)``
    without ``fps``). Similarity matrices are cached on disk.

    The bias is ``logits + scale * max(logits) * dA`` with ``dA`` the ``F x F`` (``F``: the
    run's latent frames) resampled, normalised reference matrix, the same for every head and
    position. A reference given by name or path is checked at construction and read (and its
    similarity computed) on first use; the spec records the reference string, or the
    similarity matrix for array references.

    Args:
        reference (``str | Path | np.ndarray | torch.Tensor``): a video file or frame folder,
            a sample clip name, ``"world:<caption>"`` / ``"world:<seed>"``, frames
            ``[F, H, W, 3]`` uint8 or ``[F, 3, H, W]`` in [-1, 1], or a square, finite
            ``F_ref x F_ref`` similarity matrix.
        similarity (``str``, default ``"stlpips"``): similarity backend for video and frame
            references: ``"stlpips"``, ``"dreamsim"`` (local weights) or ``"pixel"`` (see
            ``attnlab.data.similarity.available_backends()``).
        normalise (``str``, default ``"minmax"``): ``"minmax"``, ``"max"`` or ``"none"``.
        frames (``int | None``, default 16): frames read from a reference video or sample
            clip, consecutive from its first frame (a shorter clip raises ``VideoError`` on
            first use); None: every frame (a world clip: 16).
        levels (default 0): resolution levels edited (int or list of ints).
        t_min (``float | None``, default ``0.441``): act only while ``t >= t_min * T``; None:
            every step.
        max_mode (``str``, default ``"row"``): ``"row"``, ``"head"`` or ``"global"``, as
            :class:`TAR`.
        scale (``float``, default 1.0): finite factor on the bias.
        similarity_kwargs (``dict | None``, default None): settings passed to the backend.
        **target: the other targeting of every edit: ``blocks`` (default ``("down", "mid",
            "up")``), ``names``, ``steps``, ``t_max``, ``cfg`` (default ``"both"``), as
            :class:`TAR`.

    Raises:
        EditError: a ``normalise`` not in ``("minmax", "max", "none")``, a reference that is
            no file, frame folder, sample clip or valid world clip, an array that is neither
            ``[F, H, W, 3]`` / ``[F, 3, H, W]`` frames nor a square finite matrix, or bad
            targeting (``max_mode``, ``scale``, ``t_min``/``t_max``, ``cfg``).

    Example::

        from attnlab import Transfer
        with attnlab.edit(pipe, Transfer("reference.mp4", similarity="stlpips")):   # Fig. 8
            video = pipe("a cup of coffee", num_frames=16).frames
        Transfer("cup", levels=[0, 1])                # a sample clip, two levels
        sim = np.exp(-np.abs(np.subtract.outer(np.arange(16), np.arange(16))) / 4)
        Transfer(sim, normalise="none")               # a precomputed 16 x 16 matrix
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
            from attnlab.data.world import is_world_spec, world_video

            if is_world_spec(self.reference):
                try:
                    world_video(self.reference, frames=1, size=8)
                except ValueError as e:
                    raise EditError(f"reference {self.reference!r}: {e}") from None
            elif not Path(reference).exists():
                from attnlab.data.datasets import list_samples

                names = [s.name for s in list_samples()]
                if str(reference) not in names:
                    raise EditError(
                        f"reference video {str(reference)!r} not found: not a file or frame "
                        f"folder, not a sample clip ({', '.join(names)}), and not a world clip "
                        "('world:<caption>' or 'world:<seed>')"
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
            if normalise == "max":  # known now: refuse what 'max' cannot scale, before any run
                self.prior(None, self.reference_matrix.shape[0])  # type: ignore[arg-type]

    def _similarity_of(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        from attnlab.data.similarity import similarity_matrix

        return similarity_matrix(frames, self.similarity, **self.similarity_kwargs).values

    def reference_similarity(self) -> np.ndarray:
        """The reference's F_ref x F_ref similarity matrix (computed once, cached on disk)."""
        if self.reference_matrix is None:
            from attnlab.data.video import read_video

            assert self.reference is not None
            from attnlab.data.world import is_world_spec, world_video

            if is_world_spec(self.reference):
                video = world_video(self.reference, frames=self.frames or 16)
            elif Path(self.reference).exists():
                video = read_video(self.reference, frames=self.frames)
            else:  # a sample clip name (checked in __init__), fetched on first use
                from attnlab.data.datasets import read_sample

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
        from attnlab.data.similarity import resample_matrix

        sim = self.reference_similarity()
        dA = resample_matrix(sim, frames) if sim.shape[0] != frames else sim
        dA = np.asarray(dA, dtype=np.float64)
        if self.normalise == "minmax":
            lo, hi = dA.min(), dA.max()
            dA = (dA - lo) / (hi - lo) if hi > lo else np.ones_like(dA)
        elif self.normalise == "max":
            top = float(dA.max())
            if not top > 0:  # (NaN too)
                raise EditError(
                    f"Transfer(normalise='max'): the reference similarity's largest entry is "
                    f"{top}; 'max' needs a positive one (normalise='minmax' takes signed or "
                    "zero similarities)"
                )
            dA = dA / top
        if not np.isfinite(dA).all():
            raise EditError("Transfer: the reference similarity has NaN or infinite entries")
        return dA
