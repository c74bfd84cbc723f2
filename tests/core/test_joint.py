"""Full-3D attention (CogVideoX, Wan): frame-level maps, probes and TAR on joint attention.

References are independent of attnlab.core.joint: q, k, v are recomputed from each layer's inputs
with the layer's own weights and a hand-written RoPE, and maps/edits from the full S x S
softmax in float64. Tolerances: float32 model math against float64 references (1e-5 on
probabilities, 1e-4 on attention outputs of unit-scale values).
"""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import blocking, joint, joint_math
from attnlab.core import dims as D
from attnlab.core.joint_math import edited_attention, frame_mass
from attnlab.core.joint_sites import TokenLayout
from attnlab.core.sites import UnsupportedModelError, family_of

FRAMES, LATENT = 3, (8, 8)  # 3 latent frames, 8x8 latent -> 4x4 = 16 tokens per frame


# ---- tiny models, built offline once per session ------------------------------------------
@pytest.fixture(scope="session")
def cog():
    from attnlab.models.tiny_dit import cogvideox_transformer

    return cogvideox_transformer()


@pytest.fixture(scope="session")
def wan():
    from attnlab.models.tiny_dit import wan_transformer

    return wan_transformer()


@pytest.fixture(scope="session")
def cog_pipe():
    from attnlab.models.tiny_dit import cogvideox_pipeline

    return cogvideox_pipeline()


@pytest.fixture(scope="session")
def wan_pipe():
    from attnlab.models.tiny_dit import wan_pipeline

    return wan_pipeline()


def _inputs(seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "cog": (
            torch.randn(batch, FRAMES, 4, *LATENT, generator=g),
            torch.randn(batch, 8, 16, generator=g),
        ),
        "wan": (
            torch.randn(batch, 4, FRAMES, *LATENT, generator=g),
            torch.randn(batch, 8, 16, generator=g),
        ),
    }


def _cog_rope():
    """The 3D RoPE the CogVideoX pipeline passes for a 3-frame 8x8 latent (4x4 patches)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    crops = get_resize_crop_region_for_grid((4, 4), 4, 4)
    return get_3d_rotary_pos_embed(16, crops, (4, 4), FRAMES)


def _call(model, kind, seed=0, batch=1, t=500):
    x, e = _inputs(seed, batch)[kind]
    with torch.no_grad():
        ts = torch.full((batch,), t)
        if kind == "cog":
            return model(x, e, ts, image_rotary_emb=_cog_rope(), return_dict=False)[0]
        return model(x, ts, e, return_dict=False)[0]


def _gen(pipe, seed=0, **kw):
    args = dict(prompt="a polar bear playing drums", num_frames=9, height=64, width=64,
                num_inference_steps=2, max_sequence_length=8, guidance_scale=6.0,
                output_type="latent")  # fmt: skip
    args.update(kw)
    return pipe(**args, generator=torch.Generator().manual_seed(seed)).frames


# ---- independent references ---------------------------------------------------------------
def _rope_cog(x, cos, sin):
    """CogVideoX RoPE by hand: pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack([-x1, x0], -1).flatten(-2)
    return x * cos + rot * sin


