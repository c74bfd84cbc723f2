"""WindowDecay (UltraViCo, arXiv 2511.20123): the hand formula on a real temporal layer (both
processor paths), composition with TAR, identity limits, restoration, serialisation, and the
decay on joint token logits (the joint path itself: test_window_decay_joint.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.data.metrics import dispersion
from attnlab.edits import TAR, EditError, WindowDecay, decay_factors, from_json, from_spec
from tests.helpers import capture, layer_input_and_probs

LEVEL0 = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1"


# ---- the hand formula -------------------------------------------------------------------------
def _hand_factor(i: int, j: int, window, alpha, period=None, beta=None, width=1.0) -> float:
    d = abs(i - j)
    if d <= window:
        return 1.0
    if period is not None:
        for m in range(1, d + 2):
            if abs(d - m * period) <= width:
                return beta
    return alpha


def _hand_decay(phi: np.ndarray, window, alpha, **periodic) -> np.ndarray:
    """Loops over every entry: positive logits beyond the window times the factor."""
    out = phi.copy()
    n = phi.shape[-1]
    for i in range(n):
        for j in range(n):
            f = _hand_factor(i, j, window, alpha, **periodic)
            v = out[..., i, j]
            out[..., i, j] = np.where(v > 0, v * f, v)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_logits(attn, x: torch.Tensor) -> np.ndarray:
    """``q k^T / sqrt(d)`` of one temporal layer from its input, in float64 numpy."""
    x = x.double().numpy()
    rows, n, _ = x.shape
    heads = attn.heads

    def proj(w):
        return (x @ w.detach().double().numpy().T).reshape(rows, n, heads, -1).transpose(0, 2, 1, 3)

    q, k = proj(attn.to_q.weight), proj(attn.to_k.weight)
    return q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])


def test_factors_equal_the_hand_rule():
    for kw in ({}, {"period": 3.0, "beta": 0.25, "width": 0.5}, {"period": 2.5, "beta": 0.0}):
        beyond = "periodic" if kw else "constant"
        got = decay_factors(11, 2, 0.7, beyond, **kw)
        want = np.array([[_hand_factor(i, j, 2, 0.7, **kw) for j in range(11)] for i in range(11)])
        np.testing.assert_array_equal(got, want)


def test_json_round_trip_keeps_every_argument():
    for edit in (
        WindowDecay(16),
        WindowDecay(
            8,
            0.8,
            beyond="periodic",
            period=20,
            beta=0.5,
            width=2,
            levels=[0],
            cfg="cond",
            steps=[0, 1],
            t_min=0.2,
        ),
    ):
        assert from_spec(edit.spec()) == edit
        assert from_json(edit.to_json()) == edit
        assert edit.spec()["kind"] == "window_decay"
    assert WindowDecay(4).spec()["alpha"] == 0.9 and attnlab.WindowDecay is WindowDecay


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: WindowDecay(-1), "window must be an int >= 0"),
        (lambda: WindowDecay(2.5), "window must be an int >= 0"),
        (lambda: WindowDecay(4, 1.5), r"alpha must be a number in \[0, 1\]"),
        (lambda: WindowDecay(4, "x"), r"alpha must be a number in \[0, 1\]"),
        (lambda: WindowDecay(4, beyond="loop"), "beyond must be one of constant, periodic"),
        (lambda: WindowDecay(4, beyond="periodic"), "needs a period"),
        (lambda: WindowDecay(4, period=10), "applies with beyond='periodic' only"),
        (lambda: WindowDecay(4, beyond="periodic", period=0), "period must be a positive"),
        (lambda: WindowDecay(4, beyond="periodic", period=5, beta=-0.1), "beta must be"),
        (lambda: WindowDecay(4, width=-1), "width must be a number >= 0"),
        (lambda: WindowDecay(4, cfg="half"), "cfg must be one of"),
    ],
)
def test_bad_parameters_raise_one_clear_error(make, match):
    with pytest.raises(EditError, match=match):
        make()


# ---- on a real temporal layer -----------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, hand",
    [
        (WindowDecay(2, 0.5), {"window": 2, "alpha": 0.5}),
        (
            WindowDecay(1, 0.9, beyond="periodic", period=3, beta=0.2, width=0.5),
            {"window": 1, "alpha": 0.9, "period": 3, "beta": 0.2, "width": 0.5},
        ),
    ],
)
def test_window_decay_on_a_unet_layer_equals_the_hand_formula(ms_pipe, gen, edit, hand):
    """hook_probs (whole-tensor path) and the recorded mean map (blocked path) of a level-0
    temporal layer under WindowDecay == softmax(hand decay of q k^T / sqrt d), float64 numpy."""
    attn = dict(ms_pipe.unet.named_modules())[LEVEL0]
    x_in, p_out = layer_input_and_probs(ms_pipe, attn, attnlab.edit(ms_pipe, edit))
    phi = _layer_logits(attn, x_in)
    want = _softmax(_hand_decay(phi, **hand))
    np.testing.assert_allclose(p_out.numpy(), want, atol=1e-5)
    assert np.abs(want - _softmax(phi)).max() > 1e-3  # the edit changed the maps

    # the blocked path (a recorder averaging over space and heads, no hooks on hook points)
    seen: dict = {}
    with attnlab.record(ms_pipe, levels=[0], steps=[0]) as rec, attnlab.edit(ms_pipe, edit):
        h1 = attn.register_forward_pre_hook(capture(seen, "x", arg=True))
        try:
            gen(ms_pipe, num_inference_steps=1)
        finally:
            h1.remove()
    p = _softmax(_hand_decay(_layer_logits(attn, seen["x"]), **hand))  # [B*h*w, heads, F, F]
    per_half = p.reshape(2, -1, *p.shape[1:]).mean(axis=(1, 2))  # [uncond, cond]
    recorded = rec.to_xarray()[D.PROBS].sel(layer=LEVEL0).isel(run=0, step=0, sample=0)
    np.testing.assert_allclose(recorded.transpose(D.CFG, ...).values, per_half, atol=1e-5)


def test_window_decay_after_tar_equals_the_composed_formula(ms_pipe):
    attn = dict(ms_pipe.unet.named_modules())[LEVEL0]
    x_in, p_out = layer_input_and_probs(
        ms_pipe, attn, attnlab.edit(ms_pipe, TAR(2.0, t_min=None), WindowDecay(1, 0.6))
    )
    phi = _layer_logits(attn, x_in)
    n = phi.shape[-1]
    i, j = np.indices((n, n))
    dA = np.exp(-0.5 * ((j - i) / 2.0) ** 2)
    tar = phi + phi.max(-1, keepdims=True) * dA  # Eq. 3, per-row max
    np.testing.assert_allclose(
        p_out.numpy(), _softmax(_hand_decay(tar, window=1, alpha=0.6)), atol=1e-5
    )


def test_rows_sum_to_one_and_mass_beyond_the_window_drops(ms_pipe, gen):
    with attnlab.record(ms_pipe, levels=[0], reduce="head") as plain:
        gen(ms_pipe)
    with (
        attnlab.record(ms_pipe, levels=[0], reduce="head") as rec,
        attnlab.edit(ms_pipe, WindowDecay(2, 0.3)),
    ):
        gen(ms_pipe)
    p = rec.to_xarray()[D.PROBS]
    np.testing.assert_allclose(p.sum(D.KEY).values, 1.0, atol=1e-5)
    # within-window logits kept, those beyond only lowered: no row puts more mass beyond
    before = dispersion(plain.to_xarray()[D.PROBS], 2)["mass_beyond"].values
    after = dispersion(p, 2)["mass_beyond"].values
    assert (after <= before + 1e-6).all() and (before - after).max() > 1e-3


# windows that cover every call warn once per run (tested in test_fusion_joint)
@pytest.mark.filterwarnings("ignore::attnlab.edits.base.EditInactiveWarning")
def test_identity_limits_are_bit_exact_and_the_model_is_restored(ms_pipe, gen):
    ref = gen(ms_pipe)
    for edit in (
        WindowDecay(2, 1.0),
        WindowDecay(7, 0.1),  # 8 frames: every offset within the window
        WindowDecay(2, 1.0, beyond="periodic", period=3, beta=1.0),
    ):
        with attnlab.edit(ms_pipe, edit):
            assert torch.equal(gen(ms_pipe), ref)
    with attnlab.edit(ms_pipe, TAR(1.0, t_min=None)):
        tar = gen(ms_pipe)
    with attnlab.edit(ms_pipe, TAR(1.0, t_min=None), WindowDecay(2, 1.0)):
        assert torch.equal(gen(ms_pipe), tar)
    with attnlab.record(ms_pipe, levels=[0]) as plain:
        gen(ms_pipe)
    with attnlab.record(ms_pipe, levels=[0]) as rec, attnlab.edit(ms_pipe, WindowDecay(2, 1.0)):
        gen(ms_pipe)
    np.testing.assert_array_equal(
        rec.to_xarray()[D.PROBS].values, plain.to_xarray()[D.PROBS].values
    )
    with attnlab.edit(ms_pipe, WindowDecay(2, 0.5)):
        edited = gen(ms_pipe)
    assert (edited - ref).abs().max() > 1e-4
    assert torch.equal(gen(ms_pipe), ref)  # restored on exit
    assert not attnlab.is_instrumented(ms_pipe)


def test_one_cfg_half(ms_pipe, gen):
    """cfg="cond": the uncond maps of the first step are the plain ones (later steps differ:
    the guided latents do), the cond maps are not."""
    with attnlab.record(ms_pipe, levels=[0], steps=[0]) as plain:
        gen(ms_pipe)
    with (
        attnlab.record(ms_pipe, levels=[0], steps=[0]) as rec,
        attnlab.edit(ms_pipe, WindowDecay(1, 0.2, cfg="cond")),
    ):
        gen(ms_pipe)
    a, b = rec.to_xarray()[D.PROBS], plain.to_xarray()[D.PROBS]
    # (editing one half takes the whole-tensor path, the plain run the blocked one: the
    # spatial mean is summed in another order, hence a tolerance)
    np.testing.assert_allclose(a.sel(cfg="uncond").values, b.sel(cfg="uncond").values, atol=1e-6)
    assert np.abs(a.sel(cfg="cond").values - b.sel(cfg="cond").values).max() > 1e-3


# ---- joint attention ---------------------------------------------------------------------------
def test_decay_on_joint_token_logits_equals_the_hand_formula():
    """``WindowDecay.decay`` on joint-attention logits (T tokens per frame, random q, k) ==
    the hand rule on each token pair's frames: the operation a joint path applies."""
    g = torch.Generator().manual_seed(0)
    frames, per_frame, heads, d = 6, 4, 2, 8
    q = torch.randn(1, heads, frames * per_frame, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, heads, frames * per_frame, d, generator=g, dtype=torch.float64)
    L = q @ k.transpose(-1, -2) / math.sqrt(d)
    f = torch.arange(frames * per_frame) // per_frame
    edit = WindowDecay(1, 0.5, beyond="periodic", period=4, beta=0.1, width=0)
    got = edit.decay(L, f, f, frames).numpy()
    want = L.numpy().copy()
    for a in range(len(f)):
        for b in range(len(f)):
            fac = _hand_factor(int(f[a]), int(f[b]), 1, 0.5, period=4, beta=0.1, width=0)
            v = want[..., a, b]
            want[..., a, b] = np.where(v > 0, v * fac, v)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(got), -1).sum(-1), 1.0, atol=1e-12)
