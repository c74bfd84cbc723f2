"""Pipelines with several denoisers (Wan 2.2 A14B: ``transformer`` for the high-noise steps,
``transformer_2`` for the low-noise ones) and the ``ran`` mask: every step of every expert is
recorded and labelled with its expert, edits act on each expert, and a cell whose attention did
not run is a marked gap. Tiny random-weight instances of diffusers' own ``WanPipeline`` and
``WanTransformer3DModel``.

References: which expert ran each step and at which timestep is logged with plain torch hooks
on the two transformers (independent of attnlab); a map of ``transformer_2`` is recomputed from
its layer's inputs with a float64 full softmax (``tests/core/test_joint.py``'s helpers); and each
expert recorded alone (attnlab on that denoiser only) is the same computation as its steps in
the pipeline recording, so those are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core.refusals import UnsupportedConfigurationError
from tests.core.test_joint import _brute_map, _qkv
from tests.helpers import wan_pipeline_as

# these tests compare runs with and without attnlab bit for bit: recording by the exact path
pytestmark = pytest.mark.usefixtures("exact_joint_recording")


FRAMES, TOKENS = 3, 16  # 9 video frames -> 3 latent frames; 64 x 64 -> 8 x 8 latent -> 4 x 4 tokens
BOUNDARY = 0.9  # transformer_2 takes over below t = 900 (of 1000)


def _wan22(boundary: float | None = BOUNDARY, second=None):
    from diffusers import WanPipeline

    from attnlab.models.tiny_dit import wan_transformer

    return wan_pipeline_as(
        WanPipeline,
        transformer_2=second if second is not None else wan_transformer(seed=1),
        boundary_ratio=boundary,
    )


@pytest.fixture(scope="module")
def wan22():
    return _wan22()


def _gen(pipe, seed=0, **kw):
    args = dict(prompt="a polar bear playing drums", num_frames=9, height=64, width=64,
                num_inference_steps=4, max_sequence_length=8, guidance_scale=5.0,
                output_type="latent")  # fmt: skip
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(seed)).frames


def _processors(pipe):
    return {
        (key, name): m.processor
        for key in ("transformer", "transformer_2")
        for name, m in getattr(pipe, key).named_modules()
        if hasattr(m, "processor")
    }


def _log_calls(pipe):
    """(expert, timestep) of every denoiser call, from plain torch pre-hooks."""
    calls: list[tuple[str, float]] = []
    handles = [
        getattr(pipe, key).register_forward_pre_hook(
            lambda m, a, kw, key=key: calls.append((key, float(kw["timestep"].max()))),
            with_kwargs=True,
        )
        for key in ("transformer", "transformer_2")
    ]
    return calls, handles


def test_every_step_of_both_experts_is_recorded_with_its_expert(wan22, tmp_path):
    """Fails before experts were instrumented: the pipeline was refused at entry (and before
    that, half of the steps were silently missing)."""
    pipe = wan22
    processors = _processors(pipe)
    calls, handles = _log_calls(pipe)
    try:
        untouched = _gen(pipe)
    finally:
        for h in handles:
            h.remove()
    # the pipeline's own two-expert schedule: two calls (cond, uncond) per step
    steps = calls[::2]
    assert calls[1::2] == steps and len(steps) == 4
    assert [e for e, _ in steps] == ["transformer"] * 2 + ["transformer_2"] * 2
    assert all((t >= BOUNDARY * 1000) == (e == "transformer") for e, t in steps)

    store = tmp_path / "wan22.zarr"
    with attnlab.record(pipe, store=store, name="wan22") as rec:
        assert attnlab.is_instrumented(pipe.transformer_2)
        recorded = _gen(pipe)
    assert torch.equal(recorded, untouched)  # recording reuses each layer's own attention call
    assert not attnlab.is_instrumented(pipe) and not attnlab.is_instrumented(pipe.transformer_2)
    assert _processors(pipe) == processors  # the very same processor objects, both experts
    assert torch.equal(_gen(pipe), untouched)  # no recorder: bit-identical to the untouched run

    for ds in (attnlab.load(store), rec.to_xarray()):
        assert ds.sizes[D.STEP] == 4 and list(ds[D.CFG].values) == ["uncond", "cond"]
        assert ds[D.EXPERT].values.tolist() == [[e for e, _ in steps]]
        np.testing.assert_allclose(ds[D.TIMESTEP].values[0], [t for _, t in steps], rtol=1e-6)
        assert ds[D.RAN].dtype == bool and bool(ds[D.RAN].all())
        probs = ds[D.PROBS].values
        assert np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    loaded = attnlab.load(store)
    attrs = rec.run_datasets()[0][1].attrs
    assert attrs["experts"] == ["transformer", "transformer_2"]
    assert attrs["boundary_ratio"] == BOUNDARY
    assert '"boundary_ratio": 0.9' in str(loaded[D.PROVENANCE].values[0])


def test_each_experts_steps_equal_that_expert_recorded_alone_and_brute_force(wan22):
    pipe = wan22
    name = "blocks.1.attn1"
    with attnlab.record(pipe, reduce="head") as both:
        _gen(pipe)
    whole = both.to_xarray()[D.PROBS].isel(run=0)
    for key, expert_steps in (("transformer", [0, 1]), ("transformer_2", [2, 3])):
        model = getattr(pipe, key)
        with (
            attnlab.record(model, reduce="head") as alone,
            attnlab.Controller.of(model).run(cfg=True),  # the halves come as separate calls
        ):
            _gen(pipe)
        one = alone.to_xarray()
        assert one[D.EXPERT].values.tolist() == [["denoiser", "denoiser"]]  # a bare denoiser
        # the same layers computing on the same latents: the same numbers
        np.testing.assert_array_equal(
            one[D.PROBS].isel(run=0).values, whole.isel(step=expert_steps).values
        )
    # transformer_2's first call (step 2, cond) against a float64 full softmax of its inputs
    seen: list = []
    attn = dict(pipe.transformer_2.named_modules())[name]
    handle = attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a, kw)) if not seen else None, with_kwargs=True
    )
    try:
        _gen(pipe)
    finally:
        handle.remove()
    with torch.no_grad():
        q, k, _ = _qkv("wan", attn, *seen[0])
    A, _ = _brute_map(q, k, FRAMES * TOKENS, FRAMES, text_first=False)
    got = torch.from_numpy(whole.sel(step=2, layer=name, cfg="cond").values).double()
    torch.testing.assert_close(got, A, atol=1e-5, rtol=0)


def test_an_edit_acts_on_every_expert(wan22):
    pipe = wan22
    untouched = _gen(pipe)
    with attnlab.edit(pipe, attnlab.Replace("identity")), attnlab.record(pipe) as rec:
        both_edited = _gen(pipe)
    probs = rec.to_xarray()[D.PROBS]
    assert probs.sizes[D.STEP] == 4
    np.testing.assert_allclose(
        probs.values, np.broadcast_to(np.eye(FRAMES), probs.shape), atol=1e-6
    )  # the replaced maps on the steps of both experts
    with attnlab.edit(pipe.transformer, attnlab.Replace("identity")):
        first_edited = _gen(pipe)  # the edit on the high-noise expert alone
    assert (first_edited - untouched).abs().max() > 1e-3
    assert (both_edited - first_edited).abs().max() > 1e-3  # transformer_2 was edited too
    assert torch.equal(_gen(pipe), untouched)


def test_experts_are_restored_after_an_exception_and_when_added_to_a_running_block(wan22):
    from diffusers import WanPipeline

    pipe = wan22
    processors = _processors(pipe)
    untouched = _gen(pipe)

    def interrupt(p, i, t, kwargs):
        if i == 2:  # inside transformer_2's first step
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt), attnlab.record(pipe):
        _gen(pipe, callback_on_step_end=interrupt)
    assert _processors(pipe) == processors and not attnlab.is_instrumented(pipe.transformer_2)
    # a one-denoiser pipeline of the same transformer is instrumented first; the two-expert
    # pipeline joins that block and its second expert is instrumented then
    one = WanPipeline(**{**pipe.components, "transformer_2": None}, boundary_ratio=None)
    with attnlab.record(one) as outer, attnlab.record(pipe) as inner:
        assert attnlab.is_instrumented(pipe.transformer_2)
        inside = _gen(pipe)
    assert torch.equal(inside, untouched)
    assert _processors(pipe) == processors and not attnlab.is_instrumented(pipe.transformer_2)
    for rec in (outer, inner):
        assert rec.to_xarray()[D.EXPERT].values.tolist() == [["transformer"] * 2 + ["transformer_2"] * 2]  # fmt: skip


def test_an_expert_recorded_alone_and_with_its_pipeline_at_once_is_refused(wan22):
    pipe = wan22
    with (
        attnlab.record(pipe.transformer_2),
        pytest.raises(UnsupportedConfigurationError, match=r"'transformer_2'.*alone"),
        attnlab.record(pipe),
    ):
        pass
    with (
        attnlab.record(pipe),
        pytest.raises(UnsupportedConfigurationError, match="expert of the pipeline"),
        attnlab.record(pipe.transformer_2),
    ):
        pass
    assert not attnlab.is_instrumented(pipe) and not attnlab.is_instrumented(pipe.transformer_2)


# ---- the ran mask ---------------------------------------------------------------------------
def _skip_uncond_at_step_1(model):
    """A denoising loop that runs both guidance halves at step 0 and only the conditional one
    at step 1 (as diffusers' FasterCache does on its unconditional-skip steps)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, FRAMES, 8, 8, generator=g)
    text = torch.randn(1, 8, 16, generator=g)
    with torch.no_grad():
        for t, halves in ((900.0, ("cond", "uncond")), (500.0, ("cond",))):
            for half in halves:
                with model.cache_context(half):
                    model(x, torch.tensor([t]), text, return_dict=False)


def test_a_half_that_did_not_run_is_a_marked_gap_in_memory_in_the_store_and_on_load(tmp_path):
    from attnlab.models.tiny_dit import wan_transformer

    model = wan_transformer()
    store = tmp_path / "gap.zarr"
    with (
        attnlab.record(model, store=store, name="gap") as rec,
        attnlab.Controller.of(model).run(cfg=True),
    ):
        _skip_uncond_at_step_1(model)
    for ds in (rec.to_xarray(), attnlab.load(store)):
        ran = ds[D.RAN].isel(run=0)
        assert ran.sel(step=0).values.all() and ran.sel(step=1, cfg="cond").values.all()
        assert not ran.sel(step=1, cfg="uncond").values.any()  # marked, not silently NaN
        probs = ds[D.PROBS].isel(run=0)
        assert np.isnan(probs.sel(step=1, cfg="uncond").values).all()
        assert np.isfinite(probs.where(ran).values[ran.values]).all()
    # a recorder of the unconditional half alone: step 1 ran nothing it records, and it is
    # still there, all False, rather than absent; in a store too (zarr leaves out a chunk of
    # fill values unless told otherwise, which read as a damaged run, and the recorder then
    # removed the store it had made)
    only = tmp_path / "uncond.zarr"
    with (
        attnlab.record(model, cfg="uncond", store=only) as uncond,
        attnlab.Controller.of(model).run(cfg=True),
    ):
        _skip_uncond_at_step_1(model)
    assert attnlab.verify_store(only).ok
    for ds in (uncond.to_xarray(), attnlab.load(only)):
        assert ds.sizes[D.STEP] == 2
        assert ds[D.RAN].sel(step=0).values.all() and not ds[D.RAN].sel(step=1).values.any()
        assert np.isnan(ds[D.PROBS].sel(step=1).values).all()


def test_load_pads_ran_with_false_and_masks_maps_where_ran_is_false(tmp_path, wan22):
    """Runs of different lengths: the missing steps are False in ``ran`` and "" in ``expert``;
    a value written into a cell that did not run is not returned."""
    import zarr

    store = tmp_path / "two.zarr"
    with attnlab.record(wan22, store=store) as rec:
        _gen(wan22, num_inference_steps=4)
        _gen(wan22, num_inference_steps=2, guidance_scale=1.0)  # no CFG; 2 steps
    long, short = (r.id for r in rec.runs)
    ds = attnlab.load(store, runs=[long, short])
    assert ds[D.EXPERT].values.tolist() == [
        ["transformer", "transformer", "transformer_2", "transformer_2"],
        ["transformer", "transformer_2", "", ""],  # t = 1000, 47 at 2 steps
    ]
    ran = ds[D.RAN]
    assert ran.dtype == bool
    assert ran.sel(run=long).values.all()
    assert ran.sel(run=short, cfg="cond").values[:2].all()
    assert not ran.sel(run=short).values[2:].any()  # steps it does not have
    assert not ran.sel(run=short, cfg="uncond").values.any()  # a half it does not have
    # a cell marked as not run is NaN on load whatever its stored maps hold
    group = zarr.open_group(str(store), path=f"runs/{long}", mode="r+")
    flags = group[D.RAN][...]
    flags[3, 0, 0] = False
    group[D.RAN][...] = flags
    again = attnlab.load(store, runs=[long])
    assert np.isnan(again[D.PROBS].isel(run=0, step=3, layer=0, cfg=0).values).all()
    assert np.isfinite(again[D.PROBS].isel(run=0, step=3, layer=1).values).all()


def test_a_store_without_ran_or_expert_loads_beside_one_with_them(tmp_path):
    """0.1 stores load unchanged alone (tests/test_safety_net.py); beside a new run they get
    ``expert`` "" and ``ran`` from their maps."""
    from tests.snapshot import STORE

    old = attnlab.load(STORE)
    assert D.RAN not in old and D.EXPERT not in old.coords
    # a new run in the old run's layout (ModelScope-type tiny UNet, mean, level 0)
    from attnlab.models import load_pipeline
    from attnlab.models.tiny import tiny_path

    pipe = load_pipeline(str(tiny_path("tiny-modelscope", tmp_path / "m")), progress=False)
    new = tmp_path / "new.zarr"
    with attnlab.record(pipe, levels=[0], store=new):
        pipe("a bear", num_frames=8, height=64, width=48, num_inference_steps=2,
             generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip
    both = attnlab.load([STORE, new])
    first, second = (str(r) for r in both.run.values)
    assert both[D.EXPERT].sel(run=first).values.tolist() == ["", ""]
    assert both[D.EXPERT].sel(run=second).values.tolist() == ["unet", "unet"]
    assert both[D.RAN].values.all()
    np.testing.assert_array_equal(
        both[D.PROBS].sel(run=first).values, old[D.PROBS].isel(run=0).values
    )


def test_a_per_token_timestep_of_a_ti2v_pipeline_is_recorded_as_its_largest_value():
    """Wan 2.2 TI2V (``expand_timesteps``) passes one timestep per token, 0 for the
    conditioning frame's tokens: the ``timestep`` coordinate is the step's noise level (the
    scheduler's timestep), not the first token's 0 (docs/store-schema.md)."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    pipe = wan_pipeline_as(WanImageToVideoPipeline, expand_timesteps=True)
    passed: list[torch.Tensor] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: passed.append(kw["timestep"].clone()), with_kwargs=True
    )
    try:
        with attnlab.record(pipe) as rec:
            _gen(pipe, image=Image.new("RGB", (64, 64), (120, 60, 30)), num_inference_steps=2)
    finally:
        handle.remove()
    first_frame = slice(0, TOKENS)  # one timestep per video token, frame-major
    assert all(p.shape == (1, FRAMES * TOKENS) for p in passed)
    assert all(float(p[0, first_frame].abs().max()) == 0.0 for p in passed)
    ds = rec.to_xarray()
    np.testing.assert_array_equal(ds[D.TIMESTEP].values[0], pipe.scheduler.timesteps.numpy())
    assert ds[D.EXPERT].values.tolist() == [["transformer", "transformer"]]
