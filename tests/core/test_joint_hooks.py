"""``hook_frame_probs`` on joint (full-3D) attention layers: read and set per query frame, with
torch hooks and under nnsight, on the tiny CogVideoX (text joint) and Wan (text in a
cross-attention) transformers.

References: the map recorded by ``attnlab.record`` (itself checked against the float64 brute
force in ``tests/core/test_joint.py``) for reads; ``attnlab.Replace`` with the same target for
sets (the documented write semantics); the untouched model for restoring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from tests.core.test_joint import FRAMES, _call, _cog_rope, _inputs, cog, wan  # noqa: F401

LAYER = {"cog": "transformer_blocks.1.attn1", "wan": "blocks.1.attn1"}
#: a frame-level target with no row equal to a read map's
M = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])


def _model(kind, cog, wan):  # noqa: F811
    return {"cog": cog, "wan": wan}[kind]


def _point(model, name):
    return dict(model.named_modules())[name].hook_frame_probs


def _recorded(rec):
    """The recorded per-head map of the one layer, ``[sample, head, F, F]``."""
    ds = rec.to_xarray().isel(run=0, step=0, layer=0, cfg=0)
    return torch.from_numpy(ds[D.PROBS].transpose(D.SAMPLE, D.HEAD, ...).values)


@pytest.mark.parametrize("kind", ["cog", "wan"])
def test_hook_frame_probs_reads_the_recorded_map_and_leaves_with_the_block(kind, cog, wan):  # noqa: F811
    model, name = _model(kind, cog, wan), LAYER[kind]
    ref = _call(model, kind, batch=2)
    seen: list[torch.Tensor] = []
    with attnlab.record(model, reduce="head", names=name + "$") as rec:
        point = _point(model, name)
        assert point.name == f"{name}.hook_frame_probs"
        h = point.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
        try:
            _call(model, kind, batch=2)
        finally:
            h.remove()
    assert len(seen) == 1
    read = seen[0]
    heads = dict(model.named_modules())[name].heads
    assert tuple(read.shape) == (2, heads, FRAMES, FRAMES)  # [B, heads, query frame, key frame]
    torch.testing.assert_close(read, _recorded(rec), atol=1e-6, rtol=0)
    torch.testing.assert_close(read.sum(-1), torch.ones(2, heads, FRAMES), atol=1e-6, rtol=0)
    assert not hasattr(dict(model.named_modules())[name], "hook_frame_probs")
    assert torch.equal(_call(model, kind, batch=2), ref)


@pytest.mark.parametrize("kind", ["cog", "wan"])
def test_a_set_frame_map_replaces_the_frame_marginal_as_replace_does(kind, cog, wan):  # noqa: F811
    """A map set at the hook point is Replace's target: the same output as Replace(M) on that
    layer, the recorded map is M; rows left as read are not replaced."""
    model, name = _model(kind, cog, wan), LAYER[kind]
    ref = _call(model, kind, batch=2)
    # attnlab.hooks: every layer on attnlab's path in all four calls (a recorder attaches first:
    # a bare denoiser's calls inside one block are the steps of one run)
    with attnlab.record(model, reduce="head", names=name + "$") as rec, attnlab.hooks(model):
        h = _point(model, name).register_forward_hook(lambda m, a, out: M.expand_as(out))
        try:
            set_all = _call(model, kind, batch=2)
        finally:
            h.remove()

    def sample_1_only(m, a, out):
        out[1] = M  # in place: sample 0's rows stay as read
        return None

    with attnlab.hooks(model):
        base = _call(model, kind, batch=2)  # the hook point fires, nothing set
        with attnlab.edit(model, attnlab.Replace(M.numpy(), names=name + "$")):
            replaced = _call(model, kind, batch=2)
        h = _point(model, name).register_forward_hook(sample_1_only)
        try:
            part = _call(model, kind, batch=2)
        finally:
            h.remove()
    torch.testing.assert_close(set_all, replaced, atol=1e-6, rtol=0)
    assert (set_all - base).abs().max() > 1e-3
    got = _recorded(rec)  # observers see the map after the set
    torch.testing.assert_close(got, M.expand_as(got), atol=1e-6, rtol=0)
    torch.testing.assert_close(part[0], base[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(part[1], replaced[1], atol=1e-6, rtol=0)
    assert (part[1] - base[1]).abs().max() > 1e-3
    assert torch.equal(_call(model, kind, batch=2), ref)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
def test_nnsight_reads_and_sets_hook_frame_probs(cog, grad):  # noqa: F811
    from nnsight import NNsight

    name = LAYER["cog"]
    ref = _call(cog, "cog", batch=2)
    x, e = _inputs(0, 2)["cog"]
    args = (x, e, torch.full((2,), 500))
    kw = dict(image_rotary_emb=_cog_rope(), return_dict=False)
    with (
        torch.set_grad_enabled(grad),
        attnlab.record(cog, reduce="head", names=name + "$") as rec,
        attnlab.hooks(cog),
    ):
        traced = NNsight(cog)  # created inside the block: the hook points exist
        with traced.trace(*args, **kw):
            read = traced.transformer_blocks[1].attn1.hook_frame_probs.output.save()
            same = traced.output.save()
    with torch.set_grad_enabled(grad), attnlab.hooks(cog):
        traced = NNsight(cog)
        with traced.trace(*args, **kw):
            point = traced.transformer_blocks[1].attn1.hook_frame_probs
            point.output = M.expand_as(point.output)
            edited = traced.output.save()
        with attnlab.edit(cog, attnlab.Replace(M.numpy(), names=name + "$")):
            replaced = _call(cog, "cog", batch=2)
    torch.testing.assert_close(read.detach(), _recorded(rec), atol=1e-6, rtol=0)
    assert (same[0].detach() - ref).abs().max() < 1e-5  # attnlab's path on every layer
    torch.testing.assert_close(edited[0].detach(), replaced, atol=1e-6, rtol=0)
    assert (edited[0].detach() - ref).abs().max() > 1e-3
    assert torch.equal(_call(cog, "cog", batch=2), ref)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.ones(2, FRAMES), r"shape \[2, 3\] does not broadcast to \[B, heads, F, F\]"),
        (-torch.ones(FRAMES, FRAMES), r"finite and non-negative"),
        (torch.zeros(FRAMES, FRAMES), r"rows summing to 0"),
        (np.eye(FRAMES), r"returned ndarray; a set frame map is a tensor"),
    ],
)
def test_a_bad_set_map_raises_one_error_and_the_model_is_restored(cog, bad, match):  # noqa: F811
    ref = _call(cog, "cog")
    with attnlab.hooks(cog):
        h = _point(cog, LAYER["cog"]).register_forward_hook(lambda m, a, out: bad)
        try:
            with pytest.raises(ValueError, match=rf"transformer_blocks\.1\.attn1\.hook_frame_probs: .*{match}"):  # fmt: skip
                _call(cog, "cog")
        finally:
            h.remove()
    assert not attnlab.is_instrumented(cog)
    assert torch.equal(_call(cog, "cog"), ref)
