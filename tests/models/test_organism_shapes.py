"""The organisms' family layouts (ModelScope / AnimateDiff / LaVie shapes), the reshaping of
weights between them, training of the temporal layers only, the pixel-weighted loss and the
evaluator's background cleanliness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import attnlab
from attnlab.data.evaluator import BACKGROUND_NOISE_MAX, background_noise, score_world_video
from attnlab.data.world import render, scene_for_caption
from attnlab.models.organisms import (
    FAMILY_SHAPE,
    NoTemporalConv,
    OrganismMotionUNet,
    OrganismSpec,
    OrganismUNet,
    PatchCodec,
    extend_frame_positions,
    interpolate_frame_positions,
    reshape_weights,
    spec_of,
    temporal_parameter_names,
    zero_new_temporal,
)
from attnlab.models.training import TrainConfig, Trainer, channel_weights, v_loss

TINY = OrganismSpec(block_out_channels=(16, 16, 16, 16), text_adapter_dim=8)


def _modelscope(frame_pe: str = "sinusoidal", seed: int = 0) -> OrganismUNet:
    torch.manual_seed(seed)
    unet = OrganismUNet(**TINY.unet_config(frame_pe)).eval()
    with torch.no_grad():  # trained-looking weights: nothing zero-initialised stays zero
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


def _without_temporal_convs(unet: OrganismUNet) -> OrganismUNet:
    """The same UNet3D with every temporal convolution and ``transformer_in`` the identity
    (their last projection at zero: the residual passes the input through)."""
    with torch.no_grad():
        for m in unet.modules():
            if type(m).__name__ == "TemporalConvLayer":
                m.conv4[-1].weight.zero_()
                m.conv4[-1].bias.zero_()
        unet.transformer_in.proj_out.weight.zero_()
        unet.transformer_in.proj_out.bias.zero_()
    return unet


def _inputs(batch: int = 2, frames: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, TINY.latent_channels, frames, 4, 4, generator=g)
    text = torch.randn(batch, 5, 384, generator=g)
    return x, text


def test_family_shapes_of_the_three_variants():
    assert FAMILY_SHAPE == {"none": "modelscope", "sinusoidal": "animatediff", "rope": "lavie"}
    motion = dataclasses.replace(TINY, shape="animatediff").build_unet("sinusoidal")
    lavie = dataclasses.replace(TINY, shape="lavie").build_unet("rope")
    assert isinstance(motion, OrganismMotionUNet)
    assert not any("temp_conv" in n for n, _ in motion.named_parameters())
    assert not any("temp_conv" in n for n, _ in lavie.named_parameters())
    assert all(isinstance(c, NoTemporalConv) for b in lavie.down_blocks for c in b.temp_convs)
    # LaVie's shape: heads of 16 channels, so RoPE rotates 8 frequencies
    attn = lavie.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
    assert attn.heads == 1 and attn.attnlab_rope.head_dim == 16
    assert spec_of(motion).shape == "animatediff" and spec_of(lavie).shape == "lavie"
    with pytest.raises(ValueError, match="sinusoidal table"):
        dataclasses.replace(TINY, shape="animatediff").build_unet("rope")
    with pytest.raises(ValueError, match="temporal_conv_levels"):
        OrganismUNet(**{**TINY.unet_config("none"), "temporal_conv_levels": (4,)})


def test_motion_unet_is_mapped_as_animatediff_with_its_table():
    motion = dataclasses.replace(TINY, shape="animatediff").build_unet("sinusoidal")
    table = attnlab.sites(motion)
    assert {s.family for s in table} == {"motion"}
    assert {s.pe for s in table} == {"sinusoidal"} and table.max_frames == 16
    assert table.levels == [0, 1, 2, 3]  # a motion module at every level (UNet3D: not at 3)
    x, text = _inputs(1, 16)
    with torch.no_grad():
        before = motion(x, 10, text).sample
    extend_frame_positions(motion, 24)
    assert motion.config.motion_max_seq_length == 24
    with torch.no_grad():
        assert torch.equal(motion(x, 10, text).sample, before)  # stored rows kept


def test_reshaping_keeps_the_function_of_a_unet3d_without_temporal_convs():
    """The motion UNet built from a UNet3D's weights computes what that UNet3D computes with its
    temporal convolutions and transformer_in at identity (fresh motion modules start at
    identity); so do the LaVie shape's (same head dim)."""
    src = _modelscope("sinusoidal")
    x, text = _inputs()
    motion = dataclasses.replace(TINY, shape="animatediff").build_unet("sinusoidal").eval()
    state, missing = reshape_weights(src.state_dict(), motion)
    motion.load_state_dict(state, strict=False)
    assert missing and all(".motion_modules." in k for k in missing)
    assert {k.split(".motion_modules")[0] for k in missing} == {"down_blocks.3", "up_blocks.0"}
    zero_new_temporal(motion, missing)
    lavie = OrganismUNet(**{**TINY.unet_config("sinusoidal"), "temporal_conv_levels": ()})
    lavie.eval().load_state_dict(reshape_weights(src.state_dict(), lavie)[0])
    with torch.no_grad():
        got_motion = motion(x, 300, text).sample
        got_lavie = lavie(x, 300, text).sample
        with_convs = src(x, 300, text).sample
        want = _without_temporal_convs(src)(x, 300, text).sample
    assert torch.allclose(got_motion, want, atol=1e-5)
    assert (with_convs - want).abs().max() > 1e-3  # (the convolutions did something)
    # lavie kept transformer_in: compare with the convs alone at identity
    src2 = _modelscope("sinusoidal")
    with torch.no_grad():
        for m in src2.modules():
            if type(m).__name__ == "TemporalConvLayer":
                m.conv4[-1].weight.zero_()
                m.conv4[-1].bias.zero_()
        assert torch.allclose(got_lavie, src2(x, 300, text).sample, atol=1e-5)


