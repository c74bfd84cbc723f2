"""AnimateDiff's FreeNoise (``pipe.enable_free_noise``) is recorded: its temporal attention runs
on windows of frames, and each window's maps are stored along a ``window`` dimension (the
window's first frame), with ``query_frame`` / ``key_frame`` counted within the window.

Tiny random-weight instance of diffusers' own ``AnimateDiffPipeline`` (motion modules with a
32-frame positional encoding) and diffusers' own FreeNoise blocks.

References, independent of attnlab: the windows diffusers documents for ``enable_free_noise``
(context length 16, stride 4: 24 frames are processed as [0, 15], [4, 19], [8, 23]), written
out by hand; each window's map recomputed by brute force (float64 softmax of ``q k^T / sqrt d``
from the layer's own projections) from the input that plain torch pre-hooks capture on the
attention module in each of its calls.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core.refusals import UnsupportedConfigurationError
from attnlab.core.sites import FrameLimitError, UnsupportedModelError
from attnlab.core.store import WINDOW

LAYER = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"
# diffusers' windows for context length 16, stride 4 (its enable_free_noise docstring), by hand
WINDOWS = {24: [0, 4, 8], 40: [0, 4, 8, 12, 16, 20, 24]}


@pytest.fixture
def pipe():
    from attnlab.models.tiny import build_tiny

    pipe = build_tiny("tiny-animatediff")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(pipe, frames: int):
    return pipe(
        prompt="a polar bear playing drums", num_frames=frames, height=64, width=48,
        num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip


def _brute(attn, x: torch.Tensor, halves: int) -> np.ndarray:
    """``[halves, F, F]``: the map of one attention call on ``x`` ``[rows, F, C]``, averaged
    over positions and heads, float64."""
    assert attn.group_norm is None and attn.norm_q is None and attn.spatial_norm is None
    rows, frames, _ = x.shape
    heads = attn.heads
    q, k = (
        m(x).double().view(rows, frames, heads, -1).transpose(1, 2) for m in (attn.to_q, attn.to_k)
    )
    p = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    return p.view(halves, rows // halves, heads, frames, frames).mean((1, 2)).detach().numpy()


@pytest.mark.parametrize("frames", [24, 40])
def test_every_window_of_every_step_is_recorded_as_its_attention(pipe, frames):
    """Fails before FreeNoise was recorded: refused at entry (and before that, 40 frames raised
    FrameLimitError and 24 a shape mismatch)."""
    pipe.enable_free_noise(context_length=16, context_stride=4)
    reference = _gen(pipe, frames)
    attn = pipe.unet.get_submodule(LAYER)
    inputs: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    timesteps: list[float] = []
    h2 = pipe.unet.register_forward_pre_hook(lambda m, args: timesteps.append(float(args[1])))
    try:
        with attnlab.record(pipe, levels=[0]) as rec:
            got = _gen(pipe, frames)
    finally:
        handle.remove()
        h2.remove()
    assert not attnlab.is_instrumented(pipe)
    # the explicit attention of the recorded layers: the video up to float rounding
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-4)

    ds = rec.to_xarray().isel(run=0)
    windows = WINDOWS[frames]
    assert ds.sizes[D.STEP] == 2 and list(ds[D.TIMESTEP].values) == timesteps
    assert list(ds[WINDOW].values) == windows
    assert ds.sizes[D.QUERY] == ds.sizes[D.KEY] == 16  # frames within the window
    assert ds[D.PROBS].dims[:3] == (D.STEP, D.LAYER, WINDOW)
    assert ds[D.RAN].dims == (D.STEP, D.LAYER, D.CFG) and ds[D.RAN].values.all()
    assert rec.runs[0].attrs["frames"] == frames
    assert rec.runs[0].attrs["windows"]["starts"] == windows
    assert rec.runs[0].attrs["windows"]["context_stride"] == 4
    # one attention call per window and step, in the windows' order
    assert len(inputs) == 2 * len(windows) and all(x.shape[1] == 16 for x in inputs)
    recorded = ds[D.PROBS].sel(layer=LAYER, sample=0).transpose(D.STEP, WINDOW, D.CFG, ...).values
    for i, x in enumerate(inputs):
        step, w = divmod(i, len(windows))
        np.testing.assert_allclose(recorded[step, w], _brute(attn, x, 2), rtol=0, atol=2e-6)
    # windows differ: a window's map is not another's
    assert not np.allclose(recorded[1, 0], recorded[1, -1], atol=1e-4)
    # the figures' reduction averages the windows too: one 16 x 16 panel, their mean
    from attnlab.lab.plots import reduce_maps

    panel = reduce_maps(ds[D.PROBS].sel(layer=[LAYER]))
    assert panel.dims == (D.QUERY, D.KEY)
    cond = ds[D.PROBS].sel(layer=LAYER, cfg=D.COND).mean([D.STEP, WINDOW, D.SAMPLE])
    np.testing.assert_allclose(panel.values, cond.values, rtol=1e-6, atol=1e-7)


def test_the_frame_limit_applies_to_the_window(pipe):
    """The motion modules' positional encoding has 32 frames: 40 frames in windows of 16 record
    (above), a window of 40 is refused before any work as without FreeNoise."""
    pipe.enable_free_noise(context_length=40, context_stride=4)
    with pytest.raises(FrameLimitError, match="40 frames exceed"), attnlab.record(pipe):
        _gen(pipe, 40)
    assert not attnlab.is_instrumented(pipe)


def test_edits_under_free_noise_are_refused(pipe):
    pipe.enable_free_noise(context_length=16, context_stride=4)
    with (
        pytest.raises(UnsupportedConfigurationError, match=r"FreeNoise.*disable_free_noise"),
        attnlab.edit(pipe, attnlab.Replace("identity")),
    ):
        pass
    assert not attnlab.is_instrumented(pipe)


def test_split_inference_is_refused_naming_it(pipe):
    """FreeNoise split inference (``enable_free_noise_split_inference``) runs each temporal
    attention layer once per chunk of its rows (diffusers' ``SplitInferenceModule`` around the
    motion modules' transformer blocks): refused at entry, naming it and what to do. Fails
    without the check: refused as a model without temporal attention ("no temporal
    self-attention module found"), the wrapped layers not being at the paths attnlab maps."""
    pipe.enable_free_noise(context_length=16, context_stride=4)
    pipe.enable_free_noise_split_inference(spatial_split_size=16, temporal_split_size=8)
    why = (
        r"SplitInferenceModule wraps 13 blocks holding its temporal attention \(AnimateDiff's "
        r"FreeNoise split inference, pipe.enable_free_noise_split_inference; the first: "
        r"down_blocks.0.motion_modules.0.transformer_blocks.0, 16 rows per chunk\).*"
        r"load the pipeline again and call only pipe.enable_free_noise"
    )
    for enter in (
        lambda: attnlab.record(pipe),
        lambda: attnlab.edit(pipe, attnlab.Replace("identity")),
        lambda: attnlab.hooks(pipe),
    ):
        with pytest.raises(UnsupportedConfigurationError, match=why), enter():
            pass
        assert not attnlab.is_instrumented(pipe)
    with pytest.raises(UnsupportedModelError, match=why):
        attnlab.sites(pipe)


def test_windowed_and_whole_runs_load_together(pipe, tmp_path):
    """A store with a FreeNoise run and a run without windows loads along ``window``: the run
    without windows is the one window starting at frame 0 (its maps unchanged), NaN at the
    other windows' starts, ``ran`` unchanged."""
    store = tmp_path / "runs.zarr"
    pipe.enable_free_noise(context_length=16, context_stride=4)
    with attnlab.record(pipe, levels=[0], store=store, name="windows") as a:
        _gen(pipe, 24)
    pipe.disable_free_noise()
    with attnlab.record(pipe, levels=[0], store=store, name="whole") as b:
        _gen(pipe, 16)
    ds = attnlab.load(store)
    assert list(ds[D.RUN].values) == ["whole", "windows"] and list(ds[WINDOW].values) == [0, 4, 8]
    whole = ds[D.PROBS].sel(run="whole")
    np.testing.assert_array_equal(
        whole.sel(window=0).values, b.to_xarray()[D.PROBS].isel(run=0).values
    )
    assert np.isnan(whole.sel(window=[4, 8]).values).all()
    np.testing.assert_array_equal(
        ds[D.PROBS].sel(run="windows").values, a.to_xarray()[D.PROBS].isel(run=0).values
    )
    assert ds[D.RAN].values.all()
