"""Video synopsis prompting: per-frame text, exact identity for a constant synopsis, blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.edits import EditError
from attnlab.edits.synopsis import (
    VSP_TEMPLATE,
    default_key_frames,
    frame_weights,
    key_states_from_llm,
)

PROMPT = "a polar bear playing drums"


def test_key_frames_and_weights():
    assert default_key_frames(3, 16).tolist() == [0, 7, 15]
    kf = default_key_frames(5, 200)  # past 127 frames: the reference code's int8 cast overflowed
    assert kf.tolist() == [0, 49, 99, 149, 199] and kf.dtype == np.int64
    w = frame_weights([0, 4, 8], 9, "linear")
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w[2], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(w[6], [0.0, 0.5, 0.5])
    same = frame_weights([0, 4, 8], 9, "same")
    assert (
        same[3].tolist() == [1, 0, 0]
        and same[4].tolist() == [0, 1, 0]
        and same[8].tolist() == [0, 0, 1]
    )
    # custom key frames: frames before the first / after the last hold the end states
    w = frame_weights([2, 5], 8, "linear")
    assert w[0].tolist() == [1, 0] and w[7].tolist() == [0, 1]


def test_linear_blend_is_linear_on_every_frame():
    """With scalar 'embeddings' 0, 1, 3 the blend must be the piecewise-linear interpolation."""
    syn = attnlab.Synopsis(torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1))
    got = syn.per_frame(9, "cpu", torch.float32).flatten()
    expected = np.interp(np.arange(9), [0, 4, 8], [0.0, 1.0, 3.0])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    same = attnlab.Synopsis(torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1), mode="same").per_frame(
        9, "cpu", torch.float32
    )
    assert same.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 3]


@pytest.mark.parametrize("mode", ["linear", "same"])
def test_constant_synopsis_equals_the_plain_prompt_exactly(pipe, gen, mode):
    ref = gen(pipe, prompt=PROMPT)
    with attnlab.edit(pipe, attnlab.Synopsis([PROMPT, PROMPT, PROMPT], mode=mode)):
        same = gen(pipe, prompt=PROMPT)
    assert torch.equal(same, ref)


def test_blending_changes_late_frames_more_than_early(pipe, gen):
    ref = gen(pipe, prompt=PROMPT)
    with attnlab.edit(
        pipe, attnlab.Synopsis([PROMPT, "a red sports car driving through snow at night"])
    ):
        video = gen(pipe, prompt=PROMPT)
    frames = video[0] if video.ndim == 5 else video
    base = ref[0] if ref.ndim == 5 else ref
    diff = (frames - base).abs().flatten(1).mean(1)  # per frame
    assert diff[-2:].mean() > 2 * diff[:2].mean()
    assert torch.equal(gen(pipe, prompt=PROMPT), ref)  # restored


def test_synopsis_leaves_unconditional_text_alone(ms_pipe):
    """What the spatial cross-attention receives: uncond rows = empty prompt, cond rows blended."""
    seen = []
    cross = dict(ms_pipe.unet.named_modules())[
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    ]

    def grab(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    h = cross.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        syn = attnlab.Synopsis(["a young boy", "an old man"])
        with attnlab.edit(ms_pipe, syn):
            ms_pipe(
                prompt=PROMPT,
                num_frames=6,
                height=64,
                width=48,
                num_inference_steps=1,
                output_type="pt",
            )
    finally:
        h.remove()
    context = seen[0].view(2, 6, 77, -1)  # [uncond, cond] x frames
    uncond = ms_pipe.encode_prompt("", "cpu", 1, False)[0]
    torch.testing.assert_close(context[0], uncond.expand(6, -1, -1), rtol=0, atol=0)
    keys = ms_pipe.encode_prompt(["a young boy", "an old man"], "cpu", 1, False)[0]
    torch.testing.assert_close(context[1, 0], keys[0])
    torch.testing.assert_close(context[1, 5], keys[1])
    torch.testing.assert_close(context[1, 2], keys[0] + 0.4 * (keys[1] - keys[0]))  # b = 2/5
    torch.testing.assert_close(context[1, 4], keys[0] + 0.8 * (keys[1] - keys[0]))  # b = 4/5 > 1/2
    torch.testing.assert_close(syn.per_frame(6, "cpu", torch.float32), context[1])


def test_more_key_states_than_frames_and_bad_key_frames(ms_pipe, gen):
    with (
        pytest.raises(EditError, match="at most one key state per frame"),
        attnlab.edit(ms_pipe, attnlab.Synopsis([str(i) + " cats" for i in range(9)])),
    ):
        gen(ms_pipe)
    with (
        pytest.raises(EditError, match="beyond the last frame"),
        attnlab.edit(ms_pipe, attnlab.Synopsis(["a", "b"], key_frames=[0, 8])),
    ):
        gen(ms_pipe)
    assert not any(m._forward_pre_hooks for m in ms_pipe.unet.modules())


def test_llm_step_is_a_pluggable_callable():
    asked = []

    def fake_llm(text: str) -> str:
        asked.append(text)
        return '1. "A bud in the field."\n2. A half-open peony.\n\n- A peony in full bloom.'

    states = key_states_from_llm("A peony starts to bloom, in the field", fake_llm)
    assert states == ["A bud in the field.", "A half-open peony.", "A peony in full bloom."]
    assert asked == [VSP_TEMPLATE.format(prompt="A peony starts to bloom, in the field")]
    assert "a boy is getting old" in asked[0]
    with pytest.raises(EditError, match="no key states"):
        key_states_from_llm("x", lambda t: "\n\n")


def test_a_call_holding_one_guidance_half_gets_key_states_only_in_the_conditional_one():
    """Separate-call guidance or a cache narrows a call to one half (``ctx.half``): the cond
    call gets the per-frame key states, the uncond call keeps its own text."""
    from types import SimpleNamespace

    from attnlab.core.protocol import CallContext, RunInfo

    F, L, Dim = 4, 3, 5
    key_states = torch.arange(2 * L * Dim, dtype=torch.float32).reshape(2, L, Dim) + 100
    syn = attnlab.Synopsis(key_states)
    run = RunInfo(index=0, cfg=True, timesteps=[900.0])
    for half, batch in (("uncond", 1), ("cond", 1), ("uncond", 2), ("cond", 2)):
        ctx = CallContext(
            run=run, step=0, timestep=900.0, num_train_timesteps=1000, batch=batch, frames=F,
            latent=(2, 2), half=half,
        )  # fmt: skip
        syn.controller = SimpleNamespace(ctx=ctx, pipe=None)
        context = torch.zeros(batch * F, L, Dim)
        out = syn._swap(None, (), {"encoder_hidden_states": context})
        if half == "uncond":
            assert out is None
        else:
            got = out[1]["encoder_hidden_states"].view(batch, F, L, Dim)
            for b in range(batch):
                assert torch.equal(got[b], syn.per_frame(F, "cpu", torch.float32))


def test_text_key_states_are_encoded_by_the_pipeline_in_use():
    """Used again with another pipeline, the edit encodes its prompts with that one."""
    from types import SimpleNamespace

    class Encoder:
        def __init__(self, value: float):
            self.value = value

        def encode_prompt(self, prompts, device, n, cfg):
            return (torch.full((len(prompts), 2, 3), self.value),)

    syn = attnlab.Synopsis(["a young boy", "an old man"])
    for value in (1.0, 2.0):
        syn.controller = SimpleNamespace(pipe=Encoder(value))
        assert float(syn._key_embeddings("cpu", torch.float32).unique()) == value
        syn.release()
