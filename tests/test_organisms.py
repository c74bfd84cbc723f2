"""Model organisms: committed trained weights load as diffusers pipelines, report their frame PE,
generate deterministically, and their components (RoPE, codec, data, training) do what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attnlab
from attnlab.models import generate, load_pipeline
from attnlab.organisms import (
    ORGANISMS,
    WEIGHTS,
    FrameRoPE,
    OrganismSpec,
    OrganismUNet,
    PatchCodec,
    extend_frame_positions,
    organism_path,
    training_record,
)

PE_OF = {"organism-none": ("none", None), "organism-sinusoidal": ("sinusoidal", 16)}
PE_OF["organism-rope"] = ("rope", None)


@pytest.fixture(scope="module")
def organisms():
    return {name: load_pipeline(name, progress=False) for name in ORGANISMS}


@pytest.mark.parametrize("name", list(ORGANISMS))
def test_committed_organism_loads_with_its_positional_encoding(name, organisms):
    pipe = organisms[name]
    assert type(pipe.unet) is OrganismUNet and type(pipe.vae) is PatchCodec
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert pipe.text_encoder.config.hidden_size == 384 == pipe.unet.config.cross_attention_dim
    table = attnlab.sites(pipe, height=64, width=64)
    kind, limit = PE_OF[name]
    assert {s.pe for s in table} == {kind}
    assert table.max_frames == limit
    assert table.levels == [0, 1, 2, 3] and table.get(table.names[0]).h == 16
    # the config-only path (meta device, no weights) reads the same table
    meta = attnlab.sites(organism_path(name), height=64, width=64)  # reads the codec's factor 4
    assert [(s.name, s.pe, s.pe_max_len, s.h) for s in meta] == [
        (s.name, s.pe, s.pe_max_len, s.h) for s in table
    ]
    # the weights are the committed ones, within the size budget, with their training record
    unet_file = WEIGHTS / name / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet_file.stat().st_size < 20 * 2**20
    rec = training_record(name)
    assert rec["config"]["frame_pe"] == kind
    assert rec["final_loss_last100"] < rec["first_loss_first100"]
    assert "cup" in rec["held_out"] and "cup" not in rec["data"]


@pytest.mark.parametrize("name", list(ORGANISMS))
def test_short_generation_is_deterministic_for_a_seed(name, organisms):
    pipe = organisms[name]
    a = generate(pipe, "a red circle moving to the right on a black background", frames=8, steps=2)
    b = generate(pipe, "a red circle moving to the right on a black background", frames=8, steps=2)
    c = generate(pipe, "a red circle moving to the right on a black background", frames=8, steps=2, seed=1)  # fmt: skip
    assert a.shape == (8, 64, 64, 3)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.05
    assert a.std() > 0.02  # not a blank video


def test_sinusoidal_organism_refuses_long_videos_until_its_table_is_extended():
    pipe = load_pipeline("organism-sinusoidal", progress=False)
    short = generate(pipe, "a man talking in a car", frames=8, steps=2)
    with pytest.raises(attnlab.FrameLimitError, match="extend_frame_positions"):
        generate(pipe, "a man talking in a car", frames=20, steps=2)
    extend_frame_positions(pipe.unet, 20)
    assert attnlab.sites(pipe).max_frames == 20
    assert generate(pipe, "a man talking in a car", frames=20, steps=2).shape[0] == 20
    # positions already in the table keep their values: short videos are unchanged
    assert torch.equal(generate(pipe, "a man talking in a car", frames=8, steps=2), short)
    with pytest.raises(ValueError, match="only sinusoidal"):
        extend_frame_positions(load_pipeline("organism-none", progress=False).unet, 20)


def test_rope_organism_records_its_own_rotated_logits(organisms):
    """attnlab's explicit path applies the organism's RoPE: recording changes nothing (beyond
    float rounding); and the rotation matters (without it the video visibly differs)."""
    pipe = organisms["organism-rope"]
    prompt = "a blue square moving up on a gray background"
    plain = generate(pipe, prompt, frames=8, steps=2)
    with attnlab.record(pipe, levels=[0]) as rec:
        recorded = generate(pipe, prompt, frames=8, steps=2)
    assert (recorded - plain).abs().max() < 1e-4
    assert rec.to_xarray()["probs"].sizes["query_frame"] == 8
    attns = [m for n, m in pipe.unet.named_modules() if hasattr(m, "attnlab_rope")]
    saved = [a.attnlab_rope for a in attns]
    try:
        for a in attns:
            a.attnlab_rope = lambda q, k: (q, k)
        with attnlab.record(pipe, levels=[0]):
            unrotated = generate(pipe, prompt, frames=8, steps=2)
    finally:
        for a, r in zip(attns, saved):
            a.attnlab_rope = r
    assert (unrotated - plain).abs().max() > 1e-3


def test_frame_rope_makes_logits_depend_on_frame_offset_only():
    torch.manual_seed(0)
    rope = FrameRoPE(8)
    q = torch.randn(8).expand(1, 1, 6, 8)  # the same query and key at every frame
    k = torch.randn(8).expand(1, 1, 6, 8)
    rq, rk = rope(q, k)
    logits = (rq @ rk.transpose(-1, -2))[0, 0]
    for off in range(-5, 6):
        d = torch.diagonal(logits, off)
        assert torch.allclose(d, d[0].expand_as(d), atol=1e-5)  # Toeplitz
    assert not torch.allclose(torch.diagonal(logits, 0)[0], torch.diagonal(logits, 1)[0])
    # a rotation: norms are kept
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_patch_codec_is_pca_of_patches_and_round_trips(tmp_path):
    torch.manual_seed(0)
    frames = torch.rand(6, 3, 16, 16) * 2 - 1
    full = PatchCodec(patch=4, latent_channels=48).fit(frames)
    rec = full.decode(full.encode(frames).latent_dist.mode()).sample
    assert (rec - frames).abs().max() < 1e-4  # all components: lossless
    codec = PatchCodec(patch=4, latent_channels=8).fit(frames)
    z = codec.encode(frames).latent_dist.sample()
    assert z.shape == (6, 8, 4, 4)
    # whitened: every latent channel has unit variance on the fitted frames
    assert torch.allclose(z.transpose(0, 1).flatten(1).std(1), torch.ones(8), atol=0.02)
    # decode(encode(x)) is the orthogonal projection onto the kept components: idempotent
    once = codec.decode(z).sample
    twice = codec.decode(codec.encode(once).latent_dist.mode()).sample
    assert (once - twice).abs().max() < 1e-4
    assert torch.allclose(codec.components @ codec.components.T, torch.eye(8), atol=1e-5)
    codec.save_pretrained(tmp_path)
    back = PatchCodec.from_pretrained(tmp_path)
    assert torch.equal(back.encode(frames).latent_dist.mode(), z)
    for p in ("components", "mean", "scales"):
        assert torch.equal(getattr(back, p), getattr(codec, p)), p
    assert len(back.config.block_out_channels) == 3  # diffusers' VAE scale factor: 2 ** 2 = 4
    with pytest.raises(ValueError, match="power of two"):
        PatchCodec(patch=3)


def test_procedural_clips_do_what_their_captions_say():
    from attnlab.training import procedural_clip

    seen = set()
    for seed in range(60):
        video, caption = procedural_clip(np.random.default_rng(seed))
        assert video.shape == (16, 3, 64, 64) and video.min() >= -1 and video.max() <= 1
        again, caption2 = procedural_clip(np.random.default_rng(seed))
        assert torch.equal(video, again) and caption == caption2
        # where the foreground differs from the background (the corner pixel)
        fg = (video - video[:, :, :1, :1]).abs().sum(1) > 0.3
        ys, xs = torch.arange(64.0)[:, None], torch.arange(64.0)[None]
        area = fg.sum((1, 2)).float()
        cx = (fg * xs).sum((1, 2)) / area.clamp(min=1)
        cy = (fg * ys).sum((1, 2)) / area.clamp(min=1)
        if "to the right" in caption:
            assert cx[-1] - cx[0] > 10
            seen.add("right")
        elif "to the left" in caption:
            assert cx[0] - cx[-1] > 10
            seen.add("left")
        elif "moving down" in caption:
            assert cy[-1] - cy[0] > 10
            seen.add("down")
        elif "moving up" in caption:
            assert cy[0] - cy[-1] > 10
            seen.add("up")
        elif "growing" in caption:
            assert area[-1] > 2 * area[0]
            seen.add("grow")
        elif "shrinking" in caption:
            assert area[0] > 2 * area[-1]
            seen.add("shrink")
        elif "turning from" in caption:
            assert (video[0] - video[-1]).abs().max() > 0.5 and abs(
                area[0] - area[-1]
            ) < 0.2 * area[0] + 5
            seen.add("recolor")
    assert seen == {"right", "left", "down", "up", "grow", "shrink", "recolor"}


def test_training_is_reproducible(samples, tmp_path):
    """Three steps of the real training loop on a miniature spec: same seed, same weights;
    the weights move; the saved organism loads back, RoPE processors included, with its record."""
    from attnlab.training import OrganismData, TrainConfig, fit_codec, save_organism, train

    spec = OrganismSpec(size=32, latent_channels=8, block_out_channels=(16, 16, 32, 32))
    data = OrganismData(size=32, clips=("carphone",))
    codec = fit_codec(data, spec)
    cfg = TrainConfig(frame_pe="rope", steps=3, batch=1, seed=3, spec=spec)
    a, rec = train(cfg, data, codec, log=None, progress=False)
    b, _ = train(cfg, data, codec, log=None, progress=False)
    for (n, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), n
    torch.manual_seed(cfg.seed)  # train() builds its UNet right after seeding
    init = OrganismUNet(**spec.unet_config("rope"))
    moved = max((pa - pi).abs().max().item() for pa, pi in zip(a.parameters(), init.parameters()))
    assert moved > 0
    assert np.isfinite(rec["final_loss_last100"]) and rec["config"]["steps"] == 3
    out = save_organism(a, rec, tmp_path)
    back = OrganismUNet.from_pretrained(out / "unet")
    assert back.config.frame_pe == "rope"
    assert all(torch.equal(x, y) for x, y in zip(back.parameters(), a.parameters()))
    assert {
        type(p).__name__
        for n, p in back.attn_processors.items()
        if "temp" in n or "transformer_in" in n
    } == {"RoPEAttnProcessor"}
    assert json.loads((out / "training.json").read_text())["config"]["seed"] == 3
