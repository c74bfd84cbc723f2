"""Real videos in and out: decode clips and frame folders, resample them in time as VSTAR does,
fit them to a model's input size, and write mp4/gif/frame folders for figures.

Decoding goes through one small function per source kind: video files with ``decord`` (PyAV
``av`` where decord cannot be imported, e.g. on ARM), frame folders (DAVIS) and GIFs with PIL.
All readers return the same :class:`Video`, with frames as ``(F, H, W, 3)`` uint8 RGB.
:func:`to_unit_frames` is the one rule that turns any frame input (uint8, floats in [0, 1] or
[-1, 1], tensors, either channel layout) into RGB in [0, 1], and :func:`to_uint8_frames` its
uint8 form; writers, metrics and the world evaluator read frames through them.
"""

from __future__ import annotations

import numbers
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from attnlab.core import dims

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "DAVIS_FPS",
    "FRAME_SUFFIXES",
    "Video",
    "VideoError",
    "frame_strip",
    "list_davis_sequences",
    "read_davis",
    "read_video",
    "sample_indices",
    "to_model_input",
    "to_uint8_frames",
    "to_unit_frames",
    "write_frames",
    "write_video",
]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
# DAVIS 2016/2017 sequences were extracted at 24 fps; used for frame folders without metadata.
DAVIS_FPS = 24.0
# non-dimension coordinates along `frame` in Video.to_xarray()
SOURCE_INDEX = "source_index"
TIME = "time"

Backend = Literal["auto", "decord", "av"]
IfShort = Literal["error", "spread"]


class VideoError(ValueError):
    """A video could not be read, resampled or written; the message names the path and why."""


@dataclass(frozen=True, eq=False)
class Video:
    """Decoded RGB frames of one clip plus where they came from.

    ``frames`` is ``(F, H, W, 3)`` uint8; ``indices[i]`` is the source frame index of
    ``frames[i]``; ``fps`` is the rate of the held frames (the target fps after temporal
    resampling), ``source_fps`` that of the source clip.
    """

    frames: np.ndarray
    fps: float
    source_fps: float
    indices: np.ndarray
    id: str
    path: Path | None = None

    def __post_init__(self) -> None:
        f = self.frames
        if not (
            isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 4 and f.shape[3] == 3
        ):
            raise VideoError(
                f"Video {self.id!r}: frames must be a uint8 array (F, H, W, 3), got "
                f"{getattr(f, 'dtype', type(f))} {getattr(f, 'shape', '')}"
            )
        if len(f) == 0:
            raise VideoError(f"Video {self.id!r}: no frames (shape {f.shape})")
        if len(self.indices) != len(f):
            raise VideoError(f"Video {self.id!r}: {len(self.indices)} indices for {len(f)} frames")
        if not np.issubdtype(np.asarray(self.indices).dtype, np.integer):
            raise VideoError(
                f"Video {self.id!r}: indices must be integer source frame indices, got "
                f"{np.asarray(self.indices).dtype}"
            )
        for what, rate in (("fps", self.fps), ("source_fps", self.source_fps)):
            if not (isinstance(rate, numbers.Real) and np.isfinite(rate) and rate > 0):
                raise VideoError(
                    f"Video {self.id!r}: {what} must be a positive number, got {rate!r}"
                )

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def times(self) -> np.ndarray:
        """Timestamps of the held frames in seconds from the source's frame 0."""
        return np.asarray(self.indices, dtype=np.float64) / self.source_fps

    def tensor(self) -> torch.Tensor:
        """The frames as a uint8 ``torch.Tensor`` ``(F, H, W, 3)`` sharing memory."""
        return torch.from_numpy(self.frames)

    def select(
        self,
        frames: int | None = None,
        *,
        fps: float | None = None,
        start: int = 0,
        stride: int | None = None,
        end: int | None = None,
        if_short: IfShort = "error",
    ) -> Video:
        """Resample the held frames in time (see :func:`sample_indices`); positions count held frames."""
        pos, eff = sample_indices(
            len(self),
            self.fps,
            frames=frames,
            fps=fps,
            start=start,
            stride=stride,
            end=end,
            if_short=if_short,
            name=self.id,
        )
        return Video(
            frames=self.frames[pos],
            fps=eff,
            source_fps=self.source_fps,
            indices=np.asarray(self.indices)[pos],
            id=self.id,
            path=self.path,
        )

    def to_xarray(self) -> xr.DataArray:
        """The frames as a DataArray ``(frame, height, width, channel)`` with source indices/times."""
        import xarray as xr

        return xr.DataArray(
            self.frames,
            dims=(dims.FRAME, dims.HEIGHT, dims.WIDTH, dims.CHANNEL),
            coords={
                dims.FRAME: np.arange(len(self)),
                SOURCE_INDEX: (dims.FRAME, np.asarray(self.indices, dtype=np.int64)),
                TIME: (dims.FRAME, self.times),
                dims.CHANNEL: ["r", "g", "b"],
            },
            attrs={
                dims.VIDEO: self.id,
                "fps": float(self.fps),
                "source_fps": float(self.source_fps),
                "path": str(self.path) if self.path is not None else "",
            },
            name=dims.VIDEO,
        )


