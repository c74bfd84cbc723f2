"""Separate-call guidance: a guided pipeline that calls the denoiser once per half without
diffusers' ``cache_context`` (``WanVideoToVideoPipeline``: the prompt's call, then the negative
prompt's) is recorded as one step per sampler step with both halves, each call's half told by
its text conditioning, the calls of a step paired by their timestep. Where the half cannot be
told, one error says how to label the calls. Tiny random-weight instances of diffusers' own
``WanVideoToVideoPipeline`` and ``WanTransformer3DModel``.

References: plain torch hooks log every transformer call (timestep) and capture the attention
inputs of ``blocks.1.attn1`` at each call; diffusers' source fixes the order (the call with
``prompt_embeds`` first, ``negative_prompt_embeds`` second); each map is recomputed from the
captured inputs with a float64 full softmax (``tests/core/test_joint.py``'s helpers).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from tests.core.test_joint import _brute_map, _qkv
from tests.helpers import wan_pipeline_as

FRAMES, TOKENS = 3, 16  # 9 video frames -> 3 latent frames; 64 x 64 -> 4 x 4 tokens
LAYER = "blocks.1.attn1"


@pytest.fixture(scope="module")
def v2v():
    from diffusers import WanVideoToVideoPipeline

    return wan_pipeline_as(WanVideoToVideoPipeline)


def _gen(
    pipe, negative: str | list[str] = "blurry", guidance: float = 6.0, prompt="a bear", **more
):
    from PIL import Image

    video = [Image.new("RGB", (64, 64), (100, 50, 20 + 10 * i)) for i in range(9)]
    return pipe(
        video=video, prompt=prompt, negative_prompt=negative, height=64, width=64,
        guidance_scale=guidance, max_sequence_length=8, output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **{"num_inference_steps": 2, "strength": 1.0, **more},
    ).frames  # fmt: skip


def _log(pipe):
    """Every transformer call's timestep and the inputs of LAYER at that call (plain hooks)."""
    calls: list = []
    attn = dict(pipe.transformer.named_modules())[LAYER]

    def pre(module, args, kwargs):
        calls.append({"t": float(kwargs["timestep"].max())})

    def attn_pre(module, args, kwargs):
        calls[-1]["qkv"] = (args, kwargs)

    handles = [
        pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
        attn.register_forward_pre_hook(attn_pre, with_kwargs=True),
    ]
    return calls, attn, handles


def test_separate_call_guidance_is_one_step_with_both_halves(v2v):
    reference = _gen(v2v)
    calls, attn, handles = _log(v2v)
    try:
        with attnlab.record(v2v, reduce="head") as rec:
            got = _gen(v2v)
    finally:
        for h in handles:
            h.remove()
    # the default (split) recording: each layer call within 1e-6 of the model's; over 2 guided
    # steps the latents drift further (docs/attention-3d.md)
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
    assert len(calls) == 4  # 2 steps x (prompt, negative prompt)
    ds = rec.to_xarray().isel(run=0)
    assert ds.sizes[D.STEP] == 2 and list(ds[D.CFG].values) == ["uncond", "cond"]
    assert ds[D.RAN].values.all()
    assert ds[D.TIMESTEP].values.tolist() == [calls[0]["t"], calls[2]["t"]]
    assert calls[0]["t"] == calls[1]["t"] and calls[2]["t"] == calls[3]["t"]
    _check_each_call(ds, calls, attn)
    assert not attnlab.is_instrumented(v2v)


def test_separate_call_guidance_with_two_videos_per_call_keeps_halves_and_samples(v2v):
    """Two prompts: each call holds one half of batch 2 (even), still told by its text; before,
    an even batch was read as an [uncond, cond] batch (4 steps, 1 sample, halves wrong)."""
    calls, attn, handles = _log(v2v)
    try:
        with attnlab.record(v2v, reduce="head") as rec:
            _gen(v2v, negative=["blurry", "dark"], prompt=["a bear", "a cat"])
    finally:
        for h in handles:
            h.remove()
    ds = rec.to_xarray().isel(run=0)
    assert ds.sizes[D.STEP] == 2 and list(ds[D.CFG].values) == ["uncond", "cond"]
    assert ds.sizes[D.SAMPLE] == 2 and ds[D.RAN].values.all()
    for i, call in enumerate(calls):
        step, half = divmod(i, 2)
        with torch.no_grad():
            q, k, _ = _qkv("wan", attn, *call["qkv"])
        A, _ = _brute_map(q, k, FRAMES * TOKENS, FRAMES, text_first=False)  # [2, H, F, F]
        cfg = "cond" if half == 0 else "uncond"
        got = ds[D.PROBS].sel(step=step, layer=LAYER, cfg=cfg).transpose(D.SAMPLE, ...).values
        torch.testing.assert_close(torch.from_numpy(got).double(), A, atol=1e-5, rtol=0)