def _rope_wan(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out


def _qkv(kind, attn, args, kwargs):
    """q, k, v [B, heads, S, d] (float64) of one joint attention call, recomputed by hand."""
    H = attn.heads
    if kind == "cog":
        hid, enc = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        cos, sin = (t.double() for t in kwargs["image_rotary_emb"])
        x = torch.cat([enc, hid], 1)
        n_text = enc.shape[1]
        q, k, v = (
            m(x).unflatten(-1, (H, -1)).transpose(1, 2) for m in (attn.to_q, attn.to_k, attn.to_v)
        )
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = q.double(), k.double(), v.double()
        q = torch.cat([q[:, :, :n_text], _rope_cog(q[:, :, n_text:], cos, sin)], 2)
        k = torch.cat([k[:, :, :n_text], _rope_cog(k[:, :, n_text:], cos, sin)], 2)
        return q, k, v
    x = args[0]
    cos, sin = args[3] if len(args) > 3 else kwargs["rotary_emb"]
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    q, k = attn.norm_q(q), attn.norm_k(k)  # RMS norm across heads, before the head split
    q, k, v = (t.unflatten(-1, (H, -1)).double() for t in (q, k, v))
    q, k = _rope_wan(q, cos.double(), sin.double()), _rope_wan(k, cos.double(), sin.double())
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # fmt: skip


def _brute_map(q, k, n_video, frames, text_first):
    """Full softmax (float64) -> per-head frame map [B, H, F, F] and text mass [B, H, F]."""
    S = q.shape[2]
    v0 = S - n_video if text_first else 0
    P = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(-1)[:, :, v0 : v0 + n_video]
    T = n_video // frames
    m = P[..., v0 : v0 + n_video].unflatten(-1, (frames, T)).sum(-1)
    text = 1 - m.sum(-1)
    A = (m / m.sum(-1, keepdim=True)).unflatten(2, (frames, T)).mean(3)
    return A, text.unflatten(2, (frames, T)).mean(3)


def _first_layer_under(model, kind, *edits, paths=None):
    """One call under ``edits`` (and ``joint.joint_paths(edit=paths)`` when given) with the
    first joint layer watched: (the model's output, that layer's attention output before its
    projection, and its q, k, v recomputed by hand in float64)."""
    name = "transformer_blocks.0.attn1" if kind == "cog" else "blocks.0.attn1"
    seen, handles = _capture(model, name)
    path = joint.joint_paths(edit=paths) if paths else contextlib.nullcontext()
    try:
        with path, attnlab.edit(model, *edits):
            out = _call(model, kind)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        q, k, v = _qkv(kind, dict(model.named_modules())[name], *seen["in"])
    return out, seen["attn_out"], q, k, v


def _capture(model, name):
    seen = {}
    attn = dict(model.named_modules())[name]

    def pre(module, args, kwargs):
        seen.setdefault("in", (args, kwargs))

    def out_pre(module, args):
        seen.setdefault("attn_out", args[0].detach().clone())

    return seen, [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.to_out[0].register_forward_pre_hook(out_pre),
    ]


# ---- the math on random tensors -------------------------------------------------------------
@pytest.mark.parametrize("text", ["first", "last", "cross"])
def test_frame_mass_equals_brute_force_and_is_blocked(text, monkeypatch):
    """SDPA with a one-hot value matrix == the full softmax summed over frame blocks, also
    when the queries are split into many blocks and with a boolean key mask."""
    monkeypatch.setitem(
        blocking.JOINT_BLOCK_ELEMENTS, "cpu", 2 * 3 * 41 * 5
    )  # ~5 query rows per block
    g = torch.Generator().manual_seed(0)
    layout = TokenLayout(frames=4, per_frame=9, text=text)
    n_text = 0 if text == "cross" else 5
    S = layout.video + n_text
    q, k = (torch.randn(2, 3, S, 8, generator=g) * 2 for _ in range(2))
    mask = None
    if n_text:  # the last text key of sample 1 is padding
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        pad = 0 if text == "first" else S - 1
        mask[1, 0, 0, pad] = False
    mass, tm = frame_mass(q, k, layout, attn_mask=mask)
    # brute force, float64
    L = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    if mask is not None:
        L = L.masked_fill(~mask, float("-inf"))
    P = L.softmax(-1)
    v0 = n_text if text == "first" else 0
    Pv = P[:, :, v0 : v0 + layout.video]
    per = Pv[..., v0 : v0 + layout.video].unflatten(-1, (4, 9)).sum(-1)
    torch.testing.assert_close(mass.double(), per / per.sum(-1, keepdim=True), atol=1e-6, rtol=0)
    torch.testing.assert_close(mass.sum(-1), torch.ones(mass.shape[:-1]), atol=1e-6, rtol=0)
    if n_text:
        torch.testing.assert_close(tm.double(), 1 - per.sum(-1), atol=1e-6, rtol=0)
        if text == "first":
            assert tm[1].sub(tm[0]).abs().max() > 1e-3  # the mask is honoured
    else:
        assert tm is None


@pytest.mark.parametrize("frames, d", [(6, 4), (3, 16), (7, 8)])
def test_frame_mass_with_more_frames_than_head_channels(frames, d):
    """The one-hot value is zero-padded to a multiple of the head dim (fused kernels want that
    width): F + 1 > d takes several column chunks; the masses are the same."""
    g = torch.Generator().manual_seed(4)
    layout = TokenLayout(frames=frames, per_frame=3, text="first")
    S = 2 + layout.video
    q, k = (torch.randn(1, 2, S, d, generator=g) for _ in range(2))
    mass, tm = frame_mass(q, k, layout)
    P = (q.double() @ k.double().transpose(-1, -2) / math.sqrt(d)).softmax(-1)[:, :, 2:]
    per = P[..., 2:].unflatten(-1, (frames, 3)).sum(-1)
    torch.testing.assert_close(mass.double(), per / per.sum(-1, keepdim=True), atol=1e-6, rtol=0)
    torch.testing.assert_close(tm.double(), 1 - per.sum(-1), atol=1e-6, rtol=0)


def test_neutral_edited_attention_equals_sdpa_and_probes_reduce_to_identity_and_ones():
    g = torch.Generator().manual_seed(1)
    layout = TokenLayout(frames=5, per_frame=1, text="cross")  # one token per frame
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    out, mass, _ = edited_attention(q, k, v, layout, observe=True)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    eye = torch.eye(5)
    for target, expected in ((eye, eye), (torch.full((5, 5), 0.2), torch.full((5, 5), 0.2))):
        out, mass, _ = edited_attention(
            q, k, v, layout, replace=[joint_math.ReplaceOp(target)], observe=True
        )
        torch.testing.assert_close(mass, expected.expand_as(mass), atol=1e-6, rtol=0)
        torch.testing.assert_close(out, expected @ v, atol=1e-6, rtol=0)  # I_N and J_N / N


def test_3d_probes_keep_text_mass_and_within_frame_distribution():
    g = torch.Generator().manual_seed(2)
    layout = TokenLayout(frames=3, per_frame=4, text="first")
    S = 2 + layout.video
    q, k, v = (torch.randn(1, 2, S, 8, generator=g) for _ in range(3))
    _, plain, text = edited_attention(q, k, v, layout, observe=True)
    P = (q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)).softmax(-1)[:, :, 2:]
    for target in (torch.eye(3), torch.full((3, 3), 1 / 3)):  # identity, ones
        op = joint_math.ReplaceOp(target)
        out, mass, text2 = edited_attention(q, k, v, layout, replace=[op], observe=True)
        torch.testing.assert_close(text2, text, atol=1e-6, rtol=0)  # text mass kept
        fq = torch.arange(12) // 4
        torch.testing.assert_close(mass, target[fq].expand_as(mass), atol=1e-6, rtol=0)
        # the expected probabilities by hand: video part rescaled frame by frame
        Pv = P[..., 2:].unflatten(-1, (3, 4))
        m = Pv.sum(-1, keepdim=True)
        V = m.sum(-2, keepdim=True)
        new = Pv / m * V * target.double()[fq][..., None]
        Pn = torch.cat([P[..., :2], new.flatten(-2)], -1)
        expected = Pn @ v.double()
        torch.testing.assert_close(out[:, :, 2:].double(), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(mass, plain, atol=1e-3)


@pytest.mark.parametrize("mode", ["row", "head", "global"])
def test_3d_tar_equals_the_formula_on_random_tensors(mode, monkeypatch):
    monkeypatch.setitem(blocking.JOINT_BLOCK_ELEMENTS, "cpu", 2 * 2 * 30 * 7)
    g = torch.Generator().manual_seed(3)
    layout = TokenLayout(frames=4, per_frame=6, text="last")
    S = layout.video + 6
    q, k, v = (torch.randn(2, 2, S, 8, generator=g) * 1.5 for _ in range(3))
    i = torch.arange(4.0)
    dA = torch.exp(-0.5 * ((i[None] - i[:, None]) / 1.5) ** 2)
    samples = torch.tensor([False, True])  # the edit covers sample 1 only (one CFG half)
    out, _, _ = edited_attention(q, k, v, layout, bias=[joint_math.BiasOp(dA, mode, 0.7, samples)])
    L = q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)
    Nv = layout.video
    Lvv = L[:, :, :Nv, :Nv]
    m = {
        "row": Lvv.amax(-1, keepdim=True),
        "head": Lvv.amax((-2, -1), keepdim=True),
        "global": Lvv[1:].amax().expand(2, 2, 1, 1),
    }[mode]
    fq = torch.arange(Nv) // 6
    biased = L.clone()
    biased[1, :, :Nv, :Nv] += 0.7 * m[1] * dA.double()[fq][:, fq]
    expected = biased.softmax(-1) @ v.double()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], torch.nn.functional.scaled_dot_product_attention(q, k, v)[0], atol=1e-5, rtol=0)  # fmt: skip


