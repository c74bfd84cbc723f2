"""SlidingWindow (FreeNoise's window fusion, arXiv 2310.15169) and SpectralBlend (FreeLong,
arXiv 2407.19918) on temporal attention: windows and weights against diffusers' own FreeNoise
block, each layer's output against a hand computation from its logits (window softmaxes fused
by the weights; an FFT over frames of the global and local outputs), both processor paths,
composition with TAR, bit-exact identity limits, restoration, serialisation and the
command-line form (on joint attention: tests/edits/test_fusion_joint.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.edits import (
    TAR,
    EditError,
    SlidingWindow,
    SpectralBlend,
    from_json,
    from_spec,
    parse_edit,
)
from attnlab.edits.fusion import fusion_coefficients, sliding_windows, window_weights
from tests.helpers import capture, generate

LEVEL0 = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1"


def _freenoise_block(window: int, stride: int, weighting: str = "pyramid"):
    from diffusers.models.attention import FreeNoiseTransformerBlock

    return FreeNoiseTransformerBlock(
        8, 1, 8, context_length=window, context_stride=stride, weighting_scheme=weighting
    )


def _diffusers_windows(frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """diffusers' windows, with the tail its forward appends when the last stops short."""
    out = _freenoise_block(window, stride)._get_frame_indices(frames)
    if out[-1][1] != frames:
        out.append((frames - window, frames))
    return out


# ---- references from the layer's own weights (float64 numpy) ----------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _qkv(attn, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v ``[rows, heads, F, d]`` of a temporal layer from its input, float64."""
    xd = x.double().numpy()
    rows, n, _ = xd.shape

    def proj(lin):
        y = xd @ lin.weight.detach().double().numpy().T
        if lin.bias is not None:
            y = y + lin.bias.detach().double().numpy()
        return y.reshape(rows, n, attn.heads, -1).transpose(0, 2, 1, 3)

    return proj(attn.to_q), proj(attn.to_k), proj(attn.to_v)


def _logits(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    return q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])


def _tar(phi: np.ndarray, sigma: float) -> np.ndarray:
    n = phi.shape[-1]
    i, j = np.indices((n, n))
    return phi + phi.max(-1, keepdims=True) * np.exp(-0.5 * ((j - i) / sigma) ** 2)


def _freenoise(phi: np.ndarray, v: np.ndarray, window: int, stride: int, weighting="pyramid"):
    """FreeNoise's fusion of window attentions, accumulated as diffusers' block does (each
    window's queries attend to its keys; weighted sums divided by the summed weights; the tail
    window only on the frames after the strided ones), returning (output, effective map)."""
    n = phi.shape[-1]
    wins = _diffusers_windows(n, window, stride)
    weights = np.array(_freenoise_block(window, stride)._get_frame_weights(window, weighting))
    strided = _freenoise_block(window, stride)._get_frame_indices(n)
    acc = np.zeros(v.shape)
    amap = np.zeros(phi.shape)
    tot = np.zeros(n)
    for idx, (a, b) in enumerate(wins):
        p = _softmax(phi[..., a:b, a:b])
        out = p @ v[..., a:b, :]
        lo = strided[-1][1] if idx >= len(strided) else a  # the tail: uncovered frames only
        wt = weights[lo - a :]
        acc[..., lo:b, :] += wt[:, None] * out[..., lo - a :, :]
        amap[..., lo:b, a:b] += wt[:, None] * p[..., lo - a :, :]
        tot[lo:b] += wt
    return acc / tot[:, None], amap / tot[:, None]


