"""The split path of joint attention (attnlab.core.joint_math.split_attention): keys split by
latent frame, one fused call per (query block, key block), merged by log-sum-exp.

References: the full S x S softmax in float64 (brute force), the TAR formula and the
Replace rule written out on it, torch's SDPA. Tolerances: float32 fused kernels against
float64 references (1e-6 on probabilities, 1e-5 on outputs of unit-scale values).
"""

from __future__ import annotations

import math

import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core import joint, joint_math
from attnlab.core.joint_math import BiasOp, ReplaceOp, edited_attention, split_attention
from attnlab.core.joint_sites import TokenLayout

SDPA = torch.nn.functional.scaled_dot_product_attention


def _tensors(layout: TokenLayout, n_text: int, batch=2, heads=3, d=8, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    S = layout.video + n_text
    return tuple(torch.randn(batch, heads, S, d, generator=g) * scale for _ in range(3))


def _block_causal(frames: int, per_frame: int, per_block: int) -> torch.Tensor:
    """SkyReels-V2's diffusion-forcing mask: frame i sees frame j when block(j) <= block(i)."""
    blk = torch.arange(frames) // per_block
    fm = blk[None, :] <= blk[:, None]
    return fm.repeat_interleave(per_frame, 0).repeat_interleave(per_frame, 1)[None, None]


def _brute(q, k, mask=None, bias=None):
    """Float64 probabilities ``softmax(q k^T / sqrt(d) + bias)`` with a boolean mask."""
    L = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        L = L + bias
    if mask is not None:
        L = L.masked_fill(~mask, float("-inf"))
    return L.softmax(-1)


def _masses(P, layout, v0):
    Nv = layout.video
    Pv = P[:, :, v0 : v0 + Nv]
    per = Pv[..., v0 : v0 + Nv].unflatten(-1, (layout.frames, layout.per_frame)).sum(-1)
    return per / per.sum(-1, keepdim=True), 1 - per.sum(-1)


@pytest.mark.parametrize("text", ["first", "last", "cross"])
def test_split_output_and_masses_equal_brute_force_in_many_blocks(text, monkeypatch):
    """Output == SDPA (1e-6) and == the float64 softmax; masses and text mass == the brute-force
    frame marginal; with a padding mask and the queries split into many small blocks."""
    monkeypatch.setattr(joint_math, "SPLIT_BLOCK_ELEMENTS", 2 * 3 * 8 * 5)  # 5 rows a block
    layout = TokenLayout(frames=4, per_frame=6, text=text)
    n_text = 0 if text == "cross" else 5
    q, k, v = _tensors(layout, n_text)
    S = q.shape[2]
    mask = None
    if n_text:  # the last text key of sample 1 is padding
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        mask[1, 0, 0, 0 if text == "first" else S - 1] = False
    out, mass, tm = split_attention(q, k, v, layout, attn_mask=mask, observe=True)
    P = _brute(q, k, mask)
    torch.testing.assert_close(out.double(), P @ v.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, SDPA(q, k, v, attn_mask=mask), atol=1e-6, rtol=0)
    v0 = n_text if text == "first" else 0
    per, text_mass = _masses(P, layout, v0)
    torch.testing.assert_close(mass.double(), per, atol=1e-6, rtol=0)
    if n_text:
        torch.testing.assert_close(tm.double(), text_mass, atol=1e-6, rtol=0)
        assert (tm[1] - tm[0]).abs().max() > 1e-3  # the padding mask is honoured
    else:
        assert tm is None


def test_split_on_a_block_causal_mask_gives_masked_frames_no_mass():
    layout = TokenLayout(frames=4, per_frame=5, text="cross")
    q, k, v = _tensors(layout, 0, seed=1)
    mask = _block_causal(4, 5, 2)
    out, mass, _ = split_attention(q, k, v, layout, attn_mask=mask, observe=True)
    P = _brute(q, k, mask)
    torch.testing.assert_close(out.double(), P @ v.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(mass.double(), _masses(P, layout, 0)[0], atol=1e-6, rtol=0)
    assert mass[:, :, :10, 2:].abs().max() == 0  # frames 0-1 see only frames 0-1


@pytest.mark.parametrize("order", ["first", "last"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("mode", ["row", "head", "global"])
def test_split_priors_equal_the_tar_formula_chained_and_per_half(mode, masked, order, monkeypatch):
    """Two priors in order (each one's max, of any mode, is of the logits the ones before it
    biased, as on the temporal path), one of them on sample 1 only (one CFG half), against the
    formula on the float64 logits; also under a block-causal frame mask (maxima over the
    visible keys)."""
    monkeypatch.setattr(joint_math, "SPLIT_BLOCK_ELEMENTS", 2 * 2 * 8 * 7)
    monkeypatch.setattr(joint_math, "MAX_BLOCK_ELEMENTS", 2 * 2 * 24 * 5)
    layout = TokenLayout(frames=4, per_frame=6, text="last")
    q, k, v = (x[:, :2] * 1.5 for x in _tensors(layout, 6, seed=3))
    mask = None
    if masked:  # video x video block-causal (2 frames a block); text rows and keys visible
        mask = torch.ones(1, 1, 30, 30, dtype=torch.bool)
        mask[..., :24, :24] = _block_causal(4, 6, 2)
    i = torch.arange(4.0)
    dA = torch.exp(-0.5 * ((i[None] - i[:, None]) / 1.5) ** 2)
    dB = torch.rand(4, 4, generator=torch.Generator().manual_seed(5))
    samples = torch.tensor([False, True])
    ops = [BiasOp(dA, mode, 0.7, samples), BiasOp(dB, "row", 0.3)]
    if order == "last":
        ops = ops[::-1]
    out, mass, tm = split_attention(q, k, v, layout, attn_mask=mask, bias=ops, observe=True)
    L = q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)
    if mask is not None:
        L = L.masked_fill(~mask, float("-inf"))
    Nv = layout.video
    fq = torch.arange(Nv) // 6
    Lvv = L[:, :, :Nv, :Nv]
    for op in ops:
        m = {
            "row": Lvv.amax(-1, keepdim=True),
            "head": Lvv.amax((-2, -1), keepdim=True),
            "global": Lvv[1:].amax().expand(2, 2, 1, 1),
        }[op.max_mode]
        add = op.scale * m * op.dA.double()[fq][:, fq]
        if op.samples is None:
            Lvv += add
        else:
            Lvv[1] += add[1]
    P = L.softmax(-1)
    torch.testing.assert_close(out.double(), P @ v.double(), atol=1e-5, rtol=0)
    per, text_mass = _masses(P, layout, 0)
    torch.testing.assert_close(mass.double(), per, atol=1e-6, rtol=0)
    torch.testing.assert_close(tm.double(), text_mass, atol=1e-6, rtol=0)
    # and the blocked path agrees
    out_b, mass_b, _ = edited_attention(q, k, v, layout, attn_mask=mask, bias=ops, observe=True)
    if masked:
        assert mass[:, :, :12, 2:].abs().max() == 0
    torch.testing.assert_close(out, out_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(mass, mass_b, atol=1e-6, rtol=0)


def test_split_replace_keeps_text_mass_and_within_frame_distribution():
    layout = TokenLayout(frames=3, per_frame=4, text="first")
    q, k, v = _tensors(layout, 2, batch=1, heads=2, seed=2)
    P = _brute(q, k)[:, :, 2:]
    fq = torch.arange(12) // 4
    for target in (torch.eye(3), torch.full((3, 3), 1 / 3), torch.rand(3, 3).softmax(-1)):
        out, mass, tm = split_attention(q, k, v, layout, replace=[ReplaceOp(target)], observe=True)
        Pv = P[..., 2:].unflatten(-1, (3, 4))
        m = Pv.sum(-1, keepdim=True)
        new = Pv / m * m.sum(-2, keepdim=True) * target.double()[fq][..., None]
        expected = torch.cat([P[..., :2], new.flatten(-2)], -1) @ v.double()
        torch.testing.assert_close(out[:, :, 2:].double(), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(mass, target[fq].expand_as(mass), atol=1e-6, rtol=0)
        torch.testing.assert_close(tm.double(), P[..., :2].sum(-1), atol=1e-6, rtol=0)
        # text query rows are untouched
        torch.testing.assert_close(out[:, :, :2], SDPA(q, k, v)[:, :, :2], atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", ["split", "blocked"])
def test_replace_under_a_block_causal_mask_spreads_mass_over_visible_frames_only(path):
    """Replace's target row is renormalised over the key frames the mask leaves visible (a
    masked frame gets no mass); a row whose target puts nothing on a visible frame keeps its
    masses; inside each frame the probabilities keep their ratios."""
    layout = TokenLayout(frames=4, per_frame=3, text="cross")
    q, k, v = _tensors(layout, 0, batch=1, heads=2, seed=6)
    mask = _block_causal(4, 3, 2)  # frames 0-1 see 0-1; frames 2-3 see all
    fn = split_attention if path == "split" else edited_attention
    fq = torch.arange(12) // 3
    P = _brute(q, k, mask)
    Pv = P.unflatten(-1, (4, 3))
    m = Pv.sum(-1, keepdim=True)
    vis = mask[0, 0, ::3, ::3].double()  # [query frame, key frame]
    ones, shift = torch.full((4, 4), 0.25), torch.roll(torch.eye(4), 2, 1)  # shift: i -> i+2
    for target in (ones, shift):
        out, mass, _ = fn(q, k, v, layout, attn_mask=mask, replace=[ReplaceOp(target)], observe=True)  # fmt: skip
        Mv = target.double() * vis
        keep = Mv.sum(-1) == 0  # nothing visible in the target: the row keeps its masses
        M = torch.where(keep[:, None], torch.zeros(4, 4).double(), Mv / Mv.sum(-1, keepdim=True))
        new = Pv / m.clamp_min(1e-300) * M[fq][..., None]
        new = torch.where(keep[fq][:, None, None], Pv, new)
        expected_mass = new.sum(-1)
        torch.testing.assert_close(mass.double(), expected_mass, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.double(), new.flatten(-2) @ v.double(), atol=1e-5, rtol=0)
        assert mass[:, :, :6, 2:].abs().max() == 0  # frames 0-1: no mass on hidden frames 2-3
    torch.testing.assert_close(mass[:, :, 6:, :2].double(), expected_mass[:, :, 6:, :2], atol=1e-6, rtol=0)  # fmt: skip


def test_split_unsupported_says_why():
    layout = TokenLayout(frames=2, per_frame=2, text="cross")
    q, k, v = _tensors(layout, 0, batch=1, heads=1)
    assert joint_math.split_unsupported(q, k, v) is None
    assert "value width" in joint_math.split_unsupported(q, k, v[..., :4])
    assert "dtypes" in joint_math.split_unsupported(q.long(), k.long(), v.long())
    fn_op = BiasOp(None, fn=lambda L, qf, kf: L)
    assert "WindowDecay" in joint_math.split_unsupported(q, k, v, bias=[fn_op])
    assert "meta" in joint_math.split_unsupported(q.to("meta"), k.to("meta"), v.to("meta"))
    qg = q.clone().requires_grad_()
    assert "autograd" in joint_math.split_unsupported(qg, k, v)
    with torch.no_grad():
        assert joint_math.split_unsupported(qg, k, v) is None


def test_recording_under_autograd_takes_the_exact_path_and_keeps_the_gradient():
    """The fused kernels' log-sum-exp has no gradient: with grad on, recording takes the
    exact path (the model's own call), so the output and its gradient are the model's."""
    from attnlab.models.tiny_dit import wan_transformer

    model = wan_transformer()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)
    text = torch.randn(1, 8, 16, generator=g)

    def run():
        xg = x.clone().requires_grad_()
        out = model(xg, torch.tensor([500]), text, return_dict=False)[0]
        (grad,) = torch.autograd.grad(out.square().sum(), xg)
        return out.detach(), grad

    ref, ref_grad = run()
    with attnlab.record(model, reduce="head") as rec:
        out, grad = run()
    assert torch.equal(out, ref)  # the exact path: the model's own attention call
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)
    assert rec.to_xarray()[D.PROBS].notnull().all()


def test_joint_paths_checks_its_arguments_and_restores():
    assert joint._PATHS == {"record": "split", "edit": "split"}  # the defaults
    with joint.joint_paths(record="exact", edit="blocked"):
        assert joint._PATHS == {"record": "exact", "edit": "blocked"}
        with (
            pytest.raises(ValueError, match=r"record='fast'.*allowed: exact, split"),
            joint.joint_paths(record="fast"),
        ):
            pass
        assert joint._PATHS == {"record": "exact", "edit": "blocked"}
    assert joint._PATHS == {"record": "split", "edit": "split"}
    with pytest.raises(RuntimeError), joint.joint_paths(edit="blocked"):
        raise RuntimeError("boom")
    assert joint._PATHS == {"record": "split", "edit": "split"}


def test_skyreels_replace_ones_leaves_the_hidden_frames_empty_on_both_paths():
    """On the tiny SkyReels-V2 with diffusion forcing (2 frames a block over 4 latent frames),
    Replace("ones") gives frames 0-1 the map [1/2, 1/2, 0, 0] and frames 2-3 [1/4] * 4; the two
    edit paths agree; leaving the edit restores the output exactly."""
    from attnlab.models.tiny_dits import TINY, skyreels_v2_inputs, skyreels_v2_transformer

    model = skyreels_v2_transformer(num_frame_per_block=2)
    kw = skyreels_v2_inputs(frames=4)
    tiny = TINY["skyreels-v2"]
    ref = tiny.call(model, kw)
    outs = {}
    expected = torch.tensor([[0.5, 0.5, 0, 0]] * 2 + [[0.25] * 4] * 2).double()
    for path in ("split", "blocked"):
        with (
            joint.joint_paths(edit=path),
            attnlab.record(model, reduce="head") as rec,
            attnlab.edit(model, attnlab.Replace("ones")),
        ):
            outs[path] = tiny.call(model, kw)
        p = torch.from_numpy(rec.to_xarray()[D.PROBS].transpose(..., D.QUERY, D.KEY).values)
        torch.testing.assert_close(p.double(), expected.expand_as(p), atol=1e-6, rtol=0)
    torch.testing.assert_close(outs["split"], outs["blocked"], atol=1e-5, rtol=0)
    assert (outs["split"] - ref).abs().max() > 1e-4
    assert torch.equal(tiny.call(model, kw), ref)


@pytest.mark.parametrize("lazy", [None, 0.0])
def test_split_merge_with_far_apart_key_blocks_equals_brute_force(lazy, monkeypatch):
    """Key frames whose log-sum-exps lie tens of units apart (the merge moves its reference
    and rescales its running output; with ``_LAZY = 0`` at every larger block): output and
    masses still equal the float64 softmax."""
    if lazy is not None:
        monkeypatch.setattr(joint_math, "_LAZY", lazy)
    layout = TokenLayout(frames=5, per_frame=4, text="first")
    q, k, _ = _tensors(layout, 3, seed=7, scale=3.0)
    v = _tensors(layout, 3, seed=8)[2]
    k[:, :, 3 + 8 : 3 + 12] *= 4  # frame 2's keys: logits ~ 4x the others'
    L = q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)
    lse = L[..., 3:].unflatten(-1, (5, 4)).logsumexp(-1)  # per key frame
    assert (lse[..., 1:] - lse[..., :1]).max() > 30  # beyond the merge's first reference
    out, mass, tm = split_attention(q, k, v, layout, observe=True)
    P = L.softmax(-1)
    torch.testing.assert_close(out.double(), P @ v.double(), atol=1e-5, rtol=0)
    per, text_mass = _masses(P, layout, 3)
    torch.testing.assert_close(mass.double(), per, atol=1e-6, rtol=0)
    torch.testing.assert_close(tm.double(), text_mass, atol=1e-6, rtol=0)


def test_bench_joint_variants_take_the_paths_they_name():
    """attnlab.tools.bench.joint: record-exact keeps the output bit-identical, record (the
    default, split) within float32 rounding; each edit gives the same output on the split and
    the blocked path."""
    from attnlab.tools.bench.joint import JointBenchConfig, build, call, inputs

    cfg = JointBenchConfig(heads=2, layers=1, frames=3, latent=(8, 8), text=4, rounds=1)
    model, kw = build(cfg), inputs(cfg)
    out = {name: call(model, kw, name)[0] for name in ("plain", "record", "record-exact", "tar", "tar-blocked", "identity", "identity-blocked")}  # fmt: skip
    assert torch.equal(out["record-exact"], out["plain"])
    assert (out["record"] - out["plain"]).abs().max() < 1e-5
    for edit in ("tar", "identity"):
        torch.testing.assert_close(out[edit], out[edit + "-blocked"], atol=1e-5, rtol=0)
        assert (out[edit] - out["plain"]).abs().max() > 1e-4