# ---- site tables --------------------------------------------------------------------------
def test_site_tables_and_frame_pe_as_data(cog, wan):
    t = attnlab.sites(cog, latent=LATENT, frames=FRAMES)
    assert t.names == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert {(s.text, s.frames, s.tokens_per_frame, s.heads, s.head_dim) for s in t} == {
        ("first", 3, 16, 2, 16)
    }
    pe = t.pe  # CogVideoX: t = D/4, h = w = 3D/8, theta 10000
    assert (pe.kind, pe.t_dim, pe.h_dim, pe.w_dim, pe.theta) == ("rope3d", 4, 6, 6, 10000.0)
    assert "3D RoPE: t 4 / h 6 / w 6 of head dim 16, theta 10000" in str(t)
    w = attnlab.sites(wan, latent=LATENT, frames=FRAMES)
    assert w.names == ["blocks.0.attn1", "blocks.1.attn1"] and w.text == "cross"
    # Wan: h = w = 2 (D // 6), t = D - 4 (D // 6)
    assert (w.pe.t_dim, w.pe.h_dim, w.pe.w_dim, w.pe.max_frames) == (4, 4, 4, 32)
    assert "separate cross-attention" in str(w)
    with pytest.raises(UnsupportedModelError, match=r"full-3D attention video.*has no family"):
        family_of("StepVideoTransformer3DModel")  # a full-3D video DiT without a family
    with pytest.raises(UnsupportedModelError, match=r"PixArt.*image transformer.*no frame axis"):
        family_of("PixArtTransformer2DModel")