def test_motion_unet_takes_text_per_video_or_per_frame():
    motion = dataclasses.replace(TINY, shape="animatediff").build_unet("sinusoidal").eval()
    x, text = _inputs(2, 4)
    with torch.no_grad():
        a = motion(x, 5, text).sample
        b = motion(x, 5, text.repeat_interleave(4, dim=0)).sample
        assert torch.allclose(a, b, atol=1e-6)
        with pytest.raises(ValueError, match="one per video"):
            motion(x, 5, text[:1].repeat(3, 1, 1))


def test_temporal_training_moves_only_the_temporal_layers(tmp_path):
    codec = PatchCodec(patch=4, latent_channels=TINY.latent_channels)
    spec = dataclasses.replace(TINY, shape="lavie")
    cfg = TrainConfig(frame_pe="rope", steps=2, batch=2, seed=3, spec=spec, trainable="temporal")
    tr = Trainer(cfg, codec, tmp_path / "ck.pt", init=_modelscope("rope").state_dict())
    before = {k: v.clone() for k, v in tr.unet.state_dict().items()}
    tr.run(2, log=None)
    temporal = set(temporal_parameter_names(tr.unet))
    assert temporal and all(".temp_attentions." in k or "transformer_in" in k for k in temporal)
    changed = {k for k, v in tr.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= temporal
    with pytest.raises(ValueError, match="trainable"):
        Trainer(dataclasses.replace(cfg, trainable="spatial"), codec, tmp_path / "x.pt")


def test_channel_weights_are_the_pixel_cost_of_latent_errors():
    torch.manual_seed(0)
    codec = PatchCodec(patch=4, latent_channels=6)
    with torch.no_grad():
        codec.fit(torch.rand(8, 3, 16, 16) * 2 - 1)
    assert channel_weights(codec, 0.0) is None
    w = channel_weights(codec, 1.0)
    # brute force: decode a unit error in channel c, its pixel squared error is proportional to w_c
    z = torch.zeros(1, 6, 2, 2)
    cost = []
    for c in range(6):
        e = z.clone()
        e[:, c] = 1.0
        d = codec.decode(e).sample - codec.decode(z).sample
        cost.append(float((d**2).sum()))
    cost = torch.tensor(cost)
    assert torch.allclose(w, cost / cost.mean(), rtol=1e-4)
    half = channel_weights(codec, 0.5)
    assert torch.allclose(half, 0.5 + 0.5 * w) and abs(float(half.mean()) - 1) < 1e-6
    with pytest.raises(ValueError, match="pixel_weight"):
        channel_weights(codec, 1.5)
    # v_loss with weights: the weighted mean of the squared errors, computed by hand
    alphas = torch.linspace(0.99, 0.01, 1000)
    lat, noise = torch.randn(2, 6, 3, 2, 2), torch.randn(2, 6, 3, 2, 2)
    t = torch.tensor([100, 700])

    class Zero(torch.nn.Module):
        def forward(self, x, t, e):
            return type("O", (), {"sample": torch.zeros_like(x)})()

    a = alphas[t].view(-1, 1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * lat
    want = (v**2 * w.view(1, -1, 1, 1, 1)).mean((1, 2, 3, 4))
    assert torch.allclose(v_loss(Zero(), alphas, lat, None, t, noise, None, None, w), want)


def test_background_noise_reads_speckle_and_ignores_the_object():
    clean = render(scene_for_caption("a red circle moving up on a gray background", 1), 4, 32)
    frames = ((clean.video.permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)
    score = score_world_video(frames, clean.caption)
    assert score.background_noise < 1e-6 and score.background_clean
    rng = np.random.default_rng(0)
    speckled = (frames + rng.normal(0, 0.1, frames.shape)).clip(0, 1)
    noisy = score_world_video(speckled, clean.caption)
    assert 0.08 < noisy.background_noise < 0.12 and not noisy.background_clean
    assert noisy.background_ok  # (the old check, majority colour of the border, still passes)
    # a flat object covering a corner is not background noise
    frame = np.full((32, 32, 3), 0.5)
    frame[:8, :8] = [1.0, 0.0, 0.0]
    mask = np.abs(frame - 0.5).sum(-1) < 0.25
    assert background_noise(frame, mask) == 0.0
    assert BACKGROUND_NOISE_MAX == 0.03


def test_interpolated_table_stretches_the_trained_positions():
    """Position interpolation: the stored rows at the ends, linear interpolation between them
    at fractional positions i (L - 1) / (N - 1); the length-L table interpolated to L is itself."""
    motion = dataclasses.replace(TINY, shape="animatediff").build_unet("sinusoidal")
    block = next(b for b in motion.modules() if hasattr(b, "pos_embed") and b.pos_embed)
    stored = block.pos_embed.pe.clone()  # [1, 16, d]
    interpolate_frame_positions(motion, 16)
    assert torch.allclose(block.pos_embed.pe, stored)
    interpolate_frame_positions(motion, 31)  # position i -> i / 2
    new = block.pos_embed.pe
    assert new.shape[1] == 31 and motion.config.motion_max_seq_length == 31
    assert torch.allclose(new[:, ::2], stored)
    assert torch.allclose(new[:, 1::2], (stored[:, :-1] + stored[:, 1:]) / 2)
    assert attnlab.sites(motion).max_frames == 31
    with pytest.raises(ValueError, match="only sinusoidal"):
        interpolate_frame_positions(_modelscope("rope"), 20)


def test_temporal_conv_dropout_skips_convolutions_only_while_training(tmp_path, monkeypatch):
    """Each temporal convolution of the trained UNet returns its input while its flag is set
    (what the layer is with its last projection at zero); the flags are cleared after each step
    and the saved EMA copy carries no hook: its function is that of a plain UNet3D."""
    from diffusers.models.resnet import TemporalConvLayer

    import attnlab.models.training as training

    codec = PatchCodec(patch=4, latent_channels=TINY.latent_channels)
    cfg = TrainConfig(frame_pe="none", steps=1, batch=2, seed=3, spec=TINY)
    init = _modelscope("none").state_dict()
    tr = Trainer(
        dataclasses.replace(cfg, temporal_conv_dropout=0.5), codec, tmp_path / "a.pt", init=init
    )
    convs = [m for m in tr.unet.modules() if isinstance(m, TemporalConvLayer)]
    assert len(tr._conv_skip) == len(convs) > 0
    x = torch.randn(2 * 4, convs[0].in_dim, 2, 2)  # [B F, C, h, w] as UNet3D calls it
    live = convs[0](x, num_frames=4)
    assert not torch.allclose(live, x)
    next(iter(tr._conv_skip.values()))[0] = True
    assert torch.equal(convs[0](x, num_frames=4), x)
    # the whole UNet with every flag set == the UNet3D whose temporal convolutions are the identity
    for flag in tr._conv_skip.values():
        flag[0] = True
    lat, t, emb = torch.randn(1, 16, 4, 8, 8), torch.tensor([500]), torch.randn(1, 24, 384)
    reference = _without_temporal_convs_only(_modelscope("none"))
    tr.unet.eval(), tr.ema.eval()  # (diffusers' temporal convolutions have dropout 0.1)
    with torch.no_grad():
        assert torch.allclose(
            tr.unet(lat, t, emb).sample, reference(lat, t, emb).sample, atol=1e-5, rtol=1e-4
        )
        # the EMA copy (what is saved) is not hooked
        assert torch.allclose(
            tr.ema(lat, t, emb).sample,
            _modelscope("none")(lat, t, emb).sample,
            atol=1e-5,
            rtol=1e-4,
        )
    # a step draws the flags, trains, and clears them
    seen: list[list[bool]] = []
    real = training.v_loss

    def spy(unet, *args, **kwargs):
        seen.append([f[0] for f in tr._conv_skip.values()])
        return real(unet, *args, **kwargs)

    monkeypatch.setattr(training, "v_loss", spy)
    tr.unet.train()
    tr.run(4, log=None)
    assert len(seen) == 4 and any(any(s) for s in seen) and any(not all(s) for s in seen)
    assert not any(f[0] for f in tr._conv_skip.values())
    with pytest.raises(ValueError, match="temporal_conv_dropout"):
        Trainer(dataclasses.replace(cfg, temporal_conv_dropout=1.0), codec, tmp_path / "b.pt")
    lavie = dataclasses.replace(TINY, shape="lavie")
    with pytest.raises(ValueError, match="no temporal convolution"):
        Trainer(
            dataclasses.replace(cfg, spec=lavie, frame_pe="rope", temporal_conv_dropout=0.5),
            codec,
            tmp_path / "c.pt",
        )


def _without_temporal_convs_only(unet: OrganismUNet) -> OrganismUNet:
    with torch.no_grad():
        for m in unet.modules():
            if type(m).__name__ == "TemporalConvLayer":
                m.conv4[-1].weight.zero_()
                m.conv4[-1].bias.zero_()
    return unet


def test_t_max_bounds_the_training_timesteps(tmp_path, monkeypatch):
    import attnlab.models.training as training

    codec = PatchCodec(patch=4, latent_channels=TINY.latent_channels)
    cfg = TrainConfig(frame_pe="none", steps=1, batch=2, seed=3, spec=TINY, t_max=40)
    seen: list[torch.Tensor] = []
    real = training.v_loss

    def spy(unet, alphas, lat, emb, t, *args, **kwargs):
        seen.append(t.clone())
        return real(unet, alphas, lat, emb, t, *args, **kwargs)

    monkeypatch.setattr(training, "v_loss", spy)
    Trainer(cfg, codec, tmp_path / "a.pt").run(6, log=None)
    drawn = torch.cat(seen)
    assert int(drawn.max()) <= 40
    # with a noisy share from 0, some pairs still come from the whole range
    seen.clear()
    mixed = dataclasses.replace(cfg, t_max=10, noisy_share=1.0, noisy_min=900)
    Trainer(mixed, codec, tmp_path / "b.pt").run(3, log=None)
    assert int(torch.cat(seen).min()) >= 900
    for bad in (dict(t_max=1000), dict(t_min=50, t_max=40), dict(t_max=-1)):
        with pytest.raises(ValueError, match="t_max"):
            Trainer(dataclasses.replace(cfg, **bad), codec, tmp_path / "c.pt")


def test_temporal_conv_channels_keep_all_but_the_first_outputs_at_zero_through_training(tmp_path):
    """``temporal_conv_channels=k``: every temporal convolution's last projection writes its
    first k output channels only, in the trained UNet and its EMA copy, before and after
    training steps that change the first k; the layer's output differs from its input in those
    channels only."""
    from diffusers.models.resnet import TemporalConvLayer

    codec = PatchCodec(patch=4, latent_channels=TINY.latent_channels)
    cfg = TrainConfig(frame_pe="none", steps=1, batch=2, seed=3, spec=TINY)
    init = _modelscope("none").state_dict()
    tr = Trainer(
        dataclasses.replace(cfg, temporal_conv_channels=2), codec, tmp_path / "a.pt", init=init
    )

    def projections(unet):
        return [m.conv4[-1] for m in unet.modules() if isinstance(m, TemporalConvLayer)]

    before = [c.weight[:2].clone() for c in projections(tr.unet)]
    assert before and all(bool(w.abs().sum() > 0) for w in before)
    tr.run(3, log=None)
    for unet in (tr.unet, tr.ema):
        for conv in projections(unet):
            assert torch.equal(conv.weight[2:], torch.zeros_like(conv.weight[2:]))
            assert torch.equal(conv.bias[2:], torch.zeros_like(conv.bias[2:]))
    assert any(not torch.equal(c.weight[:2], w) for c, w in zip(projections(tr.unet), before))
    layer = next(m for m in tr.unet.modules() if isinstance(m, TemporalConvLayer)).eval()
    x = torch.randn(2 * 4, layer.in_dim, 2, 2)
    with torch.no_grad():
        y = layer(x, num_frames=4)
    assert torch.equal(y[:, 2:], x[:, 2:]) and not torch.allclose(y[:, :2], x[:, :2])
    with pytest.raises(ValueError, match="temporal_conv_channels"):
        Trainer(dataclasses.replace(cfg, temporal_conv_channels=10_000), codec, tmp_path / "b.pt")
