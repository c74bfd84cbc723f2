"""SlidingWindow (FreeNoise's window fusion) and SpectralBlend (FreeLong) on joint space-time
attention (DiTs): against a brute force that runs the softmax of every window over its own keys
(the window's frames' video tokens and the text), token by token in float64, and FreeLong's
filter as an FFT over the query frames; on both joint paths (explicit and split), with text
first, last and absent, a padded-text mask, one CFG half, TAR before them, and a fixed
replacement before SlidingWindow. Then on the tiny DiTs: maps recorded under them, bit-exact
identity limits, restoration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D_
from attnlab.core import joint_math
from attnlab.core.joint_math import BiasOp, MixOp, ReplaceOp, edited_attention, split_attention
from attnlab.core.joint_sites import JointAttentionError, TokenLayout
from attnlab.edits import TAR, Replace, SlidingWindow, SpectralBlend
from attnlab.edits.fusion import fusion_coefficients, local_windows
from tests.core.test_joint import FRAMES as DIT_FRAMES
from tests.core.test_joint import _call, _first_layer_under, cog, wan  # noqa: F401

FRAMES, PER_FRAME, N_TEXT, D = 7, 3, 4, 8


def _tensors(text: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    layout = TokenLayout(frames=FRAMES, per_frame=PER_FRAME, text=text)
    S = layout.video + (0 if text == "cross" else N_TEXT)
    q, k, v = (torch.randn(2, 2, S, D, generator=g) * 1.5 for _ in range(3))
    return layout, q, k, v


def _mask(layout: TokenLayout, S: int) -> torch.Tensor:
    """Sample 1's last two text tokens padded out (an additive mask per sample)."""
    m = torch.zeros(2, 1, 1, S)
    v0 = layout.video_start(S)
    text = [i for i in range(S) if not v0 <= i < v0 + layout.video]
    for i in text[-2:]:
        m[1, 0, 0, i] = float("-inf")
    return m


def _logits(q, k, layout, mask=None, tar=None, samples=None):
    """float64 logits, the mask added, and TAR's row-max prior on the video x video part."""
    L = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        L = L + mask.double()
    if tar is not None:
        S = L.shape[-1]
        v0 = layout.video_start(S)
        f = torch.arange(layout.video) // layout.per_frame
        Lvv = L[..., v0 : v0 + layout.video, v0 : v0 + layout.video]
        new = Lvv + Lvv.amax(-1, keepdim=True) * tar.double()[f][:, f]
        if samples is not None:
            new = torch.where(samples.view(-1, 1, 1, 1), new, Lvv)
        L[..., v0 : v0 + layout.video, v0 : v0 + layout.video] = new
    return L


def _window_softmax(L, layout, q_frame, allowed_frames):
    """Softmax of logit rows ``L [..., S]`` over the text keys and the video keys of
    ``allowed_frames``."""
    S = L.shape[-1]
    v0 = layout.video_start(S)
    keep = torch.ones(S, dtype=torch.bool)
    for j in range(layout.frames):
        if j not in allowed_frames:
            keep[v0 + j * layout.per_frame : v0 + (j + 1) * layout.per_frame] = False
    return L.masked_fill(~keep, float("-inf")).softmax(-1)


def _frame_masses(P, layout):
    S = P.shape[-1]
    v0 = layout.video_start(S)
    vid = P[..., v0 : v0 + layout.video].unflatten(-1, (layout.frames, layout.per_frame)).sum(-1)
    return vid / vid.sum(-1, keepdim=True), P.sum(-1) - vid.sum(-1)


def _sliding_reference(q, k, v, layout, window, stride, mask=None, tar=None, samples=None):
    """Per video query of frame i: sum over the windows containing it of C[w, i] times the
    softmax over that window's keys (text included) @ v; text rows plain. float64."""
    L = _logits(q, k, layout, mask, tar, samples)
    S = L.shape[-1]
    v0 = layout.video_start(S)
    C, K = fusion_coefficients(layout.frames, window, stride)
    P = L.softmax(-1)
    out = P @ v.double()
    Peff = P.clone()
    for t in range(layout.video):
        i = t // layout.per_frame
        row = torch.zeros_like(P[..., v0 + t, :])
        total = torch.zeros_like(row[..., :1])
        for n in range(C.shape[0]):
            if C[n, i] > 0:
                allowed = set(np.flatnonzero(K[n]).tolist())
                soft = _window_softmax(L[..., v0 + t, :], layout, i, allowed)
                # a window whose every key is masked is left out (the others renormalised)
                ok = ~soft.isnan().any(-1, keepdim=True)
                row += torch.where(ok, C[n, i] * soft, 0.0)
                total += ok * C[n, i]
        row = row / total
        if samples is not None:
            row = torch.where(samples.view(-1, 1, 1), row, P[..., v0 + t, :])
        Peff[..., v0 + t, :] = row
        out[..., v0 + t, :] = (row.unsqueeze(-2) @ v.double()).squeeze(-2)
    mass, text = _frame_masses(Peff[..., v0 : v0 + layout.video, :], layout)
    return out, mass, text


