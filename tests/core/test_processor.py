"""The temporal processor: golden math, fast path identity, explicit path, hook points, restore."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import attnlab
from attnlab.core.control import Controller
from attnlab.core.processor import HookPoint, TemporalAttnProcessor
from attnlab.core.protocol import CallContext, RunInfo
from attnlab.core.sites import Site
from tests.helpers import capture, layer_input_and_probs


class _OneCall:
    """Minimal stand-in for the controller: one call, no clients (so `plan` is None)."""

    def __init__(self, frames: int):
        self.ctx = CallContext(RunInfo(0), 0, 500.0, 1000, batch=1, frames=frames, latent=(1, 1))

    def plan(self, name):
        return None

    def check_rows(self, site, rows, frames):
        return self.ctx


def _identity_attention(dim: int, heads: int) -> Attention:
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            lin.weight.copy_(torch.eye(dim))
        attn.to_out[0].bias.zero_()
    attn.add_module("hook_logits", HookPoint())
    attn.add_module("hook_probs", HookPoint())
    return attn


def test_golden_softmax_hand_computed():
    """q = k = x (identity projections), one head, d = 2: softmax(x x^T / sqrt 2) by hand."""
    attn = _identity_attention(2, 1)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 1 row, 3 frames
    site = Site("t", "test", "down", 0, 0, 1, 2, "none", None)
    proc = TemporalAttnProcessor(_OneCall(3), site, AttnProcessor2_0())
    seen = {}
    attn.hook_probs.register_forward_hook(capture(seen, "p"))
    attn.set_processor(proc)
    # force the explicit path: a hook on a hook point routes through it
    out = attn(x)
    # logits: x0.x0 = 1, x0.x1 = 0, x0.x2 = 1, x1.x2 = 1, x2.x2 = 2, all / sqrt 2; with
    # e = e^(1/sqrt 2) = 2.028115 and e^2 = e^(sqrt 2) = 4.113250 the softmax rows are
    # [e, 1, e] / (2e + 1), [1, e, e] / (2e + 1), [e, e, e^2] / (2e + e^2)
    expected = np.array(
        [
            [0.4011121, 0.1977758, 0.4011121],
            [0.1977758, 0.4011121, 0.4011121],
            [0.2482551, 0.2482551, 0.5034898],
        ]
    )
    probs = seen["p"][0, 0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)  # 7 decimals written by hand
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    # values are x too, so the output is probs @ x
    np.testing.assert_allclose(out[0].detach().numpy(), expected @ x[0].numpy(), rtol=1e-5)


def test_fast_path_is_the_original_processor_bit_identical():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=4, dim_head=4)
    x = torch.randn(6, 5, 16)
    ref = attn(x)
    site = Site("t", "test", "down", 0, 0, 4, 4, "none", None)
    attn.add_module("hook_logits", HookPoint())
    attn.add_module("hook_probs", HookPoint())
    attn.set_processor(TemporalAttnProcessor(_OneCall(5), site, attn.processor))
    assert torch.equal(attn(x), ref)


def test_explicit_path_matches_numpy_on_real_layer(ms_pipe):
    """Probabilities at a real UNet3D layer equal softmax(q k^T / sqrt d) recomputed in numpy."""
    name = "down_blocks.1.temp_attentions.0.transformer_blocks.0.attn1"
    attn = dict(ms_pipe.unet.named_modules())[name]
    x_in, p_out = layer_input_and_probs(ms_pipe, attn, attnlab.hooks(ms_pipe))
    x = x_in.double().numpy()
    rows, frames, _ = x.shape
    q = x @ attn.to_q.weight.detach().double().numpy().T
    k = x @ attn.to_k.weight.detach().double().numpy().T
    heads = attn.heads
    d = q.shape[-1] // heads
    q = q.reshape(rows, frames, heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(rows, frames, heads, d).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    ref = np.exp(logits - logits.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(p_out.numpy(), ref, atol=1e-5)


def test_no_client_means_bit_identical_pipeline(pipe, gen):
    ref = gen(pipe)
    from attnlab.core.protocol import Client

    with Controller.of(pipe).attached(Client()):  # installed, but nobody selects anything
        inside = gen(pipe)
    assert torch.equal(inside, ref)
    assert torch.equal(gen(pipe), ref)


def test_explicit_path_close_to_default(pipe, gen):
    ref = gen(pipe)
    with attnlab.hooks(pipe):
        explicit = gen(pipe)
    assert 0 < (explicit - ref).abs().max() < 1e-5 or torch.equal(explicit, ref)
    assert (explicit - ref).abs().max() < 1e-5


def test_restored_after_exception(pipe, gen):
    ref = gen(pipe)
    procs = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    cls = type(pipe)
    table = attnlab.sites(pipe)
    target = dict(pipe.unet.named_modules())[table.names[3]]

    class Boom(RuntimeError):
        pass

    def explode(module, args, output):
        raise Boom("inside the pipeline")

    with pytest.raises(Boom), attnlab.record(pipe, levels=[0]) as rec:
        target.hook_probs.register_forward_hook(explode)
        gen(pipe)
    assert type(pipe) is cls
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == procs
    assert not any(hasattr(m, "hook_probs") for m in pipe.unet.modules())
    assert not pipe.unet._forward_pre_hooks
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert torch.equal(gen(pipe), ref)
    assert not any(r.complete for r in rec.runs)


def _nnsight_read_and_edit(unet, pipe, x, t, e):
    from nnsight import NNsight

    with attnlab.hooks(pipe):
        model = NNsight(unet)
        with model.trace(x, t, encoder_hidden_states=e):
            attn = model.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
            logits = attn.hook_logits.output.save()
            probs = attn.hook_probs.output.save()
            same = model.output.save()
        with model.trace(x, t, encoder_hidden_states=e):
            attn = model.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
            attn.hook_logits.output = attn.hook_logits.output + 5.0 * torch.eye(8)
            edited_probs = attn.hook_probs.output.save()
            edited = model.output.save()
        with model.trace(x, t, encoder_hidden_states=e):
            attn = model.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
            attn.hook_probs.output = torch.eye(8).expand_as(attn.hook_probs.output)
            replaced = model.output.save()
    return logits, probs, same.sample, edited_probs, edited.sample, replaced.sample


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_nnsight_reads_and_sets_hook_points_with_and_without_grad(ms_pipe, grad):
    # under no_grad the blocked path used to skip the hook points: nnsight raised OutOfOrderError
    unet = ms_pipe.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, 6, generator=g)
    t = torch.tensor([500])
    e = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=e).sample
    with torch.set_grad_enabled(grad):
        logits, probs, same, edited_probs, edited, replaced = _nnsight_read_and_edit(
            unet, ms_pipe, x, t, e
        )
    rows = 1 * 8 * 6  # batch x h x w at level 0
    assert tuple(probs.shape) == (rows, 8, 8, 8)  # [B*h*w, heads, F, F]
    # the probabilities are the softmax of the logits read at the other hook point
    torch.testing.assert_close(probs, logits.softmax(-1), rtol=0, atol=1e-6)
    # the edited probabilities are the softmax of the edited logits (hand-computed)
    torch.testing.assert_close(
        edited_probs, (logits + 5.0 * torch.eye(8)).softmax(-1), rtol=0, atol=1e-6
    )
    assert (same - ref).abs().max() < 1e-5  # explicit path vs fused SDPA: rounding only
    assert (edited - ref).abs().max() > 1e-3
    assert (replaced - ref).abs().max() > 1e-3 and (replaced - edited).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.equal(unet(x, t, encoder_hidden_states=e).sample, ref)


def test_an_instance_forward_wrapper_counts_as_a_hook():
    # nnsight intercepts modules by wrapping ``forward`` on the instance (no torch hooks)
    hp = HookPoint()
    assert not hp.has_hooks()
    hp.forward = lambda x: x
    assert hp.has_hooks()
