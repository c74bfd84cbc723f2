"""Positional-encoding report and edits (issue 28, first part): the report reproduces the
published RoPE periods from the real configs' rope settings; RIFLEx removes the echo of the
intrinsic frequency inside the video; RoPE scaling and sinusoidal-table edits change only the
temporal encoding, are bit-exact at their neutral settings and restore the model exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.edits import EditError, FramePositions, RIFLEx, RopeScale, from_json, from_spec
from attnlab.models import tiny_dit


# ---- one-layer transformers with the real configs' rope settings and head dims ------------
def hunyuan_real_rope():
    """HunyuanVideo's rope: head dim 128, rope_axes_dim (16, 56, 56), theta 256."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=1, attention_head_dim=128,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=2,
        patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(16, 56, 56),
        rope_theta=256.0,
    ).eval()  # fmt: skip


def wan_real_rope(channels: int = 4):
    """Wan 2.1's rope: head dim 128 (t 44 / h 42 / w 42), table of 1024 positions
    (``channels`` 48: Wan 2.2 TI2V-5B's latent channels)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=channels,
        out_channels=channels, text_dim=16, freq_dim=32, ffn_dim=16, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    ).eval()  # fmt: skip


def cogvideox5b_rope():
    """CogVideoX-5B's rope: head dim 64, rotary on, 49 frames at 4x temporal compression."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(
        num_attention_heads=1, attention_head_dim=64, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8,
        sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=8,
        use_rotary_positional_embeddings=True,
    ).eval()  # fmt: skip


