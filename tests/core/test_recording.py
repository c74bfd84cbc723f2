"""Recorders: selections, reductions, step addressing, CFG halves, streaming and the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import attnlab
from attnlab.core import dims as D
from attnlab.core.selection import SelectionError
from attnlab.core.store import StoreError


def test_record_mean_maps_and_coordinates(ms_pipe, gen):
    with attnlab.record(ms_pipe, levels=[0, 1]) as rec:
        gen(ms_pipe, seed=3)
    ds = rec.to_xarray()
    p = ds[D.PROBS]
    assert p.dims == (D.RUN, D.STEP, D.LAYER, D.CFG, D.SAMPLE, D.QUERY, D.KEY)
    assert p.sizes == {
        D.RUN: 1,
        D.STEP: 2,
        D.LAYER: 14,
        D.CFG: 2,
        D.SAMPLE: 1,
        D.QUERY: 8,
        D.KEY: 8,
    }
    np.testing.assert_allclose(p.sum(D.KEY), 1.0, atol=1e-5)
    assert set(ds[D.LEVEL].values) == {0, 1}
    assert list(ds[D.CFG].values) == ["uncond", "cond"]
    # step addressing from the pipeline's own sampler
    np.testing.assert_array_equal(ds[D.TIMESTEP].values[0], ms_pipe.scheduler.timesteps.numpy())
    assert list(ds[D.STEP].values) == [0, 1]
    assert ds[D.SEED].item() == 3 and ds[D.FRAMES].item() == 8
    assert ds[D.PROMPT].item() == "a polar bear playing drums"
    prov = json.loads(ds["provenance"].item())
    assert prov["pipeline"] == "TextToVideoSDPipeline" and prov["num_inference_steps"] == 2
    assert prov["guidance_scale"] == 9.0 and prov["height"] == 64 and prov["edits"] == []


def test_cfg_halves_match_before_text_and_differ_after(ms_pipe, gen):
    with attnlab.record(ms_pipe) as rec:
        gen(ms_pipe)
    p = rec.to_xarray()[D.PROBS]
    first = p.sel(layer="transformer_in.transformer_blocks.0.attn1")  # before any cross-attention
    np.testing.assert_allclose(first.sel(cfg="uncond"), first.sel(cfg="cond"), atol=1e-6)
    later = p.sel(layer="up_blocks.3.temp_attentions.1.transformer_blocks.0.attn2")
    assert float(abs(later.sel(cfg="uncond") - later.sel(cfg="cond")).max()) > 1e-6


def test_select_by_block_name_steps_and_cfg(ad_pipe, gen):
    with attnlab.record(ad_pipe, blocks="up", names=r"attn1$", steps=[1], cfg="cond") as rec:
        gen(ad_pipe)
    ds = rec.to_xarray()
    assert all(n.startswith("up_blocks") and n.endswith("attn1") for n in ds[D.LAYER].values)
    assert list(ds[D.STEP].values) == [1] and list(ds[D.CFG].values) == ["cond"]


def test_head_and_spatial_reductions_are_consistent_with_mean(ms_pipe, gen):
    kw = dict(levels=[0], steps=[0], logits=True)
    with (
        attnlab.record(ms_pipe, reduce="mean", **kw) as mean,
        attnlab.record(ms_pipe, reduce="head", **kw) as head,
    ):
        gen(ms_pipe)
    m = mean.to_xarray()
    h = head.to_xarray()
    np.testing.assert_allclose(h[D.PROBS].mean(D.HEAD), m[D.PROBS], atol=1e-6)
    np.testing.assert_allclose(h[D.LOGITS].mean(D.HEAD), m[D.LOGITS], atol=1e-5)
    # a full spatial grid (8x6 = every position at level 0) averages back to the mean map
    with attnlab.record(ms_pipe, reduce="spatial", grid=(8, 6), **kw) as sp:
        gen(ms_pipe)
    s = sp.to_xarray()[D.PROBS]
    assert s.sizes[D.Y] == 8 and s.sizes[D.X] == 6
    np.testing.assert_allclose(s.mean([D.Y, D.X]), m[D.PROBS], atol=1e-6)


def test_head_reduction_pads_fewer_heads_with_nan(ms_pipe, gen):
    with attnlab.record(ms_pipe, levels=[0, 2], steps=[0], reduce="head") as rec:
        gen(ms_pipe)
    p = rec.to_xarray()[D.PROBS]
    assert p.sizes[D.HEAD] == 16  # level-2 layers have 16 heads, level-0 layers 8
    lvl0 = p.where(p[D.LEVEL] == 0, drop=True)
    assert np.isnan(lvl0.sel(head=slice(8, None))).all()
    assert not np.isnan(lvl0.sel(head=slice(0, 7))).any()


def test_streaming_store_equals_in_memory_and_keeps_nothing(ms_pipe, gen, tmp_path):
    store = tmp_path / "s.zarr"
    with (
        attnlab.record(ms_pipe, levels=[0], store=store) as streamed,
        attnlab.record(ms_pipe, levels=[0]) as memory,
    ):
        gen(ms_pipe)
        gen(ms_pipe, seed=1)
    assert all(r.chunks == [] for r in streamed.runs)  # nothing held in RAM
    a = attnlab.load(store)
    b = memory.to_xarray()
    assert a.sizes[D.RUN] == 2
    np.testing.assert_allclose(a[D.PROBS].values, b[D.PROBS].values, atol=0)
    assert list(a[D.SEED].values) == [0, 1]


def test_save_and_load_round_trip_and_append_runs(ms_pipe, gen, tmp_path):
    store = tmp_path / "r.zarr"
    with attnlab.record(ms_pipe, levels=[1]) as rec:
        gen(ms_pipe)
    rec.save(store)
    with attnlab.record(ms_pipe, levels=[1]) as rec2:
        gen(ms_pipe, num_frames=6)
    rec2.save(store)
    ds = attnlab.load(store)
    assert ds.sizes[D.RUN] == 2 and ds.sizes[D.QUERY] == 8
    assert list(ds[D.FRAMES].values) == [8, 6]
    six = ds[D.PROBS].isel(run=1)
    assert np.isnan(six.sel(query_frame=[6, 7])).all()  # padded
    np.testing.assert_allclose(
        six.sel(query_frame=slice(0, 5), key_frame=slice(0, 5)).sum(D.KEY), 1, atol=1e-5
    )
    xr.testing.assert_allclose(ds[D.PROBS].isel(run=[0]), rec.to_xarray()[D.PROBS])
    # readable with plain xarray too (docs/store-schema.md)
    run_id = str(ds[D.RUN].values[0])
    plain = xr.open_zarr(store, group=f"runs/{run_id}", consolidated=False)
    assert plain.attrs["complete"] is True and plain[D.PROBS].dims[0] == D.STEP


def test_interrupted_run_is_incomplete_and_skipped(ms_pipe, gen, tmp_path):
    store = tmp_path / "i.zarr"
    with attnlab.record(ms_pipe, levels=[0], store=store):
        gen(ms_pipe)

    def stop(pipe, i, t, kw):
        if i == 1:
            raise KeyboardInterrupt
        return kw

    with pytest.raises(KeyboardInterrupt), attnlab.record(ms_pipe, levels=[0], store=store):
        ms_pipe(
            **{"prompt": "x", "num_frames": 8, "height": 64, "width": 48, "num_inference_steps": 2},
            callback_on_step_end=stop,
        ) if "callback_on_step_end" in ms_pipe.__call__.__code__.co_varnames else _interrupt(
            ms_pipe
        )
    assert attnlab.load(store).sizes[D.RUN] == 1
    assert attnlab.load(store, include_incomplete=True).sizes[D.RUN] == 2


def _interrupt(pipe):
    def cb(i, t, latents):
        if i == 1:
            raise KeyboardInterrupt

    pipe(
        prompt="x",
        num_frames=8,
        height=64,
        width=48,
        num_inference_steps=2,
        callback=cb,
        callback_steps=1,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(levels=[7]), r"level \[7\].*levels \[0, 1, 2, 3\]"),
        (dict(names="nope"), "matches no temporal attention layer"),
        (dict(blocks="side"), "unknown block"),
        (dict(cfg="maybe"), "cfg must be one of"),
        (dict(reduce="max"), "reduce must be one of"),
        (dict(steps=["a"]), "steps must be integers"),
    ],
)
def test_bad_selections_raise_clearly(ms_pipe, kwargs, match):
    with pytest.raises(SelectionError, match=match), attnlab.record(ms_pipe, **kwargs):
        pass
    assert not any(hasattr(m, "hook_probs") for m in ms_pipe.unet.modules())


def test_step_out_of_range_raises_before_work(ms_pipe, gen):
    calls = []
    h = ms_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with (
            pytest.raises(SelectionError, match=r"step 5 out of range: this run has 2 steps"),
            attnlab.record(ms_pipe, steps=[5]),
        ):
            gen(ms_pipe)
    finally:
        h.remove()
    assert calls == []


def test_incompatible_store_refused_and_left_intact(ms_pipe, gen, tmp_path):
    store = tmp_path / "c.zarr"
    with attnlab.record(ms_pipe, levels=[0], store=store):
        gen(ms_pipe)
    before = attnlab.load(store)[D.PROBS].values.copy()
    with (
        pytest.raises(StoreError, match="cannot append"),
        attnlab.record(ms_pipe, levels=[0], reduce="head", store=store),
    ):
        gen(ms_pipe)
    np.testing.assert_array_equal(attnlab.load(store)[D.PROBS].values, before)
    # a zarr store that attnlab did not write
    import zarr

    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("x", shape=(2,), dtype="f4")
    with (
        pytest.raises(StoreError, match="not an attnlab store"),
        attnlab.record(ms_pipe, store=other),
    ):
        pass
    with pytest.raises(StoreError, match="no store"):
        attnlab.load(tmp_path / "missing.zarr")


def test_bare_denoiser_calls_are_one_run(ms_pipe):
    unet = ms_pipe.unet
    x = torch.randn(1, 4, 8, 8, 6)
    e = torch.randn(1, 77, 32)
    with attnlab.record(unet, levels=[0]) as rec:
        ctrl = attnlab.Controller.of(unet)
        with ctrl.run(source="real", meta={"video": "clip"}, timesteps=[600, 300]):
            for t in (600, 300):
                unet(x, torch.tensor([t]), encoder_hidden_states=e)
    ds = rec.to_xarray()
    assert list(ds[D.TIMESTEP].values[0]) == [600, 300]
    assert ds[D.SOURCE].item() == "real" and ds[D.VIDEO].item() == "clip"
    assert list(ds[D.CFG].values) == ["cond"]


def test_denoiser_first_then_pipeline_still_delimits_runs(ms_pipe, gen):
    with (
        attnlab.record(ms_pipe.unet, levels=[0]) as bare,
        attnlab.record(ms_pipe, levels=[0]) as piped,
    ):
        gen(ms_pipe)
        gen(ms_pipe, seed=1)
    assert bare.to_xarray().sizes[D.RUN] == 2 and piped.to_xarray().sizes[D.RUN] == 2
    assert list(piped.to_xarray()[D.SEED].values) == [0, 1]
    from diffusers import TextToVideoSDPipeline

    assert type(ms_pipe) is TextToVideoSDPipeline  # the per-instance subclass is gone


def test_two_pipelines_sharing_one_denoiser_are_both_delimited(ms_pipe, gen):
    from diffusers import TextToVideoSDPipeline

    other = TextToVideoSDPipeline(**ms_pipe.components)
    other.set_progress_bar_config(disable=True)
    with attnlab.record(ms_pipe, levels=[0]) as a, attnlab.record(other, levels=[0]) as b:
        gen(other, seed=4)
    for rec in (a, b):
        ds = rec.to_xarray()
        assert list(ds[D.CFG].values) == ["uncond", "cond"] and ds[D.SEED].item() == 4
    assert type(other) is TextToVideoSDPipeline and type(ms_pipe) is TextToVideoSDPipeline


def test_a_client_cannot_be_active_twice_and_nothing_leaks(ms_pipe, gen):
    import gc
    import weakref

    ref = gen(ms_pipe)
    syn = attnlab.Synopsis(["a red car", "a blue boat"])
    with attnlab.edit(ms_pipe, syn):
        with pytest.raises(ValueError, match="already active"), attnlab.edit(ms_pipe, syn):
            pass
        gen(ms_pipe)
    assert not any(m._forward_pre_hooks for m in ms_pipe.unet.modules())
    with attnlab.record(ms_pipe, levels=[0]):
        pass
    assert torch.equal(gen(ms_pipe), ref)
    # nothing of attnlab keeps a model alive once its contexts are closed
    from attnlab.core.control import _controllers

    assert ms_pipe.unet not in _controllers
    from attnlab.models.tiny import build_tiny

    tmp = build_tiny("tiny-modelscope")
    with attnlab.record(tmp, levels=[0]):
        pass
    dead = weakref.ref(tmp.unet)
    del tmp
    gc.collect()
    assert dead() is None


def test_scheduler_signature_is_kept_while_instrumented(ms_pipe):
    import inspect

    before = inspect.signature(ms_pipe.scheduler.set_timesteps)
    with attnlab.record(ms_pipe):
        assert inspect.signature(ms_pipe.scheduler.set_timesteps) == before


def test_failed_last_write_leaves_the_run_incomplete_and_a_rerun_replaces_it(
    ms_pipe, gen, tmp_path, monkeypatch
):
    from attnlab.core import store as S

    path = tmp_path / "f.zarr"
    real_append = S.RunWriter.append
    calls = {"n": 0}

    def flaky(self, ds):
        calls["n"] += 1
        if calls["n"] == 2:  # the last step's write fails
            raise OSError("disk full")
        return real_append(self, ds)

    monkeypatch.setattr(S.RunWriter, "append", flaky)
    with (
        pytest.raises(OSError, match="disk full"),
        attnlab.record(ms_pipe, levels=[0], store=path, name="job"),
    ):
        gen(ms_pipe)
    monkeypatch.setattr(S.RunWriter, "append", real_append)
    assert S.list_runs(path) == [] and S.list_runs(path, include_incomplete=True) == ["job"]
    with attnlab.record(ms_pipe, levels=[0], store=path, name="job"):  # same name: replaces it
        gen(ms_pipe)
    assert attnlab.load(path).sizes[D.STEP] == 2
    with (
        pytest.raises(StoreError, match="already exists"),
        attnlab.record(ms_pipe, levels=[0], store=path, name="job"),
    ):
        gen(ms_pipe)


def test_spatial_grid_cells_are_the_rows_at_those_positions(ms_pipe, gen):
    """Index order b*(h*w) + y*w + x: a grid cell equals the hook_probs row at (y, x), by hand."""
    from tests.helpers import capture

    name = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1"
    attn = dict(ms_pipe.unet.named_modules())[name]
    got = {}
    with attnlab.record(ms_pipe, names=name + "$", steps=[0], reduce="spatial", grid=(3, 2)) as rec:
        h = attn.hook_probs.register_forward_hook(capture(got, "p"))
        try:
            gen(ms_pipe)
        finally:
            h.remove()
    p = rec.to_xarray()[D.PROBS].isel(run=0, step=0, layer=0, sample=0)
    rows = got["p"]  # [B*h*w, heads, F, F] with B = 2 (uncond, cond), latent 8 x 6
    hh, ww = 8, 6
    for i, y in enumerate([1, 4, 6]):  # floor((i + 0.5) * 8 / 3)
        for j, x in enumerate([1, 4]):  # floor((j + 0.5) * 6 / 2)
            for b, half in enumerate(["uncond", "cond"]):
                expected = rows[b * hh * ww + y * ww + x].mean(0).numpy()
                np.testing.assert_allclose(p.sel(cfg=half, y=i, x=j).values, expected, atol=1e-6)


def test_cfg_halves_are_labelled_in_batch_order(ms_pipe, gen):
    """Swap prompt and negative prompt: run 1's uncond half is run 2's cond half at step 0."""
    with attnlab.record(ms_pipe, levels=[0], steps=[0]) as r1:
        gen(ms_pipe, prompt="a red car", negative_prompt="a green forest")
    with attnlab.record(ms_pipe, levels=[0], steps=[0]) as r2:
        gen(ms_pipe, prompt="a green forest", negative_prompt="a red car")
    a, b = r1.to_xarray()[D.PROBS], r2.to_xarray()[D.PROBS]
    np.testing.assert_allclose(a.sel(cfg="uncond").values, b.sel(cfg="cond").values, atol=1e-6)
    np.testing.assert_allclose(a.sel(cfg="cond").values, b.sel(cfg="uncond").values, atol=1e-6)
    assert not np.allclose(a.sel(cfg="cond").values, b.sel(cfg="cond").values, atol=1e-6)


def test_an_inner_block_does_not_cut_the_outer_blocks_run_of_bare_calls(ms_pipe):
    """Bare denoiser calls form one run per outermost attnlab block: an edit around some of
    them leaves the recording's run whole."""
    unet = ms_pipe.unet
    x = torch.randn(1, 4, 8, 8, 6, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, unet.config.cross_attention_dim)

    def call(t):
        with torch.no_grad():
            return unet(x, t, text).sample

    with attnlab.record(unet, levels=[0]) as rec:
        call(900)
        with attnlab.edit(unet, attnlab.Replace("identity", levels=[0])):
            edited = call(700)
        call(600)
    ds = rec.to_xarray()
    assert ds.sizes["run"] == 1
    assert ds["timestep"].values.ravel().tolist() == [900.0, 700.0, 600.0]
    # the edit acted inside its block only
    plain = call(700)
    assert not torch.equal(edited, plain)
    with attnlab.edit(unet, attnlab.Replace("identity", levels=[0])):
        assert torch.equal(call(700), edited)


