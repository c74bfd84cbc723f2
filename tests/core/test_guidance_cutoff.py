"""Classifier-free guidance turned off mid-run, as diffusers documents it: a
``callback_on_step_end`` that, after some step, sets ``pipe._guidance_scale = 0.0`` and keeps
the conditional half of ``prompt_embeds`` (``callback_on_step_end_tensor_inputs=
["prompt_embeds"]``). From then on the pipeline calls the denoiser on the conditional half
alone: those steps are recorded with ``cond`` only and ``uncond`` marked as not run.

Tiny random-weight instance of diffusers' own ``AnimateDiffPipeline``. References,
independent of attnlab: a plain torch pre-hook captures the input of one temporal attention
layer in each call; its map is recomputed by brute force (float64 softmax of ``q k^T / sqrt
d`` from the layer's own projections). Which rows are which half follows from diffusers'
source (``torch.cat([negative, prompt])`` while guidance is on, the callback's half after).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from tests.core.test_freenoise import _brute

LAYER = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"
POSITIONS, FRAMES = 8 * 6, 8  # 64 x 48 video -> 8 x 6 latent (level 0)


def _cut_off_after(step: int) -> dict:
    """diffusers' dynamic classifier-free guidance callback (its "Pipeline callbacks" docs)."""

    def callback(pipe, i, t, callback_kwargs):
        if i == step:
            pipe._guidance_scale = 0.0
            callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[-1]
        return callback_kwargs

    return dict(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def _gen(pipe, videos: int, **more) -> torch.Tensor:
    """``videos`` videos, one per prompt (AnimateDiff makes one video per prompt)."""
    prompts = ["a polar bear playing drums", "a red fox in the snow"][:videos]
    return pipe(
        prompt=prompts, num_frames=FRAMES, height=64, width=48, num_inference_steps=3,
        guidance_scale=7.5, output_type="latent", generator=torch.Generator().manual_seed(0),
        **more,
    ).frames  # fmt: skip


@pytest.mark.parametrize("videos", [1, 2])
def test_steps_after_a_guidance_cut_off_record_the_conditional_half_and_mark_the_other(
    ad_pipe, videos
):
    """Fails without the cut-off's support: one video raised the separate-call guidance error
    ("cannot tell which half this call is"), two videos recorded the conditional half of each
    step after the cut-off as video 0 = uncond, video 1 = cond."""
    reference = _gen(ad_pipe, videos, **_cut_off_after(0))
    attn = ad_pipe.unet.get_submodule(LAYER)
    inputs: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    try:
        with attnlab.record(ad_pipe, levels=[0]) as rec:
            got = _gen(ad_pipe, videos, **_cut_off_after(0))
    finally:
        handle.remove()
    assert not attnlab.is_instrumented(ad_pipe)
    # the recorded layers' explicit attention: the video up to float rounding
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-4)

    # diffusers' calls: the [uncond, cond] batch at step 0, the conditional half after
    halves = [2, 1, 1]
    assert [x.shape[0] for x in inputs] == [h * videos * POSITIONS for h in halves]
    ds = rec.to_xarray().isel(run=0)
    assert ds.sizes[D.STEP] == 3 and ds.sizes[D.SAMPLE] == videos
    ran = ds[D.RAN].transpose(D.STEP, D.LAYER, D.CFG).values
    assert ran[:, :, 1].all()  # cond at every step, every layer
    assert ran[0, :, 0].all() and not ran[1:, :, 0].any()  # uncond only before the cut-off
    probs = ds[D.PROBS].sel(layer=LAYER).transpose(D.STEP, D.CFG, D.SAMPLE, ...).values
    assert np.isnan(probs[1:, 0]).all() and not np.isnan(probs[:, 1]).any()
    expected = _brute(attn, inputs[0], 2 * videos).reshape(2, videos, FRAMES, FRAMES)
    np.testing.assert_allclose(probs[0], expected, rtol=0, atol=2e-6)
    for step in (1, 2):
        expected = _brute(attn, inputs[step], videos)
        np.testing.assert_allclose(probs[step, 1], expected, rtol=0, atol=2e-6)


def test_a_cut_off_whose_half_cannot_be_told_says_why(ad_pipe):
    """After the cut-off the call's text conditioning must be one half of the earlier
    calls': a callback that hands the denoiser other embeddings is refused with the reason
    (not the separate-call guidance error about labelling calls)."""

    def callback(pipe, i, t, callback_kwargs):
        if i == 0:
            pipe._guidance_scale = 0.0
            callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[-1] * 2
        return callback_kwargs

    with (
        pytest.raises(RuntimeError, match=r"guidance stopped mid-run.*neither half"),
        attnlab.record(ad_pipe, levels=[0]),
    ):
        _gen(
            ad_pipe, 1, callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )  # fmt: skip
    assert not attnlab.is_instrumented(ad_pipe)