# --------------------------------------------------------------------------- time sampling


def sample_indices(
    n_available: int,
    source_fps: float,
    *,
    frames: int | None = None,
    fps: float | None = None,
    start: int = 0,
    stride: int | None = None,
    end: int | None = None,
    if_short: IfShort = "error",
    name: str = "clip",
) -> tuple[np.ndarray, float]:
    """Choose source frame indices in ``[start, end)`` and return them with their frame rate.

    With ``fps`` frames are chosen by time, as VSTAR does (16 frames at 8 fps): output frame
    ``k`` is the source frame nearest to ``k / fps`` seconds after ``start``, i.e.
    ``start + floor(k * source_fps / fps + 0.5)``. With ``stride`` every ``stride``-th frame is
    taken; with neither, consecutive frames. ``frames=None`` takes as many as fit.

    A clip too short for ``frames`` raises :class:`VideoError` stating frames and seconds
    available vs needed, unless ``if_short="spread"``: then ``frames`` evenly spaced indices
    over the whole ``[start, end)`` range are taken instead (never repeating a frame).
    """
    if fps is not None and stride is not None:
        raise ValueError("pass fps or stride, not both")
    for what, value, least in (("frames", frames, 1), ("stride", stride, 1), ("start", start, 0)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least
        ):
            raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")
    if end is not None and (isinstance(end, bool) or not isinstance(end, numbers.Integral)):
        raise ValueError(f"end must be an integer frame index, got {end!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if if_short not in ("error", "spread"):
        raise ValueError(f"if_short must be 'error' or 'spread', got {if_short!r}")
    if not (np.isfinite(source_fps) and source_fps > 0):
        raise VideoError(f"{name}: unknown or invalid source frame rate {source_fps!r}")
    stop = n_available if end is None else end
    if stop > n_available:
        raise VideoError(f"{name}: end={stop} is beyond the {n_available} frames of the clip")
    avail = stop - start
    if avail <= 0:
        raise VideoError(
            f"{name}: no frames in [start={start}, end={stop}) (the clip has {n_available} frames)"
        )
    if fps is not None:
        if fps > source_fps * (1 + 1e-6):
            raise VideoError(
                f"{name}: target {fps:g} fps exceeds the source's {source_fps:.3f} fps; "
                "frames would be repeated"
            )
        step = source_fps / fps
        how = f"at {fps:g} fps"
    else:
        step = float(stride or 1)
        how = f"with stride {stride}" if stride else "consecutive"
    eff_fps = source_fps / step
    # the epsilon keeps exact ratios (30 -> 10 fps) from flooring 2.9999999 to 2
    count = frames if frames is not None else int(np.floor((avail - 1) / step + 1e-9)) + 1
    offsets = np.floor(np.arange(count) * step + 0.5 + 1e-9).astype(np.int64)
    if offsets[-1] < avail:
        return start + offsets, eff_fps

    assert frames is not None
    if if_short == "spread" and frames <= avail:
        offsets = np.floor(np.linspace(0, avail - 1, frames) + 0.5).astype(np.int64)
        span = int(offsets[-1])
        eff = source_fps * (frames - 1) / span if frames > 1 and span > 0 else source_fps
        return start + offsets, eff
    need = int(offsets[-1]) + 1
    where = f" in [{start}, {stop})" if (start or end is not None) else ""
    if if_short == "spread":
        raise VideoError(
            f"{name}: too few frames: {frames} requested but only {avail} available{where}; "
            "spreading them would repeat frames"
        )
    raise VideoError(
        f"{name}: too few frames: {frames} frames {how} need {need} source frames "
        f"({need / source_fps:.3f} s at {source_fps:.3f} fps) from frame {start}, but only "
        f"{avail} frames ({avail / source_fps:.3f} s) are available{where}; request fewer "
        f"frames or a lower fps, or pass if_short='spread' to take {frames} evenly spaced "
        "frames over the available ones"
    )


# --------------------------------------------------------------------------- decoding

# A source: (number of frames, fps or None, reader of given indices -> (k, H, W, 3) uint8).
_Source = tuple[int, "float | None", Callable[[np.ndarray], np.ndarray]]

_fallback_warned = False


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _pick_backend(requested: Backend) -> str:
    """Return ``"decord"`` or ``"av"``; warns once when auto falls back to PyAV."""
    global _fallback_warned
    if requested not in ("auto", "decord", "av"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'av', got {requested!r}")
    decord_error: BaseException | None = None
    if requested in ("auto", "decord"):
        try:
            import decord  # noqa: F401
        except Exception as e:  # also OSError for missing shared libraries
            if requested == "decord":
                raise ImportError(
                    f"decord could not be imported ({_short(e)}); it ships wheels for x86_64 "
                    "only: `pip install decord`, or use backend='av' (`pip install av`)"
                ) from e
            decord_error = e
        else:
            return "decord"
    try:
        import av  # noqa: F401
    except Exception as e:
        if requested == "av":
            raise ImportError(f"PyAV could not be imported ({_short(e)}): `pip install av`") from e
        raise ImportError(
            "cannot decode video files: neither decord nor PyAV can be imported "
            f"(decord: {_short(decord_error) if decord_error else '?'}; av: {_short(e)}). "
            "Install one: `pip install decord` (x86_64) or `pip install av` (any platform)."
        ) from e
    if requested == "auto" and not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"decord could not be imported ({_short(decord_error) if decord_error else '?'}); "
            "decoding videos with PyAV instead (same frames, slower for sparse sampling)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "av"


def _decord_source(path: Path) -> _Source:
    import decord

    from attnlab.util.quiet import filtered_stderr

    try:
        with filtered_stderr():  # FFmpeg's notes on clips it decodes fine ("non-intra slice")
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
            n, fps = len(vr), float(vr.get_avg_fps())
    except Exception as e:
        raise VideoError(f"{path}: cannot decode video with decord ({_short(e)})") from e

    def read(idx: np.ndarray) -> np.ndarray:
        try:
            with filtered_stderr():
                return vr.get_batch([int(i) for i in idx]).asnumpy()
        except Exception as e:
            raise VideoError(f"{path}: decoding frames failed with decord ({_short(e)})") from e

    return n, fps, read


def _av_source(path: Path) -> _Source:
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: file has no video stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            # stream.frames is unreliable (0, or timestamps for some AVIs); count real packets
            n = sum(1 for p in c.demux(s) if p.size)
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"{path}: cannot decode video with PyAV ({_short(e)})") from e

    def read(idx: np.ndarray) -> np.ndarray:
        wanted = {int(i) for i in idx}
        last = max(wanted)
        got: dict[int, np.ndarray] = {}
        count = 0
        try:
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for count, frame in enumerate(c.decode(s)):
                    if count in wanted:
                        got[count] = frame.to_ndarray(format="rgb24")
                    if count >= last:
                        break
        except Exception as e:
            raise VideoError(f"{path}: decoding frames failed with PyAV ({_short(e)})") from e
        if not got:
            raise VideoError(f"{path}: PyAV decoded no frames")
        missing = sorted(wanted - got.keys())
        if missing:
            # the last packets of some files do not decode; decord repeats the last good frame
            # there, so do the same to give identical frames from both backends
            tail = max(got)
            if missing[0] <= tail:
                raise VideoError(f"{path}: PyAV could not decode frames {missing[:5]}")
            warnings.warn(
                f"{path}: frames {missing[0]}..{missing[-1]} do not decode; repeating frame {tail}",
                RuntimeWarning,
                stacklevel=3,
            )
            got.update(dict.fromkeys(missing, got[tail]))
        return np.stack([got[int(i)] for i in idx])

    return n, (float(rate) if rate else None), read


def _with_av_fallback(
    path: Path, read: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """Retry with PyAV where decord opens a file but fails on its frames.

    decord 0.6.0 fails on some valid files, e.g. every H.264 mp4 48 pixels wide (it copies
    64-pixel rows), which is what the tiny test pipelines generate.
    """

    def read_or_fallback(idx: np.ndarray) -> np.ndarray:
        try:
            return read(idx)
        except VideoError as e:
            try:
                import av  # noqa: F401
            except Exception:
                raise e from None
            warnings.warn(f"{e}; decoding with PyAV instead", RuntimeWarning, stacklevel=3)
            return _av_source(path)[2](idx)

    return read_or_fallback


def _load_rgb(p: Path) -> np.ndarray:
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise VideoError(f"{p}: cannot read image ({_short(e)})") from e


def _frames_dir_source(path: Path) -> _Source:
    files = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()),
        key=_natural_key,
    )
    if not files:
        hint = ""
        if (path / "JPEGImages").is_dir():
            hint = "; it looks like a DAVIS root: use read_davis(root, sequence)"
        raise VideoError(f"{path}: empty frame folder: no {'/'.join(FRAME_SUFFIXES)} files{hint}")

    def read(idx: np.ndarray) -> np.ndarray:
        arrays = [_load_rgb(files[int(i)]) for i in idx]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise VideoError(f"{path}: frames have different sizes {sorted(shapes)}")
        return np.stack(arrays)

    return len(files), None, read