def _freelong(phi: np.ndarray, v: np.ndarray, window: int, cutoff: float, box: bool = False):
    """FreeLong's blend: global and local attention outputs (its adjusted local mask), mixed
    by a low-pass over the frame axis in the shifted spectrum (its ``freq_mix_3d``, temporal
    factor ``exp(-0.5 (t / d_t)^2)``, ``t = arange(T) * 2 / T - 1``)."""
    n = phi.shape[-1]
    mask = np.full((n, n), -np.inf)
    for i in range(n):
        start, end = max(0, i - window // 2), min(n, i + window // 2 + 1)
        if end - start < window:
            if start == 0:
                end = min(n, start + window)
            else:
                start = max(0, end - window)
        mask[i, start:end] = 0.0
    glob = _softmax(phi) @ v
    loc = _softmax(phi + mask) @ v
    t = np.arange(n) * 2 / n - 1
    lpf = (np.abs(t) <= cutoff).astype(float) if box else np.exp(-0.5 * (t / cutoff) ** 2)
    lpf = lpf[:, None]  # over frames, every channel

    def spec(x):
        return np.fft.fftshift(np.fft.fft(x, axis=-2), axes=-2)

    mixed = spec(glob) * lpf + spec(loc) * (1 - lpf)
    return np.fft.ifft(np.fft.ifftshift(mixed, axes=-2), axis=-2).real


def _one_step(pipe, attn, context, probs: bool = True) -> dict:
    """One seeded one-step generation in ``context``: the layer's first input ``x``, its
    attention output before the output projection ``out`` and (``probs``) its ``hook_probs``
    ``p`` (a hook there takes the whole-tensor path; without it, the blocked one)."""
    got: dict = {}
    with context:
        hs = [
            attn.register_forward_pre_hook(capture(got, "x", arg=True)),
            attn.to_out[0].register_forward_pre_hook(capture(got, "out", arg=True)),
        ]
        if probs:
            hs.append(attn.hook_probs.register_forward_hook(capture(got, "p")))
        try:
            generate(pipe, num_inference_steps=1)
        finally:
            for h in hs:
                h.remove()
    return got


def _as_out(o: np.ndarray) -> np.ndarray:
    """``[rows, heads, F, d]`` -> the layer's ``[rows, F, heads * d]``."""
    return o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], -1)


# ---- windows and weights ---------------------------------------------------------------------
@pytest.mark.parametrize("frames, window, stride", [(25, 16, 4), (8, 4, 3), (8, 5, 2), (16, 4, 4)])
def test_windows_and_weights_are_diffusers_freenoise(frames, window, stride):
    assert sliding_windows(frames, window, stride) == _diffusers_windows(frames, window, stride)
    for length in (4, 5, 16):
        for scheme in ("pyramid", "flat"):
            ref = _freenoise_block(length, 1)._get_frame_weights(length, scheme)
            np.testing.assert_array_equal(window_weights(length, scheme), ref)
    C, K = fusion_coefficients(frames, window, stride)
    np.testing.assert_allclose(C.sum(0), 1.0, atol=1e-12)
    assert (C[K == 0] == 0).all()  # a window speaks only for its own frames


# ---- SlidingWindow on a real temporal layer ---------------------------------------------------
@pytest.mark.parametrize("window, stride, weighting", [(4, 3, "pyramid"), (5, 2, "flat")])
def test_sliding_window_on_a_unet_layer_equals_freenoise_by_hand(
    ms_pipe, window, stride, weighting
):
    """The layer's attention output == FreeNoise's fusion of window attentions computed from
    its own q, k, v (whole-tensor path with hook_probs, blocked path without), and hook_probs
    == the effective map: rows sum to 1, zero where query and key share no window."""
    attn = dict(ms_pipe.unet.named_modules())[LEVEL0]
    edit = SlidingWindow(window, stride, weighting=weighting)
    whole = _one_step(ms_pipe, attn, attnlab.edit(ms_pipe, edit))
    q, k, v = _qkv(attn, whole["x"])
    out, amap = _freenoise(_logits(q, k), v, window, stride, weighting)
    np.testing.assert_allclose(whole["out"].numpy(), _as_out(out), atol=1e-5)
    np.testing.assert_allclose(whole["p"].numpy(), amap, atol=1e-5)
    np.testing.assert_allclose(whole["p"].sum(-1).numpy(), 1.0, atol=1e-6)
    plain = _softmax(_logits(q, k))
    assert np.abs(amap - plain).max() > 1e-3  # the edit changed the maps
    blocked = _one_step(ms_pipe, attn, attnlab.edit(ms_pipe, edit), probs=False)
    q, k, v = _qkv(attn, blocked["x"])
    out, _ = _freenoise(_logits(q, k), v, window, stride, weighting)
    np.testing.assert_allclose(blocked["out"].numpy(), _as_out(out), atol=1e-5)