def test_cli_sites_prints_the_frame_pe(cog, tmp_path, capsys):
    from attnlab.tools.cli import main

    cog.save_config(tmp_path / "cog" / "transformer")
    assert main(["sites", str(tmp_path / "cog"), "--latent", "8", "8"]) == 0
    out = capsys.readouterr().out
    assert "frame PE: 3D RoPE: t 4 / h 6 / w 6" in out and "transformer_blocks.1.attn1" in out


# ---- maps on the models -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cog", "wan"])
def test_recorded_maps_equal_brute_force_on_the_models(kind, cog, wan):
    """Both recording paths: "exact" keeps the model's own attention call (bit-identical
    output), "split" (the default) makes the merged split output the layer's (within 1e-6);
    both maps equal the brute force (1e-5) and each other (1e-6)."""
    model = {"cog": cog, "wan": wan}[kind]
    name = "transformer_blocks.1.attn1" if kind == "cog" else "blocks.1.attn1"
    ref = _call(model, kind, batch=2)
    maps = {}
    for path in ("exact", "split", None):  # None: the default, without joint_paths
        seen, handles = _capture(model, name)
        try:
            with (
                joint.joint_paths(record=path),
                attnlab.record(model, reduce="head", names=name + "$") as rec,
            ):
                out = _call(model, kind, batch=2)
        finally:
            for h in handles:
                h.remove()
        if path == "exact":
            assert torch.equal(out, ref)  # recording reuses the model's own fused attention call
        else:  # the split path's output: float32 rounding of the model's call
            assert (out - ref).abs().max() < 1e-6
        ds = rec.to_xarray().isel(run=0, step=0, layer=0, cfg=0)
        with torch.no_grad():
            q, k, _ = _qkv(kind, dict(model.named_modules())[name], *seen["in"])
        A, text = _brute_map(q, k, FRAMES * 16, FRAMES, text_first=kind == "cog")
        got = torch.from_numpy(ds[D.PROBS].transpose(D.SAMPLE, ...).values).double()
        torch.testing.assert_close(got, A, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 2, FRAMES).double(), atol=1e-5, rtol=0)  # fmt: skip
        maps[path] = got
        if kind == "cog":
            tm = torch.from_numpy(ds[D.TEXT_MASS].transpose(D.SAMPLE, ...).values).double()
            torch.testing.assert_close(tm, text, atol=1e-5, rtol=0)
            assert float(tm.min()) > 0.01 and float(tm.max()) < 0.99
        else:
            assert D.TEXT_MASS not in ds
    torch.testing.assert_close(maps["split"], maps["exact"], atol=1e-6, rtol=0)
    assert torch.equal(maps[None], maps["split"])  # the default is the split path