def test_video_to_video_with_strength_records_the_steps_that_run(ms_pipe):
    """diffusers' VideoToVideoSDPipeline with strength 0.5 of 4 steps runs the last 2 of the
    schedule (it tells the scheduler with set_begin_index): the run has those 2 steps, and
    steps=-1 is its last call (before: num_steps 4, step 3 selected, nothing recorded)."""
    from diffusers import VideoToVideoSDPipeline

    pipe = VideoToVideoSDPipeline(**ms_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    calls: list[float] = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append(float(a[1] if len(a) > 1 else kw["timestep"])),
        with_kwargs=True,
    )
    video = [np.random.default_rng(i).random((64, 48, 3)) for i in range(8)]
    try:
        with attnlab.record(pipe, steps=-1) as last, attnlab.record(pipe) as every:
            pipe(
                "a bear", video=video, num_inference_steps=4, strength=0.5, output_type="pt",
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == 2
    ds = every.to_xarray().isel(run=0)
    assert ds[D.STEP].values.tolist() == [0, 1] and every.runs[0].attrs["num_steps"] == 2
    assert ds[D.TIMESTEP].values.tolist() == calls
    one = last.to_xarray().isel(run=0)
    assert one[D.STEP].values.tolist() == [1] and one[D.TIMESTEP].values.tolist() == calls[1:]


def test_a_second_order_sampler_records_each_denoiser_call_as_a_step(ms_pipe, gen, tmp_path):
    # Heun calls the denoiser twice per sampler step and lists the timestep of each call in
    # scheduler.timesteps (2N - 1 entries): the store's steps are those calls, in that order
    from diffusers import HeunDiscreteScheduler

    plain = ms_pipe.scheduler
    ms_pipe.scheduler = HeunDiscreteScheduler.from_config(plain.config)
    try:
        with attnlab.record(ms_pipe, levels=[0], store=tmp_path / "h.zarr"):
            gen(ms_pipe, num_inference_steps=3)
        listed = [float(t) for t in ms_pipe.scheduler.timesteps]
    finally:
        ms_pipe.scheduler = plain
    ds = attnlab.load(tmp_path / "h.zarr")
    assert len(listed) == 5 and ds.sizes[D.STEP] == 5
    np.testing.assert_array_equal(ds[D.TIMESTEP].values[0], listed)


def test_a_loop_ended_early_writes_its_unrun_steps_as_gaps(ad_pipe, gen, tmp_path):
    # diffusers' documented early stop: a callback sets pipe._interrupt and the loop skips the
    # denoiser from then on, without an error; the selected steps it never ran are written as
    # marked gaps at their scheduled timesteps, and the run says how many steps ran
    def stop(pipe, i, t, kw):
        if i == 1:
            pipe._interrupt = True
        return kw

    path = tmp_path / "stopped.zarr"
    with (
        attnlab.record(ad_pipe, levels=[0], store=path) as stored,
        attnlab.record(ad_pipe, levels=[0], steps=[3]) as last_only,
    ):
        gen(ad_pipe, num_inference_steps=4, callback_on_step_end=stop)
        timesteps = [float(t) for t in ad_pipe.scheduler.timesteps]
    ds = attnlab.load(path)
    assert ds[D.STEP].values.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(ds[D.TIMESTEP].values[0], timesteps)
    ran = ds[D.RAN].isel(run=0).any([D.LAYER, D.CFG]).values.tolist()
    assert ran == [True, True, False, False]
    probs = ds[D.PROBS].isel(run=0)
    assert np.isfinite(probs.isel(step=[0, 1]).values).all()
    assert np.isnan(probs.isel(step=[2, 3]).values).all()
    assert stored.runs[0].attrs["steps_run"] == 2
    assert attnlab.load(path, include_incomplete=True).sizes[D.RUN] == 1  # complete
    gap = last_only.to_xarray()
    assert gap[D.STEP].values.tolist() == [3] and not bool(gap[D.RAN].any())
    # a loop that ran to its end says nothing of it
    with attnlab.record(ad_pipe, levels=[0]) as full:
        gen(ad_pipe, num_inference_steps=4)
    assert "steps_run" not in full.runs[0].attrs and bool(full.to_xarray()[D.RAN].all())


@pytest.mark.parametrize("fast", [False, True])
def test_free_init_passes_are_one_run_with_steps_counted_across_them(ad_pipe, gen, fast):
    # enable_free_init reruns the sampling loop once per iteration in one call (fast sampling:
    # over more steps each time); the run's steps are every denoiser call, in order, and a
    # selection resolves against them all (-1: the last call, of the last pass)
    seen: list[float] = []
    hook = ad_pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(float(a[1])))
    ad_pipe.enable_free_init(num_iters=2, use_fast_sampling=fast)
    try:
        with (
            attnlab.record(ad_pipe, levels=[0]) as every,
            attnlab.record(ad_pipe, levels=[0], steps=[-1]) as last,
        ):
            gen(ad_pipe, num_inference_steps=4)
    finally:
        ad_pipe.disable_free_init()
        hook.remove()
    assert len(seen) == (2 + 4 if fast else 8)
    ds = every.to_xarray()
    assert ds[D.STEP].values.tolist() == list(range(len(seen)))
    np.testing.assert_array_equal(ds[D.TIMESTEP].values[0], seen)
    assert every.runs[0].attrs["num_steps"] == len(seen) and bool(ds[D.RAN].all())
    assert last.to_xarray()[D.STEP].values.tolist() == [len(seen) - 1]