# published periods in latent frames (RIFLEx paper, the models' rope settings)
PUBLISHED = {
    "hunyuan": (hunyuan_real_rope, [6.3, 12.6, 25.1, 50.3], 4, 129),
    "cogvideox-5b": (cogvideox5b_rope, [6.3, 19.9], 2, 49),
    # 33.5 and 51.0: 2 pi 10000^(8/44) = 33.53, 2 pi 10000^(10/44) = 50.96 (the 33.6
    # and 51.1 are a rounding off)
    "wan2.1": (wan_real_rope, [6.3, 9.5, 14.5, 22.1, 33.5, 51.0], 4, 81),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_report_reproduces_the_published_temporal_periods(name):
    build, published, k, train = PUBLISHED[name]
    df = attnlab.pe_report(build())
    t = df[df.axis == "t"].sort_values("k")
    got = t.period_latent.to_numpy()[: len(published)]
    assert np.round(got, 1).tolist() == published
    # the period in video frames goes through the VAE's 4x temporal compression
    assert np.allclose(t.period_frames.to_numpy(), 4 * t.period_latent.to_numpy())
    # RIFLEx's intrinsic frequency for the training length (video frames, 4x compression)
    (row,) = t[t.intrinsic].itertuples()
    assert (row.k, row.train_frames, row.train_latent) == (k, train, (train - 1) // 4 + 1)
    assert row.repeat_frame == pytest.approx(4 * published[k - 1], abs=0.5)
    assert set(df.axis) == {"t", "h", "w"}


def test_hunyuan_predicts_the_loop_users_report_at_201_frames():
    df = attnlab.pe_report(hunyuan_real_rope())
    (row,) = df[df.intrinsic].itertuples()
    assert round(row.repeat_frame) == 201  # HunyuanVideo#222: "the videos loop at 201"
    # Wan: the rule gives k = 4 (22.1 latent frames); the loop users see at ~201 frames is the
    # period of k = 6, the authors' choice (DiT-Extrapolation#8): RIFLEx(k=6) names it
    wan = attnlab.pe_report(wan_real_rope())
    assert wan[(wan.axis == "t") & (wan.k == 6)].period_frames.item() == pytest.approx(
        203.9, abs=0.1
    )


def test_wan22_ti2v_5b_trains_on_121_frames():
    # Wan 2.2's TI2V-5B (48-channel VAE latents): 121 frames (31 latent), its config's
    # frame_num; RIFLEx's intrinsic frequency moves from k 4 (period 22.1) to k 5 (33.5)
    df = attnlab.pe_report(wan_real_rope(channels=48))
    (row,) = df[df.intrinsic].itertuples()
    assert (row.k, row.train_frames, row.train_latent) == (5, 121, 31)
    assert row.period_latent == pytest.approx(33.5, abs=0.05)


def test_report_train_frames_argument_and_other_kinds():
    df = attnlab.pe_report(cogvideox5b_rope(), train_frames=81)  # 21 latent frames
    assert df[df.intrinsic].k.item() == 3  # period 62.8 is the first at or above 21
    ltx = attnlab.pe_report(tiny_dit.ltx_transformer())
    assert ltx.train_frames.isna().all() and not ltx.intrinsic.any()  # unknown: pass it
    mochi = attnlab.pe_report(tiny_dit.mochi_transformer(), train_frames=33)
    heads = tiny_dit.mochi_transformer().config.num_attention_heads
    # learned frequencies, read from the weights: one intrinsic frequency per head
    assert mochi[mochi.intrinsic]["head"].tolist() == list(range(heads))
    pf = tiny_dit.mochi_transformer().pos_frequencies.detach()[0].double().abs()
    assert sorted(mochi.theta) == pytest.approx(sorted(pf.flatten().tolist()))
    with pytest.raises(ValueError, match="positive number of video frames"):
        attnlab.pe_report(cogvideox5b_rope(), train_frames=0)


# ---- RIFLEx through the model's own RoPE: a query/key pair in one frequency ---------------
def _logits_by_offset(cos: torch.Tensor, sin: torch.Tensor, pair: int) -> np.ndarray:
    """q = k = one unit pair of channels at every frame, rotated with diffusers'
    ``apply_rotary_emb`` (interleaved pairs, as HunyuanVideo's and Wan's attention use it);
    the logit of frame 0's query with frame d's key, for every d."""
    from diffusers.models.embeddings import apply_rotary_emb

    x = torch.zeros(1, 1, cos.shape[0], cos.shape[1])
    x[..., 2 * pair] = 1.0
    r = apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-1)[0, 0]
    return (r[0] @ r.T).numpy()


def test_riflex_removes_the_echo_of_the_intrinsic_frequency_hunyuan():
    model = hunyuan_real_rope()
    L = 100  # latent frames, twice the intrinsic period 50.3
    x = torch.zeros(1, 4, L, 2, 2)  # one patch per frame
    before = _logits_by_offset(*model.rope(x), pair=3)  # k = 4: the 4th frequency, pair 3
    period = 2 * math.pi * 256 ** (6 / 16)
    echo = int(np.argmax(before[L // 4 :])) + L // 4
    assert abs(echo - period) <= 0.5 and before[echo] > 0.99 * before[0]
    with attnlab.edit(model, RIFLEx(frames=4 * (L - 1) + 1)):  # k from the report: 4
        cos, sin = model.rope(x)
    after = _logits_by_offset(cos, sin, pair=3)
    assert after[L // 4 :].max() < 0.9 * after[0]  # no echo inside L
    assert np.allclose(after, np.cos(0.9 * 2 * math.pi * np.arange(L) / L), atol=1e-5)
    # only the temporal cos/sin columns of that frequency changed
    cos0, sin0 = model.rope(x)
    changed = ((cos != cos0) | (sin != sin0)).any(0).nonzero().flatten().tolist()
    assert changed == [6, 7]


def test_riflex_on_wan_with_the_authors_k_and_within_the_period_is_bit_exact():
    model = wan_real_rope()
    x = torch.zeros(1, 4, 120, 2, 2)
    cos0, sin0 = model.rope(x)
    before = _logits_by_offset(cos0[0, :, 0], sin0[0, :, 0], pair=5)  # k = 6: period 51.0
    assert int(np.argmax(before[25:])) + 25 == 51
    with attnlab.edit(model, RIFLEx(k=6)):  # L: each call's frame count (120)
        cos, sin = model.rope(x)
        short = model.rope(torch.zeros(1, 4, 50, 2, 2))  # 50 <= 51.0: untouched
    after = _logits_by_offset(cos[0, :, 0], sin[0, :, 0], pair=5)
    assert after[30:].max() < 0.9 * after[0]  # no echo inside the 120 frames
    assert torch.equal(short[0], cos0[:, :50]) and torch.equal(short[1], sin0[:, :50])
    assert ((cos != cos0) | (sin != sin0)).flatten(0, 2).any(0).nonzero().flatten().tolist() == [
        10,
        11,
    ]


# ---- scoping, neutrality and restoration on whole models ----------------------------------
def _wan_inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, 4, 5, 4, 4, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 3, tiny_dit.TEXT_DIM, generator=g),
    )


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _state(model):
    return {k: v for k, v in model.state_dict(keep_vars=True).items()} | {
        f"buffer:{n}": b for n, b in model.named_buffers()
    }


@pytest.mark.parametrize(
    "edit",
    [RopeScale("pi", 1.0), RopeScale("ntk", 1), RopeScale("yarn", 1.0), RIFLEx(frames=9)],
    ids=["pi-1", "ntk-1", "yarn-1", "riflex-within-period"],
)
def test_neutral_settings_are_bit_exact_on_wan(edit):
    model = tiny_dit.wan_transformer()
    inputs = _wan_inputs()
    plain = _run(model, inputs)
    with attnlab.edit(model, edit):
        out = _run(model, inputs)
    assert torch.equal(out, plain)


@pytest.mark.parametrize(
    "edit",
    [RopeScale("pi", 4.0), RopeScale("ntk", 4.0), RopeScale("yarn", 4.0), RIFLEx(k=1, frames=257)],
)
def test_edits_act_and_leaving_the_context_restores_wan_exactly(edit):
    model = tiny_dit.wan_transformer()
    inputs = _wan_inputs()
    state = _state(model)
    plain = _run(model, inputs)
    x = inputs["hidden_states"]
    cos0, sin0 = model.rope(x)
    with attnlab.edit(model, edit):
        out = _run(model, inputs)
        cos, sin = model.rope(x)
    assert not torch.equal(out, plain)
    changed = ((cos != cos0) | (sin != sin0)).flatten(0, 2).any(0).nonzero().flatten()
    assert changed.numel() and changed.max() < model.rope.t_dim  # temporal columns only
    after = _state(model)
    assert after.keys() == state.keys() and all(after[k] is state[k] for k in state)
    assert not model.rope._forward_hooks and not model.rope._forward_pre_hooks
    assert torch.equal(_run(model, inputs), plain)


def test_cogvideox_edit_goes_through_the_rotary_embedding_the_pipeline_passes():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    model = tiny_dit.cogvideox_transformer()
    g = torch.Generator().manual_seed(0)
    F, H, W = 3, 8, 8
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), F)
    inputs = dict(
        hidden_states=torch.randn(1, F, 4, H, W, generator=g),
        encoder_hidden_states=torch.randn(1, 8, tiny_dit.TEXT_DIM, generator=g),
        timestep=torch.tensor([500]),
        image_rotary_emb=rope,
    )
    plain = _run(model, inputs)
    seen = {}
    hook = model.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: seen.setdefault("rope", kw["image_rotary_emb"]) and None, with_kwargs=True
    )
    with attnlab.edit(model, RopeScale("pi", 1.0)):
        assert torch.equal(_run(model, inputs), plain)
    seen.clear()
    with attnlab.edit(model, RopeScale("pi", 3.0)):
        edited = _run(model, inputs)
    hook.remove()
    assert not torch.equal(edited, plain)
    cos = seen["rope"][0]
    changed = (cos != rope[0]).any(0).nonzero().flatten().tolist()
    assert changed == [0, 1, 2, 3]  # the temporal share D/4 = 4 of head dim 16
    assert not model._forward_pre_hooks and torch.equal(_run(model, inputs), plain)


