"""Positional-encoding edits for length extrapolation: RIFLEx, RoPE scaling (PI, NTK, YaRN) on
the temporal axis, and the frame positions of sinusoidal tables.

These edits change a model's frame positional encoding, never its attention: a RoPE edit
retunes the temporal frequencies that the model's own rotary computation uses (its frequency
buffer, its cos/sin table or the cos/sin it hands to the attention), a table edit rebuilds the
table the model adds to its hidden states. The spatial axes of a 3D RoPE are never touched.
They are :class:`~attnlab.edits.base.Edit` objects like TAR: declarative, serialisable
(``spec`` / ``attnlab.edits.from_spec``), applied with ``attnlab.edit(pipe, ...)`` and undone
exactly when the block exits.

How a family's encoding is found and changed is data of the family: a
:class:`PositionHandler` registered under the family's name (attnlab's own handlers live in
:mod:`attnlab.models.positions` and are registered with the families). This module holds the
edits and their arithmetic on frequency vectors:

* :func:`riflex_frequencies` - RIFLEx (Zhao et al., ICML 2025, arXiv 2502.15894): the
  intrinsic frequency ``k`` set to ``0.9 * 2 pi / L`` when the length ``L`` exceeds its period;
* :func:`scaled_frequencies` - position interpolation ("pi", Chen et al. 2023), NTK-aware
  base scaling ("ntk") and YaRN's per-band interpolation ("yarn", Peng et al. 2023; without
  its attention temperature, which scales all logits and is not a positional encoding).

Frequencies are in radians per *token frame* (a latent frame, or ``p_t`` of them for
transformers with a temporal patch), one row per head (one row when the heads share them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from attnlab.core.protocol import CallContext, Stage
from attnlab.core.sites import Site, family_of, sites
from attnlab.edits.base import Edit, EditError, _positive, register

if TYPE_CHECKING:
    from attnlab.core.control import Controller

#: RIFLEx's margin: the lowered frequency's period is the length divided by this
RIFLEX_MARGIN = 0.9
SCALE_METHODS = ("pi", "ntk", "yarn")
TABLE_MODES = ("extend", "interpolate", "repeat")
#: YaRN's band limits (LLaMA defaults): bands with fewer than ``alpha`` periods in the training
#: length are interpolated (PI), bands with more than ``beta`` are kept, a ramp between
YARN_ALPHA = 1.0
YARN_BETA = 32.0

#: (frequencies [heads, n] in rad per token frame, token frames of this call) -> the new
#: frequencies, or None to leave them as they are
Retune = Callable[[np.ndarray, int], "np.ndarray | None"]


@dataclass
class TemporalPE:
    """One distinct frame positional encoding of a model, as a report and the edits read it.

    ``kind``: "rope" (1D RoPE over frames), "rope3d" (the temporal share of a 3D RoPE),
    "sinusoidal" (an absolute table), "learned" or "none". ``freqs``: ``[heads, n]`` temporal
    frequencies in radians per token frame (one row when the heads share them; None without
    frequencies). ``base``: the RoPE / table base (None for learned frequencies).
    ``frame_step``: latent frames per token frame (a temporal patch). ``table_len``: positions of
    a table. ``dim``: channels it encodes (per head for RoPE). ``spatial``: axis -> frequencies
    of the spatial axes of a split 3D RoPE (listed, never edited). ``source``: where it lives.
    ``layers``: attention layers sharing it. ``note``: what else to know.
    """

    kind: str
    source: str
    freqs: np.ndarray | None = None
    base: float | None = None
    frame_step: int = 1
    table_len: int | None = None
    dim: int | None = None
    layers: int = 1
    spatial: dict[str, np.ndarray] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class PositionHandler:
    """How attnlab reads and changes one family's frame positional encoding.

    ``describe(model)`` lists its :class:`TemporalPE` (distinct ones only);
    ``train_frames(config)``: the training length in video frames (None: unknown);
    ``temporal_compression(model)``: video frames per latent frame;
    ``install_rope(model, retune)``: makes the model's own RoPE computation use the retuned
    temporal frequencies and returns the function that undoes it (None: no RoPE to retune);
    ``install_table(model, mode, frames)``: rebuilds the model's sinusoidal tables for
    ``frames`` positions and returns the undo (None: no table).
    """

    describe: Callable[[Any], list[TemporalPE]]
    train_frames: Callable[[Any], int | None] = lambda config: None
    temporal_compression: Callable[[Any], int] = lambda model: 1
    install_rope: Callable[[Any, Retune], Callable[[], None]] | None = None
    install_table: Callable[[Any, str, int], Callable[[], None]] | None = None


_HANDLERS: dict[str, PositionHandler] = {}


def register_position_handler(family: str, handler: PositionHandler) -> None:
    """Register how the PE of the family named ``family`` is read and edited."""
    _HANDLERS[family] = handler


def position_handler(model: Any) -> PositionHandler:
    """The :class:`PositionHandler` of a denoiser's family (a clear error when none)."""
    fam = family_of(model)  # loads the registered families (and with them their handlers)
    handler = _HANDLERS.get(fam.name)
    if handler is None:
        raise EditError(
            f"attnlab does not know how the frame positional encoding of the {fam.name!r} family "
            f"is computed; families with one: {', '.join(sorted(_HANDLERS)) or 'none'}"
        )
    return handler


