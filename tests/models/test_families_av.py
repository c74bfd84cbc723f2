"""The audio-video DiTs (attnlab.models.families.av_dits): the video stream of LTX-2 and of
Kandinsky 6, on tiny instances of the real diffusers classes (attnlab.models.tiny_dit).

References are independent of attnlab.core.joint: the q, k and mask each video self-attention
hands torch's SDPA (seen by wrapping the function), turned into frame maps by the full S x S
softmax in float64; the token layout is checked by perturbing one latent frame of the input;
the time PE against the formulas read in diffusers' code and the tables diffusers' own rotary
modules compute.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core.joint import RECORD_PATHS
from attnlab.models.tiny_dit import (
    AV_FRAMES,
    AV_LATENT,
    kandinsky6_inputs,
    kandinsky6_transformer,
    ltx2_inputs,
    ltx2_transformer,
)
from tests.helpers import sdpa_witness

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

K6_LATENT = (4, 8)  # patch 2: a 2 x 4 token grid per frame


@pytest.fixture(scope="module")
def models():
    return {
        "ltx2": ltx2_transformer(),
        "ltx2-split": ltx2_transformer(rope_type="split"),
        "kandinsky6": kandinsky6_transformer(),
    }


# case -> (model, inputs, latent frames, latent (H, W) passed to sites, tokens per frame)
CASES = {
    "ltx2": ("ltx2", lambda: ltx2_inputs(), AV_FRAMES, AV_LATENT, 8),
    "ltx2-split": ("ltx2-split", lambda: ltx2_inputs(), AV_FRAMES, AV_LATENT, 8),
    "ltx2-self-mask": ("ltx2", lambda: ltx2_inputs(self_mask=True), AV_FRAMES, AV_LATENT, 8),
    "ltx2-4-frames-30fps": ("ltx2", lambda: ltx2_inputs(frames=4, fps=30.0), 4, AV_LATENT, 8),
    "kandinsky6": ("kandinsky6", lambda: kandinsky6_inputs(), AV_FRAMES, K6_LATENT, 8),
    "kandinsky6-video-only": (
        "kandinsky6",
        lambda: kandinsky6_inputs(audio=False),
        AV_FRAMES,
        K6_LATENT,
        8,
    ),
    "kandinsky6-reference": (
        "kandinsky6",
        lambda: kandinsky6_inputs(frames=4, reference=True),
        4,
        K6_LATENT,
        8,
    ),
}


def _call(model, kw):
    with torch.no_grad():
        out = model(**kw, return_dict=False)
    return out[0]


def _brute(q, k, mask, scale, frames, per_frame):
    """Frame map [B, heads, F, F] from the full softmax over the video tokens (float64)."""
    L = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        L = L.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else L + mask.double()
    P = L.softmax(-1)
    assert P.shape[-1] == frames * per_frame  # the keys are the video tokens only
    m = P.unflatten(-1, (frames, per_frame)).sum(-1)
    return (m / m.sum(-1, keepdim=True)).unflatten(2, (frames, per_frame)).mean(3)


# ---- the site tables: the video self-attention only ----------------------------------------
def test_ltx2_sites_are_the_video_self_attention_only(models):
    model = models["ltx2"]
    t = attnlab.sites(model, latent=AV_LATENT, frames=AV_FRAMES)
    assert t.family.name == "ltx2"
    assert t.names == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    # the audio self-attention, the text and the audio <-> video cross-attentions are not sites
    others = {"audio_attn1", "attn2", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"}
    assert others <= {n.split(".")[-1] for n, _ in model.named_modules()}
    assert not any(n.split(".")[-1] in others for n in t.names)
    assert {(s.text, s.frames, s.tokens_per_frame, s.heads, s.head_dim) for s in t} == {
        ("cross", 3, 8, 2, 10)
    }
    assert (t.temporal_compression, t.patch3) == (8, (1, 1, 1))


def test_kandinsky6_sites_are_the_video_self_attention_only(models):
    model = models["kandinsky6"]
    t = attnlab.sites(model, latent=K6_LATENT, frames=AV_FRAMES)
    assert t.family.name == "kandinsky6"
    assert t.names == [
        f"visual_transformer_blocks.{i}.video_dec_block.self_attention" for i in range(2)
    ]
    names = dict(model.named_modules())
    assert "visual_transformer_blocks.0.audio_dec_block.self_attention" in names
    assert "visual_transformer_blocks.0.va_cross_attention" in names
    assert {(s.text, s.frames, s.tokens_per_frame, s.heads, s.head_dim) for s in t} == {
        ("cross", 3, 8, 2, 16)
    }
    assert (t.temporal_compression, t.patch3) == (4, (1, 2, 2))


# ---- maps against the brute-force frame marginal -------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_recorded_maps_equal_the_brute_force_frame_marginal(case, models):
    key, make, frames, latent, T = CASES[case]
    model, kw = models[key], make()
    table = attnlab.sites(model, latent=latent, frames=frames)
    ref = _call(model, kw)
    for path in RECORD_PATHS:
        with (
            attnlab.joint_paths(record=path),
            sdpa_witness(model, table.names) as seen,
            attnlab.record(model, reduce="head") as rec,
        ):
            out = _call(model, kw)
        if path == "exact":  # the model's own attention call gives the output
            assert torch.equal(out, ref)
        else:  # the split path's merged output: float32 rounding of the model's call
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        ds = rec.to_xarray().isel(run=0, step=0, cfg=0)
        assert sorted({s[0] for s in seen}) == sorted(table.names)
        assert ds[D.PROBS].shape[-2:] == (frames, frames) and D.TEXT_MASS not in ds
        for name, q, k, mask, scale in seen:
            A = _brute(q, k, mask, scale, frames, T)
            got = ds.sel(layer=name)[D.PROBS].transpose(D.SAMPLE, D.HEAD, ...).values
            torch.testing.assert_close(torch.from_numpy(got).double(), A, atol=1e-5, rtol=0)
    if case == "ltx2-self-mask":  # frame 0's queries were masked off the last frame's keys
        p = ds[D.PROBS].transpose(..., D.QUERY, D.KEY).values
        assert p[..., 0, -1].max() < 1e-6 and p[..., 1:, -1].min() > 1e-3


@pytest.mark.parametrize("path", ["split", "blocked"])
def test_a_finite_mask_hides_its_frame_from_a_replacement(path, models):
    # LTX-2 turns video_self_attention_mask into the additive (1 - m) * -10000, a finite bias:
    # the frame it hides from frame 0's queries gets no mass from Replace("ones"), which
    # spreads frame 0's mass over the two frames it sees (docs/attention-3d.md)
    key, make, _, _, _ = CASES["ltx2-self-mask"]
    model, kw = models[key], make()
    assert float(kw["video_self_attention_mask"].min()) == 0.0  # a 0/1 mask, made -10000
    with (
        attnlab.joint_paths(edit=path),
        attnlab.record(model, reduce="head") as rec,
        attnlab.edit(model, attnlab.Replace("ones")),
    ):
        _call(model, kw)
    p = rec.to_xarray()[D.PROBS].isel(run=0, step=0, cfg=0).transpose(..., D.QUERY, D.KEY).values
    np.testing.assert_allclose(
        p[..., 0, :], np.broadcast_to([0.5, 0.5, 0.0], p[..., 0, :].shape), atol=1e-6
    )
    np.testing.assert_allclose(p[..., 1:, :], 1 / 3, atol=1e-6)  # the other rows see all three


@pytest.mark.parametrize("key", ["ltx2", "kandinsky6"])
def test_token_layout_is_frame_major(key, models):
    """Perturbing latent frame j of the input changes exactly the query rows of frame j's
    tokens in the first site's attention call (before any attention has mixed the tokens)."""
    model = models[key]
    make, latent = CASES[key][1], CASES[key][3]
    table = attnlab.sites(model, latent=latent, frames=AV_FRAMES)
    first, T = table.names[0], 8

    def first_query(kw):
        with sdpa_witness(model, [first]) as seen:
            _call(model, kw)
        return seen[0][1]

    kw = make()
    q0 = first_query(kw)
    S = q0.shape[2]
    assert S == AV_FRAMES * T
    for j in range(AV_FRAMES):
        x = kw["hidden_states"].clone()
        if key == "ltx2":  # packed tokens [B, F*H*W, C]
            x[:, j * T : (j + 1) * T] += 1.0
        else:  # (B, F, H, W, C)
            x[:, j] += 1.0
        changed = (first_query({**kw, "hidden_states": x}) - q0).abs().amax(dim=(0, 1, 3)) > 1e-6
        expected = torch.zeros(S, dtype=torch.bool)
        expected[j * T : (j + 1) * T] = True
        assert torch.equal(changed, expected), (key, j)