def test_step_window_on_a_denoiser_level_retune_acts_on_its_own_steps():
    """CogVideoX's retune is a pre-hook on the transformer itself: it must decide from the
    call that is starting (the step counter runs first), also on the run's first call."""
    pipe = tiny_dit.cogvideox_pipeline()
    seen: list[torch.Tensor] = []
    hook = pipe.transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["image_rotary_emb"][0].clone()), with_kwargs=True
    )
    call = dict(
        prompt="a bear", num_frames=9, height=64, width=64, num_inference_steps=3,
        max_sequence_length=8, guidance_scale=6.0, output_type="latent",
    )  # fmt: skip
    try:
        pipe(**call, generator=torch.Generator().manual_seed(0))
        plain, seen[:] = list(seen), []
        with attnlab.edit(pipe, RopeScale("pi", 4.0, steps=[1])):
            pipe(**call, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert len(seen) == len(plain) == 3
    assert [not torch.equal(a, b) for a, b in zip(seen, plain)] == [False, True, False]


def test_ltx_and_mochi_edits_touch_only_their_temporal_frequencies():
    ltx = tiny_dit.ltx_transformer()
    args = (torch.zeros(1, 5 * 4 * 4, 8), 5, 4, 4, (8 / 25, 1, 1))
    cos0, _ = ltx.rope(*args)
    with attnlab.edit(ltx, RopeScale("pi", 2.0)):
        cos, _ = ltx.rope(*args)
    # inner dim 16: 4 unrotated channels, then pairs cycling t/h/w: t pairs at 4 and 10
    assert (cos != cos0).flatten(0, 1).any(0).nonzero().flatten().tolist() == [4, 5, 10, 11]
    mochi = tiny_dit.mochi_transformer()
    pf = mochi.pos_frequencies
    seen = []
    with attnlab.edit(mochi, RIFLEx(frames=400, train_frames=33)):  # hooks run in order: last
        h = mochi.rope.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        mochi.rope(pf, 5, 4, 4, device=pf.device, dtype=torch.float32)
    h.remove()
    (passed,) = seen
    assert torch.equal(passed[1:], pf[1:].detach())  # spatial rows untouched
    diff = (passed[0] != pf[0]).nonzero().tolist()
    assert len(diff) == mochi.config.num_attention_heads  # one frequency per head
    assert torch.equal(mochi.pos_frequencies, pf)


# ---- UNet 1D RoPE: organism-rope (FrameRoPE) and LaVie (LaVieRoPE) ------------------------
def _organism(frame_pe: str, shape: str = "lavie"):
    from attnlab.models.organisms import OrganismSpec

    torch.manual_seed(0)
    return OrganismSpec(shape=shape).build_unet(frame_pe).eval()


def _unet_inputs(frames: int):
    g = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(1, 16, frames, 8, 8, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 4, 384, generator=g),
    )


