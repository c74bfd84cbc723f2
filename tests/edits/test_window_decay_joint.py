"""WindowDecay (UltraViCo, arXiv 2511.20123) on joint space-time attention (DiTs): the decay of
positive video-token logits by the latent frames of query and key, against a brute-force full
softmax over every token (random q, k, v with text tokens, blocked; one layer of the tiny
CogVideoX and Wan transformers, from q, k, v recomputed by hand), composition with TAR,
bit-exact identity limits, restoration and the recorded maps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import blocking, joint_math
from attnlab.core import dims as D
from attnlab.core.joint_math import BiasOp, edited_attention
from attnlab.core.joint_sites import TokenLayout
from attnlab.data.metrics import dispersion
from attnlab.edits import TAR, WindowDecay
from tests.core.test_joint import FRAMES, _call, _first_layer_under, cog, wan  # noqa: F401


def _factor(fi: int, fj: int, window, alpha, period=None, beta=None, width=1.0) -> float:
    """UltraViCo's factor for a query in latent frame ``fi`` and a key in ``fj``."""
    d = abs(fi - fj)
    if d <= window:
        return 1.0
    if period is not None and any(abs(d - m * period) <= width for m in range(1, d + 2)):
        return beta
    return alpha


def _decayed(L: torch.Tensor, v0: int, n_video: int, per_frame: int, **rule) -> torch.Tensor:
    """Every video-query x video-key logit, one by one: positive ones times the factor of
    their frames; text rows and columns as they are."""
    out = L.clone()
    for a in range(n_video):
        for b in range(n_video):
            f = _factor(a // per_frame, b // per_frame, **rule)
            x = out[..., v0 + a, v0 + b]
            out[..., v0 + a, v0 + b] = torch.where(x > 0, x * f, x)
    return out


@pytest.mark.parametrize("text", ["first", "last"])
def test_joint_decay_equals_a_brute_force_softmax_on_random_tensors(text, monkeypatch):
    """edited_attention with WindowDecay's frame-level logit function (blocked over queries,
    on one of two samples) == softmax over every token of the hand-decayed logits @ v."""
    monkeypatch.setitem(blocking.JOINT_BLOCK_ELEMENTS, "cpu", 2 * 2 * 30 * 7)
    g = torch.Generator().manual_seed(4)
    frames, per_frame, n_text = 5, 3, 4
    layout = TokenLayout(frames=frames, per_frame=per_frame, text=text)
    S = layout.video + n_text
    q, k, v = (torch.randn(2, 2, S, 8, generator=g) * 2.0 for _ in range(3))
    edit = WindowDecay(1, 0.3, beyond="periodic", period=3, beta=0.1, width=0)
    fn = edit.frame_bias(None, SimpleNamespace(frames=frames))  # type: ignore[arg-type]
    samples = torch.tensor([False, True])
    out, mass, _ = edited_attention(
        q, k, v, layout, bias=[BiasOp(None, samples=samples, fn=fn)], observe=True
    )
    L = q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)
    v0 = layout.video_start(S)
    rule = dict(window=1, alpha=0.3, period=3, beta=0.1, width=0)
    want = L.softmax(-1) @ v.double()
    want[1] = (_decayed(L, v0, layout.video, per_frame, **rule).softmax(-1) @ v.double())[1]
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=0)
    assert (want[1] - (L.softmax(-1) @ v.double())[1]).abs().max() > 1e-2  # it acted
    torch.testing.assert_close(mass.sum(-1), torch.ones_like(mass.sum(-1)), atol=1e-5, rtol=0)

    # after TAR's prior (in the order given): decay of (L + rowmax * dA)
    i = torch.arange(float(frames))
    dA = torch.exp(-0.5 * ((i[None] - i[:, None]) / 1.5) ** 2)
    out, _, _ = edited_attention(q, k, v, layout, bias=[BiasOp(dA), BiasOp(None, fn=fn)])
    Lt = L.clone()
    Lvv = Lt[:, :, v0 : v0 + layout.video, v0 : v0 + layout.video]
    fq = torch.arange(layout.video) // per_frame
    Lt[:, :, v0 : v0 + layout.video, v0 : v0 + layout.video] = (
        Lvv + Lvv.amax(-1, keepdim=True) * dA.double()[fq][:, fq]
    )
    want = _decayed(Lt, v0, layout.video, per_frame, **rule).softmax(-1) @ v.double()
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=0)
    assert joint_math.BiasOp(dA).fn is None  # a prior stays a prior