def test_mean_and_spatial_reductions_and_store_round_trip(cog, tmp_path):
    store = tmp_path / "j.zarr"
    kw = dict(steps=[0], logits=True)
    with (
        attnlab.record(cog, reduce="mean", store=store, **kw),
        attnlab.record(cog, reduce="head", **kw) as head,
        attnlab.record(cog, reduce="spatial", grid=(4, 4), **kw) as sp,
    ):
        _call(cog, "cog")
    m, h, s = attnlab.load(store), head.to_xarray(), sp.to_xarray()
    assert m[D.PROBS].dims == (D.RUN, D.STEP, D.LAYER, D.CFG, D.SAMPLE, D.QUERY, D.KEY)
    assert m[D.TEXT_MASS].dims == (D.RUN, D.STEP, D.LAYER, D.CFG, D.SAMPLE, D.QUERY)
    assert m.attrs["attnlab"]["variables"] == [D.PROBS, D.LOGITS, D.TEXT_MASS]
    for var in (D.PROBS, D.LOGITS, D.TEXT_MASS):
        np.testing.assert_allclose(h[var].mean(D.HEAD), m[var], atol=1e-5)
        # a full 4x4 grid is every token position of a frame: it averages back to the mean
        np.testing.assert_allclose(s[var].mean([D.Y, D.X]), m[var], atol=1e-5)
    assert (
        m[D.FRAMES].item() == FRAMES and json.loads(m[D.PROVENANCE].item())["family"] == "cogvideox"
    )


# ---- edits on the models ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cog", "wan"])
def test_probes_set_the_frame_maps_change_output_and_restore(kind, cog, wan):
    model = {"cog": cog, "wan": wan}[kind]
    ref = _call(model, kind)
    with attnlab.record(model, levels=0) as plain:
        _call(model, kind)
    for probe, target in (("identity", np.eye(FRAMES)), ("ones", np.full((FRAMES,) * 2, 1 / 3))):
        with attnlab.record(model) as rec, attnlab.edit(model, attnlab.Replace(probe)):
            out = _call(model, kind)
        ds = rec.to_xarray()
        np.testing.assert_allclose(ds[D.PROBS].values, np.broadcast_to(target, ds[D.PROBS].shape), atol=1e-6)  # fmt: skip
        if kind == "cog":  # the text mass of the first layer (same input) is kept
            first = dict(layer="transformer_blocks.0.attn1")
            np.testing.assert_allclose(ds[D.TEXT_MASS].sel(first), plain.to_xarray()[D.TEXT_MASS].sel(first), atol=1e-6)  # fmt: skip
        assert (out - ref).abs().max() > 1e-3
    assert torch.equal(_call(model, kind), ref)
    assert not any(type(m.processor).__module__ == "attnlab.core.joint" for m in model.modules() if hasattr(m, "processor"))  # fmt: skip


@pytest.mark.parametrize("path", ["split", "blocked"])
@pytest.mark.parametrize("kind", ["cog", "wan"])
def test_3d_tar_on_one_layer_equals_an_independent_implementation(kind, path, cog, wan):
    """The attention output of a TAR-edited layer == softmax(L + rowmax_video(L) dA) @ v from
    q, k, v recomputed by hand (video rows x video keys only; text untouched), on both edit
    paths."""
    model = {"cog": cog, "wan": wan}[kind]
    ref = _call(model, kind)
    out, attn_out, q, k, v = _first_layer_under(
        model, kind, attnlab.TAR(1.0, t_min=None), paths=path
    )
    S, Nv, T = q.shape[2], FRAMES * 16, 16
    v0 = S - Nv
    L = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    Lvv = L[:, :, v0:, v0:]
    f = torch.arange(Nv) // T
    dA = torch.exp(-0.5 * ((f[None] - f[:, None]).double() / 1.0) ** 2)  # sigma 1 (preset 64D1)
    L[:, :, v0:, v0:] = Lvv + Lvv.amax(-1, keepdim=True) * dA
    expected = (L.softmax(-1) @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attn_out.double(), expected, atol=1e-4, rtol=0)
    assert (out - ref).abs().max() > 1e-3
    assert torch.equal(_call(model, kind), ref)