@pytest.mark.parametrize("key", ["ltx2", "kandinsky6"])
def test_probe_sets_the_maps_changes_output_and_leaving_restores_it(key, models):
    model, kw = models[key], CASES[key][1]()
    ref = _call(model, kw)
    with attnlab.record(model) as rec, attnlab.edit(model, attnlab.Replace("identity")):
        out = _call(model, kw)
    p = rec.to_xarray()[D.PROBS].values
    np.testing.assert_allclose(p, np.broadcast_to(np.eye(AV_FRAMES), p.shape), atol=1e-6)
    assert (out - ref).abs().max() > 1e-4
    assert torch.equal(_call(model, kw), ref)


# ---- LTX-2's time PE: seconds --------------------------------------------------------------
def _ltx2_time(k: int, fps: float, c_t: int = 8, p_t: int = 1, o: int = 1) -> float:
    """The time coordinate of token frame k as read in LTX2AudioVideoRotaryPosEmbed: the
    midpoint of the latent frame's pixel frames [c_t k p_t + o - c_t, c_t (k+1) p_t + o - c_t)
    (clamped at 0), in seconds (/ fps), over the base 20 (pos_embed_max_pos)."""
    start = max(0, c_t * k * p_t + o - c_t)
    end = max(0, c_t * (k + 1) * p_t + o - c_t)
    return (start + end) / 2 / fps / 20


