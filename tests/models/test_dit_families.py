"""LTX-Video and Mochi: frame-level maps, probes and TAR on their joint attention.

LTX-Video: pre-flattened tokens ``[B, F*H*W, C]`` with the grid passed as ``num_frames``,
``height``, ``width``; RoPE over the whole inner dim (pairs interleaved t/h/w, fps-scaled frame
coordinate); text in a separate cross-attention. Mochi: one SDPA call per sample over the video
tokens and that sample's valid text tokens (appended); learned per-head RoPE frequencies.

References are independent of attnlab.core.joint: q, k, v recomputed from each layer's inputs with
the layer's own weights and a hand-written RoPE, maps and edits from the full S x S softmax in
float64. Tolerances: float32 model math against float64 references (1e-5 on probabilities,
1e-4 on attention outputs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")  # MochiRoPE

FRAMES = 3  # latent frames
GRID = (4, 4)  # tokens per frame: LTX 4 x 4 latent (patch 1); Mochi 8 x 8 latent, patch 2
T = 16
TEXT_MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # sample 0: 2 padded tokens


@pytest.fixture(scope="module")
def ltx():
    from attnlab.models.tiny_dit import ltx_transformer

    return ltx_transformer()


@pytest.fixture(scope="module")
def mochi():
    from attnlab.models.tiny_dit import mochi_transformer

    return mochi_transformer()


def _call(model, kind, seed=0, t=500):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(2, 6, 16, generator=g)
    ts = torch.full((2,), t)
    with torch.no_grad():
        if kind == "ltx":
            x = torch.randn(2, FRAMES * T, 4, generator=g)
            return model(
                x, enc, ts, TEXT_MASK, num_frames=FRAMES, height=GRID[0], width=GRID[1],
                rope_interpolation_scale=(8 / 25, 32, 32), return_dict=False,
            )[0]  # fmt: skip
        x = torch.randn(2, 4, FRAMES, 8, 8, generator=g)
        return model(x, enc, ts, TEXT_MASK, return_dict=False)[0]


def _capture(model, name):
    seen = {}
    attn = dict(model.named_modules())[name]

    def pre(module, args, kwargs):
        seen.setdefault("in", kwargs)

    def out_pre(module, args):
        seen.setdefault("attn_out", args[0].detach().clone())

    return seen, [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.to_out[0].register_forward_pre_hook(out_pre),
    ]


def _rope_pairs(x, cos, sin):
    """(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) with per-channel cos/sin (LTX)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return x * cos + torch.stack([-x1, x0], -1).flatten(-2) * sin


def _rope_halves(x, cos, sin):
    """Mochi: per-pair cos/sin ``[S, heads, D/2]``."""
    e, o = x[..., 0::2], x[..., 1::2]
    return torch.stack([e * cos - o * sin, e * sin + o * cos], -1).flatten(-2)


def _qkv(kind, attn, kw):
    """Per sample: q, k, v ``[heads, S_b, d]`` (float64) of one call, recomputed by hand."""
    H = attn.heads
    x = kw["hidden_states"]
    if kind == "ltx":
        cos, sin = (t.double() for t in kw["image_rotary_emb"])
        q, k = attn.norm_q(attn.to_q(x)).double(), attn.norm_k(attn.to_k(x)).double()
        v = attn.to_v(x).double()
        q, k = _rope_pairs(q, cos, sin), _rope_pairs(k, cos, sin)
        heads = [t.unflatten(-1, (H, -1)).transpose(1, 2) for t in (q, k, v)]
        return [tuple(t[b] for t in heads) for b in range(x.shape[0])]
    cos, sin = (t.double() for t in kw["image_rotary_emb"])
    enc, mask = kw["encoder_hidden_states"], kw["attention_mask"]

    def split(lin, t):
        return lin(t).unflatten(2, (H, -1))

    q = _rope_halves(attn.norm_q(split(attn.to_q, x)).double(), cos, sin)
    k = _rope_halves(attn.norm_k(split(attn.to_k, x)).double(), cos, sin)
    v = split(attn.to_v, x).double()
    eq = attn.norm_added_q(split(attn.add_q_proj, enc)).double()
    ek = attn.norm_added_k(split(attn.add_k_proj, enc)).double()
    ev = split(attn.add_v_proj, enc).double()
    out = []
    for b in range(x.shape[0]):
        valid = mask[b].bool()
        out.append(
            tuple(
                torch.cat([a[b], e[b, valid]]).transpose(0, 1)
                for a, e in ((q, eq), (k, ek), (v, ev))
            )
        )
    return out


def _logits(q, k):
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


# ---- site tables: the frame PE as data, checked against the RoPE diffusers computes ---------
def _angle_step(cos, sin):
    """Angle by which each channel turns from frame 0 to frame 1 (mod 2 pi)."""
    a = torch.atan2(sin.double(), cos.double())
    return torch.remainder(a[1] - a[0], 2 * math.pi)