def test_an_edit_gets_its_own_tables_not_those_of_a_freed_edit_with_its_id(cog):
    # the processors stay installed while a recorder is attached; edits made one after another
    # inside it can get a freed edit's id (CPython reuses it), and each must still act as itself
    makers = [
        lambda: attnlab.SlidingWindow(2, 1),
        lambda: attnlab.SlidingWindow(1, 1),
        lambda: attnlab.TAR("64D1", t_min=None),
        lambda: attnlab.TAR("64D4", t_min=None),
    ]
    alone = []
    for make in makers:
        with attnlab.edit(cog, make()):
            alone.append(_call(cog, "cog"))
    assert (alone[0] - alone[1]).abs().max() > 1e-3 and (alone[2] - alone[3]).abs().max() > 1e-3
    with attnlab.record(cog):
        for make, ref in zip(makers, alone, strict=True):
            with attnlab.edit(cog, make()):
                torch.testing.assert_close(_call(cog, "cog"), ref, rtol=0, atol=1e-5)
        # and where the id is surely taken: a decoy's tables filed under the new edit's id
        edit, decoy = makers[1](), makers[0]()
        with attnlab.edit(cog, decoy):
            _call(cog, "cog")  # the decoy's tables, made now
        procs = [
            m.processor
            for m in cog.modules()
            if isinstance(getattr(m, "processor", None), joint.JointAttnProcessor)
        ]
        planted = 0
        for proc in procs:
            for key, entry in list(proc._tables.items()):
                if entry[0]() is decoy:
                    proc._tables[(id(edit), *key[1:])] = entry
                    planted += 1
        assert planted
        with attnlab.edit(cog, edit):
            torch.testing.assert_close(_call(cog, "cog"), alone[1], rtol=0, atol=1e-5)


def test_a_vstar_band_follows_the_latent_size_of_each_call(wan):
    """TAR(compat="vstar") picks sigma by the call's latent width: a call of another size with
    the same frame count gets its own band (its table was cached by frame count alone)."""
    from attnlab.edits.bias import vstar_width

    def call(h, w):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 3, h, w, generator=g)
        text = torch.randn(1, 8, 16, generator=g)
        with torch.no_grad():
            return wan(x, torch.full((1,), 500), text, return_dict=False)[0]

    def tar():
        return attnlab.TAR({vstar_width(16): 0.3, vstar_width(32): 8.0}, compat="vstar")

    with attnlab.edit(wan, tar()):
        wide = call(8, 16)
    with attnlab.edit(wan, tar()):
        square = call(8, 8)
        again = call(8, 16)
    with attnlab.edit(wan, tar()):
        assert torch.equal(call(8, 8), square)
    torch.testing.assert_close(again, wide, rtol=0, atol=1e-6)
    assert (wide - call(8, 16)).abs().max() > 1e-4  # the edit acts at that size


def test_tar_presets_windows_and_transfer_on_joint_attention(cog):
    ref = _call(cog, "cog", t=500)
    with attnlab.edit(cog, attnlab.TAR("64D1")):  # window t >= 0.441 T: active at t = 500
        on = _call(cog, "cog", t=500)
    with attnlab.edit(cog, attnlab.TAR("64D1")):
        assert torch.equal(_call(cog, "cog", t=300), _call(cog, "cog", t=300))
    assert (on - ref).abs().max() > 1e-3
    with attnlab.edit(cog, attnlab.TAR("64D1")), attnlab.record(cog) as rec:
        _call(cog, "cog", t=300)  # outside the window: the maps are the plain ones
    with attnlab.record(cog) as plain:
        _call(cog, "cog", t=300)
    np.testing.assert_array_equal(
        rec.to_xarray()[D.PROBS].values, plain.to_xarray()[D.PROBS].values
    )
    sim = np.array(
        [[1.0, 0.2, 0.9, 0.1], [0.2, 1.0, 0.2, 0.9], [0.9, 0.2, 1.0, 0.2], [0.1, 0.9, 0.2, 1.0]]
    )
    with attnlab.edit(cog, attnlab.Transfer(sim, t_min=None)):  # 4x4 reference -> 3 frames
        moved = _call(cog, "cog")
    assert (moved - ref).abs().max() > 1e-3
    assert torch.equal(_call(cog, "cog"), ref)


