"""The frame positional encodings of every family, read from the models themselves, and the
hooks through which the positional-encoding edits (:mod:`attnlab.edits.positions`) change them.

:func:`pe_report` tabulates each distinct temporal encoding of a model, one row per frequency:
its period in latent and video frames and RIFLEx's intrinsic frequency for the training length.
The frequencies are read from the model's own modules, not re-typed. This module holds the
UNets' and organisms' readers, the handler table of every family and the report; the DiTs'
readers are in :mod:`attnlab.models.joint_positions`, the table operations both share in
:mod:`attnlab.models.rope_tables`.

* organism-rope (:class:`~attnlab.models.organisms.FrameRoPE`): measured from its own cos/sin
  (``_cos_sin``), rotate-half layout;
* LaVie (:class:`~attnlab.models.lavie.LaVieRoPE`): its ``freqs`` buffer, interleaved pairs;
* sinusoidal tables (AnimateDiff, organism-sinusoidal, Latte): measured from the stored table.

The edits go through the same places: a RoPE edit swaps a frequency buffer for the duration of
the rotary module's call (LaVie) or rewrites the temporal columns of the cos/sin it returns
(organism-rope); a table edit rebuilds the sinusoidal tables. Only the columns of a changed
frequency are recomputed (``cos(position * w')`` in float64); every other column is the
model's own, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from attnlab.core.denoisers import denoiser_of
from attnlab.core.sites import family_of
from attnlab.edits.positions import (
    PositionHandler,
    Retune,
    TemporalPE,
    frequency_ranks,
    intrinsic_rank,
    latent_frames,
    periods,
    register_position_handler,
    token_frames,
)
from attnlab.models.joint_positions import JOINT_HANDLERS, JOINT_TRAIN_FRAMES, LTX_FPS
from attnlab.models.rope_tables import (
    PROBE_POSITIONS,
    hooks,
    measure_frequencies,
    probe_len,
    retuned,
    rewrite_columns,
    undo_all,
)

__all__ = [
    "HANDLERS",
    "LTX_FPS",
    "PROBE_POSITIONS",
    "TRAIN_FRAMES",
    "measure_frequencies",
    "pe_report",
]

#: training lengths in video frames, as the families' papers and configs state them
TRAIN_FRAMES = {
    "organism": 16,  # attnlab.models.organisms.TRAIN_FRAMES
    "lavie": 16,
    "motion": 16,  # AnimateDiff: 16-frame clips (the table holds motion_max_seq_length)
    "unet3d": 16,
    "videocrafter2": 16,
    "i2vgenxl": 16,
    **JOINT_TRAIN_FRAMES,
}


# ---- sinusoidal tables (AnimateDiff, organism-sinusoidal, Latte) --------------------------------
def _table_blocks(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    for name, module in model.named_modules():
        if isinstance(getattr(module, "pos_embed", None), SinusoidalPositionalEmbedding):
            yield name, module


def _table_pes(model: torch.nn.Module) -> list[TemporalPE]:
    """One :class:`TemporalPE` per distinct sinusoidal table (``pe[:, 0::2]`` sin,
    ``pe[:, 1::2]`` cos: diffusers' ``SinusoidalPositionalEmbedding``)."""
    out: dict[tuple, TemporalPE] = {}
    for name, block in _table_blocks(model):
        pe = block.pos_embed.pe[0]  # [L, C]
        key = (tuple(pe.shape), pe.device.type)
        if key in out:
            out[key].layers += 1
            continue
        w = measure_frequencies(pe[:, 1::2], pe[:, 0::2])
        out[key] = TemporalPE(
            "sinusoidal", f"{name}.pos_embed", w[None], base=_table_base(w, pe.shape[1]),
            table_len=int(pe.shape[0]), dim=int(pe.shape[1]),
            note="absolute, added to the hidden states before each temporal attention",
        )  # fmt: skip
    return list(out.values())


def _table_base(w: np.ndarray, dim: int) -> float | None:
    """The base ``b`` of ``w_i = b^(-2i/C)``, from the slowest measured frequency."""
    if len(w) < 2 or w[-1] <= 0:
        return None
    return float(round(math.exp(-math.log(w[-1]) * dim / (2 * (len(w) - 1))), 3))


def _install_table(model: torch.nn.Module, mode: str, frames: int) -> Callable[[], None]:
    """Rebuild every sinusoidal table for ``frames`` positions (organisms' extend / interpolate,
    or the table tiled); the undo puts back the stored tensors and the config.

    "interpolate" and "repeat" use the trained rows only: the first ``TRAIN_FRAMES`` of the
    table (AnimateDiff stores ``motion_max_seq_length`` = 32 rows but trains on 16 frames), and
    act from one frame past them; "extend" keeps every stored row and acts past the table."""
    from diffusers import UNetMotionModel

    from attnlab.models import organisms

    blocks = [b for _, b in _table_blocks(model)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no sinusoidal frame table")
    length = min(int(b.pos_embed.pe.shape[1]) for b in blocks)
    family = "motion" if isinstance(model, UNetMotionModel) else "organism"
    trained = min(length, TRAIN_FRAMES[family])
    if frames <= (length if mode == "extend" else trained):
        return lambda: None  # within the stored (trained) rows: nothing to change
    key = "motion_max_seq_length" if isinstance(model, UNetMotionModel) else "frame_pe_max_len"
    if key not in model.config:
        raise ValueError(
            f"{type(model).__name__}: attnlab rebuilds the frame tables of AnimateDiff "
            "(UNetMotionModel) and the sinusoidal organism only"
        )
    saved = [(b.pos_embed, b.pos_embed.pe) for b in blocks]
    old_len = model.config[key]

    def undo() -> None:
        for module, pe in saved:
            module.pe = pe
        model.register_to_config(**{key: old_len})

    try:
        if mode == "extend":
            organisms.extend_frame_positions(model, frames)  # type: ignore[arg-type]
        elif mode == "interpolate":
            organisms.interpolate_frame_positions(model, frames, positions=trained)  # type: ignore[arg-type]
        elif mode == "repeat":
            for module, pe in saved:
                module.pe = pe[:, torch.arange(frames, device=pe.device) % trained]
            model.register_to_config(**{key: frames})
        else:
            raise ValueError(f"mode must be extend, interpolate or repeat; got {mode!r}")
    except Exception:
        undo()
        raise
    return undo


def _latte_pes(model: torch.nn.Module) -> list[TemporalPE]:
    table = getattr(model, "temp_pos_embed", None)
    if not isinstance(table, torch.Tensor) or table.is_meta:
        return [TemporalPE("sinusoidal", "temp_pos_embed", note="table not materialised")]
    pe = table[0]  # [L, C]: sin over the first half of the channels, cos over the second
    half = pe.shape[1] // 2
    w = measure_frequencies(pe[:, half:], pe[:, :half])
    return [
        TemporalPE(
            "sinusoidal", "temp_pos_embed", w[None], table_len=int(pe.shape[0]),
            dim=int(pe.shape[1]), note="fixed sin-cos of exactly video_length frames",
        )
    ]  # fmt: skip


# ---- organism-rope: FrameRoPE (rotate-half layout) ----------------------------------------------
def _site_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from attnlab.core.sites import sites

    modules = dict(model.named_modules())
    return [(s.name, modules[s.name]) for s in sites(model)]


def _frame_ropes(model: torch.nn.Module) -> list[tuple[str, Any]]:
    from attnlab.models.organisms import FrameRoPE

    return [
        (name, attn.attnlab_rope)
        for name, attn in _site_modules(model)
        if isinstance(getattr(attn, "attnlab_rope", None), FrameRoPE)
    ]


def _frame_rope_freqs(rope: Any) -> np.ndarray:
    cos, sin = rope._cos_sin(probe_len(), torch.device("cpu"), torch.float64)
    return measure_frequencies(cos[:, : rope.head_dim // 2], sin[:, : rope.head_dim // 2])


def _organism_pes(model: torch.nn.Module) -> list[TemporalPE]:
    kind = model.config.get("frame_pe", "none")
    if kind == "sinusoidal":
        return _table_pes(model)
    if kind != "rope":
        return [TemporalPE("none", "-", note="no frame positional encoding")]
    out: dict[tuple, TemporalPE] = {}
    for name, rope in _frame_ropes(model):
        key = (rope.head_dim, rope.base)
        if key in out:
            out[key].layers += 1
            continue
        out[key] = TemporalPE(
            "rope", f"{name}.attnlab_rope", _frame_rope_freqs(rope)[None], base=float(rope.base),
            dim=rope.head_dim, note="FrameRoPE on temporal q, k (rotate-half pairs j, j + d/2)",
        )  # fmt: skip
    return list(out.values())


def _install_frame_rope(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    undos: list[Callable[[], None]] = []
    for _, rope in _frame_ropes(model):
        freqs = _frame_rope_freqs(rope)[None]
        half = rope.head_dim // 2
        columns = [(j, j + half) for j in range(half)]
        own = rope._cos_sin  # the bound method of its class

        def cos_sin(frames, device, dtype, own=own, freqs=freqs, columns=columns):
            cos, sin = own(frames, device, dtype)
            new = retuned(retune, freqs, frames)
            if new is None:
                return cos, sin
            pos = torch.arange(frames, device=cos.device)[:, None]
            return rewrite_columns(cos, sin, columns, pos[:, 0], freqs[0], new[0])

        rope._cos_sin = cos_sin  # shadows the method on this instance only
        undos.append(lambda rope=rope: delattr(rope, "_cos_sin"))
    return undo_all(undos)


# ---- LaVie: LaVieRoPE, its freqs buffer ---------------------------------------------------------
def _lavie_ropes(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from attnlab.models.lavie import LaVieRoPE

    out = []
    for name, attn in _site_modules(model):
        rope = getattr(attn, "attnlab_rope", None)
        if isinstance(rope, LaVieRoPE):
            out.append((name, rope))
    return out


def _lavie_pes(model: torch.nn.Module) -> list[TemporalPE]:
    out: dict[tuple, TemporalPE] = {}
    for name, rope in _lavie_ropes(model):
        w = rope.freqs.detach().double().cpu().numpy()
        key = tuple(w.tolist())
        if key in out:
            out[key].layers += 1
            continue
        out[key] = TemporalPE(
            "rope", f"{name}.rotary_emb", w[None], base=_table_base(w, rope.dim), dim=rope.dim,
            note="RoPE on the first dim channels of q, k (interleaved pairs) plus a learned "
            "relative position bias (not a frequency: not listed)",
        )  # fmt: skip
    return list(out.values())


def _install_lavie(model: torch.nn.Module, retune: Retune) -> Callable[[], None]:
    handles = []
    for _, rope in _lavie_ropes(model):
        own = rope.freqs
        freqs = own.detach().double().cpu().numpy()[None]

        def pre(module, args, own=own, freqs=freqs):
            new = retuned(retune, freqs, args[0].shape[-2])
            if new is not None:
                changed = torch.from_numpy(new[0] != freqs[0]).to(own.device)
                module._buffers["freqs"] = torch.where(
                    changed, torch.from_numpy(new[0]).to(own.device, own.dtype), own
                )

        def post(module, args, output, own=own):
            module._buffers["freqs"] = own

        # (the post hook runs also when the call raises: the model never keeps the new table)
        handles += [
            rope.register_forward_pre_hook(pre),
            rope.register_forward_hook(post, always_call=True),
        ]
    return hooks(*handles)


# ---- handlers ----------------------------------------------------------------------------------
def _none(note: str = "no frame positional encoding") -> Callable[[Any], list[TemporalPE]]:
    return lambda model: [TemporalPE("none", "-", note=note)]


def _latte_train(config: Any) -> int | None:
    return int(config.get("video_length", 16))


def _svd_train(config: Any) -> int | None:
    return int(config.get("num_frames", 25))


HANDLERS: dict[str, PositionHandler] = {
    "organism": PositionHandler(
        _organism_pes,
        lambda c: TRAIN_FRAMES["organism"],
        install_rope=_install_frame_rope,
        install_table=_install_table,
    ),
    "lavie": PositionHandler(_lavie_pes, lambda c: TRAIN_FRAMES["lavie"], install_rope=_install_lavie),
    "motion": PositionHandler(
        lambda m: _table_pes(m) or [TemporalPE("none", "-", note="motion_pos_embed_type None")],
        lambda c: TRAIN_FRAMES["motion"],
        install_table=_install_table,
    ),
    "unet3d": PositionHandler(_none(), lambda c: TRAIN_FRAMES["unet3d"]),
    "videocrafter2": PositionHandler(_none(), lambda c: TRAIN_FRAMES["videocrafter2"]),
    "i2vgenxl": PositionHandler(_none(), lambda c: TRAIN_FRAMES["i2vgenxl"]),
    "svd": PositionHandler(
        lambda m: [TemporalPE("learned", "time_pos_embed", note="sinusoidal frame index through a learned MLP")],
        _svd_train,
    ),
    "latte": PositionHandler(_latte_pes, _latte_train),
    **JOINT_HANDLERS,
}  # fmt: skip


def register_builtin() -> None:
    """Register the handlers of attnlab's own families (called with the families)."""
    for name, handler in HANDLERS.items():
        register_position_handler(name, handler)


# ---- the report --------------------------------------------------------------------------------
COLUMNS = (
    "family", "pe", "source", "axis", "head", "k", "theta", "base", "period_latent",
    "period_frames", "train_frames", "train_latent", "intrinsic", "repeat_frame", "table_len",
    "dim", "layers",
)  # fmt: skip


def pe_report(model_or_pipe: Any, train_frames: int | None = None):
    """The frame positional encodings of a model, one row per frequency.

    Every distinct temporal encoding (1D RoPE, the temporal slice of a 3D RoPE, learned
    frequencies, a sinusoidal table) gives one row per frequency (per head where the heads
    differ: Mochi); an encoding without frequencies (learned absolute, "none") one row.
    Frequencies are read from the model's own modules (see the module docstring); the spatial
    axes of a split 3D RoPE are listed (``axis`` "h", "w") and never edited.

    Args:
        model_or_pipe: a diffusers pipeline (``.unet`` / ``.transformer``; its VAE's temporal
            compression is used) or a denoiser module.
        train_frames (``int | None``): the training length in video frames; None: the family's
            (CogVideoX: the config's ``sample_frames``; Wan 2.1: 81; HunyuanVideo: 129; the
            UNets and organisms: 16; LTX-Video and Mochi: unknown, pass it).

    Returns:
        ``pandas.DataFrame`` with the columns of :data:`COLUMNS`: ``pe`` (kind: rope, rope3d,
        sinusoidal, learned, none), ``source`` (where it lives), ``axis`` ("t", "h", "w"),
        ``head`` (<NA>: shared by the heads), ``k`` (RIFLEx's ``j``: rank by decreasing
        frequency, 1 = the fastest), ``theta`` (the frequency, radians per latent frame; per
        patch for h, w), ``base`` (the RoPE / table base), ``period_latent`` (``2 pi / theta``
        in latent frames), ``period_frames`` (in video frames, through the VAE's temporal
        compression), ``train_frames`` / ``train_latent`` (the training length),
        ``intrinsic`` (RIFLEx's intrinsic frequency: the period nearest at or above the training
        length), ``repeat_frame`` (on intrinsic rows: the video frame offset at which frame 0's
        position recurs, where repetition is predicted), ``table_len`` (positions of a table),
        ``dim`` (channels), ``layers`` (attention layers sharing it). ``df.attrs`` holds the
        family, the temporal compression and the training length.

    Example::

        df = attnlab.pe_report(pipe)                     # e.g. HunyuanVideo
        df[df.axis == "t"][["k", "period_latent", "period_frames", "intrinsic"]]
        df[df.intrinsic]                                 # k = 4, period 50.3 latent frames
    """
    import pandas as pd

    model = denoiser_of(model_or_pipe)
    family = family_of(model)
    handler = HANDLERS.get(family.name)
    if handler is None:  # a family registered by another package
        from attnlab.edits.positions import position_handler

        handler = position_handler(model)
    c = int(handler.temporal_compression(model_or_pipe))
    if train_frames is not None and (isinstance(train_frames, bool) or int(train_frames) < 1):
        raise ValueError(
            f"train_frames must be a positive number of video frames, got {train_frames!r}"
        )
    train = int(train_frames) if train_frames is not None else handler.train_frames(model.config)
    train_lat = latent_frames(train, c) if train is not None else None
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    for pe in handler.describe(model):
        base = {
            "family": family.name, "pe": pe.kind, "source": pe.source, "base": pe.base,
            "train_frames": train, "train_latent": train_lat, "table_len": pe.table_len,
            "dim": pe.dim, "layers": pe.layers,
        }  # fmt: skip
        if pe.freqs is None:
            rows.append({**base, "axis": "t", "intrinsic": False, "note": pe.note})
            continue
        heads = pe.freqs.shape[0]
        for h, row in enumerate(pe.freqs):
            ranks = frequency_ranks(row)
            tok_train = token_frames(train, c, pe.frame_step) if train is not None else None
            k0 = intrinsic_rank(row, tok_train) if tok_train is not None else None
            per = periods(row) * pe.frame_step
            for j in np.argsort(ranks):
                intrinsic = k0 is not None and ranks[j] == k0
                rows.append({
                    **base, "axis": "t", "head": h if heads > 1 else None, "k": int(ranks[j]),
                    "theta": abs(float(row[j])) / pe.frame_step, "period_latent": float(per[j]),
                    "period_frames": float(per[j]) * c, "intrinsic": intrinsic,
                    "repeat_frame": float(per[j]) * c if intrinsic else nan, "note": pe.note,
                })  # fmt: skip
        for axis, freqs in pe.spatial.items():
            ranks = frequency_ranks(freqs)
            for j in np.argsort(ranks):
                rows.append({
                    **base, "axis": axis, "head": None, "k": int(ranks[j]),
                    "theta": abs(float(freqs[j])), "period_latent": float(periods(freqs)[j]),
                    "period_frames": nan, "train_frames": None, "train_latent": None,
                    "intrinsic": False, "repeat_frame": nan, "note": "spatial: never edited",
                })  # fmt: skip
    df = pd.DataFrame(rows, columns=[*COLUMNS, "note"])
    df["head"] = df["head"].astype("Int64")
    df["k"] = df["k"].astype("Int64")
    df["intrinsic"] = df["intrinsic"].fillna(False).astype(bool)
    df.attrs.update(
        family=family.name, model=type(model).__name__, temporal_compression=c,
        train_frames=train, train_latent=train_lat,
    )  # fmt: skip
    return df