def latent_frames(video_frames: int, compression: int) -> int:
    """Latent frames of ``video_frames`` through a VAE compressing time ``compression``-fold
    (causal video VAEs keep the first frame alone: ``(n - 1) // c + 1``)."""
    return (int(video_frames) - 1) // int(compression) + 1 if compression > 1 else int(video_frames)


def token_frames(video_frames: int, compression: int, frame_step: int) -> int:
    """Token frames (positions of the temporal RoPE) of ``video_frames``."""
    return -(-latent_frames(video_frames, compression) // int(frame_step))


# ---- the arithmetic --------------------------------------------------------------------------
def frequency_ranks(row: np.ndarray) -> np.ndarray:
    """``ranks[i]``: the 1-based rank of frequency ``i`` by decreasing magnitude (RIFLEx's ``j``:
    1 is the fastest, period ``2 pi / |w|`` growing with the rank; ties keep their order)."""
    order = np.argsort(-np.abs(row), kind="stable")
    ranks = np.empty(len(row), dtype=int)
    ranks[order] = np.arange(1, len(row) + 1)
    return ranks


def periods(row: np.ndarray) -> np.ndarray:
    """``2 pi / |w|`` (inf for a zero frequency)."""
    with np.errstate(divide="ignore"):
        return 2 * math.pi / np.abs(np.asarray(row, dtype=np.float64))


def intrinsic_rank(row: np.ndarray, train: float) -> int | None:
    """RIFLEx's intrinsic frequency of one row: the rank of the frequency whose period is the
    nearest at or above the training length ``train`` (token frames); None when no period is."""
    p = periods(row)
    ok = np.isfinite(p) & (p >= train)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmin(p[ok])])
    return int(frequency_ranks(row)[i])


def riflex_frequencies(
    freqs: np.ndarray, length: int, k: int | None = None, train: float | None = None
) -> np.ndarray | None:
    """RIFLEx on ``[heads, n]`` frequencies for a video of ``length`` token frames: in each row,
    the frequency of rank ``k`` (or the intrinsic one for the training length ``train``) becomes
    ``0.9 * 2 pi / length`` (sign kept) when ``length`` exceeds its period; None when no row
    changes (a length within the period is the untouched model)."""
    out = np.array(freqs, dtype=np.float64, copy=True)
    changed = False
    for row in out:
        rank = k if k is not None else intrinsic_rank(row, float(train))  # type: ignore[arg-type]
        if rank is None or rank > len(row):
            continue
        i = int(np.flatnonzero(frequency_ranks(row) == rank)[0])
        if length > periods(row)[i]:
            row[i] = math.copysign(RIFLEX_MARGIN * 2 * math.pi / length, row[i])
            changed = True
    return out if changed else None


def yarn_keep(
    row: np.ndarray, train: float, alpha: float = YARN_ALPHA, beta: float = YARN_BETA
) -> np.ndarray:
    """YaRN's share kept per frequency of one row (1: kept, 0: interpolated), as its reference
    code computes it (jquesnelle/yarn ``find_correction_range`` and ``linear_ramp_mask``; HF
    transformers' ``_compute_yarn_parameters`` the same): for a geometric row (a RoPE, ``w_i =
    w_0 rho^i``) linear in the band index ``i``, from 1 at ``floor(i)`` where a band has
    ``beta`` periods in ``train`` to 0 at ``ceil(i)`` where it has ``alpha``. Frequencies that
    are not a geometric series (learned) ramp linearly in their number of periods ``q = train /
    period`` from ``alpha`` to ``beta`` (the paper's Eq. 18)."""
    a = np.abs(np.asarray(row, dtype=np.float64))
    order = np.argsort(-a, kind="stable")  # fastest first: the band index of the code
    s = a[order]
    ratios = s[1:] / s[:-1] if len(s) >= 2 and s[-1] > 0 else np.array([])
    if len(ratios) and ratios[0] < 1 and np.allclose(ratios, ratios[0], rtol=1e-4, atol=0):
        step = -math.log(ratios[0])  # 2 ln(base) / dim

        def band(rotations: float) -> float:  # the index with `rotations` periods in train
            return math.log(train * s[0] / (2 * math.pi * rotations)) / step

        low = max(math.floor(band(beta)), 0)
        high: float = min(math.ceil(band(alpha)), 2 * len(s) - 1)
        if low == high:
            high += 0.001  # as the code does: a step, not a division by zero
        keep = 1.0 - np.clip((np.arange(len(s)) - low) / (high - low), 0.0, 1.0)
        out = np.empty_like(keep)
        out[order] = keep
        return out
    q = train * a / (2 * math.pi)
    return np.clip((q - alpha) / (beta - alpha), 0.0, 1.0)