def test_ltx2_time_coordinate_is_pixel_frame_over_fps_over_20(models):
    rope = models["ltx2"].rope
    for fps in (24.0, 30.0):
        coords = rope.prepare_video_coords(1, 4, 1, 1, torch.device("cpu"), fps=fps)
        g = coords[0, 0].double().mean(-1) / 20  # the midpoint, over the base, as forward takes it
        expected = [_ltx2_time(k, fps) for k in range(4)]  # pixel frames 0.5, 5, 13, 21
        np.testing.assert_allclose(g.numpy(), expected, rtol=1e-6)
        assert expected[1] * 20 * fps == pytest.approx(5.0) and expected[0] * 20 * fps == 0.5


@pytest.mark.parametrize("key", ["ltx2", "ltx2-split"])
def test_ltx2_frame_angles_per_head_match_the_rope_diffusers_computes(key, models):
    """FramePE.frame_freqs (per head: the angle each time pair turns per token frame k >= 1)
    against diffusers' own table for a 4 x 1 x 1 grid at 24 fps, frame 1 -> 2."""
    model = models[key]
    pe = attnlab.sites(model).pe
    assert (pe.kind, pe.axes, pe.t_dim, pe.theta, pe.fps) == ("rope3d", "interleaved", 6, 1e4, 24)
    assert pe.frame_step == pytest.approx(8 / 24 / 20)
    coords = model.rope.prepare_video_coords(1, 4, 1, 1, torch.device("cpu"), fps=24.0)
    cos, sin = model.rope(coords)
    if key == "ltx2-split":  # [B, H, N, D/2] -> per head, per pair
        a = torch.atan2(sin[0].double(), cos[0].double())  # [H, N, D/2]
    else:  # [B, N, inner], interleaved pairs -> [H, N, D/2]
        a = torch.atan2(sin[0, :, 0::2].double(), cos[0, :, 0::2].double())
        a = a.unflatten(-1, (2, 5)).transpose(0, 1)
    step = torch.remainder(a[:, 2] - a[:, 1], 2 * math.pi)  # [H, D/2]
    heads_turning = []
    for h, freqs in enumerate(pe.frame_freqs):
        turning = sorted(v for v in step[h].tolist() if min(v, 2 * math.pi - v) > 1e-6)
        np.testing.assert_allclose(sorted(np.remainder(freqs, 2 * math.pi)), turning, atol=1e-3)
        heads_turning.append(len(freqs))
    assert heads_turning == [2, 1]  # inner 20: pad 2, time pairs at channels 2, 8 | 14


def test_ltx2_pe_report_follows_the_seconds_formula_at_the_default_config():
    """The default LTX-2 transformer (32 heads x 128, built on the meta device): 682 time
    frequencies pi/2 x 1e4^(i/681), a token frame k >= 1 = 8 pixel frames = 8 / 24 s at
    24 fps, over the base 20: per latent frame each pair turns by
    2 x pi/2 x 1e4^(i/681) x 8 / (24 x 20)."""
    from diffusers import LTX2VideoTransformer3DModel

    with torch.device("meta"):
        model = LTX2VideoTransformer3DModel()
    df = attnlab.pe_report(model)
    rows = df[(df.axis == "t") & (df.pe == "rope3d")].sort_values("k")
    n = 128 * 32 // 6
    expected = np.sort(math.pi * 1e4 ** (np.arange(n) / (n - 1)) * 8 / (24 * 20))[::-1]
    np.testing.assert_allclose(rows.theta.values, expected, rtol=1e-6)
    assert len(rows) == 682 and (rows.base == 1e4).all() and (rows.dim == 2 * 682).all()
    assert df.attrs["family"] == "ltx2" and df.attrs["temporal_compression"] == 8
    assert df.attrs["train_frames"] is None  # unknown: pass train_frames=
    pe = attnlab.sites(model).pe
    assert sum(len(f) for f in pe.frame_freqs) == 682 and len(pe.frame_freqs) == 32
    # 4096 % 6 = 4 unrotated channels: time pair i at channel 4 + 6 i, head (4 + 6 i) // 128
    assert len(pe.frame_freqs[0]) == len(range(0, 124, 6)) == 21


