"""diffusers' caching hooks stay in force under attnlab, and what is recorded is what ran: every
step the pipeline ran is in the store, a layer (or guidance half, or whole step) whose
attention the cache answered from its cache is a marked gap (``ran`` False, maps NaN), and the
cells that ran are the attention that was computed.

Tiny random-weight instances of diffusers' own pipelines (CogVideoX: one call per step with a
``[uncond, cond]`` batch; Wan: one call per guidance half, each in its ``cache_context``) and
diffusers' own hooks through ``transformer.enable_cache(...)``.

References, independent of attnlab: plain torch forward hooks on each attention layer's query
projection say which layers computed attention in each denoiser call and on how many samples
(a cached layer's projections never run); the pipeline's output with the same cache and no
attnlab. The recorded run at step 0 (identical latents) is compared with a recording without
any cache: the same computation wherever the cache computed, so exactly equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D

# these tests compare runs with and without attnlab bit for bit: recording by the exact path
pytestmark = pytest.mark.usefixtures("exact_joint_recording")


STEPS = 6


def _pipe(model: str):
    from attnlab.models import tiny_dit

    return getattr(tiny_dit, f"{model}_pipeline")()


def _gen(pipe, **kw):
    args = dict(prompt="a polar bear playing drums", num_frames=9, height=64, width=64,
                num_inference_steps=STEPS, max_sequence_length=8, guidance_scale=5.0,
                output_type="latent")  # fmt: skip
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(0)).frames


def _config(technique: str, pipe):
    from diffusers import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        SeaCacheConfig,
        TaylorSeerCacheConfig,
        TextKVCacheConfig,
    )

    now = lambda: pipe.current_timestep  # noqa: E731
    return {
        "FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=0.6),
        "PyramidAttentionBroadcast": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=now,
        ),
        # the values of diffusers' own docstring example (with its unconditional-batch skip)
        "FasterCache": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 681),
            current_timestep_callback=now,
            attention_weight_callback=lambda _: 0.3,
            unconditional_batch_skip_range=5,
            unconditional_batch_timestep_skip_range=(-1, 781),
            tensor_format="BFCHW",
        ),
        "MagCache": lambda: MagCacheConfig(
            num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS, threshold=0.5
        ),
        "TaylorSeerCache": lambda: TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=1,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[r"(transformer_)?blocks\.\d+"],
        ),
        "SeaCache": lambda: SeaCacheConfig(threshold=10.0),
        "TextKVCache": lambda: TextKVCacheConfig(),
    }[technique]()


def _attention_modules(pipe) -> list[torch.nn.Module]:
    model = pipe.transformer
    blocks = getattr(model, "transformer_blocks", None) or model.blocks
    return [block.attn1 for block in blocks]


def _log(pipe):
    """Per denoiser call: (timestep, the samples each attention layer computed, 0: cached)."""
    calls: list[tuple[float, list[int]]] = []
    n = len(_attention_modules(pipe))

    def on_call(module, args, kwargs):
        calls.append((float(kwargs["timestep"].max()), [0] * n))

    def on_layer(i):
        def hook(module, args, output):
            calls[-1][1][i] = args[0].shape[0]

        return hook

    handles = [pipe.transformer.register_forward_pre_hook(on_call, with_kwargs=True)]
    handles += [
        attn.to_q.register_forward_hook(on_layer(i))
        for i, attn in enumerate(_attention_modules(pipe))
    ]
    return calls, handles


def _computed(pipe, calls) -> tuple[np.ndarray, list[float]]:
    """``[step, layer, cfg]`` (cfg: uncond, cond) of the cells whose attention was computed,
    from the log, and the timestep of each step. CogVideoX calls once per step with the
    ``[uncond, cond]`` batch (2 samples: both halves; 1: FasterCache's conditional half only,
    its documented unconditional-batch skip); Wan calls the prompt's half, then the negative
    prompt's (diffusers' ``WanPipeline.__call__``), one sample each."""
    if type(pipe).__name__.startswith("Wan"):
        steps = [calls[i : i + 2] for i in range(0, len(calls), 2)]
        ran = np.array(
            [[[u > 0, c > 0] for c, u in zip(cond[1], uncond[1])] for cond, uncond in steps]
        )
        return ran, [cond[0] for cond, _ in steps]
    ran = np.array([[[n == 2, n >= 1] for n in layers] for _, layers in calls])
    return ran, [t for t, _ in calls]


def _hook_chain(model: torch.nn.Module) -> dict:
    """Every diffusers hook reference of the model's registries, and the forwards."""
    chain = {}
    for name, m in model.named_modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is not None:
            refs = [(r.forward, r.original_forward) for r in registry._fn_refs]
            chain[name] = (list(registry.hooks), refs, vars(m).get("forward"))
    return chain