def scaled_frequencies(
    freqs: np.ndarray,
    method: str,
    factor: float,
    train: float | None = None,
    alpha: float = YARN_ALPHA,
    beta: float = YARN_BETA,
) -> np.ndarray | None:
    """``[heads, n]`` frequencies scaled for ``factor`` times the positions (None: factor 1).

    * "pi": every frequency divided by ``factor`` (positions interpolated);
    * "ntk": NTK-aware base scaling, ``base * factor^(d / (d - 2))``: frequency ``w`` becomes
      ``w * factor^-r`` with ``r = log(w_max / w) / log(w_max / w_min)`` within its row (the
      fastest kept, the slowest divided by ``factor``; exactly the base change for a geometric
      RoPE, and defined the same way for learned frequencies; a row of one frequency is kept);
    * "yarn": NTK-by-parts: ``w' = w ((1 - gamma) / factor + gamma)``, ``gamma`` 1 (kept) for
      bands with at least ``beta`` periods in the training length ``train`` (token frames,
      required), 0 (interpolated) for those with at most ``alpha``, a ramp between:
      :func:`yarn_keep`.
    """
    if factor == 1:
        return None
    w = np.array(freqs, dtype=np.float64, copy=True)
    a = np.abs(w)
    if method == "pi":
        return w / factor
    if method == "ntk":
        out = w.copy()
        for r, row in enumerate(a):
            nz = row > 0
            if nz.sum() < 2 or row[nz].max() == row[nz].min():
                continue
            hi, lo = row[nz].max(), row[nz].min()
            expo = np.log(hi / row[nz]) / math.log(hi / lo)
            out[r, nz] = w[r, nz] * float(factor) ** (-expo)
        return out
    if method == "yarn":
        if train is None:
            raise EditError("RopeScale('yarn') needs the training length: pass train_frames")
        gamma = np.stack([yarn_keep(row, float(train), alpha, beta) for row in a])
        return w * ((1.0 - gamma) / factor + gamma)
    raise EditError(f"RopeScale method must be one of {', '.join(SCALE_METHODS)}; got {method!r}")