# ---- Kandinsky 6's time PE -----------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_kandinsky6_pe_report_and_frame_pe_follow_the_rope_formula(scale, models):
    model = (
        models["kandinsky6"] if scale == 1.0 else kandinsky6_transformer(scale_factor=(2.0,) * 3)
    )
    pe = attnlab.sites(model).pe
    assert (pe.kind, pe.t_dim, pe.h_dim, pe.w_dim, pe.theta, pe.max_frames) == (
        "rope3d", 4, 6, 6, 1e4, 128,
    )  # fmt: skip
    assert pe.frame_step == pytest.approx(1 / scale)
    df = attnlab.pe_report(model)
    rows = df[(df.axis == "t") & (df.pe == "rope3d")].sort_values("k")
    # get_freqs(t/2): pair i turns by 1e4^(-i / (t/2)) per position; positions / scale_factor[0]
    expected = 1e4 ** (-np.arange(2) / 2) / scale
    np.testing.assert_allclose(rows.theta.values, expected, rtol=1e-6)
    assert (rows.base == 1e4).all() and df.attrs["family"] == "kandinsky6"
    # the angle diffusers' Kandinsky6RoPE3D turns the time pairs by from frame 0 to frame 1
    rope = model.visual_rope_embeddings
    table = rope((torch.arange(2), torch.arange(1), torch.arange(1)), model.scale_factor)
    angle = torch.atan2(table[1, 0, 0, 0, :2, 1, 0], table[1, 0, 0, 0, :2, 0, 0]).double()
    np.testing.assert_allclose(angle.numpy(), expected, rtol=1e-6)


# ---- the PE edits act through the video stream's own rotary module ---------------------------
def _rope_tap(model, key):
    return model.rope if key.startswith("ltx2") else model.visual_rope_embeddings


def _flat(output, key):
    """The rotary table as [rows, columns]: LTX-2 (cos of the interleaved / split table),
    Kandinsky 6 (the 2 x 2 rotation matrices' cos entries, one column per pair)."""
    if key == "ltx2":
        return output[0][0]  # [N, inner]
    if key == "ltx2-split":
        return output[0][0].swapaxes(0, 1).flatten(1)  # [N, H * D/2]
    return output.flatten(0, 2)[:, 0, :, 0, 0]  # [N, pairs]


TIME_COLUMNS = {  # columns holding the time angles
    "ltx2": {2, 3, 8, 9, 14, 15},  # inner 20: pad 2, time pairs at channels 2 + 6 i, + 1
    "ltx2-split": {1, 4, 7},  # pairs: pad 1, then 3 i
    "kandinsky6": {0, 1},  # axes_dims (4, 6, 6): the first t/2 pairs
}


@pytest.mark.parametrize("key", sorted(TIME_COLUMNS))
def test_pe_edits_change_only_the_time_columns_and_neutral_is_bit_exact(key, models):
    from attnlab.edits import RopeScale

    model = models[key]
    kw = CASES[key][1]()
    tap = _rope_tap(model, key)

    def run():
        seen = []
        h = tap.register_forward_hook(lambda m, a, o: seen.append(_flat(o, key).clone()))
        try:
            out = _call(model, kw)
        finally:
            h.remove()
        return out, seen[0]

    plain, table = run()
    for neutral in (RopeScale("pi", 1.0), RopeScale("ntk", 1), RopeScale("yarn", 1.0)):
        with attnlab.edit(model, neutral):
            assert torch.equal(_call(model, kw), plain), neutral
    with attnlab.edit(model, RopeScale("pi", 4.0)):
        out, edited = run()
    assert (out - plain).abs().max() > 1e-6
    changed = set((edited != table).any(0).nonzero().flatten().tolist())
    assert changed and changed <= TIME_COLUMNS[key], changed
    assert torch.equal(_call(model, kw), plain)  # leaving the edit restores the model