CASES = [
    ("cogvideox", "FirstBlockCache"),
    ("wan", "FirstBlockCache"),
    ("cogvideox", "PyramidAttentionBroadcast"),
    ("wan", "PyramidAttentionBroadcast"),
    ("cogvideox", "FasterCache"),
    ("cogvideox", "MagCache"),
    ("cogvideox", "TaylorSeerCache"),
    ("wan", "SeaCache"),
]


@pytest.mark.parametrize("model, technique", CASES)
def test_a_cache_stays_in_force_and_what_it_reused_is_marked(model, technique):
    pipe = _pipe(model)
    with attnlab.record(pipe, steps=[0]) as plain:  # no cache: the reference maps of step 0
        _gen(pipe)
    pipe.transformer.enable_cache(_config(technique, pipe))
    calls, handles = _log(pipe)
    reference = _gen(pipe)  # the cache without attnlab
    computed, timesteps = _computed(pipe, calls)
    assert len(timesteps) == STEPS
    # the cache reuses some attention and computes some
    assert computed.any() and not computed.all()
    calls.clear()
    before = _hook_chain(pipe.transformer)
    with attnlab.record(pipe) as rec:
        got = _gen(pipe)
    for h in handles:
        h.remove()
    assert torch.equal(got, reference)  # the same computation: exact
    assert np.array_equal(_computed(pipe, calls)[0], computed)  # the cache decided alike
    assert _hook_chain(pipe.transformer) == before and not attnlab.is_instrumented(pipe)

    ds = rec.to_xarray().isel(run=0)
    # every step the pipeline ran, at its timestep
    assert ds.sizes[D.STEP] == STEPS
    np.testing.assert_array_equal(ds[D.TIMESTEP].values, timesteps)
    assert list(ds[D.CFG].values) == ["uncond", "cond"]
    # what ran is marked, the rest is a marked gap: NaN exactly where `ran` is False
    ran = ds[D.RAN].transpose(D.STEP, D.LAYER, D.CFG).values
    np.testing.assert_array_equal(ran, computed)
    probs = ds[D.PROBS].transpose(D.STEP, D.LAYER, D.CFG, ...).values
    assert np.isfinite(probs[ran]).all() and np.isnan(probs[~ran]).all()
    assert rec.runs[0].attrs["caches"] == {"transformer": [technique]}
    # at step 0 (identical latents) what ran is what runs without the cache
    first = plain.to_xarray().isel(run=0, step=0)[D.PROBS].transpose(D.LAYER, D.CFG, ...).values
    assert ran[0].any()  # (the reference recorded by the split path, this run by the exact one)
    np.testing.assert_allclose(probs[0][ran[0]], first[ran[0]], rtol=0, atol=1e-6)

    pipe.transformer.disable_cache()  # and without the cache, nothing is a gap
    with attnlab.record(pipe) as again:
        _gen(pipe)
    assert again.to_xarray()[D.RAN].values.all()
    assert "caches" not in again.runs[0].attrs


def test_a_lossless_cache_records_what_runs_without_it():
    """TextKVCache (diffusers' exact text key/value cache) on Wan: nothing is reused but the
    text projections, so the whole recording equals the one without the cache."""
    pipe = _pipe("wan")
    with attnlab.record(pipe) as plain:
        reference = _gen(pipe)
    pipe.transformer.enable_cache(_config("TextKVCache", pipe))
    with attnlab.record(pipe) as rec:
        got = _gen(pipe)
    assert torch.equal(got, reference)
    a, b = (r.to_xarray().isel(run=0) for r in (plain, rec))
    assert b[D.RAN].values.all()
    np.testing.assert_array_equal(a[D.PROBS].values, b[D.PROBS].values)
    assert rec.runs[0].attrs["caches"] == {"transformer": ["TextKVCache"]}


def test_a_hook_running_a_batch_attnlab_cannot_tell_apart_raises_and_restores():
    """FasterCache's unconditional-batch skip passes the denoiser's own forward one half of
    the ``[uncond, cond]`` batch; attnlab tells which by its text conditioning. With the
    negative prompt equal to the prompt the halves cannot be told apart: one clear error,
    and the model is left as it was."""
    pipe = _pipe("cogvideox")
    pipe.transformer.enable_cache(_config("FasterCache", pipe))
    before = _hook_chain(pipe.transformer)
    prompt = "a polar bear playing drums"
    with (
        pytest.raises(RuntimeError, match=r"faster_cache_denoiser.*cannot tell which samples"),
        attnlab.record(pipe),
    ):
        _gen(pipe, prompt=prompt, negative_prompt=prompt)
    assert _hook_chain(pipe.transformer) == before and not attnlab.is_instrumented(pipe)