def _lowpass_fft(x: torch.Tensor, cutoff: float, box: bool) -> torch.Tensor:
    """FreeLong's filter over axis 2 (frames) of ``x [B, H, F, ...]`` by numpy's FFT."""
    F_ = x.shape[2]
    f = 2.0 * np.fft.fftfreq(F_)
    H = (np.abs(f) <= cutoff).astype(float) if box else np.exp(-0.5 * (f / cutoff) ** 2)
    X = np.fft.fft(x.numpy(), axis=2)
    shape = [1, 1, F_] + [1] * (x.ndim - 3)
    return torch.from_numpy(np.real(np.fft.ifft(X * H.reshape(shape), axis=2)))


def _blend_reference(q, k, v, layout, window, cutoff, box, mask=None, tar=None, samples=None):
    """Global softmax @ v and local-window softmax @ v per video query; at each token position
    lowpass(global) + (local - lowpass(local)) over the query frames; text rows plain."""
    L = _logits(q, k, layout, mask, tar, samples)
    S = L.shape[-1]
    v0 = layout.video_start(S)
    local = local_windows(layout.frames, window)
    P = L.softmax(-1)
    out = P @ v.double()
    Pl = P.clone()
    for t in range(layout.video):
        i = t // layout.per_frame
        allowed = set(np.flatnonzero(local[i]).tolist())
        Pl[..., v0 + t, :] = _window_softmax(L[..., v0 + t, :], layout, i, allowed)
    if samples is not None:
        Pl = torch.where(samples.view(-1, 1, 1, 1), Pl, P)
    vid = slice(v0, v0 + layout.video)
    shape = (layout.frames, layout.per_frame)
    g = out[..., vid, :].unflatten(2, shape)
    loc = (Pl[..., vid, :] @ v.double()).unflatten(2, shape)
    out[..., vid, :] = (
        _lowpass_fft(g, cutoff, box) + loc - _lowpass_fft(loc, cutoff, box)
    ).flatten(2, 3)
    Pg, Pll = P[..., vid, :].unflatten(2, shape), Pl[..., vid, :].unflatten(2, shape)
    Peff = (_lowpass_fft(Pg, cutoff, box) + Pll - _lowpass_fft(Pll, cutoff, box)).flatten(2, 3)
    mass, text = _frame_masses(Peff, layout)
    return out, mass, text


def _sliding_op(window, stride, samples=None):
    C, K = fusion_coefficients(FRAMES, window, stride)
    return MixOp(torch.as_tensor(C.T), torch.as_tensor(K), None, samples)


def _blend_op(window, cutoff, box, samples=None):
    from attnlab.edits.fusion import lowpass_matrix

    Lo = lowpass_matrix(FRAMES, cutoff, "box" if box else "gaussian")
    eye = torch.eye(FRAMES)
    return MixOp(eye, torch.as_tensor(local_windows(FRAMES, window)), torch.as_tensor(Lo), samples)


def _tar_op(samples=None):
    f = torch.arange(FRAMES, dtype=torch.float64)
    dA = torch.exp(-((f[:, None] - f[None]) ** 2) / 8.0)
    return BiasOp(dA.float(), "row", 1.0, samples), dA


PATHS = {"explicit": edited_attention, "split": split_attention}