# ---- real pipelines -----------------------------------------------------------------------
def test_cogvideox_pipeline_idle_record_and_cfg_halves(cog_pipe):
    ref = _gen(cog_pipe)
    with attnlab.record(cog_pipe):
        pass
    assert torch.equal(_gen(cog_pipe), ref)  # idle: bit-identical
    base = ref
    with attnlab.joint_paths(record="exact"), attnlab.record(cog_pipe, reduce="head") as rec:
        assert torch.equal(_gen(cog_pipe), base)  # the exact path: the model's own calls
    with attnlab.record(cog_pipe, reduce="head") as split:  # the default: the split path
        out = _gen(cog_pipe)
    # within 1e-6 per layer call; over 2 guided sampler steps the latents drift further
    torch.testing.assert_close(out, base, atol=1e-4, rtol=1e-4)
    p, q = split.to_xarray()[D.PROBS], rec.to_xarray()[D.PROBS]
    np.testing.assert_allclose(p.isel(step=0), q.isel(step=0), atol=1e-6, rtol=0)  # same latents
    ds = rec.to_xarray()
    assert list(ds[D.CFG].values) == ["uncond", "cond"] and ds.sizes[D.STEP] == 2
    assert ds.sizes[D.QUERY] == FRAMES and ds[D.PROMPT].item() == "a polar bear playing drums"
    with (
        attnlab.record(cog_pipe) as rec,
        attnlab.edit(cog_pipe, attnlab.Replace("identity", cfg="cond")),
    ):
        edited = _gen(cog_pipe)
    p = rec.to_xarray()[D.PROBS]
    np.testing.assert_allclose(p.sel(cfg="cond"), np.broadcast_to(np.eye(FRAMES), p.sel(cfg="cond").shape), atol=1e-6)  # fmt: skip
    assert float(abs(p.sel(cfg="uncond") - np.eye(FRAMES)).max()) > 0.1
    assert (edited - base).abs().max() > 1e-3
    assert torch.equal(_gen(cog_pipe), base)


def test_wan_pipeline_runs_cfg_halves_as_separate_calls(wan_pipe):
    ref = _gen(wan_pipe)
    with attnlab.record(wan_pipe):
        pass
    assert torch.equal(_gen(wan_pipe), ref)
    base = ref
    with (
        attnlab.record(wan_pipe) as rec,
        attnlab.edit(wan_pipe, attnlab.TAR(1.0, t_min=None, cfg="cond")),
    ):
        edited = _gen(wan_pipe)
    ds = rec.to_xarray()
    # two denoiser calls per step (cond, then uncond) are one step with both halves
    assert list(ds[D.CFG].values) == ["uncond", "cond"] and ds.sizes[D.STEP] == 2
    assert not np.isnan(ds[D.PROBS].values).any()
    with attnlab.record(wan_pipe) as plain:
        _gen(wan_pipe)
    pl = plain.to_xarray()[D.PROBS]
    band = np.abs(np.subtract.outer(np.arange(FRAMES), np.arange(FRAMES))) <= 0
    diag = lambda p: float(p.values[..., band].mean())  # noqa: E731
    sel = dict(step=0)  # step 0: both halves see the same latents; only cond is edited
    np.testing.assert_allclose(ds[D.PROBS].isel(sel).sel(cfg="uncond"), pl.isel(sel).sel(cfg="uncond"), atol=1e-6)  # fmt: skip
    assert diag(ds[D.PROBS].isel(sel).sel(cfg="cond")) > diag(pl.isel(sel).sel(cfg="cond")) + 0.05
    assert (edited - base).abs().max() > 1e-3
    assert torch.equal(_gen(wan_pipe), base)
    with attnlab.record(wan_pipe, cfg="cond") as cond_only:
        _gen(wan_pipe, guidance_scale=1.0)  # no CFG: one call per step
    assert cond_only.to_xarray().sizes[D.STEP] == 2


def test_the_worked_example_in_the_docs_is_what_the_code_prints():
    import re
    import runpy
    from contextlib import redirect_stdout
    from io import StringIO
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    buf = StringIO()
    with redirect_stdout(buf):
        runpy.run_path(str(root / "docs" / "attention_3d_example.py"), run_name="__main__")
    doc = (root / "docs" / "attention-3d.md").read_text()
    block = re.search(r"## Worked example.*?```\n(.*?)```", doc, re.S).group(1)
    assert buf.getvalue().strip() == block.strip()


