"""The video DiT families of attnlab.models.families.video_dits on tiny instances of the real
diffusers classes (attnlab.models.tiny_dits), and every other diffusers video denoiser refused
for its reason.

References are independent of attnlab.core.joint: the q, k and mask each layer hands torch's
SDPA (seen by wrapping the function, as the HunyuanVideo test does), turned into frame maps by
the full S x S softmax in float64; the token layout (frame-major video tokens, where the text
is) is checked by perturbing one latent frame of the input and seeing which query rows of the
first layer change.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core.sites import UnsupportedModelError, family_of
from attnlab.models.families import OTHER_ATTENTION
from attnlab.models.tiny_dits import FRAMES, LATENT, TINY, skyreels_v2_inputs
from tests.helpers import sdpa_witness

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def models():
    return {name: tiny.build() for name, tiny in TINY.items()}


def _brute(q, k, mask, scale, text, frames, per_frame):
    """Frame map [B, heads, F, F] and text mass [B, heads, F] from the full softmax."""
    S = k.shape[2]
    Nv = frames * per_frame
    L = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        L = L.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else L + mask.double()
    P = L.softmax(-1)
    v0 = S - Nv if text == "first" else 0
    P = P[:, :, v0 : v0 + Nv]
    m = P[..., v0 : v0 + Nv].unflatten(-1, (frames, per_frame)).sum(-1)
    A = (m / m.sum(-1, keepdim=True)).unflatten(2, (frames, per_frame)).mean(3)
    tau = (1 - m.sum(-1)).unflatten(2, (frames, per_frame)).mean(3)
    return A, tau


def _check_maps(model, tiny, kw, frames=FRAMES):
    table = attnlab.sites(model, latent=LATENT, frames=frames)
    T = tiny.tokens_per_frame
    ref = tiny.call(model, kw)
    with sdpa_witness(model, table.names) as seen, attnlab.record(model, reduce="head") as rec:
        out = tiny.call(model, kw)
    # the default (split) recording: within float32 rounding of the model's call
    assert (out - ref).abs().max() < 1e-6
    ds = rec.to_xarray().isel(run=0, step=0, cfg=0)
    assert sorted({s[0] for s in seen}) == sorted(table.names)
    for name, q, k, mask, scale in seen:
        A, tau = _brute(q, k, mask, scale, table.text, frames, T)
        got = ds.sel(layer=name)
        probs = torch.from_numpy(got[D.PROBS].transpose(D.SAMPLE, D.HEAD, ...).values).double()
        torch.testing.assert_close(probs, A, atol=1e-5, rtol=0)
        if table.text != "cross":
            tm = torch.from_numpy(got[D.TEXT_MASS].transpose(D.SAMPLE, D.HEAD, ...).values)
            torch.testing.assert_close(tm.double(), tau, atol=1e-5, rtol=0)
            assert float(tau.min()) > 1e-3
        else:
            assert D.TEXT_MASS not in ds
    return table, ds, ref


@pytest.mark.parametrize("name", sorted(TINY))
def test_recorded_maps_equal_the_brute_force_frame_marginal(name, models):
    table, ds, _ = _check_maps(models[name], TINY[name], TINY[name].inputs())
    assert table.family.name == name and len(table) >= 1
    assert {(s.frames, s.tokens_per_frame) for s in table} == {
        (FRAMES, TINY[name].tokens_per_frame)
    }
    assert ds[D.PROBS].shape[-2:] == (FRAMES, FRAMES)


@pytest.mark.parametrize("name", sorted(TINY))
def test_token_layout_is_frame_major_where_the_family_says(name, models):
    """Perturbing latent frame j of the input changes exactly the query rows of frame j's
    tokens in the first site's attention call (queries are per-token functions of the input
    before any attention has mixed the tokens)."""
    model, tiny = models[name], TINY[name]
    table = attnlab.sites(model, latent=LATENT, frames=FRAMES)
    first = "blocks.0.attn1" if "blocks.0.attn1" in table else table.names[0]
    T, Nv = tiny.tokens_per_frame, FRAMES * tiny.tokens_per_frame
    frame_axis = {"BCFHW": 2, "BFCHW": 1, "BFHWC": 1}[table.family.sample_layout]

    def first_query(kw):
        with sdpa_witness(model, table.names) as seen:
            tiny.call(model, kw)
        return next(q for n, q, *_ in seen if n == first)

    kw = tiny.inputs()
    q0 = first_query(kw)
    S = q0.shape[2]
    v0 = S - Nv if table.text == "first" else 0
    for j in range(FRAMES):
        x = kw["hidden_states"].clone()
        x.select(frame_axis, j).add_(1.0)
        changed = (first_query({**kw, "hidden_states": x}) - q0).abs().amax(dim=(0, 1, 3)) > 1e-6
        expected = torch.zeros(S, dtype=torch.bool)
        expected[v0 + j * T : v0 + (j + 1) * T] = True
        assert torch.equal(changed, expected), (name, j)


@pytest.mark.parametrize("name", sorted(TINY))
def test_probe_sets_the_maps_changes_output_and_leaving_restores_it(name, models):
    model, tiny = models[name], TINY[name]
    kw = tiny.inputs()
    ref = tiny.call(model, kw)
    with attnlab.record(model) as rec, attnlab.edit(model, attnlab.Replace("identity")):
        out = tiny.call(model, kw)
    p = rec.to_xarray()[D.PROBS].values
    np.testing.assert_allclose(p, np.broadcast_to(np.eye(FRAMES), p.shape), atol=1e-6)
    assert (out - ref).abs().max() > 1e-4
    assert torch.equal(tiny.call(model, kw), ref)


def test_skyreels_diffusion_forcing_block_causal_maps():
    """num_frame_per_block 2 over 4 latent frames: frames 0-1 see only frames 0-1; the
    per-frame timesteps are recorded as the step's largest (the noisiest frame's)."""
    from attnlab.models.tiny_dits import skyreels_v2_transformer

    model = skyreels_v2_transformer(num_frame_per_block=2)
    kw = skyreels_v2_inputs(frames=4)
    _, ds, _ = _check_maps(model, TINY["skyreels-v2"], kw, frames=4)
    p = ds[D.PROBS].transpose(..., D.QUERY, D.KEY).values
    assert np.abs(p[..., :2, 2:]).max() == 0 and p[..., 2:, :2].min() > 0
    assert float(ds[D.TIMESTEP]) == float(kw["timestep"].max())


def test_wan_vace_control_blocks_are_sites_of_their_own_stream(models):
    t = attnlab.sites(models["wan-vace"])
    assert [(s.name, s.stream) for s in t] == [
        ("blocks.0.attn1", "video"), ("blocks.1.attn1", "video"), ("vace_blocks.0.attn1", "vace"),
    ]  # fmt: skip


def test_kandinsky5_nabla_mode_is_refused_by_name():
    from diffusers import Kandinsky5Transformer3DModel

    with torch.device("meta"):
        model = Kandinsky5Transformer3DModel(
            in_text_dim=16, in_text_dim2=8, time_dim=16, model_dim=32, ff_dim=32,
            num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6), attention_type="nabla",
        )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"NABLA sparse attention.*fractally"):
        attnlab.sites(model)


def test_motif_video_decoder_layers_are_refused_by_name():
    from diffusers import MotifVideoTransformer3DModel

    with torch.device("meta"):
        model = MotifVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
            num_layers=1, num_single_layers=2, num_decoder_layers=1, text_embed_dim=16,
            rope_axes_dim=(2, 4, 4),
        )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"num_decoder_layers=1.*two video grids"):
        attnlab.sites(model)


# ---- the frame PE as data and in the PE report ----------------------------------------------
EXPECTED_PE = {  # (t, h, w) channels of the tiny configs' head dims, theta, time position step
    "skyreels-v2": ((4, 4, 4), 1e4, 1.0),
    "wan-vace": ((4, 4, 4), 1e4, 1.0),
    "chronoedit": ((4, 4, 4), 1e4, 1.0),
    "anyflow": ((4, 4, 4), 1e4, 1.0),
    "hunyuanvideo15": ((2, 4, 4), 256.0, 1.0),
    "kandinsky5": ((4, 6, 6), 1e4, 1.0),
    "wan-animate": ((4, 4, 4), 1e4, 1.0),
    "consisid": ((4, 6, 6), 1e4, 1.0),  # get_3d_rotary_pos_embed: D/4, 3D/8, 3D/8
    "easyanimate": ((4, 6, 6), 1e4, 1.0),
    "allegro": ((4, 4, 4), 1e4, 1 / 2.2),  # time positions / interpolation_scale_t
    "cosmos": ((4, 4, 4), 1e4 * 2.0 ** (4 / 2), 1.0),  # NTK: rope_scale[0]^(t / (t - 2)); at 24 fps
    "motif-video": ((2, 4, 4), 256.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_frame_pe_and_pe_report_follow_the_rope_formula(name, models):
    (t, h, w), theta, step = EXPECTED_PE[name]
    table = attnlab.sites(models[name])
    pe = table.pe
    assert (pe.kind, pe.t_dim, pe.h_dim, pe.w_dim, pe.theta) == ("rope3d", t, h, w, theta)
    assert (t, h, w) in [(s.head_dim - 2 * h, h, w) for s in table]  # shares of the head dim
    assert (pe.frame_step or 1.0) == pytest.approx(step)
    df = attnlab.pe_report(models[name])
    rows = df[(df.axis == "t") & (df.pe == "rope3d")].sort_values("k")
    # RoPE: pair i turns by step x theta^(-2i / t) radians per latent frame, measured from the
    # tables the model (or its pipeline) computes
    expected = step * theta ** (-2 * np.arange(t // 2) / t)
    np.testing.assert_allclose(rows.theta.values, expected, rtol=1e-6)
    assert (rows.base == theta).all() and df.attrs["family"] == name


def test_cosmos_reports_its_learned_absolute_positions_and_fps_scaling(models):
    df = attnlab.pe_report(models["cosmos"])
    (learned,) = df[df.pe == "learned"].itertuples()
    assert learned.source == "learnable_pos_embed.pos_emb_t" and learned.table_len == 16
    # the tiny call runs at 30 fps: CosmosRotaryPosEmbed's time angle per frame is 24 / 30 of
    # the reported (base-fps) one
    model, tiny = models["cosmos"], TINY["cosmos"]
    kw = tiny.inputs()
    cos, sin = model.rope(torch.zeros(1, 5, FRAMES, *LATENT), fps=kw["fps"])
    T = TINY["cosmos"].tokens_per_frame
    angle = torch.atan2(sin[T, 0], cos[T, 0]).item()  # frame 1, the fastest time pair
    assert angle == pytest.approx(24 / 30, rel=1e-6)


# ---- the PE edits act through each family's own RoPE module ---------------------------------
def _wan_cos(out):
    return out[0].reshape(-1, out[0].shape[-1])


def _pipeline_rope_kw(kw):  # ConsisID: the (cos, sin) the pipeline passes
    return kw["image_rotary_emb"][0]


def _allegro_kw(kw):  # Allegro: ((t, h, w) tables, positions): positions 0, 1 of each axis
    (tc, _), (hc, _), (wc, _) = kw["image_rotary_emb"][0]
    return torch.cat([tc[:2], hc[:2], wc[:2]], dim=-1)


ROPE_TAPS = {  # module, "out" (its output) or "kw" (its image_rotary_emb), reader, temporal columns
    "skyreels-v2": ("rope", "out", _wan_cos, range(4)),
    "wan-vace": ("rope", "out", _wan_cos, range(4)),
    "chronoedit": ("rope", "out", _wan_cos, range(4)),
    "wan-animate": ("rope", "out", _wan_cos, range(4)),
    "anyflow": (
        "rope",
        "out",
        lambda o: torch.view_as_real(o["query"]).reshape(-1, 6, 2),
        range(2),
    ),
    "hunyuanvideo15": ("rope", "out", _wan_cos, range(2)),
    "motif-video": ("rope", "out", _wan_cos, range(2)),
    "kandinsky5": ("visual_rope_embeddings", "out", lambda o: o.reshape(-1, 8, 4), range(2)),
    "easyanimate": ("rope_embedding", "out", _wan_cos, range(4)),
    "cosmos": ("rope", "out", _wan_cos, (0, 1, 6, 7)),  # rotate-half: [t h w] twice
    "consisid": ("transformer_blocks.0", "kw", _pipeline_rope_kw, range(4)),
    "allegro": ("transformer_blocks.0", "kw", _allegro_kw, range(4)),
}


def _tapped(model, tiny, kw, name):
    path, where, read, _ = ROPE_TAPS[name]
    seen = []
    module = dict(model.named_modules())[path]
    if where == "out":
        h = module.register_forward_hook(lambda m, a, o: seen.append(read(o).detach().clone()))
    else:
        h = module.register_forward_pre_hook(
            lambda m, a, k: seen.append(read(k).detach().clone()), with_kwargs=True
        )
    try:
        out = tiny.call(model, kw)
    finally:
        h.remove()
    return out, seen[0]


@pytest.mark.parametrize("name", sorted(TINY))
def test_pe_edits_change_only_the_temporal_rope_columns_and_neutral_is_bit_exact(name, models):
    from attnlab.edits import RopeScale

    model, tiny = models[name], TINY[name]
    kw = tiny.inputs()
    plain, table = _tapped(model, tiny, kw, name)
    for neutral in (RopeScale("pi", 1.0), RopeScale("ntk", 1), RopeScale("yarn", 1.0)):
        with attnlab.edit(model, neutral):
            assert torch.equal(tiny.call(model, kw), plain), neutral
    with attnlab.edit(model, RopeScale("pi", 4.0)):
        out, edited = _tapped(model, tiny, kw, name)
    assert (out - plain).abs().max() > 1e-6
    diff = edited != table  # [rows, columns, ...]
    changed = set(diff.reshape(*diff.shape[:2], -1).any(-1).any(0).nonzero().flatten().tolist())
    assert changed and changed <= set(ROPE_TAPS[name][3]), changed
    assert torch.equal(tiny.call(model, kw), plain)  # leaving the edit restores the model


def test_chronoedit_riflex_length_is_the_span_of_a_two_frame_edit(models):
    """ChronoEdit puts a 2-frame input at positions 0 and rope_temporal_skip_len - 1 (7): a
    RIFLEx edit sees that span (8 positions), not 2, so a period shorter than 8 is lowered."""
    from attnlab.edits import RIFLEx

    model = models["chronoedit"]
    x = torch.zeros(1, 4, 2, *LATENT)
    cos0, sin0 = model.rope(x)
    with attnlab.edit(model, RIFLEx(k=1)):  # the fastest pair: period 2 pi < 8
        cos, sin = model.rope(x)
    frame1 = cos[0, TINY["chronoedit"].tokens_per_frame, 0]  # the second frame's tokens
    assert frame1[0].item() == pytest.approx(math.cos(7 * 0.9 * 2 * math.pi / 8), abs=1e-6)
    assert ((cos != cos0) | (sin != sin0)).flatten(0, 2).any(0).nonzero().flatten().tolist() == [
        0,
        1,
    ]


# ---- every other diffusers video denoiser: refused for its reason -------------------------
@pytest.mark.parametrize("cls", sorted(OTHER_ATTENTION))
def test_other_video_denoisers_are_refused_for_their_reason(cls):
    import diffusers

    assert isinstance(getattr(diffusers, cls), type)  # a class diffusers ships
    with pytest.raises(UnsupportedModelError) as err:
        family_of(cls)
    assert OTHER_ATTENTION[cls][1:60] in str(err.value)
    assert "no temporal attention that attnlab knows of" not in str(err.value)


def test_every_diffusers_video_denoiser_is_mapped_or_refused():
    import diffusers
    from diffusers import ModelMixin

    video = [
        n for n in dir(diffusers)
        if (n.endswith("Transformer3DModel") or n in ("Cosmos3OmniTransformer",))
        and isinstance(getattr(diffusers, n), type) and issubclass(getattr(diffusers, n), ModelMixin)
    ]  # fmt: skip
    video += ["UNet3DConditionModel", "UNetMotionModel", "UNetSpatioTemporalConditionModel", "I2VGenXLUNet"]  # fmt: skip
    assert len(video) >= 34
    image_edit = {"JoyImageEditTransformer3DModel", "JoyImageEditPlusTransformer3DModel"}
    for name in sorted(set(video) - image_edit):
        try:
            family_of(name)
        except UnsupportedModelError as err:
            assert "no family" not in str(err), name  # named: mapped or refused with a reason


# ---- subclasses and renamed copies ---------------------------------------------------------
def test_subclass_and_renamed_copy_of_a_mapped_dit_are_found_by_structure():
    from diffusers import WanTransformer3DModel

    from attnlab.models.tiny_dit import wan_transformer

    wan = wan_transformer()

    class MyWan(WanTransformer3DModel):
        pass

    class MyWanOwnForward(WanTransformer3DModel):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    assert family_of(MyWan).name == "wan"
    with pytest.raises(UnsupportedModelError, match=r"subclasses WanTransformer3DModel.*overrides forward.*register_family"):  # fmt: skip
        family_of(MyWanOwnForward)

    class RenamedVideoDiT(torch.nn.Module):  # diffusers' Wan modules under another class
        def __init__(self, rope=True):
            super().__init__()
            self.blocks = wan.blocks
            if rope:
                self.rope = wan.rope

    assert family_of(RenamedVideoDiT()).name == "wan"
    assert attnlab.sites(RenamedVideoDiT()).names == ["blocks.0.attn1", "blocks.1.attn1"]
    with pytest.raises(UnsupportedModelError) as err:
        family_of(RenamedVideoDiT(rope=False))  # no RoPE module of Wan's: no frame PE to trust
    msg = str(err.value)
    assert "attention and RoPE module classes" in msg and "register_family" in msg
    assert "JointFamily" in msg