def test_a_processor_swapped_in_during_the_call_is_refused(ad_pipe, gen):
    # AnimateDiffPAGPipeline's default pag_applied_layers ("mid_block.*attn1") take the
    # temporal mid attn1 too: PAG sets its own processor there for the call, so attnlab would
    # record that layer as not run (and the perturbed pass as a second video); refused
    from diffusers import AnimateDiffPAGPipeline

    from attnlab.core.refusals import UnsupportedConfigurationError

    c = ad_pipe.components
    pag = AnimateDiffPAGPipeline(
        vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=c["unet"],
        motion_adapter=c.get("motion_adapter"), scheduler=c["scheduler"],
    )  # fmt: skip
    pag.set_progress_bar_config(disable=True)
    mid = "mid_block.motion_modules.0.transformer_blocks.0.attn1"
    original = pag.unet.attn_processors
    try:
        with (
            pytest.raises(UnsupportedConfigurationError, match=rf"{mid}: .*PAG.*pag_scale=0"),
            attnlab.record(pag, levels=[0]),
        ):
            gen(pag, pag_scale=3.0, guidance_scale=1.0)
    finally:  # PAG puts the processors back only when its call succeeds
        pag.unet.set_attn_processor(original)
    with attnlab.record(pag, levels=[0]) as rec:  # without PAG: recorded as usual
        gen(pag, pag_scale=0.0, guidance_scale=1.0)
    assert bool(rec.to_xarray()[D.RAN].all())


def test_call_settings_passed_through_a_pipelines_kwargs_are_recorded():
    # the organisms' pipeline (like LaViePipeline) takes the rest of diffusers' arguments as
    # **kwargs: the seed and negative prompt given there are the run's, as for any pipeline
    from attnlab.models import load_pipeline

    pipe = load_pipeline("organism-rope", progress=False)
    with attnlab.record(pipe, levels=[0]) as rec:
        pipe(
            "a red circle moving to the right on a black background", num_frames=4,
            num_inference_steps=2, generator=torch.Generator().manual_seed(7),
            negative_prompt="blurry", output_type="np",
        )  # fmt: skip
    attrs = rec.runs[0].attrs
    assert (attrs["seed"], attrs["negative_prompt"]) == (7, "blurry")
    assert attrs["num_inference_steps"] == 2 and attrs["num_frames"] == 4