# ---- HunyuanVideo: text appended, padded text keys masked, dual- and single-stream blocks ----
def test_hunyuanvideo_maps_text_mass_and_edits():
    from attnlab.models.tiny_dit import hunyuan_transformer

    model = hunyuan_transformer()
    t = attnlab.sites(model, latent=(4, 4), frames=FRAMES)
    assert [(s.name, s.stream, s.text) for s in t] == [
        ("transformer_blocks.0.attn", "dual", "last"),
        ("single_transformer_blocks.0.attn", "single", "last"),
    ]
    assert (t.pe.t_dim, t.pe.h_dim, t.pe.w_dim, t.pe.theta) == (2, 4, 4, 256.0)
    g = torch.Generator().manual_seed(0)
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # sample 0: 2 padded tokens
    kw = dict(
        hidden_states=torch.randn(2, 4, FRAMES, 4, 4, generator=g),
        timestep=torch.tensor([500, 500]),
        encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
        encoder_attention_mask=text_mask,
        pooled_projections=torch.randn(2, 8, generator=g),
        guidance=torch.tensor([6000.0, 6000.0]),
        return_dict=False,
    )
    with torch.no_grad():
        ref = model(**kw)[0]
    # an independent witness of the model's own attention inputs: torch's SDPA, wrapped
    F = torch.nn.functional
    original, seen = F.scaled_dot_product_attention, []

    def witness(query, key, value, attn_mask=None, **other):  # diffusers passes keywords
        seen.append((query.double(), key.double(), attn_mask))
        return original(query, key, value, attn_mask=attn_mask, **other)

    F.scaled_dot_product_attention = witness
    try:
        with torch.no_grad(), attnlab.record(model, reduce="head") as rec:
            out = model(**kw)[0]
    finally:
        F.scaled_dot_product_attention = original
    assert (out - ref).abs().max() < 1e-6  # the split path (default): float32 rounding
    video = [s for s in seen if s[0].shape[2] == FRAMES * 16 + 6]  # (not the token refiner)
    assert len(video) == 2
    ds = rec.to_xarray().isel(run=0, step=0, cfg=0)
    for layer, (q, k, mask) in zip(t.names, video):
        L = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        P = L.masked_fill(~mask, float("-inf")).softmax(-1)[:, :, : FRAMES * 16]
        m = P[..., : FRAMES * 16].unflatten(-1, (FRAMES, 16)).sum(-1)
        A = (m / m.sum(-1, keepdim=True)).unflatten(2, (FRAMES, 16)).mean(3)
        text = (1 - m.sum(-1)).unflatten(2, (FRAMES, 16)).mean(3)
        got = ds.sel(layer=layer)
        torch.testing.assert_close(torch.from_numpy(got[D.PROBS].transpose(D.SAMPLE, ...).values).double(), A, atol=1e-5, rtol=0)  # fmt: skip
        torch.testing.assert_close(torch.from_numpy(got[D.TEXT_MASS].transpose(D.SAMPLE, ...).values).double(), text, atol=1e-5, rtol=0)  # fmt: skip
        assert P[0, ..., -2:].abs().max() == 0  # the padded text keys of sample 0 get nothing
    with (
        torch.no_grad(),
        attnlab.record(model) as rec,
        attnlab.edit(model, attnlab.Replace("identity")),
    ):
        probed = model(**kw)[0]
    p = rec.to_xarray()[D.PROBS].values
    np.testing.assert_allclose(p, np.broadcast_to(np.eye(FRAMES), p.shape), atol=1e-6)
    with torch.no_grad(), attnlab.edit(model, attnlab.TAR(1.0, t_min=None)):
        tar = model(**kw)[0]
    assert (probed - ref).abs().max() > 1e-3 and (tar - ref).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.equal(model(**kw)[0], ref)


def test_a_per_token_timestep_is_recorded_as_the_steps_noise_level(wan):
    """Wan 2.2 TI2V (expand_timesteps) passes one timestep per token, 0 for the conditioning
    frame's tokens: the step's timestep is the noised tokens' level, not the first token's 0."""
    x, e = _inputs()["wan"]
    tokens = FRAMES * 16  # 4 x 4 tokens per latent frame
    ts = torch.full((1, tokens), 500.0)
    ts[:, :16] = 0.0
    with attnlab.record(wan) as rec, torch.no_grad():
        wan(x, ts, e, return_dict=False)
    assert rec.to_xarray()[D.TIMESTEP].values.ravel().tolist() == [500.0]