def test_organism_rope_riflex_through_its_own_rotation():
    unet = _organism("rope")
    df = attnlab.pe_report(unet)
    t = df[df.axis == "t"].sort_values("k")
    # head dim 16, base 10000: periods 2 pi 10000^(2j/16)
    assert t.period_latent.tolist() == pytest.approx(
        [2 * math.pi * 10000 ** (2 * j / 16) for j in range(8)], rel=1e-6
    )
    assert t[t.intrinsic].k.item() == 2  # 19.9 is the first period at or above 16
    attn = unet.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
    L = 40
    q = torch.zeros(1, 1, L, 16)
    q[..., 1] = 1.0  # pair 1 (channels 1 and 9 in the rotate-half layout): period 19.9
    qr, kr = attn.attnlab_rope(q, q.clone())
    before = (qr[0, 0, 0] @ kr[0, 0].T).numpy()
    assert int(np.argmax(before[10:])) + 10 == 20 and before[20] > 0.99 * before[0]
    inputs = _unet_inputs(8)
    plain = _run(unet, inputs)
    with attnlab.edit(unet, RIFLEx()):  # L: each call's frames (40 here, 8 in the UNet)
        qr2, kr2 = attn.attnlab_rope(q, q.clone())
        assert torch.equal(_run(unet, inputs), plain)  # 8 frames: within the period
    after = (qr2[0, 0, 0] @ kr2[0, 0].T).numpy()
    assert after[L // 4 :].max() < 0.9 * after[0]
    assert "_cos_sin" not in vars(attn.attnlab_rope) and torch.equal(_run(unet, inputs), plain)


def test_lavie_rope_scale_swaps_its_frequency_buffer_for_the_call_only():
    from attnlab.models.lavie import LaVieUNet

    torch.manual_seed(0)
    unet = LaVieUNet(
        sample_size=8, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=16, attention_head_dim=1,
    ).eval()  # fmt: skip
    df = attnlab.pe_report(unet)
    assert (df.axis == "t").sum() == 16 and df[df.intrinsic].k.item() == 3  # 32 channels
    rope = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn_temp.rotary_emb
    own = rope.freqs
    q = torch.randn(1, 1, 12, 32)
    plain = rope(q, q)
    with attnlab.edit(unet, RopeScale("pi", 2.0)):
        edited = rope(q, q)
        assert rope.freqs is own  # swapped back after the call
    assert not torch.allclose(edited[0], plain[0])
    ref = LaVieRopeReference(own / 2)(q)
    assert torch.allclose(edited[0], ref, atol=1e-6)
    assert torch.equal(rope(q, q)[0], plain[0]) and not rope._forward_hooks


class LaVieRopeReference:
    """Interleaved-pair rotation by t * freqs, written out (an independent reference)."""

    def __init__(self, freqs: torch.Tensor):
        self.freqs = freqs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[-2], dtype=torch.float32)[:, None]
        ang = t * self.freqs[None]
        out = x.clone()
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * ang.cos() - b * ang.sin()
        out[..., 1::2] = b * ang.cos() + a * ang.sin()
        return out


