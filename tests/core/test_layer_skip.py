"""diffusers' layer skip (``apply_layer_skip``, skip-layer guidance, PAG) stays in force under
attnlab, and what is recorded is what ran: a skipped layer is marked ``ran`` False (its maps
NaN), never recorded as if its attention ran.

Tiny random-weight instances of diffusers' own classes and hooks (CogVideoX, Wan, UNet3D;
``LayerSkipConfig`` / ``apply_layer_skip`` and ``PerturbedAttentionGuidance``'s own hook
management). diffusers 0.42.1's layer-skip registry lacks ``CogVideoXAttnProcessor2_0`` and
``WanAttnProcessor``: they are registered here as diffusers' own tests register processors
(their attention output is the ``hidden_states`` return, as for ``AttnProcessor2_0``).

Reference: the same pipeline with the same skip and no attnlab. Under ``attnlab.record`` the
skipped layers run diffusers' computation and the others run their original processor (the
recording only reads ``q, k``): the same computation, so the outputs are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D

# these tests compare runs with and without attnlab bit for bit: recording by the exact path
pytestmark = pytest.mark.usefixtures("exact_joint_recording")


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Register the two processors as diffusers registers its own: the skip output of a
    processor that returns ``(video, text)`` (CogVideoX) is diffusers' own two-output skip
    function (as for ``CogView4AttnProcessor``), of one that returns ``video`` (Wan) the
    one-output one (as for ``WanAttnProcessor2_0``)."""
    from diffusers.hooks._helpers import (
        AttentionProcessorMetadata,
        AttentionProcessorRegistry,
        _skip_proc_output_fn_Attention_CogView4AttnProcessor,
        _skip_proc_output_fn_Attention_WanAttnProcessor2_0,
    )
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    AttentionProcessorRegistry._register()
    known = AttentionProcessorRegistry._registry
    output_fn = {
        CogVideoXAttnProcessor2_0: _skip_proc_output_fn_Attention_CogView4AttnProcessor,
        WanAttnProcessor: _skip_proc_output_fn_Attention_WanAttnProcessor2_0,
    }
    added = [c for c in output_fn if c not in known]
    for cls in added:
        AttentionProcessorRegistry.register(cls, AttentionProcessorMetadata(output_fn[cls]))
    yield
    for cls in added:
        known.pop(cls, None)


MODELS = {"cogvideox": "transformer_blocks", "wan": "blocks"}
SKIPS = {
    "scores": dict(skip_attention=False, skip_attention_scores=True, skip_ff=False),
    "attention": dict(skip_attention=True, skip_attention_scores=False, skip_ff=False),
    "block": dict(skip_attention=True, skip_attention_scores=False, skip_ff=True),
}


def _pipe(model: str):
    from attnlab.models import tiny_dit

    return getattr(tiny_dit, f"{model}_pipeline")()


def _gen(pipe, seed: int = 0):
    return pipe(
        prompt="a polar bear playing drums", num_frames=9, height=64, width=64,
        num_inference_steps=2, max_sequence_length=8, guidance_scale=5.0,
        output_type="latent", generator=torch.Generator().manual_seed(seed),
    ).frames  # fmt: skip