def test_smoothed_energy_guidance_records_the_attention_of_the_blurred_queries():
    """diffusers' smoothed energy guidance blurs the output of a layer's query projection: the
    attention that runs is that of the blurred queries, and that is what is recorded (checked
    against a float64 full softmax of the layer's own projections, the hook in force)."""
    from diffusers.hooks.smoothed_energy_guidance_utils import (
        SmoothedEnergyGuidanceConfig,
        _apply_smoothed_energy_guidance_hook,
    )

    from tests.core.test_joint import _brute_map, _qkv

    pipe = _pipe("wan")
    name = attnlab.sites(pipe).names[0]
    with attnlab.record(pipe, reduce="head") as plain:
        _gen(pipe, num_inference_steps=1)
    config = SmoothedEnergyGuidanceConfig(indices=[0], fqn="blocks")
    _apply_smoothed_energy_guidance_hook(pipe.transformer, config, blur_sigma=2.0)
    reference = _gen(pipe, num_inference_steps=1)
    seen: list = []
    attn = pipe.transformer.get_submodule(name)
    handle = attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a, kw)) if not seen else None, with_kwargs=True
    )
    try:
        with attnlab.record(pipe, reduce="head") as rec:
            got = _gen(pipe, num_inference_steps=1)
    finally:
        handle.remove()
    assert torch.equal(got, reference)
    with torch.no_grad():
        q, k, _ = _qkv("wan", attn, *seen[0])  # its to_q carries diffusers' blur hook
    A, _ = _brute_map(q, k, 3 * 16, 3, text_first=False)  # 3 latent frames of 4 x 4 tokens
    recorded = rec.to_xarray()[D.PROBS].isel(run=0, step=0, sample=0).sel(layer=name, cfg="cond")
    torch.testing.assert_close(torch.from_numpy(recorded.values).double(), A[0], atol=1e-5, rtol=0)
    before = plain.to_xarray()[D.PROBS].isel(run=0, step=0, sample=0).sel(layer=name, cfg="cond")
    assert np.abs(before.values - recorded.values).max() > 1e-3  # the blur changes attention


def test_under_a_cache_the_default_recording_path_is_the_models_own_call():
    """The default (split) recording path is within float32 rounding of the model's call, not
    bit for bit; a cache's threshold decisions could flip on that. Under diffusers' caching
    hooks recording takes the exact path, so the run is the cache's own, bit for bit."""
    pipe = _pipe("cogvideox")
    with attnlab.joint_paths(record="split"):  # the default, over this file's fixture
        with attnlab.record(pipe, steps=[0]) as plain:  # no cache: the split path
            split = _gen(pipe)
        pipe.transformer.enable_cache(_config("FirstBlockCache", pipe))
        calls, handles = _log(pipe)
        reference = _gen(pipe)
        computed, _ = _computed(pipe, calls)
        calls.clear()
        with attnlab.record(pipe) as rec:
            got = _gen(pipe)
        for h in handles:
            h.remove()
        pipe.transformer.disable_cache()
        with attnlab.joint_paths(record="exact"), attnlab.record(pipe, steps=[0]):
            exact = _gen(pipe)
    assert torch.equal(got, reference)  # the cache's run, bit for bit
    assert np.array_equal(_computed(pipe, calls)[0], computed)  # the cache decided alike
    assert rec.runs[0].attrs["caches"] == {"transformer": ["FirstBlockCache"]}
    # without a cache the default path is the split one: within float32 rounding of the exact
    # path over the run (and its step-0 maps equal the cache run's)
    torch.testing.assert_close(split, exact, rtol=0, atol=1e-4)
    ran = rec.to_xarray().isel(run=0, step=0)[D.RAN].transpose(D.LAYER, D.CFG).values
    first = plain.to_xarray().isel(run=0, step=0)[D.PROBS].transpose(D.LAYER, D.CFG, ...).values
    probs = rec.to_xarray().isel(run=0, step=0)[D.PROBS].transpose(D.LAYER, D.CFG, ...).values
    np.testing.assert_allclose(probs[ran], first[ran], rtol=0, atol=1e-6)