def _check(got, want, tol=1e-5):
    out, mass, text = got
    r_out, r_mass, r_text = want
    torch.testing.assert_close(out.double(), r_out, atol=tol, rtol=0)
    # (SpectralBlend's masses are signed: renormalised over the video keys, a row whose video
    # total is small is large, so they are compared relative too)
    torch.testing.assert_close(mass.double(), r_mass, atol=tol, rtol=1e-4)
    if text is not None:
        torch.testing.assert_close(text.double(), r_text, atol=tol, rtol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("text", ["first", "last", "cross"])
@pytest.mark.parametrize("window,stride", [(4, 2), (3, 3), (5, 1)])
def test_sliding_window_equals_the_window_softmaxes_by_brute_force(path, text, window, stride):
    layout, q, k, v = _tensors(text)
    got = PATHS[path](q, k, v, layout, replace=[_sliding_op(window, stride)], observe=True)
    _check(got, _sliding_reference(q, k, v, layout, window, stride))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("text", ["first", "last", "cross"])
@pytest.mark.parametrize("window,cutoff,box", [(3, 0.25, False), (4, 0.5, True), (5, 0.1, False)])
def test_spectral_blend_equals_freelong_by_brute_force(path, text, window, cutoff, box):
    layout, q, k, v = _tensors(text, seed=1)
    got = PATHS[path](q, k, v, layout, replace=[_blend_op(window, cutoff, box)], observe=True)
    _check(got, _blend_reference(q, k, v, layout, window, cutoff, box))


@pytest.mark.parametrize("path", PATHS)
def test_with_a_mask_one_cfg_half_and_tar_before(path):
    """Padded text keys masked, the edit on sample 1 only (sample 0 plain), TAR's prior first."""
    layout, q, k, v = _tensors("first", seed=2)
    mask = _mask(layout, q.shape[2])
    half = torch.tensor([False, True])
    bias, dA = _tar_op()
    common = dict(attn_mask=mask, bias=[bias], observe=True)
    got = PATHS[path](q, k, v, layout, replace=[_sliding_op(4, 2, half)], **common)
    want = _sliding_reference(q, k, v, layout, 4, 2, mask=mask, tar=dA, samples=None)
    plain = PATHS[path](q, k, v, layout, **common)
    # sample 1 edited, sample 0 as without the edit
    _check(tuple(x[1:] for x in got), tuple(x[1:] for x in want))
    for a, b in zip(got, plain):
        torch.testing.assert_close(a[:1], b[:1], atol=1e-5, rtol=0)
    got = PATHS[path](q, k, v, layout, replace=[_blend_op(4, 0.25, False, half)], **common)
    want = _blend_reference(q, k, v, layout, 4, 0.25, False, mask=mask, tar=dA)
    _check(tuple(x[1:] for x in got), tuple(x[1:] for x in want))
    for a, b in zip(got, plain):
        torch.testing.assert_close(a[:1], b[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_a_window_whose_every_key_is_masked_is_left_out(path):
    """No text (self-attention over video only) and sample 1's frames 3-6 masked: the tail
    window (frames 3-6) has nothing visible for it; the other windows' weights renormalise.
    Sample 0 sees everything."""
    layout, q, k, v = _tensors("cross", seed=6)
    S = q.shape[2]
    mask = torch.zeros(2, 1, 1, S)
    mask[1, ..., 3 * PER_FRAME :] = float("-inf")
    got = PATHS[path](q, k, v, layout, attn_mask=mask, replace=[_sliding_op(4, 2)], observe=True)
    want = _sliding_reference(q, k, v, layout, 4, 2, mask=mask)
    # query frame 6 lies in the tail window alone: for sample 1 its rows see nothing (as a row
    # whose every key is masked); compare the others
    f = torch.arange(layout.video) // PER_FRAME
    keep = f < 6
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a.double()[:, :, keep], b[:, :, keep], atol=1e-5, rtol=1e-4)
    assert float(got[1][1, :, keep][..., 3:].abs().max()) == 0.0  # nothing on masked frames


@pytest.mark.parametrize("path", PATHS)
def test_a_replacement_then_sliding_window_renormalises_the_target_in_each_window(path):
    """Replace(ones) then SlidingWindow: each video query's frame masses are the uniform target
    (times its video mass), then renormalised within each window: the window's frames share
    the window's video mass equally, text keeps its share of the window softmax."""
    layout, q, k, v = _tensors("last", seed=3)
    ones = torch.full((FRAMES, FRAMES), 1 / FRAMES)
    op = _sliding_op(4, 2)
    _, mass, text = PATHS[path](q, k, v, layout, replace=[ReplaceOp(ones), op], observe=True)
    assert mass is not None and text is not None
    # by hand: with the video masses uniform (V/F each) and text tau, window n's softmax puts
    # (V/F) / (|n| V/F + tau) on each of its frames
    L = _logits(q, k, layout)
    P = L.softmax(-1)
    vid = slice(0, layout.video)
    tau = P[..., vid, layout.video :].sum(-1)  # [B, H, Nv]
    V = 1 - tau
    C, K = fusion_coefficients(FRAMES, 4, 2)
    f = torch.arange(layout.video) // PER_FRAME
    want = torch.zeros(*tau.shape, FRAMES, dtype=torch.float64)
    want_text = torch.zeros_like(tau)
    for n in range(C.shape[0]):
        c = torch.as_tensor(C[n])[f]  # [Nv]
        denom = K[n].sum() * V / FRAMES + tau
        want += (c * (V / FRAMES) / denom)[..., None] * torch.as_tensor(K[n], dtype=torch.float64)
        want_text += c * tau / denom
    torch.testing.assert_close(text.double(), want_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(mass.double(), want / want.sum(-1, keepdim=True), atol=1e-5, rtol=0)


def test_spectral_blend_must_be_the_last_replacement():
    layout, q, k, v = _tensors("first")
    ones = ReplaceOp(torch.full((FRAMES, FRAMES), 1 / FRAMES))
    with pytest.raises(ValueError, match="last replacement-stage edit"):
        edited_attention(q, k, v, layout, replace=[_blend_op(3, 0.25, False), ones])


def test_the_split_path_keeps_every_partial_in_small_row_blocks(monkeypatch):
    """Many small blocks of query rows (each keeping its key blocks' partial outputs) give the
    same result as one block."""
    layout, q, k, v = _tensors("first", seed=5)
    op = _blend_op(3, 0.25, False)
    one = split_attention(q, k, v, layout, replace=[op], observe=True)
    monkeypatch.setattr(joint_math, "SPLIT_BLOCK_ELEMENTS", 64)  # one query row per block
    many = split_attention(q, k, v, layout, replace=[op], observe=True)
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- on the tiny DiTs ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cog", "wan"])
@pytest.mark.parametrize(
    "edit", [SlidingWindow(2, 1), SpectralBlend(2, 0.25)], ids=["sliding", "blend"]
)
def test_on_one_dit_layer_the_output_is_the_brute_force_from_its_own_qkv(kind, edit, cog, wan):  # noqa: F811
    """The attention output of a layer of the tiny CogVideoX / Wan transformer under the edit
    (after TAR) == the brute force above from q, k, v recomputed by hand; the model is
    restored on exit."""
    model = {"cog": cog, "wan": wan}[kind]
    ref = _call(model, kind)
    out, attn_out, q, k, v = _first_layer_under(model, kind, TAR(1.0, t_min=None), edit)
    layout = TokenLayout(DIT_FRAMES, 16, "first" if kind == "cog" else "cross")
    f = torch.arange(DIT_FRAMES, dtype=torch.float64)
    dA = torch.exp(-0.5 * (f[:, None] - f[None]) ** 2)
    if isinstance(edit, SlidingWindow):
        want, _, _ = _sliding_reference(q, k, v, layout, 2, 1, tar=dA)
    else:
        want, _, _ = _blend_reference(q, k, v, layout, 2, 0.25, False, tar=dA)
    torch.testing.assert_close(
        attn_out.double(), want.transpose(1, 2).flatten(2), atol=1e-5, rtol=0
    )
    assert (out - ref).abs().max() > 1e-4
    assert torch.equal(_call(model, kind), ref)


@pytest.mark.parametrize(
    "edit",
    [SlidingWindow(2, 1), SpectralBlend(2, 0.25), SpectralBlend(2, 0.5, filter="box")],
    ids=["sliding", "blend", "blend-box"],
)
def test_on_a_dit_recorded_maps_are_the_effective_maps(cog, edit):  # noqa: F811
    """Rows of the recorded frame maps sum to 1 and differ from the plain ones; SlidingWindow's
    put nothing on frames that share no window with the query (3 frames, windows 0-1 and 1-2:
    frame 0 and frame 2)."""
    with attnlab.record(cog, reduce="head") as plain:
        _call(cog, "cog")
    with attnlab.record(cog, reduce="head") as rec, attnlab.edit(cog, edit):
        _call(cog, "cog")
    p = rec.to_xarray()[D_.PROBS]
    np.testing.assert_allclose(p.sum(D_.KEY).values, 1.0, atol=1e-5)
    before = plain.to_xarray()[D_.PROBS]
    assert p.dims == before.dims and np.abs(p.values - before.values).max() > 1e-3
    if isinstance(edit, SlidingWindow):
        far = p.isel({D_.QUERY: 0, D_.KEY: 2}), p.isel({D_.QUERY: 2, D_.KEY: 0})
        assert all(float(abs(x).max()) == 0.0 for x in far)


# windows that cover every call warn once per run (tested in test_fusion_joint)
@pytest.mark.filterwarnings("ignore::attnlab.edits.base.EditInactiveWarning")
@pytest.mark.parametrize("kind", ["cog", "wan"])
@pytest.mark.parametrize(
    "edit",
    [SlidingWindow(3, 1), SpectralBlend(3, 0.25), SpectralBlend(2, 1.0, filter="box")],
    ids=["window-covers", "blend-window-covers", "blend-global-only"],
)
def test_on_a_dit_the_identity_limits_are_bit_exact(kind, edit, cog, wan):  # noqa: F811
    """3 latent frames: a window of 3 covers them; a box filter with cutoff 1 keeps only the
    global branch. Both leave every layer untouched (alone and after TAR)."""
    model = {"cog": cog, "wan": wan}[kind]
    ref = _call(model, kind)
    with attnlab.edit(model, edit):
        assert torch.equal(_call(model, kind), ref)
    with attnlab.edit(model, TAR(1.0, t_min=None)):
        tar = _call(model, kind)
    with attnlab.edit(model, TAR(1.0, t_min=None), edit):
        assert torch.equal(_call(model, kind), tar)


def test_a_map_set_at_the_hook_point_after_them(cog):  # noqa: F811
    """Under SlidingWindow a map set at ``hook_frame_probs`` replaces the frame masses last, as
    Replace after it does (the video's share of each row as the windows left it, so not as
    Replace alone); under SpectralBlend, whose output is a filter over query frames and
    not a map, setting one is refused with one clear error and reading one works."""
    name = "transformer_blocks.0.attn1"
    M = torch.full((DIT_FRAMES, DIT_FRAMES), 1 / DIT_FRAMES)
    with attnlab.hooks(cog), attnlab.edit(cog, SlidingWindow(2, 1, names=name + "$")):
        point = dict(cog.named_modules())[name].hook_frame_probs
        h = point.register_forward_hook(lambda m, a, out: M.expand_as(out))
        try:
            set_map = _call(cog, "cog")
        finally:
            h.remove()
    with attnlab.edit(
        cog, SlidingWindow(2, 1, names=name + "$"), Replace(M.numpy(), names=name + "$")
    ):
        replaced_after = _call(cog, "cog")
    with attnlab.edit(cog, Replace(M.numpy(), names=name + "$")):
        replaced = _call(cog, "cog")
    torch.testing.assert_close(set_map, replaced_after, atol=1e-5, rtol=0)
    assert (replaced_after - replaced).abs().max() > 1e-4
    seen: list[torch.Tensor] = []
    with attnlab.hooks(cog), attnlab.edit(cog, SpectralBlend(2, 0.25, names=name + "$")):
        point = dict(cog.named_modules())[name].hook_frame_probs
        h = point.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
        try:
            _call(cog, "cog")
        finally:
            h.remove()
        h = point.register_forward_hook(lambda m, a, out: M.expand_as(out))
        try:
            with pytest.raises(JointAttentionError, match="SpectralBlend"):
                _call(cog, "cog")
        finally:
            h.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0].sum(-1), torch.ones_like(seen[0].sum(-1)), atol=1e-5, rtol=0)


def test_a_window_that_covers_every_call_says_so_once_per_run(cog):  # noqa: F811
    """The tiny CogVideoX has 3 latent frames per call: a window given in video frames (9)
    covers them, the edit does nothing, and the run ends with one EditInactiveWarning naming the
    frame count; a window that acts, or a neutral setting chosen on purpose, says nothing."""
    import warnings

    from attnlab.edits import WindowDecay
    from attnlab.edits.base import EditInactiveWarning

    ref = _call(cog, "cog")
    for edit in (SlidingWindow(9, 4), SpectralBlend(9), WindowDecay(2, 0.5)):
        warns = pytest.warns(EditInactiveWarning, match="saw 3 frames per call")
        with warns as seen, attnlab.edit(cog, edit):
            assert torch.equal(_call(cog, "cog"), ref)
            _call(cog, "cog")  # the same (implicit) run
        assert len([w for w in seen if w.category is EditInactiveWarning]) == 1
    for edit in (SlidingWindow(2, 1), SpectralBlend(2, 1.0, filter="box"), WindowDecay(0, 1.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", EditInactiveWarning)
            with attnlab.edit(cog, edit):
                _call(cog, "cog")