def _state(model: torch.nn.Module) -> tuple:
    """What attnlab must leave as it found: processors, forwards, hooks, torch's SDPA."""
    processors = {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor")}
    hooks = {
        n: list(m._diffusers_hook.hooks)
        for n, m in model.named_modules()
        if getattr(m, "_diffusers_hook", None) is not None
    }
    return processors, hooks, torch.nn.functional.scaled_dot_product_attention


def _skip(pipe, model: str, kind: str, indices=(0,)):
    from diffusers.hooks import LayerSkipConfig, apply_layer_skip

    config = LayerSkipConfig(indices=list(indices), fqn=MODELS[model], **SKIPS[kind])
    apply_layer_skip(pipe.transformer, config)


@pytest.mark.parametrize("kind", list(SKIPS))
@pytest.mark.parametrize("model", list(MODELS))
def test_a_layer_skip_stays_in_force_and_the_skipped_layer_is_marked_not_run(model, kind):
    pipe = _pipe(model)
    plain = _gen(pipe)
    _skip(pipe, model, kind)
    skipped = _gen(pipe)  # reference: the skip without attnlab
    assert (skipped - plain).abs().max() > 1e-3  # the skip changes the video
    before = _state(pipe.transformer)
    with attnlab.record(pipe) as rec:
        got = _gen(pipe)
    assert torch.equal(got, skipped)  # the same computation: exact
    ds = rec.to_xarray().isel(run=0)
    first, second = ds[D.LAYER].values  # layer 0 of block 0 (skipped), block 1's (ran)
    ran = ds[D.RAN]
    assert ds.sizes[D.STEP] == 2 and list(ds[D.CFG].values) == ["uncond", "cond"]
    assert not ran.sel(layer=first).values.any()
    assert ran.sel(layer=second).values.all()
    probs = ds[D.PROBS]
    assert np.isnan(probs.sel(layer=first).values).all()
    assert np.isfinite(probs.sel(layer=second).values).all()
    # everything as it was: attnlab's processors gone, diffusers' hook still there, torch's
    # SDPA the builtin (never replaced), no torch function mode left in force
    assert not attnlab.is_instrumented(pipe)
    after = _state(pipe.transformer)
    assert after[0] == before[0] and after[1] == before[1] and after[2] is before[2]
    assert any("layer_skip_hook" in h for h in after[1].values())
    assert torch._C._len_torch_function_stack() == 0
    assert torch.equal(_gen(pipe), skipped)  # the skip still in force afterwards


def test_the_maps_of_the_layers_that_ran_are_those_recorded_without_the_skip_on_the_first_call():
    """The score skip of a later block leaves the earlier block's input untouched: at step 0
    (identical latents), block 0's maps under the skip of block 1 are those of the run without
    any skip (same computation up to that layer: exact)."""
    pipe = _pipe("wan")
    with attnlab.record(pipe, steps=[0]) as plain:
        _gen(pipe)
    _skip(pipe, "wan", "scores", indices=(1,))
    with attnlab.record(pipe, steps=[0]) as rec:
        _gen(pipe)
    a, b = (r.to_xarray().isel(run=0, step=0) for r in (plain, rec))
    first, second = b[D.LAYER].values
    assert b[D.RAN].sel(layer=first).values.all() and not b[D.RAN].sel(layer=second).any()
    np.testing.assert_array_equal(
        a[D.PROBS].sel(layer=first).values, b[D.PROBS].sel(layer=first).values
    )


@pytest.mark.parametrize("model", list(MODELS))
def test_an_edit_does_not_undo_a_skip(model):
    """Replace on every layer under the score skip of block 0 is the computation of Replace on
    block 1 alone under that skip: the skipped layer's attention does not run, edited or not."""
    pipe = _pipe(model)
    _skip(pipe, model, "scores")
    second = attnlab.sites(pipe).names[1]
    with attnlab.edit(pipe, attnlab.Replace("ones", names=[second])):
        one = _gen(pipe)
    with attnlab.edit(pipe, attnlab.Replace("ones")), attnlab.record(pipe) as rec:
        every = _gen(pipe)
    assert torch.equal(every, one)
    ran = rec.to_xarray()[D.RAN].isel(run=0)
    assert not ran.isel(layer=0).values.any() and ran.isel(layer=1).values.all()
    assert not attnlab.is_instrumented(pipe)


def test_perturbed_attention_guidance_hooks_applied_per_pass_by_the_guider():
    """diffusers' PerturbedAttentionGuidance applies its score-skip hook for its third
    (perturbed) pass of a step and removes it after: under attnlab that pass is diffusers' own
    computation, its layer 0 marked not run; the other passes record everything."""
    from diffusers import PerturbedAttentionGuidance

    from attnlab.models.tiny_dit import wan_transformer

    model = wan_transformer()
    guider = PerturbedAttentionGuidance(
        guidance_scale=5.0, perturbed_guidance_scale=2.0, perturbed_guidance_layers=[0],
        perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)
    text = torch.randn(1, 8, 16, generator=g)

    def passes() -> list[torch.Tensor]:
        guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(500.0))
        outs = []
        with torch.no_grad():
            for _ in range(3):  # cond, uncond, perturbed cond
                guider.prepare_models(model)
                outs.append(model(x, torch.tensor([500.0]), text, return_dict=False)[0])
                guider.cleanup_models(model)
        return outs

    reference = passes()
    assert (reference[2] - reference[0]).abs().max() > 1e-3  # the perturbation acts
    before = _state(model)
    with attnlab.record(model) as rec:
        got = passes()
    for a, b in zip(got, reference):
        assert torch.equal(a, b)
    ran = rec.to_xarray()[D.RAN].isel(run=0, cfg=0)  # one call per step, bare denoiser
    assert ran.isel(step=0).values.all() and ran.isel(step=1).values.all()
    assert not ran.isel(step=2, layer=0) and ran.isel(step=2, layer=1)
    assert _state(model) == before and not attnlab.is_instrumented(model)


def test_a_score_skip_on_temporal_attention_stays_in_force(ms_pipe, gen):
    """The same on a UNet's temporal layers. Recording only the skipped layers leaves every
    other layer on its original processor: diffusers' computation, compared exactly. Recording
    all of level 0 puts the layers that ran on attnlab's explicit path (another computation of
    the same attention: compared to ~1e-5)."""
    from diffusers.hooks import HookRegistry, LayerSkipConfig, apply_layer_skip

    unet = ms_pipe.unet
    plain = gen(ms_pipe)
    stack = "down_blocks.0.temp_attentions"
    apply_layer_skip(unet, LayerSkipConfig(indices=[0], fqn=stack, **SKIPS["scores"]))
    try:
        skipped = gen(ms_pipe)
        assert (skipped - plain).abs().max() > 1e-3
        gone = [n for n in attnlab.sites(ms_pipe).names if n.startswith(f"{stack}.0.")]
        with attnlab.record(ms_pipe, names=gone) as alone:
            exact = gen(ms_pipe)
        with attnlab.record(ms_pipe, levels=[0]) as rec:
            close = gen(ms_pipe)
    finally:
        HookRegistry.check_if_exists_or_initialize(unet).remove_hook(
            "layer_skip_hook", recurse=True
        )
    assert torch.equal(exact, skipped)
    torch.testing.assert_close(close, skipped, rtol=0, atol=1e-5)
    assert not alone.to_xarray()[D.RAN].values.any()
    ds = rec.to_xarray().isel(run=0)
    mask = np.array([str(n) in gone for n in ds[D.LAYER].values])
    assert mask.any() and not mask.all()
    ran = ds[D.RAN].values  # step, layer, cfg
    assert not ran[:, mask].any() and ran[:, ~mask].all()
    assert np.isnan(ds[D.PROBS].values[:, mask]).all()
    assert torch.equal(gen(ms_pipe), plain) and not attnlab.is_instrumented(ms_pipe)