# ---- the edits ---------------------------------------------------------------------------------
def _frames_arg(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EditError(f"{name} must be a positive whole number of video frames, got {value!r}")
    return int(value)


class PositionEdit(Edit):
    """Base of the positional-encoding edits: they change the model's frame positional
    encoding for the whole model (all layers, both CFG halves: the encoding is computed once
    per denoiser call), optionally only at some sampler steps (``steps``, ``t_min``,
    ``t_max``). They act on no attention map (``wants`` is False)."""

    stage = Stage.CONTEXT

    def __init__(
        self,
        *,
        steps: Any = None,
        t_min: float | None = None,
        t_max: float | None = None,
        train_frames: int | None = None,
    ):
        super().__init__(steps=steps, t_min=t_min, t_max=t_max, cfg="both")
        self.train_frames = _frames_arg("train_frames", train_frames)
        self._undo: Callable[[], None] | None = None

    def target_params(self) -> dict[str, Any]:
        return {"steps": self.steps.to_json(), "t_min": self.t_min, "t_max": self.t_max}

    def bind(self, controller: Controller) -> None:
        # one positional-encoding edit per model: two would compose differently by family
        # (a swapped table keeps only the last, a rewritten output applies both in turn)
        other = next((c for c in controller.clients if isinstance(c, PositionEdit)), None)
        if other is not None:
            raise EditError(
                f"{type(self).__name__}: {type(controller.model).__name__} has a positional-"
                f"encoding edit already ({other!r}); one at a time, a frame encoding "
                "changed once"
            )
        super().bind(controller)

    def wants(self, site: Site, ctx: CallContext) -> bool:
        return False  # acts on the positional encoding, not on attention maps

    def _on(self) -> bool:
        ctx = getattr(self, "controller", None) and self.controller.ctx
        return ctx is None or self.active(ctx)

    def release(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    # ---- the RoPE edits' common part ----------------------------------------------------
    def _rope(self, controller: Controller) -> tuple[PositionHandler, list[TemporalPE], int]:
        handler = position_handler(controller.model)
        pes = handler.describe(controller.model)
        ropes = [p for p in pes if p.freqs is not None and p.kind.startswith("rope")]
        if handler.install_rope is None or not ropes:
            kinds = ", ".join(sorted({p.kind for p in pes})) or "none"
            hint = " (use FramePositions for a sinusoidal table)" if "sinusoidal" in kinds else ""
            raise EditError(
                f"{type(self).__name__} retunes a rotary (RoPE) frame encoding; "
                f"{type(controller.model).__name__}'s frame positional encoding is {kinds}{hint}"
            )
        return handler, ropes, handler.temporal_compression(controller.pipe or controller.model)

    def _train_tokens(self, handler: PositionHandler, model: Any, c: int, step: int) -> int | None:
        train = self.train_frames or handler.train_frames(getattr(model, "config", {}))
        return None if train is None else token_frames(train, c, step)


@register
class RIFLEx(PositionEdit):
    """RIFLEx (arXiv 2502.15894): lower the intrinsic temporal RoPE frequency so that a video
    of ``L`` frames stays within one of its periods.

    In every temporal RoPE of the model, the frequency of rank ``k`` (1 = the fastest; ranks as
    in :func:`attnlab.pe_report`'s ``k`` column, RIFLEx's ``j``) becomes ``0.9 * 2 pi / L`` when
    ``L`` exceeds its period (``L`` within it: nothing changes, the untouched model). Without
    ``k``, the intrinsic frequency of the report: the one whose period is the nearest at or above
    the training length (``train_frames``, video frames; default: the family's). ``frames``
    (video frames) fixes ``L``; None takes each denoiser call's own frame count.

    Applied through the model's own RoPE computation (its frequency buffer, cos/sin table or the
    cos/sin it passes to the attention): only the temporal columns of that frequency change.

    Args:
        k (``int | None``): rank of the frequency to lower; None: the intrinsic one.
        frames (``int | None``): the video length ``L`` in video frames; None: each call's.
        train_frames (``int | None``): training length in video frames (for ``k=None``);
            None: the family's default (an error for families without one).
        steps, t_min, t_max: sampler steps it acts at (default: all).

    Example::

        with attnlab.edit(pipe, attnlab.RIFLEx()):              # k from the report
            video = pipe(prompt, num_frames=257).frames
        attnlab.RIFLEx(k=6, frames=257)                          # Wan: the authors' k
    """

    kind = "riflex"

    def __init__(
        self,
        k: int | None = None,
        frames: int | None = None,
        *,
        train_frames: int | None = None,
        steps: Any = None,
        t_min: float | None = None,
        t_max: float | None = None,
    ):
        super().__init__(steps=steps, t_min=t_min, t_max=t_max, train_frames=train_frames)
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise EditError(f"k is the 1-based rank of a temporal frequency, got {k!r}")
        self.k = None if k is None else int(k)
        self.frames = _frames_arg("frames", frames)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "frames": self.frames, "train_frames": self.train_frames}

    def bind(self, controller: Controller) -> None:
        super().bind(controller)
        handler, ropes, c = self._rope(controller)
        model = controller.model
        step = ropes[0].frame_step
        train = self._train_tokens(handler, model, c, step)
        if self.k is None and train is None:
            raise EditError(
                f"RIFLEx without k needs the training length of {type(model).__name__}: pass "
                "train_frames (video frames) or k"
            )
        if self.k is not None:
            n = min(p.freqs.shape[-1] for p in ropes)  # type: ignore[union-attr]
            if self.k > n:
                raise EditError(f"k={self.k}: the temporal RoPE has {n} frequencies (k 1..{n})")
        fixed = None if self.frames is None else token_frames(self.frames, c, step)

        def retune(freqs: np.ndarray, length: int) -> np.ndarray | None:
            if not self._on():
                return None
            return riflex_frequencies(freqs, fixed or length, self.k, train)

        assert handler.install_rope is not None
        self._undo = handler.install_rope(model, retune)


@register
class RopeScale(PositionEdit):
    """Scale the temporal RoPE for ``factor`` times the positions: ``"pi"`` (position
    interpolation), ``"ntk"`` (NTK-aware base scaling) or ``"yarn"`` (NTK-by-parts, its
    frequency part; see :func:`scaled_frequencies`). The spatial axes are untouched; factor 1 is
    the untouched model.

    Args:
        method (``str``): ``"pi"``, ``"ntk"`` or ``"yarn"``.
        factor (``float``): the length ratio (e.g. 4 for 16 -> 64 frames), > 0.
        train_frames (``int | None``): training length in video frames (YaRN's bands); None:
            the family's default.
        steps, t_min, t_max: sampler steps it acts at (default: all).

    Example::

        with attnlab.edit(pipe, attnlab.RopeScale("ntk", 4)):
            video = pipe(prompt, num_frames=64).frames
    """

    kind = "rope_scale"

    def __init__(
        self,
        method: str = "pi",
        factor: float = 1.0,
        *,
        train_frames: int | None = None,
        steps: Any = None,
        t_min: float | None = None,
        t_max: float | None = None,
    ):
        super().__init__(steps=steps, t_min=t_min, t_max=t_max, train_frames=train_frames)
        if method not in SCALE_METHODS:
            raise EditError(
                f"RopeScale method must be one of {', '.join(SCALE_METHODS)}; got {method!r}"
            )
        self.method = method
        self.factor = _positive("factor", factor)

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "factor": self.factor, "train_frames": self.train_frames}

    def bind(self, controller: Controller) -> None:
        super().bind(controller)
        handler, ropes, c = self._rope(controller)
        train = self._train_tokens(handler, controller.model, c, ropes[0].frame_step)
        if self.method == "yarn" and train is None and self.factor != 1:
            raise EditError(
                f"RopeScale('yarn') needs the training length of "
                f"{type(controller.model).__name__}: pass train_frames (video frames)"
            )

        def retune(freqs: np.ndarray, length: int) -> np.ndarray | None:
            if not self._on():
                return None
            return scaled_frequencies(freqs, self.method, self.factor, train)

        assert handler.install_rope is not None
        self._undo = handler.install_rope(controller.model, retune)


