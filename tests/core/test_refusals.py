"""Configurations attnlab cannot record faithfully yet are refused at entry, by name, with the
reason; removing them makes recording work again. Tiny instances of diffusers' own classes and
hooks."""

from __future__ import annotations

import pytest

import attnlab
from attnlab.core.refusals import UnsupportedConfigurationError


def _records(pipe) -> bool:
    with attnlab.record(pipe):
        pass
    return not attnlab.is_instrumented(pipe)


def _parallel(model, kind: str):
    """diffusers' parallelism as ``enable_parallelism`` leaves it on a model: its config on the
    model and on each processor, and (context parallel) diffusers' own split / gather hooks of
    the model's ``_cp_plan``. ``enable_parallelism`` itself needs an initialised process group
    and an accelerator, so its two recording steps are taken here with diffusers' objects."""
    from diffusers import ContextParallelConfig
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig, TensorParallelConfig

    if kind == "context":
        cp = ContextParallelConfig(ulysses_degree=2)
        config = ParallelConfig(context_parallel_config=cp)
        apply_context_parallel(model, cp, model._cp_plan)
        for m in model.modules():
            if hasattr(getattr(m, "processor", None), "_parallel_config"):
                m.processor._parallel_config = config
    else:
        config = ParallelConfig(tensor_parallel_config=TensorParallelConfig(tp_degree=2))
    model._parallel_config = config


def _unparallel(model):
    for _, m in model.named_modules():
        registry = getattr(m, "_diffusers_hook", None)
        for name in list(getattr(registry, "hooks", {})):
            registry.remove_hook(name, recurse=False)
        if hasattr(getattr(m, "processor", None), "_parallel_config"):
            m.processor._parallel_config = None
    model._parallel_config = None


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("context", r"context parallelism .*its shard of the sequence"),
        ("tensor", r"tensor parallelism .*its share of the heads"),
    ],
)
def test_parallelism_is_refused_with_the_reason(kind, reason):
    from attnlab.models.tiny_dit import wan_pipeline

    pipe = wan_pipeline()
    _parallel(pipe.transformer, kind)
    with pytest.raises(UnsupportedConfigurationError, match=reason):
        _records(pipe)
    assert not attnlab.is_instrumented(pipe)
    _unparallel(pipe.transformer)
    assert _records(pipe)


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


def test_parallelism_of_a_second_expert_and_conditioning_edits_with_two_experts_are_refused():
    from attnlab.models.tiny_dit import wan_transformer

    _, two = _two_experts(wan_transformer(seed=1))
    _parallel(two.transformer_2, "context")
    with pytest.raises(
        UnsupportedConfigurationError, match=r"\(component 'transformer_2'\).*context parallelism"
    ):
        _records(two)
    _unparallel(two.transformer_2)
    assert _records(two)
    # Synopsis changes the text context of one denoiser: refused rather than half applied
    with (
        pytest.raises(UnsupportedConfigurationError, match=r"Synopsis.*transformer_2"),
        attnlab.edit(two, attnlab.Synopsis(["a calm sea", "a storm"])),
    ):
        pass
    assert not attnlab.is_instrumented(two)


BACKENDS = ["flash", "flash_varlen", "sage", "xformers", "flex", "_native_npu", "_native_xla"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_attention_backend_is_refused_on_joint_models(backend, monkeypatch):
    """diffusers' ``set_attention_backend`` on the model (its package check bypassed: flash-attn,
    sageattention, xformers, torch_npu and torch_xla are not installed here; nothing runs)."""
    import diffusers.models.attention_dispatch as dispatch

    from attnlab.models.tiny_dit import wan_pipeline

    monkeypatch.setattr(dispatch, "_check_attention_backend_requirements", lambda b: None)
    pipe = wan_pipeline()
    pipe.transformer.set_attention_backend(backend)
    try:
        with pytest.raises(
            UnsupportedConfigurationError, match=rf"attention backend {backend}: .*native"
        ):
            _records(pipe)
        assert not attnlab.is_instrumented(pipe)
    finally:
        pipe.transformer.set_attention_backend("native")  # also diffusers' process-wide default
    assert _records(pipe)


def test_the_process_wide_backend_and_xformers_processors_are_refused(monkeypatch):
    """diffusers' ``attention_backend`` context (the process-wide default) and the older
    per-processor xformers API (an ``XFormersAttnProcessor`` on the joint layer)."""
    import diffusers.models.attention_dispatch as dispatch
    from diffusers.models.attention_processor import XFormersAttnProcessor

    from attnlab.models.tiny_dit import cogvideox_pipeline

    monkeypatch.setattr(dispatch, "_check_attention_backend_requirements", lambda b: None)
    pipe = cogvideox_pipeline()
    with (
        dispatch.attention_backend("sage"),
        pytest.raises(UnsupportedConfigurationError, match="attention backend sage"),
    ):
        _records(pipe)
    attn = pipe.transformer.transformer_blocks[0].attn1
    original = attn.processor
    attn.set_processor(XFormersAttnProcessor())
    with pytest.raises(UnsupportedConfigurationError, match="attention backend xformers"):
        _records(pipe)
    attn.set_processor(original)
    assert _records(pipe) and not attnlab.is_instrumented(pipe)