def test_ltx2_pi_scaling_quarters_the_time_angle_between_frames(models):
    """RopeScale("pi", 4) on LTX-2: the slowest time pair (channels 2, 3 of inner 20: pi/2 per
    unit of coordinate) turns by 2 x pi/2 x 8 / (24 x 20) between token frames 1 and 2, and by
    a quarter of that under the edit; frame 0 keeps its own (causal) coordinate."""
    from attnlab.edits import RopeScale

    model = models["ltx2"]
    coords = model.rope.prepare_video_coords(1, 3, 1, 1, torch.device("cpu"), fps=24.0)

    def angles():
        cos, sin = model.rope(coords)
        return torch.atan2(sin[0, :, 2].double(), cos[0, :, 2].double())

    slow = math.pi * 8 / (24 * 20)
    a = angles()
    assert float(a[2] - a[1]) == pytest.approx(slow, rel=1e-5)
    with attnlab.edit(model, RopeScale("pi", 4.0)):
        b = angles()
    assert float(b[2] - b[1]) == pytest.approx(slow / 4, rel=1e-5)
    # angle = f (2 g - 1): frame 0 (pixel frame 0.5) sits 4.5 / 8 of a step before frame 1
    assert float(b[1] - b[0]) == pytest.approx(slow / 4 * 4.5 / 8, rel=1e-5)


def test_ltx2_tokens_appended_to_the_grid_are_refused_and_the_model_restored(models):
    """LTX2ConditionPipeline's keyframe tokens and IC-LoRA's reference tokens are appended to
    the video grid: one error says so, and the model runs untouched afterwards."""
    model = models["ltx2"]
    kw = ltx2_inputs()
    ref = _call(model, kw)
    extra = {
        **kw,
        "hidden_states": torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(1)),
        "video_coords": model.rope.prepare_video_coords(2, 4, 2, 4, torch.device("cpu")),
    }
    match = r"LTX-2: hidden_states has 32 tokens.*3 x 2 x 4 = 24.*appended"
    with pytest.raises(RuntimeError, match=match), attnlab.record(model):
        _call(model, extra)
    assert torch.equal(_call(model, kw), ref)


def test_ltx2_stg_blocks_with_every_sample_perturbed_are_recorded_as_not_run():
    """LTX-2's spatio-temporal guidance (``LTX2Pipeline`` with ``stg_scale > 0``) runs the
    blocks it names with every sample perturbed: their processor returns the values and computes
    no attention. Those layers are marked not run for that call; the others are recorded, and
    the output is the model's own."""
    model = ltx2_transformer(perturbed_attn=True)
    kw = {**ltx2_inputs(), "spatio_temporal_guidance_blocks": [0]}
    ref = _call(model, kw)
    with attnlab.record(model) as rec:
        got = _call(model, kw)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)  # (recorded by the split path)
    ds = rec.to_xarray().isel(run=0, step=0)
    ran = {str(n): bool(ds[D.RAN].sel({D.LAYER: n}).all()) for n in ds[D.LAYER].values}
    assert ran == {"transformer_blocks.0.attn1": False, "transformer_blocks.1.attn1": True}
    probs = ds[D.PROBS].sel({D.LAYER: "transformer_blocks.0.attn1"}).values
    assert np.isnan(probs).all()
    assert np.isfinite(ds[D.PROBS].sel({D.LAYER: "transformer_blocks.1.attn1"}).values).all()


def test_ltx2_stg_with_some_samples_perturbed_is_refused():
    """A ``perturbation_mask`` that perturbs some samples: the processor computes attention for
    all and answers the perturbed ones with their values, so a map of those would be recorded
    (and edited) for nothing; one clear error, and the model is left as it was."""
    from attnlab.core.joint_sites import JointAttentionError

    model = ltx2_transformer(perturbed_attn=True)
    kw = {**ltx2_inputs(), "spatio_temporal_guidance_blocks": [0]}
    some = {**kw, "perturbation_mask": torch.tensor([1.0, 0.0])}
    ref = _call(model, some)
    for scope in (attnlab.record(model), attnlab.edit(model, attnlab.Replace("identity"))):
        with pytest.raises(JointAttentionError, match="perturbs 1 of the call's samples"), scope:
            _call(model, some)
    with attnlab.record(model) as rec:  # none perturbed: recorded as usual
        _call(model, {**kw, "perturbation_mask": torch.tensor([1.0, 1.0])})
    assert bool(rec.to_xarray()[D.RAN].all())
    assert torch.equal(_call(model, some), ref)
