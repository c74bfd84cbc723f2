"""Configurations attnlab cannot record faithfully yet are refused at entry, by name, with the
reason; removing them makes recording work again. Tiny instances of diffusers' own classes and
hooks."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.core.refusals import UnsupportedConfigurationError


@pytest.fixture
def cog():
    from attnlab.models.tiny_dit import cogvideox_pipeline

    return cogvideox_pipeline()


def _records(pipe) -> bool:
    with attnlab.record(pipe):
        pass
    return not attnlab.is_instrumented(pipe)


def _cache_config(technique: str, pipe):
    from diffusers import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
    )

    now = lambda: pipe.current_timestep  # noqa: E731
    return {
        "FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=0.2),
        "PyramidAttentionBroadcast": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=now
        ),
        # the values of diffusers' own docstring example
        "FasterCache": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 681),
            current_timestep_callback=now,
            attention_weight_callback=lambda _: 0.3,
            unconditional_batch_skip_range=5,
            unconditional_batch_timestep_skip_range=(-1, 781),
            tensor_format="BFCHW",
        ),
        "MagCache": lambda: MagCacheConfig(num_inference_steps=2, mag_ratios=[1.0, 1.0]),
    }[technique]()


@pytest.mark.parametrize(
    "technique", ["FirstBlockCache", "PyramidAttentionBroadcast", "FasterCache", "MagCache"]
)
def test_caching_hooks_are_refused_by_name_and_allowed_once_removed(cog, technique):
    cog.transformer.enable_cache(_cache_config(technique, cog))
    with pytest.raises(UnsupportedConfigurationError, match=technique) as err:
        _records(cog)
    assert "attention that did not run" in str(err.value)
    assert not attnlab.is_instrumented(cog)
    cog.transformer.disable_cache()
    assert _records(cog)


def _two_experts(second):
    from diffusers import WanPipeline

    from attnlab.models.tiny_dit import wan_pipeline

    one = wan_pipeline()
    return one, WanPipeline(
        transformer=one.transformer,
        transformer_2=second,
        vae=one.vae,
        text_encoder=one.text_encoder,
        tokenizer=one.tokenizer,
        scheduler=one.scheduler,
        boundary_ratio=0.9,
    )


@pytest.mark.parametrize(
    "second, difference",
    [
        (dict(layers=3), r"2 vs 3 attention layers; only in the second: blocks\.2\.attn1"),
        (dict(heads=3), r"layer blocks\.0\.attn1: heads 2 vs 3"),
    ],
)
def test_experts_with_different_layer_tables_are_refused_by_name(second, difference):
    """Two denoisers are recorded along one layer axis: a second expert whose site table
    differs from the first's is refused, naming both components and the first difference;
    an expert with the same table records (tests/core/test_experts.py)."""
    from attnlab.models.tiny_dit import wan_transformer

    one, two = _two_experts(wan_transformer(seed=1, **second))
    with pytest.raises(
        UnsupportedConfigurationError,
        match=r"denoisers 'transformer' and 'transformer_2' have different attention-layer "
        rf"tables \({difference}\)",
    ):
        _records(two)
    assert not attnlab.is_instrumented(two) and not attnlab.is_instrumented(two.transformer_2)
    assert _records(one)  # the same transformer in a one-denoiser pipeline records
    _, same = _two_experts(wan_transformer(seed=1))
    assert _records(same)


def test_hooks_on_a_second_expert_and_conditioning_edits_with_two_experts_are_refused():
    from diffusers import FirstBlockCacheConfig

    from attnlab.models.tiny_dit import wan_transformer

    _, two = _two_experts(wan_transformer(seed=1))
    two.transformer_2.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(
        UnsupportedConfigurationError, match=r"\(component 'transformer_2'\).*FirstBlockCache"
    ):
        _records(two)
    two.transformer_2.disable_cache()
    assert _records(two)
    # Synopsis changes the text context of one denoiser: refused rather than half applied
    with (
        pytest.raises(UnsupportedConfigurationError, match=r"Synopsis.*transformer_2"),
        attnlab.edit(two, attnlab.Synopsis(["a calm sea", "a storm"])),
    ):
        pass
    assert not attnlab.is_instrumented(two)


def test_another_attention_backend_is_refused_on_joint_models():
    from attnlab.models.tiny_dit import wan_pipeline

    pipe = wan_pipeline()
    pipe.transformer.set_attention_backend("flex")
    try:
        with pytest.raises(UnsupportedConfigurationError, match="attention backend flex"):
            _records(pipe)
    finally:
        pipe.transformer.set_attention_backend("native")  # also diffusers' process-wide default
    assert _records(pipe)


def test_free_noise_is_refused_and_allowed_once_disabled(ad_pipe, gen):
    ad_pipe.enable_free_noise(context_length=8, context_stride=4)
    try:
        with pytest.raises(UnsupportedConfigurationError, match="FreeNoise"):
            _records(ad_pipe)
    finally:
        ad_pipe.disable_free_noise()
    with attnlab.record(ad_pipe, levels=[0]) as rec:
        gen(ad_pipe)
    assert torch.isfinite(torch.as_tensor(rec.to_xarray()["probs"].values)).all()