@register
class FramePositions(PositionEdit):
    """Give a sinusoidal frame table (AnimateDiff, organism-sinusoidal) ``frames`` positions:

    * ``"extend"``: the stored rows kept, new positions appended from the same formula (naive
      extrapolation; :func:`attnlab.models.organisms.extend_frame_positions`);
    * ``"interpolate"``: the trained rows stretched over ``frames`` positions (position
      interpolation; :func:`~attnlab.models.organisms.interpolate_frame_positions`);
    * ``"repeat"``: the trained rows tiled, row ``i`` = stored row ``i mod L``.

    The trained rows are the first ``L`` = training length (16) of the table: AnimateDiff's
    adapters store ``motion_max_seq_length`` = 32 rows but were trained on 16 frames. ``frames``
    within them (within the stored table for ``"extend"``) changes nothing (the untouched
    model). The table is restored exactly (the stored tensors and the config) when the block
    exits.

    Example::

        with attnlab.edit(pipe, attnlab.FramePositions("interpolate", 64)):
            video = pipe(prompt, num_frames=64).frames
    """

    kind = "frame_positions"

    def __init__(self, mode: str = "extend", frames: int = 16):
        super().__init__()
        if mode not in TABLE_MODES:
            raise EditError(
                f"FramePositions mode must be one of {', '.join(TABLE_MODES)}; got {mode!r}"
            )
        n = _frames_arg("frames", frames)
        assert n is not None
        self.mode, self.frames = mode, n

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "frames": self.frames}

    def target_params(self) -> dict[str, Any]:
        return {}

    def bind(self, controller: Controller) -> None:
        super().bind(controller)
        model = controller.model
        handler = position_handler(model)
        pes = handler.describe(model)
        if handler.install_table is None or not any(p.kind == "sinusoidal" for p in pes):
            kinds = ", ".join(sorted({p.kind for p in pes})) or "none"
            hint = " (use RIFLEx or RopeScale for RoPE)" if "rope" in kinds else ""
            raise EditError(
                f"FramePositions rebuilds a sinusoidal frame table; {type(model).__name__}'s "
                f"frame positional encoding is {kinds}{hint}"
            )
        undo_table = handler.install_table(model, self.mode, self.frames)
        # the controller checks each call's frames against the table it built on attaching
        old_table = controller.table
        controller.table = sites(model)

        def undo() -> None:
            try:
                undo_table()
            finally:
                controller.table = old_table

        self._undo = undo


#: the positional-encoding edits
POSITION_EDITS = (RIFLEx, RopeScale, FramePositions)