def _gif_source(path: Path) -> _Source:
    try:
        with Image.open(path) as im:
            n = int(getattr(im, "n_frames", 1))
            durations = []
            for i in range(n):
                im.seek(i)
                durations.append(im.info.get("duration") or 0)
    except Exception as e:
        raise VideoError(f"{path}: cannot read GIF ({_short(e)})") from e
    mean_ms = float(np.mean(durations)) if durations else 0.0
    fps = 1000.0 / mean_ms if mean_ms > 0 else None

    def read(idx: np.ndarray) -> np.ndarray:
        out = []
        with Image.open(path) as im:
            for i in idx:
                im.seek(int(i))
                out.append(np.asarray(im.convert("RGB")))
        return np.stack(out)

    return n, fps, read


def read_video(
    path: str | os.PathLike[str],
    *,
    frames: int | None = None,
    fps: float | None = None,
    start: int = 0,
    stride: int | None = None,
    end: int | None = None,
    if_short: IfShort = "error",
    source_fps: float | None = None,
    backend: Backend = "auto",
    id: str | None = None,
) -> Video:
    """Read a video file, a GIF or a folder of frames (e.g. a DAVIS sequence) as a :class:`Video`.

    Only the chosen frames are decoded. ``frames``/``fps``/``start``/``stride``/``end``/``if_short``
    select them as in :func:`sample_indices` (e.g. ``frames=16, fps=8`` like VSTAR). Frame
    folders hold ``.jpg/.jpeg/.png`` files sorted by name (numbers compared numerically);
    their rate is ``source_fps`` or :data:`DAVIS_FPS`. ``source_fps`` also overrides a file's
    (broken) metadata. ``backend`` picks the file decoder: decord, else PyAV with a warning.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise VideoError(f"{p}: no such file or directory")
    vid = id or (p.name if p.is_dir() else p.stem)
    if p.is_dir():
        n, meta_fps, read = _frames_dir_source(p)
        meta_fps = meta_fps or DAVIS_FPS
    elif p.suffix.lower() == ".gif":
        n, meta_fps, read = _gif_source(p)
    elif p.suffix.lower() in FRAME_SUFFIXES:
        raise VideoError(f"{p}: is a single image; pass the folder of frames instead")
    else:
        if p.stat().st_size == 0:
            raise VideoError(f"{p}: empty file (0 bytes)")
        if _pick_backend(backend) == "decord":
            n, meta_fps, read = _decord_source(p)
            if backend == "auto":
                read = _with_av_fallback(p, read)
        else:
            n, meta_fps, read = _av_source(p)
    if n == 0:
        raise VideoError(f"{p}: contains no video frames")
    rate = source_fps if source_fps is not None else meta_fps
    if rate is None:
        raise VideoError(f"{p}: frame rate unknown; pass source_fps=")
    idx, eff = sample_indices(
        n,
        rate,
        frames=frames,
        fps=fps,
        start=start,
        stride=stride,
        end=end,
        if_short=if_short,
        name=str(p),
    )
    data = read(idx)
    if data.ndim != 4 or data.shape[0] != len(idx) or data.shape[3] != 3:
        raise VideoError(f"{p}: decoder returned frames of shape {data.shape}")
    return Video(
        frames=np.ascontiguousarray(data, dtype=np.uint8),
        fps=eff,
        source_fps=float(rate),
        indices=idx,
        id=vid,
        path=p,
    )


def list_davis_sequences(root: str | os.PathLike[str], resolution: str = "480p") -> list[str]:
    """Names of the sequences under ``root/JPEGImages/<resolution>/``."""
    base = Path(root).expanduser() / "JPEGImages" / resolution
    if not base.is_dir():
        raise VideoError(
            f"{base}: not a DAVIS layout (expected <root>/JPEGImages/{resolution}/<sequence>/00000.jpg)"
        )
    return sorted(d.name for d in base.iterdir() if d.is_dir())


def read_davis(
    root: str | os.PathLike[str],
    sequence: str,
    resolution: str = "480p",
    **kwargs: Any,
) -> Video:
    """Read DAVIS sequence ``root/JPEGImages/<resolution>/<sequence>/%05d.jpg`` (24 fps).

    ``kwargs`` go to :func:`read_video` (``frames``, ``fps``, ``start``, ``if_short``...).
    """
    seq_dir = Path(root).expanduser() / "JPEGImages" / resolution / sequence
    if not seq_dir.is_dir():
        known = list_davis_sequences(root, resolution)
        shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
        raise VideoError(
            f"{seq_dir}: no DAVIS sequence {sequence!r} at {resolution} "
            f"({len(known)} sequences there: {shown or 'none'})"
        )
    kwargs.setdefault("source_fps", DAVIS_FPS)
    return read_video(seq_dir, id=sequence, **kwargs)


# --------------------------------------------------------------------------- frame coercion

# channel counts a frame array may carry: RGB, gray (repeated to RGB), RGBA (alpha dropped)
_CHANNELS = (3, 1, 4)
# slack on the inferred ranges for rounding noise (a pipeline's 1.0000001); beyond it, refuse
_RANGE_SLACK = 0.05  # decoders overshoot [-1, 1] slightly: clipped
_ALLOWED = (
    "allowed: uint8 in [0, 255], or floats in [0, 1] or [-1, 1], shaped (F, H, W, C) or "
    "(F, C, H, W) with C = 3 (RGB), 1 (gray) or 4 (RGBA), or (F, H, W) gray; a Video; a "
    "tensor; a DataArray with dims (frame, height, width[, channel])"
)


def _frame_array(frames: Any) -> np.ndarray:
    """``(F, H, W, C)`` array of any accepted input, values untouched (C in 1, 3, 4)."""
    if isinstance(frames, Video):
        return frames.frames
    channels_last = False
    if isinstance(frames, torch.Tensor):
        t = frames.detach().to("cpu")
        # numpy has no bfloat16: widen the half types to float32, keep float64 as it is
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        frames = t.numpy()
    elif type(frames).__module__.startswith("xarray."):  # imports xarray only for its objects
        frames, channels_last = _dataarray_frames(frames), True
    a = np.asarray(frames)
    while a.ndim > 4 and a.shape[0] == 1:  # a pipeline's (batch=1, F, ...) output
        a = a[0]
    if a.ndim == 3:
        if a.shape[-1] in (3, 4) and not channels_last:
            raise VideoError(
                f"frames of shape {a.shape} are ambiguous: one (H, W, {a.shape[-1]}) image or "
                f"{a.shape[0]} gray frames; pass frames[None] for one image or (F, H, W, 1) for "
                "gray frames"
            )
        a, channels_last = a[..., None], True
    if a.ndim != 4:
        raise VideoError(f"frames of shape {a.shape}: wrong number of dimensions; {_ALLOWED}")
    if a.dtype.kind not in "biuf":
        raise VideoError(f"frames of dtype {a.dtype}: not numbers; {_ALLOWED}")
    if not channels_last:
        last, first = a.shape[3], a.shape[1]
        if last == 3 and first == 3:  # a 3-pixel side: uint8 arrays are mostly channels-last
            channels_last = a.dtype == np.uint8
        else:
            axis = next((c for c in _CHANNELS if c in (last, first)), None)
            if axis is None:
                raise VideoError(f"frames of shape {a.shape}: no channel axis; {_ALLOWED}")
            channels_last = axis == last
        if not channels_last:
            a = a.transpose(0, 2, 3, 1)
    if a.shape[3] not in _CHANNELS:
        raise VideoError(f"frames of shape {a.shape}: {a.shape[3]} channels; {_ALLOWED}")
    return a


def _dataarray_frames(da: Any) -> np.ndarray:
    """The values of a DataArray video ordered ``(frame, height, width[, channel])``."""
    import xarray as xr

    named = (dims.FRAME, dims.HEIGHT, dims.WIDTH, dims.CHANNEL)
    if not isinstance(da, xr.DataArray):
        raise VideoError(f"frames must be an array, got a {type(da).__name__}; {_ALLOWED}")
    extra = [d for d in da.dims if d not in named]
    if any(da.sizes[d] != 1 for d in extra) or not set(named[:3]) <= set(da.dims):
        raise VideoError(
            f"a DataArray of frames with sizes {dict(da.sizes)}: its dims must be "
            f"(frame, height, width[, channel]) plus dims of size 1; {_ALLOWED}"
        )
    da = da.squeeze(extra, drop=True) if extra else da
    return da.transpose(*(d for d in named if d in da.dims)).values


def _unit(a: np.ndarray, value_range: tuple[float, float] | None, dtype: Any) -> np.ndarray:
    """Values of ``(F, H, W, C)`` frames mapped to [0, 1] in ``dtype`` (not yet clipped)."""
    if a.dtype == np.uint8 and value_range is None:
        return a.astype(dtype) / 255.0
    given, a = a.dtype, a.astype(dtype)
    if a.size and not np.isfinite(a).all():
        raise VideoError(f"frames of shape {a.shape} hold NaN or infinite values")
    if value_range is None:
        lo_v, hi_v = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if hi_v > 1.0 + _RANGE_SLACK or lo_v < -1.0 - _RANGE_SLACK:
            raise VideoError(
                f"{given} frames of shape {a.shape} with values in [{lo_v:.4g}, {hi_v:.4g}]: "
                "floats must lie in [0, 1] or [-1, 1]; pass value_range=(0, 255) for floats in "
                "[0, 255] (or value_range=(lo, hi) to clip another range), or uint8 frames"
            )
        value_range = (-1.0, 1.0) if lo_v < 0 else (0.0, 1.0)
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    return (a - lo) / (hi - lo)


def to_unit_frames(
    frames: Video | np.ndarray | torch.Tensor | xr.DataArray,
    value_range: tuple[float, float] | None = None,
    *,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Convert frames to ``(F, H, W, 3)`` RGB in [0, 1]: the one rule for every frame input.

    Values: uint8 is ``[0, 255]``. Other dtypes hold values in ``value_range`` (clipped to
    it) or, with ``value_range=None``, in ``[0, 1]``, or in ``[-1, 1]`` when any value is
    below 0; values beyond ``[-1, 1]`` (by more than 0.05), NaN and infinities raise
    :class:`VideoError`: pass ``value_range=(0, 255)`` for floats in ``[0, 255]``. An
    all-bright ``[-1, 1]`` video reads as ``[0, 1]`` unless ``value_range=(-1, 1)`` is given.

    Layout: ``(F, H, W, C)`` or ``(F, C, H, W)`` with ``C`` = 3 (RGB), 1 (gray, repeated) or
    4 (RGBA, alpha dropped); the channel axis is the one of axes 1 and 3 that is 3 (else 1 or
    4); when both are 3, uint8 is taken as channels-last and other dtypes as channels-first.
    ``(F, H, W)`` is gray; leading axes of size 1 (a pipeline's batch) are dropped; a
    :class:`Video` gives its frames; a tensor is read on the CPU; a DataArray is ordered by its
    dims ``(frame, height, width[, channel])``, dims of size 1 beyond those dropped.

    Returns a new ``dtype`` (default float32) array. Anything else raises :class:`VideoError`
    naming the shape or range received and what is allowed.
    """
    a = _frame_array(frames)
    a = np.clip(_unit(a, value_range, dtype), 0.0, 1.0)
    return np.ascontiguousarray(_rgb(a).astype(dtype, copy=False))