def test_sliding_window_after_tar_equals_the_composed_formula(ms_pipe):
    attn = dict(ms_pipe.unet.named_modules())[LEVEL0]
    got = _one_step(ms_pipe, attn, attnlab.edit(ms_pipe, TAR(2.0, t_min=None), SlidingWindow(4, 2)))
    q, k, v = _qkv(attn, got["x"])
    out, amap = _freenoise(_tar(_logits(q, k), 2.0), v, 4, 2)
    np.testing.assert_allclose(got["out"].numpy(), _as_out(out), atol=1e-5)
    np.testing.assert_allclose(got["p"].numpy(), amap, atol=1e-5)


# ---- SpectralBlend on a real temporal layer ---------------------------------------------------
@pytest.mark.parametrize("window, cutoff, box", [(4, 0.25, False), (3, 0.5, True)])
def test_spectral_blend_on_a_unet_layer_equals_freelong_by_hand(ms_pipe, window, cutoff, box):
    """The layer's attention output == the FFT blend of its global and local attention
    outputs (from its own q, k, v), both processor paths; the recorded map's rows sum to 1."""
    attn = dict(ms_pipe.unet.named_modules())[LEVEL0]
    edit = SpectralBlend(window, cutoff, filter="box" if box else "gaussian")
    for probs in (True, False):
        got = _one_step(ms_pipe, attn, attnlab.edit(ms_pipe, edit), probs=probs)
        q, k, v = _qkv(attn, got["x"])
        want = _freelong(_logits(q, k), v, window, cutoff, box)
        np.testing.assert_allclose(got["out"].numpy(), _as_out(want), atol=1e-5)
        plain = _softmax(_logits(q, k)) @ v
        assert np.abs(want - plain).max() > 1e-3  # the edit changed the output
        if probs:
            np.testing.assert_allclose(got["p"].sum(-1).numpy(), 1.0, atol=1e-5)


def test_recorded_maps_rows_sum_to_one(ms_pipe, gen):
    for edit in (SlidingWindow(4, 2), SpectralBlend(3, 0.3), SpectralBlend(4, 0.5, filter="box")):
        with attnlab.record(ms_pipe, levels=[0], reduce="head") as rec, attnlab.edit(ms_pipe, edit):
            gen(ms_pipe)
        p = rec.to_xarray()[D.PROBS]
        np.testing.assert_allclose(p.sum(D.KEY).values, 1.0, atol=1e-5)


# ---- identity limits, composition, restoration ------------------------------------------------
# windows that cover every call warn once per run (tested in test_fusion_joint)
@pytest.mark.filterwarnings("ignore::attnlab.edits.base.EditInactiveWarning")
def test_identity_limits_are_bit_exact_and_the_model_is_restored(ms_pipe, gen):
    ref = gen(ms_pipe)  # 8 latent frames
    for edit in (
        SlidingWindow(8, 4),
        SlidingWindow(12, 3),
        SpectralBlend(4, 1.0, filter="box"),  # only the global branch
        SpectralBlend(8, 0.25),  # the local window is every frame
    ):
        with attnlab.edit(ms_pipe, edit):
            assert torch.equal(gen(ms_pipe), ref), edit
    with attnlab.edit(ms_pipe, TAR(1.0, t_min=None)):
        tar = gen(ms_pipe)
    with attnlab.edit(ms_pipe, TAR(1.0, t_min=None), SlidingWindow(8, 2)):
        assert torch.equal(gen(ms_pipe), tar)
    with attnlab.edit(ms_pipe, TAR(1.0, t_min=None), SpectralBlend(3, 2.0, filter="box")):
        assert torch.equal(gen(ms_pipe), tar)
    for edit in (SlidingWindow(4, 2), SpectralBlend(3, 0.25)):
        with attnlab.edit(ms_pipe, edit):
            edited = gen(ms_pipe)
        assert (edited - ref).abs().max() > 1e-4
        with attnlab.edit(ms_pipe, TAR(1.0, t_min=None), edit):
            both = gen(ms_pipe)
        assert (both - tar).abs().max() > 1e-4 and (both - edited).abs().max() > 1e-4
        assert torch.equal(gen(ms_pipe), ref)  # restored on exit
        assert not attnlab.is_instrumented(ms_pipe)
    with pytest.raises(RuntimeError, match="inside"), attnlab.edit(ms_pipe, SlidingWindow(4, 2)):
        raise RuntimeError("inside")
    assert torch.equal(gen(ms_pipe), ref) and not attnlab.is_instrumented(ms_pipe)