def _yarn_reference(dim, base, train, scale, beta_fast=32, beta_slow=1):
    """Frequencies as YaRN's reference code scales them (jquesnelle/yarn,
    scaled_rope/LlamaYaRNScaledRotaryEmbedding.py: find_correction_dim, find_correction_range,
    linear_ramp_mask and the inv_freq blend), for a RoPE of ``dim`` channels and ``base``."""

    def correction_dim(rotations):
        return (dim * math.log(train / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp
    pos_freqs = base ** (np.arange(0, dim, 2) / dim)
    return (1 / (scale * pos_freqs)) * (1 - extrapolate) + (1 / pos_freqs) * extrapolate


@pytest.mark.parametrize(
    "dim, base, train, scale",
    [(16, 1e4, 16, 4.0), (16, 1e4, 13, 2.0), (44, 1e4, 21, 4.0), (16, 256.0, 33, 3.0),
     (128, 1e4, 4096, 8.0)],  # organism-rope, CogVideoX, Wan, HunyuanVideo, LLaMA-like
)  # fmt: skip
def test_rope_scale_frequencies_follow_the_reference_formulas(dim, base, train, scale):
    from attnlab.edits.positions import scaled_frequencies

    w = base ** (-np.arange(0, dim, 2) / dim)
    shuffled = np.random.default_rng(0).permutation(len(w))  # the row's order does not matter
    rows = np.stack([w, -w[shuffled]])  # a second head: another order, negative signs
    yarn = scaled_frequencies(rows, "yarn", scale, train)
    want = _yarn_reference(dim, base, train, scale)
    np.testing.assert_allclose(yarn[0], want, rtol=1e-12)
    np.testing.assert_allclose(yarn[1], -want[shuffled], rtol=1e-12)
    np.testing.assert_allclose(scaled_frequencies(rows, "pi", scale)[0], w / scale, rtol=1e-12)
    # NTK-aware: the base raised to base * scale^(dim / (dim - 2))
    ntk_base = base * scale ** (dim / (dim - 2))
    np.testing.assert_allclose(
        scaled_frequencies(rows, "ntk", scale)[0],
        ntk_base ** (-np.arange(0, dim, 2) / dim),
        rtol=1e-9,
    )


def test_yarn_on_frequencies_that_are_not_a_series_ramps_in_periods():
    from attnlab.edits.positions import scaled_frequencies

    w = np.array([[3.0, 1.3, 0.9, 0.05, 0.3]])  # learned: no common ratio
    q = 16 * w / (2 * math.pi)  # periods in 16 frames
    gamma = np.clip((q - 1) / 31, 0, 1)  # the paper's ramp from alpha 1 to beta 32
    np.testing.assert_allclose(
        scaled_frequencies(w, "yarn", 2.0, 16), w * ((1 - gamma) / 2 + gamma), rtol=1e-12
    )


# ---- sinusoidal tables --------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["modelscope", "animatediff"])
def test_frame_positions_extend_interpolate_repeat_scoped(shape):
    unet = _organism("sinusoidal", shape)
    df = attnlab.pe_report(unet)
    assert set(df.pe) == {"sinusoidal"} and set(df.table_len) == {16}
    first = df.sort_values("k").groupby("dim").first()
    assert first.period_latent.to_numpy() == pytest.approx(2 * math.pi, rel=1e-4)
    blocks = [m for m in unet.modules() if getattr(m, "pos_embed", None) is not None]
    stored = [b.pos_embed.pe for b in blocks]
    key = "motion_max_seq_length" if shape == "animatediff" else "frame_pe_max_len"
    inputs = _unet_inputs(8)
    plain = _run(unet, inputs)
    with attnlab.edit(unet, FramePositions("interpolate", 16)):  # within the table: neutral
        assert torch.equal(_run(unet, inputs), plain)
    with pytest.raises(attnlab.FrameLimitError), attnlab.record(unet):  # a 16-position table
        _run(unet, _unet_inputs(20))
    for mode in ("extend", "interpolate", "repeat"):
        with attnlab.edit(unet, FramePositions(mode, 20)):
            assert unet.config[key] == 20
            _run(unet, _unet_inputs(20))  # runs past the stored table
            pe = blocks[0].pos_embed.pe
            if mode == "repeat":
                assert torch.equal(pe[:, 16:], stored[0][:, :4])
            if mode == "extend":
                assert torch.equal(pe[:, :16], stored[0])
        assert unet.config[key] == 16
        assert all(b.pos_embed.pe is s for b, s in zip(blocks, stored))
    assert torch.equal(_run(unet, inputs), plain)


def test_frame_positions_use_the_trained_rows_of_a_longer_table():
    # AnimateDiff stores motion_max_seq_length = 32 rows but trains on 16 frames: interpolate
    # and repeat work from the first 16 rows (position interpolation maps onto the trained
    # range), and act from 17 frames, inside the stored table too
    from attnlab.models.organisms import extend_frame_positions

    unet = _organism("sinusoidal", "animatediff")
    extend_frame_positions(unet, 32)  # AnimateDiff's table: the formula's 32 rows
    blocks = [m for m in unet.modules() if getattr(m, "pos_embed", None) is not None]
    stored = blocks[0].pos_embed.pe
    inputs = _unet_inputs(24)
    plain = _run(unet, inputs)  # rows 0..23, as the model itself runs 24 frames
    with attnlab.edit(unet, FramePositions("interpolate", 24)):
        pe = blocks[0].pos_embed.pe
        pos = torch.arange(24, dtype=torch.float64) * 15 / 23  # onto the trained 0..15
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=15)
        frac = (pos - lo).to(pe.dtype)[None, :, None]
        want = stored[:, lo] * (1 - frac) + stored[:, hi] * frac
        torch.testing.assert_close(pe, want)
        assert pe.shape[1] == 24 and float(pos.max()) == 15.0
        assert not torch.allclose(_run(unet, inputs), plain)
    with attnlab.edit(unet, FramePositions("repeat", 24)):
        assert torch.equal(blocks[0].pos_embed.pe[:, 16:], stored[:, :8])
    for mode in ("interpolate", "repeat"):
        with attnlab.edit(unet, FramePositions(mode, 16)):  # the trained rows: neutral
            assert blocks[0].pos_embed.pe is stored
    with attnlab.edit(unet, FramePositions("extend", 24)):  # within the stored table
        assert blocks[0].pos_embed.pe is stored
    assert blocks[0].pos_embed.pe is stored and unet.config.motion_max_seq_length == 32
    assert torch.equal(_run(unet, inputs), plain)


# ---- bad input and serialisation ----------------------------------------------------------
def test_bad_input_names_what_is_allowed():
    with pytest.raises(EditError, match="pi, ntk, yarn"):
        RopeScale("linear", 2)
    with pytest.raises(EditError, match="positive"):
        RopeScale("pi", 0)
    with pytest.raises(EditError, match="extend, interpolate, repeat"):
        FramePositions("stretch", 32)
    with pytest.raises(EditError, match="1-based rank"):
        RIFLEx(k=0)
    with pytest.raises(EditError, match="video frames"):
        RIFLEx(frames=-3)
    with (
        pytest.raises(EditError, match=r"k 1\.\.2"),
        attnlab.edit(tiny_dit.wan_transformer(), RIFLEx(k=3)),
    ):
        pass
    with (
        pytest.raises(EditError, match=r"sinusoidal.*FramePositions"),
        attnlab.edit(_organism("sinusoidal", "animatediff"), RIFLEx()),
    ):
        pass
    with (
        pytest.raises(EditError, match=r"rope.*RIFLEx or RopeScale"),
        attnlab.edit(_organism("rope"), FramePositions("extend", 32)),
    ):
        pass
    with (
        pytest.raises(EditError, match="train_frames"),
        attnlab.edit(tiny_dit.ltx_transformer(), RIFLEx()),
    ):
        pass


@pytest.mark.parametrize(
    "edit",
    [
        RIFLEx(k=4, frames=257, train_frames=129, steps=[0, 1]),
        RIFLEx(),
        RopeScale("yarn", 4.0, train_frames=16, t_min=0.5),
        FramePositions("repeat", 48),
    ],
)
def test_position_edits_round_trip_through_json(edit):
    assert from_spec(edit.spec()) == edit
    assert from_json(edit.to_json()) == edit


def test_a_retuned_table_is_put_back_when_the_rotary_call_raises():
    """Wan swaps its tables for the rotary module's call: a call that raises (more frames than
    rope_max_seq_len) must not leave the retuned table in the model after the block."""
    model = tiny_dit.wan_transformer()
    own = model.rope.freqs_cos.clone()
    too_long = model.rope.freqs_cos.shape[0] + 8
    with attnlab.edit(model, RIFLEx(k=1, frames=400)):
        with pytest.raises(RuntimeError):
            model.rope(torch.zeros(1, 4, too_long, 2, 2))
        assert torch.equal(model.rope.freqs_cos, own)  # already during the block
    assert torch.equal(model.rope.freqs_cos, own)


def test_ltx_retune_reads_the_token_frame_step_past_the_causal_first_frame():
    """LTXConditionPipeline's coordinates put the first two frames 1 pixel frame apart, the
    others c_t = 8 (0, 1, 9, 17, ...): RIFLEx must take the step of a token frame, as it does
    without video_coords (the first gap made every frequency look 8 times slower)."""
    model = tiny_dit.ltx_transformer()
    rope = model.rope
    fps, F, H, W = 25.0, 5, 2, 2
    pixel = (torch.arange(F).float() * 8 + 1 - 8).clamp(min=0)
    t = pixel[:, None, None].expand(F, H, W).reshape(-1) / fps
    h = torch.arange(H).float()[None, :, None].expand(F, H, W).reshape(-1) * 32
    w = torch.arange(W).float()[None, None, :].expand(F, H, W).reshape(-1) * 32
    coords = torch.stack([t, h, w])[None]
    x = torch.zeros(1, F * H * W, model.config.in_channels)
    col = rope.dim % 6  # the slowest time frequency's first channel
    L = 200  # token frames
    with attnlab.edit(model, RIFLEx(k=2, frames=8 * (L - 1) + 1)):
        cos, sin = rope(x, F, H, W, None, coords)
        cos_ref, sin_ref = rope(x, F, H, W, (8 / fps, 32, 32), None)

    def per_frame(c, s):  # angle between token frames 2 and 3
        a = torch.atan2(s[0, :, col], c[0, :, col]).double()
        return float(a[3 * H * W] - a[2 * H * W])

    assert per_frame(cos, sin) == pytest.approx(0.9 * 2 * math.pi / L, rel=1e-4)
    assert per_frame(cos, sin) == pytest.approx(per_frame(cos_ref, sin_ref), rel=1e-4)


def test_one_positional_encoding_edit_at_a_time():
    """Two would compose differently by family (Wan keeps the last table, HunyuanVideo applies
    both): the second is refused, and the model is left as it was."""
    model = tiny_dit.wan_transformer()
    own = model.rope.freqs_cos.clone()
    with (
        pytest.raises(EditError, match="positional-encoding edit already"),
        attnlab.edit(model, RopeScale("pi", 2.0), RIFLEx(k=1, frames=257)),
    ):
        pass
    assert torch.equal(model.rope.freqs_cos, own) and not attnlab.is_instrumented(model)