def test_a_pipeline_that_skips_the_first_steps_is_recorded_with_the_steps_it_runs(v2v):
    """strength 0.5 of 4 steps: WanVideoToVideoPipeline runs the last 2 steps of the schedule
    (get_timesteps, without set_begin_index); the run has 2 steps, and steps=-1 is the last
    call (before: num_steps 4, step 3 selected, nothing recorded)."""
    calls, _, handles = _log(v2v)
    try:
        with attnlab.record(v2v, steps=-1) as last, attnlab.record(v2v) as every:
            _gen(v2v, guidance=1.0, num_inference_steps=4, strength=0.5)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 2
    ds = every.to_xarray().isel(run=0)
    assert ds[D.STEP].values.tolist() == [0, 1]
    assert ds[D.TIMESTEP].values.tolist() == [c["t"] for c in calls]
    assert every.runs[0].attrs["num_steps"] == 2
    one = last.to_xarray().isel(run=0)
    assert one[D.STEP].values.tolist() == [1] and one[D.TIMESTEP].values.tolist() == [calls[1]["t"]]
    with pytest.raises(Exception, match="out of range"), attnlab.record(v2v, steps=[3]):
        _gen(v2v, guidance=1.0, num_inference_steps=4, strength=0.5)


def _check_each_call(ds, calls, attn):
    """Each call's map is the brute force of that call's own q, k, in the step and half it
    belongs to (diffusers' order: the prompt's call, then the negative prompt's)."""
    for i, call in enumerate(calls):
        step, half = divmod(i, 2)
        with torch.no_grad():
            q, k, _ = _qkv("wan", attn, *call["qkv"])
        A, _ = _brute_map(q, k, FRAMES * TOKENS, FRAMES, text_first=False)
        cfg = "cond" if half == 0 else "uncond"
        got_map = torch.from_numpy(ds[D.PROBS].sel(step=step, layer=LAYER, cfg=cfg).values)
        torch.testing.assert_close(got_map.double(), A, atol=1e-5, rtol=0)
    # the two halves differ (they are not one call recorded twice)
    probs = ds[D.PROBS].sel(layer=LAYER).values
    assert np.abs(probs[:, 0] - probs[:, 1]).max() > 1e-4


def test_wan_pipeline_guidance_calls_are_one_step_with_each_half_its_own_call():
    """``WanPipeline`` calls the transformer per half inside ``cache_context("cond")`` /
    ``("uncond")``: one ``cfg`` coordinate, each half the map of its own call."""
    from attnlab.models.tiny_dit import wan_pipeline
    from tests.core.test_joint import _gen as t2v

    pipe = wan_pipeline()
    calls, attn, handles = _log(pipe)
    try:
        with attnlab.record(pipe, reduce="head") as rec:
            t2v(pipe)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 4  # 2 steps x (cond, uncond)
    ds = rec.to_xarray().isel(run=0)
    assert ds.sizes[D.STEP] == 2 and list(ds[D.CFG].values) == ["uncond", "cond"]
    assert ds[D.RAN].values.all()
    assert ds[D.TIMESTEP].values.tolist() == [calls[0]["t"], calls[2]["t"]]
    _check_each_call(ds, calls, attn)
    assert not attnlab.is_instrumented(pipe)


def test_halves_that_cannot_be_told_apart_raise_one_error_saying_how_to_label_them(v2v):
    with (
        pytest.raises(RuntimeError, match=r"cannot tell which half.*same embeddings.*cache_co"),
        attnlab.record(v2v),
    ):
        _gen(v2v, negative="a bear")  # the negative prompt is the prompt
    assert not attnlab.is_instrumented(v2v)
    with attnlab.record(v2v) as rec:  # unguided: one call per step, every step recorded
        _gen(v2v, guidance=1.0)
    assert rec.to_xarray().sizes[D.STEP] == 2


def test_a_bare_denoiser_in_a_guided_run_without_labels_raises_saying_how_to_label():
    from attnlab.models.tiny_dit import wan_transformer

    model = wan_transformer()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, FRAMES, 8, 8, generator=g)
    text = torch.randn(1, 8, 16, generator=g)
    with (
        pytest.raises(RuntimeError, match=r"cannot tell which half.*cache_context\(\"cond\"\)"),
        attnlab.record(model),
        attnlab.Controller.of(model).run(cfg=True),
        torch.no_grad(),
    ):
        model(x, torch.tensor([900.0]), text, return_dict=False)
    # labelled, the two calls of a step are one step with both halves
    with attnlab.record(model) as rec, attnlab.Controller.of(model).run(cfg=True), torch.no_grad():
        for t in (900.0, 500.0):
            for half in ("cond", "uncond"):
                with model.cache_context(half):
                    model(x, torch.tensor([t]), text, return_dict=False)
    ds = rec.to_xarray().isel(run=0)
    assert ds.sizes[D.STEP] == 2 and ds[D.RAN].values.all()
    assert ds[D.TIMESTEP].values.tolist() == [900.0, 500.0]