def test_one_cfg_half(ms_pipe, gen):
    with attnlab.record(ms_pipe, levels=[0], steps=[0]) as plain:
        gen(ms_pipe)
    with (
        attnlab.record(ms_pipe, levels=[0], steps=[0]) as rec,
        attnlab.edit(ms_pipe, SlidingWindow(3, 2, cfg="cond")),
    ):
        gen(ms_pipe)
    a, b = rec.to_xarray()[D.PROBS], plain.to_xarray()[D.PROBS]
    np.testing.assert_allclose(a.sel(cfg="uncond").values, b.sel(cfg="uncond").values, atol=1e-6)
    assert np.abs(a.sel(cfg="cond").values - b.sel(cfg="cond").values).max() > 1e-3


# ---- serialisation, command line, bad input, joint attention ----------------------------------
def test_json_round_trip_and_the_command_line_form():
    for edit in (
        SlidingWindow(16),
        SlidingWindow(8, 2, weighting="flat", levels=[0], cfg="cond", steps=[0, 1]),
        SpectralBlend(16),
        SpectralBlend(8, 1.0, filter="box", t_min=0.2),
    ):
        assert from_spec(edit.spec()) == edit
        assert from_json(edit.to_json()) == edit
    assert SlidingWindow(16).spec()["stride"] == 4 and SpectralBlend(16).spec()["cutoff"] == 0.25
    assert parse_edit("sliding_window:16,4") == SlidingWindow(16, 4)
    assert parse_edit("sliding_window:16,2,weighting=flat@0,1") == SlidingWindow(
        16, 2, weighting="flat", levels=[0, 1]
    )
    assert parse_edit("spectral_blend:16,0.3") == SpectralBlend(16, 0.3)
    assert parse_edit("spectral_blend:16,1,filter=box") == SpectralBlend(16, 1.0, filter="box")
    assert parse_edit("window_decay:16") == attnlab.WindowDecay(16)
    assert parse_edit("window_decay:8,0.8,beyond=periodic,period=50,beta=0.6@0") == (
        attnlab.WindowDecay(8, 0.8, beyond="periodic", period=50, beta=0.6, levels=[0])
    )
    assert attnlab.edits.SlidingWindow is SlidingWindow


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SlidingWindow(0), "window must be an int >= 1"),
        (lambda: SlidingWindow(4, 0), "stride must be an int >= 1"),
        (lambda: SlidingWindow(4, 5), r"stride \(5\) must be <= window \(4\)"),
        (lambda: SlidingWindow(4.5), "window must be an int >= 1"),
        (lambda: SlidingWindow(4, weighting="saw"), "weighting must be one of pyramid, flat"),
        (lambda: SpectralBlend(0), "window must be an int >= 1"),
        (lambda: SpectralBlend(4, 0), "cutoff must be a positive number"),
        (lambda: SpectralBlend(4, "x"), "cutoff must be a positive number"),
        (lambda: SpectralBlend(4, filter="ideal"), "filter must be one of gaussian, box"),
        (lambda: parse_edit("sliding_window:"), "needs a window"),
        (lambda: parse_edit("sliding_window:4,stride=2,3"), "positional '3' after keyword"),
        (lambda: parse_edit("spectral_blend:4,colour=red"), "unexpected keyword"),
        (lambda: parse_edit("freelong:4"), "sliding_window: or spectral_blend:"),
    ],
)
def test_bad_parameters_raise_one_clear_error(make, match):
    with pytest.raises(EditError, match=match):
        make()