def _rgb(a: np.ndarray) -> np.ndarray:
    """Three channels of ``(F, H, W, C)``: gray repeated, alpha dropped."""
    if a.shape[3] == 1:
        return np.repeat(a, 3, axis=3)
    return a if a.shape[3] == 3 else a[..., :3]


def to_uint8_frames(
    frames: Video | np.ndarray | torch.Tensor | xr.DataArray,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Convert frames to ``(F, H, W, 3)`` uint8 RGB: :func:`to_unit_frames`, rounded to 0..255.

    Accepts and refuses exactly what :func:`to_unit_frames` does; uint8 frames (and a
    :class:`Video`'s) come back unchanged, others as ``floor(255 u + 0.5)`` of their [0, 1]
    values ``u``.
    """
    a = _frame_array(frames)
    if a.dtype == np.uint8 and value_range is None:
        return np.ascontiguousarray(_rgb(a))
    u = np.clip(_unit(a, value_range, np.float32), 0.0, 1.0)
    return np.ascontiguousarray(np.floor(_rgb(u) * 255.0 + 0.5).astype(np.uint8))


# --------------------------------------------------------------------------- model input


def to_model_input(
    video: Video | np.ndarray | torch.Tensor,
    height: int,
    width: int,
    mode: Literal["center_crop", "resize"] = "center_crop",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Frames as a float tensor ``(F, 3, height, width)`` in ``[-1, 1]`` for a video model.

    ``center_crop`` (VSTAR, e.g. 320x512) scales the frames to cover the target keeping their
    aspect ratio, then crops the centre; ``resize`` stretches to the target size.
    """
    if mode not in ("center_crop", "resize"):
        raise ValueError(f"mode must be 'center_crop' or 'resize', got {mode!r}")
    x = torch.from_numpy(to_uint8_frames(video)).to(device=device)
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    h, w = x.shape[-2:]
    if mode == "center_crop":
        scale = max(height / h, width / w)
        # round up so that the scaled frame always covers the target
        sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    else:
        sh, sw = height, width
    if (sh, sw) != (h, w):
        x = torch.nn.functional.interpolate(
            x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (sh - height) // 2, (sw - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return (x / 127.5 - 1.0).clamp_(-1.0, 1.0).to(dtype)


# --------------------------------------------------------------------------- writing


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _write_mp4_av(a: np.ndarray, path: Path, fps: float, crf: int) -> None:
    import av

    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=_fps_fraction(fps))
        s.width, s.height, s.pix_fmt = a.shape[2], a.shape[1], "yuv420p"
        s.options = {"crf": str(crf)}
        for img in a:
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _write_mp4_imageio(a: np.ndarray, path: Path, fps: float, crf: int) -> None:
    import imageio_ffmpeg

    w = imageio_ffmpeg.write_frames(
        str(path),
        (a.shape[2], a.shape[1]),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        output_params=["-crf", str(crf)],
        macro_block_size=1,
    )
    w.send(None)
    for img in a:
        w.send(np.ascontiguousarray(img))
    w.close()


def _mp4_writers() -> list[tuple[str, Callable[[np.ndarray, Path, float, int], None]]]:
    """Available mp4 writers, preferred first (torchvision >= 0.22 no longer writes video)."""
    out = []
    try:
        import av  # noqa: F401

        out.append(("av", _write_mp4_av))
    except Exception:
        pass
    try:
        import imageio_ffmpeg  # noqa: F401

        out.append(("imageio-ffmpeg", _write_mp4_imageio))
    except Exception:
        pass
    return out


def write_video(
    frames: Video | np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    fps: float = 8,
    *,
    value_range: tuple[float, float] | None = None,
    crf: int = 17,
    writer: Literal["auto", "av", "imageio-ffmpeg"] = "auto",
) -> Path:
    """Write frames to ``.mp4`` (H.264 via PyAV, else imageio-ffmpeg) or ``.gif`` (PIL).

    ``frames`` as in :func:`to_uint8_frames`. H.264/yuv420p needs even sizes, so odd heights
    or widths are padded by repeating the last row/column. GIF delays are whole centiseconds
    (alternated so their mean is exact), and PIL merges identical consecutive frames into one longer frame. The file is written to
    a temporary name first and renamed, so a failed write leaves no partial file.
    """
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    a = to_uint8_frames(frames, value_range)
    if len(a) == 0:
        raise VideoError(f"{p}: no frames to write")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".gif":
            ims = [Image.fromarray(f) for f in a]
            # GIF delays are whole centiseconds: round the cumulative time so that the mean
            # delay is exact (8 fps -> 120, 130, 120, 130 ... ms)
            ticks = np.floor(np.arange(len(a) + 1) * 100 / fps + 0.5).astype(int)
            delays = [10 * max(1, int(d)) for d in np.diff(ticks)]
            ims[0].save(
                tmp,
                save_all=True,
                append_images=ims[1:],
                duration=delays if len(delays) > 1 else delays[0],
                loop=0,
            )
        elif suffix in (".mp4", ".m4v", ".mov", ".mkv"):
            pad_h, pad_w = a.shape[1] % 2, a.shape[2] % 2
            if pad_h or pad_w:
                a = np.pad(a, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            writers = _mp4_writers()
            if writer != "auto":
                writers = [w for w in writers if w[0] == writer]
            if not writers:
                raise ImportError(
                    f"cannot write {p}: no video encoder available"
                    + (f" ({writer!r} not importable)" if writer != "auto" else "")
                    + "; `pip install av` (or `pip install imageio-ffmpeg`), or write a .gif"
                )
            try:
                writers[0][1](a, tmp, float(fps), crf)
            except ImportError:
                raise
            except Exception as e:
                raise VideoError(f"{p}: writing with {writers[0][0]} failed ({_short(e)})") from e
        else:
            raise VideoError(f"{p}: unsupported output format {suffix!r}; use .mp4 or .gif")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a new file follows the umask
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_frames(
    frames: Video | np.ndarray | torch.Tensor,
    directory: str | os.PathLike[str],
    *,
    pattern: str = "{:05d}.jpg",
    quality: int = 95,
    value_range: tuple[float, float] | None = None,
) -> list[Path]:
    """Write one image per frame (``00000.jpg``...) into ``directory`` (created if missing)."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(to_uint8_frames(frames, value_range)):
        q = d / pattern.format(i)
        if q.suffix.lower() in (".jpg", ".jpeg"):
            Image.fromarray(f).save(q, quality=quality, subsampling=0)
        else:
            Image.fromarray(f).save(q)
        out.append(q)
    return out


def frame_strip(
    frames: Video | np.ndarray | torch.Tensor,
    n: int = 8,
    *,
    gap: int = 0,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """A horizontal strip ``(H, n*W + (n-1)*gap, 3)`` uint8 of ``n`` evenly spaced frames.

    Frames are taken at ``round(linspace(0, F-1, n))`` (first and last included); with fewer
    than ``n`` frames all are used. ``gap`` white pixels separate them.
    """
    a = to_uint8_frames(frames, value_range)
    if len(a) == 0:
        raise VideoError("frame_strip: no frames")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    idx = np.floor(np.linspace(0, len(a) - 1, min(n, len(a))) + 0.5).astype(int)
    parts: list[np.ndarray] = []
    sep = np.full((a.shape[1], gap, 3), 255, np.uint8)
    for k, i in enumerate(idx):
        if k and gap:
            parts.append(sep)
        parts.append(a[i])
    return np.concatenate(parts, axis=1)