def test_ltx_table_and_its_fps_scaled_interleaved_rope(ltx):
    t = attnlab.sites(ltx, latent=GRID, frames=FRAMES)
    assert t.names == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert {(s.text, s.frames, s.tokens_per_frame, s.heads, s.head_dim) for s in t} == {
        ("cross", 3, 16, 2, 8)
    }
    pe = t.pe  # inner 16: 16 // 6 = 2 frequencies per axis, 16 % 6 = 4 unrotated channels
    assert (pe.kind, pe.axes, pe.t_dim, pe.theta, pe.fps) == ("rope3d", "interleaved", 4, 1e4, 25)
    assert pe.frame_step == pytest.approx(8 / (25 * 20))  # c_t 8 / fps 25 / base 20 frames
    assert "pairs interleaved t/h/w" in str(t) and "0.016 per latent frame at 25 fps" in str(t)


@pytest.mark.parametrize("heads, head_dim", [(2, 8), (3, 8), (4, 10)])
def test_ltx_frame_frequencies_per_head_match_the_rope_diffusers_computes(heads, head_dim):
    """Which channels of which head the frame index turns, and how fast (inner dim 16, 24, 40:
    different unrotated paddings and head boundaries)."""
    from diffusers import LTXVideoTransformer3DModel

    with torch.device("meta"):
        model = LTXVideoTransformer3DModel(
            num_attention_heads=heads, attention_head_dim=head_dim, num_layers=1,
            cross_attention_dim=16, caption_channels=16, in_channels=4, out_channels=4,
        )  # fmt: skip
    pe = attnlab.sites(model).pe
    inner = heads * head_dim
    assert (pe.t_dim, pe.h_dim, pe.w_dim) == (2 * (inner // 6),) * 3
    # diffusers' own RoPE for a 3 x 1 x 1 grid at 25 fps (LTXPipeline: c_t / frame_rate)
    rope = type(model.rope)(dim=inner)
    cos, sin = rope(
        torch.zeros(1, FRAMES, 4), FRAMES, 1, 1, rope_interpolation_scale=(8 / 25, 32, 32)
    )
    step = _angle_step(cos[0], sin[0])  # per channel
    assert torch.equal(step[0::2], step[1::2])  # pairs turn together
    pairs = step[0::2]
    # the frame axis alone moves from frame 0 to frame 1: every pair that turns is a frame pair
    for h, freqs in enumerate(pe.frame_freqs):
        mine = pairs[h * head_dim // 2 : (h + 1) * head_dim // 2].tolist()
        turning = sorted(v for v in mine if min(v, 2 * math.pi - v) > 1e-6)
        got = sorted(np.remainder(freqs, 2 * math.pi).tolist())
        np.testing.assert_allclose(got, turning, atol=1e-3)
    assert sum(len(f) for f in pe.frame_freqs) == inner // 6


def test_mochi_table_and_its_learned_frame_frequencies(mochi):
    t = attnlab.sites(mochi, latent=(8, 8), frames=FRAMES)
    assert t.names == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert {(s.text, s.frames, s.tokens_per_frame) for s in t} == {("last", 3, 16)}
    assert (t.pe.axes, t.temporal_compression, t.patch3) == ("mixture", 6, (1, 2, 2))
    with torch.no_grad():
        cos, sin = mochi.rope(mochi.pos_frequencies, FRAMES, 1, 1, "cpu", torch.float32)
    step = _angle_step(cos, sin)  # [heads, D/2]: what one latent frame turns each pair by
    np.testing.assert_allclose(
        np.remainder(np.array(t.pe.frame_freqs), 2 * math.pi), step.numpy(), atol=1e-5
    )
    assert "learned per-head frequencies" in str(t)
    with torch.device("meta"):  # a config-only model: no weights, no frequencies
        meta = type(mochi).from_config(mochi.config)
    assert attnlab.sites(meta).pe.frame_freqs is None


def test_mochi_refuses_one_global_maximum_over_its_per_sample_calls(mochi):
    # Mochi's processor calls attention once per sample: the one maximum over the layer call's
    # selected samples that max_mode "global" takes is not there, so two samples are refused
    from attnlab.core.joint_sites import JointAttentionError

    g = torch.Generator().manual_seed(0)
    x, enc = torch.randn(2, 4, FRAMES, 8, 8, generator=g), torch.randn(2, 6, 16, generator=g)
    mask, t = torch.ones(2, 6, dtype=torch.long), torch.full((2,), 500)
    tar = attnlab.TAR(1.0, t_min=None, max_mode="global")
    with torch.no_grad():
        plain = mochi(x, enc, t, mask, return_dict=False)[0]
        with (
            pytest.raises(JointAttentionError, match="one sample per call"),
            attnlab.edit(mochi, tar),
        ):
            mochi(x, enc, t, mask, return_dict=False)
        with attnlab.edit(mochi, tar):  # one video: its maximum is the call's
            one = mochi(x[:1], enc[:1], t[:1], mask[:1], return_dict=False)[0]
        assert not torch.allclose(one, plain[:1])
        assert torch.equal(mochi(x, enc, t, mask, return_dict=False)[0], plain)  # restored


# ---- maps against brute force --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ltx", "mochi"])
def test_recorded_maps_equal_brute_force(kind, ltx, mochi):
    model = {"ltx": ltx, "mochi": mochi}[kind]
    name = "transformer_blocks.1.attn1"
    ref = _call(model, kind)
    seen, handles = _capture(model, name)
    try:
        with attnlab.record(model, reduce="head", names=name + "$") as rec:
            out = _call(model, kind)
    finally:
        for h in handles:
            h.remove()
    # the default (split) recording: within float32 rounding of the model's call
    assert (out - ref).abs().max() < 1e-6
    ds = rec.to_xarray().isel(run=0, step=0, layer=0, cfg=0)
    with torch.no_grad():
        per_sample = _qkv(kind, dict(model.named_modules())[name], seen["in"])
    Nv = FRAMES * T
    for b, (q, k, _) in enumerate(per_sample):
        P = _logits(q, k).softmax(-1)[:, :Nv]  # video query rows (video first in both)
        m = P[..., :Nv].unflatten(-1, (FRAMES, T)).sum(-1)
        A = (m / m.sum(-1, keepdim=True)).unflatten(1, (FRAMES, T)).mean(2)
        got = torch.from_numpy(ds[D.PROBS].sel(sample=b).transpose(D.HEAD, ...).values).double()
        torch.testing.assert_close(got, A, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, FRAMES).double(), atol=1e-5, rtol=0)
        if kind == "mochi":
            assert k.shape[1] == Nv + int(TEXT_MASK[b].sum())  # only the valid text tokens
            text = (1 - m.sum(-1)).unflatten(1, (FRAMES, T)).mean(2)
            tm = ds[D.TEXT_MASS].sel(sample=b).transpose(D.HEAD, ...).values
            torch.testing.assert_close(torch.from_numpy(tm).double(), text, atol=1e-5, rtol=0)
            assert float(text.min()) > 0.01 and float(text.max()) < 0.99
    if kind == "ltx":
        assert D.TEXT_MASS not in ds  # text is in the separate cross-attention


# ---- probes and TAR ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ltx", "mochi"])
def test_probes_set_the_maps_change_output_and_restore(kind, ltx, mochi):
    model = {"ltx": ltx, "mochi": mochi}[kind]
    ref = _call(model, kind)
    with attnlab.record(model) as plain:
        _call(model, kind)
    for probe, target in (("identity", np.eye(FRAMES)), ("ones", np.full((FRAMES,) * 2, 1 / 3))):
        with attnlab.record(model) as rec, attnlab.edit(model, attnlab.Replace(probe)):
            out = _call(model, kind)
        ds = rec.to_xarray()
        np.testing.assert_allclose(ds[D.PROBS].values, np.broadcast_to(target, ds[D.PROBS].shape), atol=1e-6)  # fmt: skip
        if kind == "mochi":  # the first layer sees the same input: its text mass is kept
            first = dict(layer="transformer_blocks.0.attn1")
            np.testing.assert_allclose(ds[D.TEXT_MASS].sel(first), plain.to_xarray()[D.TEXT_MASS].sel(first), atol=1e-6)  # fmt: skip
        assert (out - ref).abs().max() > 1e-3
    assert torch.equal(_call(model, kind), ref)
    procs = [m.processor for m in model.modules() if hasattr(m, "processor")]
    assert not any(type(p).__module__ == "attnlab.core.joint" for p in procs)


@pytest.mark.parametrize("kind", ["ltx", "mochi"])
def test_3d_tar_on_one_layer_equals_an_independent_implementation(kind, ltx, mochi):
    """softmax(L + rowmax_video(L) dA) @ v on video rows x video keys, per sample, from q, k,
    v recomputed by hand; Mochi's text keys (valid ones only) untouched."""
    model = {"ltx": ltx, "mochi": mochi}[kind]
    name = "transformer_blocks.0.attn1"
    ref = _call(model, kind)
    seen, handles = _capture(model, name)
    try:
        with attnlab.edit(model, attnlab.TAR(1.0, t_min=None)):
            out = _call(model, kind)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        per_sample = _qkv(kind, dict(model.named_modules())[name], seen["in"])
    Nv = FRAMES * T
    f = torch.arange(Nv) // T
    dA = torch.exp(-0.5 * (f[None] - f[:, None]).double() ** 2)  # sigma 1
    for b, (q, k, v) in enumerate(per_sample):
        L = _logits(q, k)
        Lvv = L[:, :Nv, :Nv]
        L[:, :Nv, :Nv] = Lvv + Lvv.amax(-1, keepdim=True) * dA
        expected = (L.softmax(-1) @ v)[:, :Nv].transpose(0, 1).flatten(1)
        torch.testing.assert_close(seen["attn_out"][b, :Nv].double(), expected, atol=1e-4, rtol=0)
    assert (out - ref).abs().max() > 1e-3
    assert torch.equal(_call(model, kind), ref)


def test_ltx_call_without_the_grid_is_refused_clearly(ltx):
    x = torch.randn(1, FRAMES * T, 4)
    grid = pytest.raises(RuntimeError, match="num_frames, height and width")
    with attnlab.record(ltx), grid, torch.no_grad():
        ltx(x, torch.randn(1, 6, 16), torch.tensor([1]), TEXT_MASK[:1], return_dict=False)
    size = pytest.raises(RuntimeError, match=r"48 tokens.*3 x 4 x 5 = 60")
    with attnlab.record(ltx), size, torch.no_grad():
        ltx(x, torch.randn(1, 6, 16), torch.tensor([1]), TEXT_MASK[:1], num_frames=3, height=4, width=5)  # fmt: skip


# ---- real pipelines --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ltx_pipe():
    from attnlab.models.tiny_dit import ltx_pipeline

    return ltx_pipeline()


@pytest.fixture(scope="module")
def mochi_pipe():
    from attnlab.models.tiny_dit import mochi_pipeline

    return mochi_pipeline()


def _gen(pipe, kind, seed=0, **kw):
    size = {"ltx": dict(num_frames=9, height=32, width=32), "mochi": dict(num_frames=13, height=64, width=64)}  # fmt: skip
    args = dict(prompt="a polar bear playing drums", num_inference_steps=2, max_sequence_length=8,
                guidance_scale=4.5, output_type="latent", **size[kind])  # fmt: skip
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(seed)).frames


@pytest.mark.parametrize("kind", ["ltx", "mochi"])
def test_pipelines_idle_record_and_cfg_halves(kind, ltx_pipe, mochi_pipe):
    """In the real pipeline: idle and recording are bit-identical; the maps have both CFG
    halves; an edit on the cond half moves only the cond maps; leaving restores exactly."""
    pipe = {"ltx": ltx_pipe, "mochi": mochi_pipe}[kind]
    table = attnlab.sites(pipe)  # the VAE's temporal compression as the pipeline states it
    assert table.temporal_compression == {"ltx": 4, "mochi": 6}[kind]
    if kind == "ltx":  # the tiny VAE compresses time 4x: the frame step follows
        assert table.pe.frame_step == pytest.approx(4 / (25 * 20))
    ref = _gen(pipe, kind)
    with attnlab.record(pipe):
        pass
    assert torch.equal(_gen(pipe, kind), ref)
    with attnlab.joint_paths(record="exact"), attnlab.record(pipe, reduce="head") as plain:
        assert torch.equal(_gen(pipe, kind), ref)  # the exact path: the model's own calls
    pl = plain.to_xarray()
    assert list(pl[D.CFG].values) == ["uncond", "cond"] and pl.sizes[D.STEP] == 2
    assert pl.sizes[D.QUERY] == FRAMES and pl[D.PROMPT].item() == "a polar bear playing drums"
    assert (D.TEXT_MASS in pl) == (kind == "mochi")
    for edit in (attnlab.Replace("identity", cfg="cond"), attnlab.TAR(2.0, t_min=None, cfg="cond")):
        with attnlab.record(pipe, reduce="head") as rec, attnlab.edit(pipe, edit):
            edited = _gen(pipe, kind)
        p, q = rec.to_xarray()[D.PROBS].isel(step=0), pl[D.PROBS].isel(step=0)
        # step 0: both halves see the same latents; only the cond half is edited
        np.testing.assert_allclose(p.sel(cfg="uncond"), q.sel(cfg="uncond"), atol=1e-6)
        if isinstance(edit, attnlab.Replace):
            eye = np.broadcast_to(np.eye(FRAMES), p.sel(cfg="cond").shape)
            np.testing.assert_allclose(p.sel(cfg="cond"), eye, atol=1e-6)
        else:  # TAR raises the diagonal (same-frame) mass
            diag = lambda x: float(np.einsum("...ii->...", x.values).mean())  # noqa: E731
            assert diag(p.sel(cfg="cond")) > diag(q.sel(cfg="cond")) + 0.05
        assert (edited - ref).abs().max() > 1e-3
        assert torch.equal(_gen(pipe, kind), ref)