@pytest.mark.parametrize("kind", ["cog", "wan"])
@pytest.mark.parametrize("with_tar", [False, True])
def test_joint_window_decay_on_one_layer_equals_the_hand_formula(kind, with_tar, cog, wan):  # noqa: F811
    """The attention output of a WindowDecay-edited DiT layer (after TAR when given) ==
    softmax(decay(L)) @ v from q, k, v recomputed by hand: video x video logits only."""
    model = {"cog": cog, "wan": wan}[kind]
    ref = _call(model, kind)
    edits = [WindowDecay(0, 0.4)]
    if with_tar:
        edits.insert(0, TAR(1.0, t_min=None))
    out, attn_out, q, k, v = _first_layer_under(model, kind, *edits)
    S, T = q.shape[2], 16
    Nv = FRAMES * T
    v0 = S - Nv
    L = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if with_tar:
        Lvv = L[:, :, v0:, v0:]
        f = torch.arange(Nv) // T
        dA = torch.exp(-0.5 * ((f[None] - f[:, None]).double() / 1.0) ** 2)
        L[:, :, v0:, v0:] = Lvv + Lvv.amax(-1, keepdim=True) * dA
    L = _decayed(L, v0, Nv, T, window=0, alpha=0.4)
    expected = (L.softmax(-1) @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attn_out.double(), expected, atol=1e-5, rtol=0)
    assert (out - ref).abs().max() > 1e-3
    assert torch.equal(_call(model, kind), ref)  # restored on exit


# windows that cover every call warn once per run (tested in test_fusion_joint)
@pytest.mark.filterwarnings("ignore::attnlab.edits.base.EditInactiveWarning")
@pytest.mark.parametrize("kind", ["cog", "wan"])
def test_joint_identity_limits_are_bit_exact_and_the_model_is_restored(kind, cog, wan):  # noqa: F811
    model = {"cog": cog, "wan": wan}[kind]
    ref = _call(model, kind)
    for edit in (WindowDecay(0, 1.0), WindowDecay(FRAMES - 1, 0.1)):  # alpha 1; window >= N-1
        with attnlab.edit(model, edit):
            assert torch.equal(_call(model, kind), ref)
    with attnlab.edit(model, TAR(1.0, t_min=None)):
        tar = _call(model, kind)
    with attnlab.edit(model, TAR(1.0, t_min=None), WindowDecay(0, 1.0)):
        assert torch.equal(_call(model, kind), tar)
    with attnlab.edit(model, TAR(1.0, t_min=None), WindowDecay(0, 0.5)):
        both = _call(model, kind)
    assert (both - tar).abs().max() > 1e-4
    with pytest.raises(RuntimeError, match="inside"), attnlab.edit(model, WindowDecay(0, 0.5)):
        _call(model, kind)
        raise RuntimeError("inside")
    assert torch.equal(_call(model, kind), ref)
    assert not attnlab.is_instrumented(model)


def test_joint_recorded_maps_stay_distributions_with_less_mass_beyond(cog):  # noqa: F811
    with attnlab.record(cog, reduce="head") as plain:
        _call(cog, "cog")
    with attnlab.record(cog, reduce="head") as rec, attnlab.edit(cog, WindowDecay(0, 0.2)):
        _call(cog, "cog")
    p = rec.to_xarray()[D.PROBS]
    np.testing.assert_allclose(p.sum(D.KEY).values, 1.0, atol=1e-5)
    before = dispersion(plain.to_xarray()[D.PROBS], 0)["mass_beyond"].values
    after = dispersion(p, 0)["mass_beyond"].values
    assert (after <= before + 1e-6).all() and (before - after).max() > 1e-3
