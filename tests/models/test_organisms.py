"""Model organisms: committed trained weights load as diffusers pipelines, report their frame PE,
generate deterministically, and their components (RoPE, codec, data, training) do what they say."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import attnlab
from attnlab.models import generate, load_pipeline
from attnlab.models.organisms import (
    FAMILY_SHAPE,
    ORGANISMS,
    WEIGHTS,
    FrameRoPE,
    OrganismMotionUNet,
    OrganismSpec,
    OrganismUNet,
    PatchCodec,
    _temporal_blocks,
    extend_frame_positions,
    organism_path,
    text_encoder_and_tokenizer,
    training_record,
)

PE_OF = {"organism-none": ("none", None), "organism-sinusoidal": ("sinusoidal", 16)}
PE_OF["organism-rope"] = ("rope", None)
# the highest background noise of 2 videos per background (evaluator, corner patches, 10 steps;
# the world's clips: 0.000) when written, and the limit pinned a little above it
# (when written: none 0.010 / 0.018 / 0.017, sinusoidal 0.020 / 0.025 / 0.019, rope 0.018 /
# 0.022 / 0.021 for black / gray / dark blue; clean is <= 0.03)
BACKGROUND_LIMITS = {
    "organism-none": {"black": 0.03, "gray": 0.03, "dark blue": 0.03},
    "organism-sinusoidal": {"black": 0.03, "gray": 0.03, "dark blue": 0.03},
    "organism-rope": {"black": 0.03, "gray": 0.03, "dark blue": 0.03},
}
UNET_OF = {
    "organism-none": OrganismUNet,
    "organism-sinusoidal": OrganismMotionUNet,
    "organism-rope": OrganismUNet,
}


@pytest.fixture(scope="module")
def organisms():
    return {name: load_pipeline(name, progress=False) for name in ORGANISMS}


@pytest.mark.parametrize("name", list(ORGANISMS))
def test_committed_organism_loads_with_its_positional_encoding(name, organisms):
    pipe = organisms[name]
    assert type(pipe).__name__ == "OrganismPipeline"
    assert type(pipe.unet) is UNET_OF[name] and type(pipe.vae) is PatchCodec
    # shaped like the family it stands for: temporal convolutions only in the ModelScope shape
    convs = [n for n, _ in pipe.unet.named_parameters() if ".temp_convs." in n]
    assert bool(convs) == (name == "organism-none")
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert pipe.text_encoder.config.hidden_size == 384 == pipe.unet.config.cross_attention_dim
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    table = attnlab.sites(pipe, height=32, width=32)
    kind, limit = PE_OF[name]
    assert {s.pe for s in table} == {kind}
    assert table.max_frames == limit
    assert table.levels == [0, 1, 2, 3] and table.get(table.names[0]).h == 8
    # the config-only path (meta device, no weights) reads the same table
    meta = attnlab.sites(organism_path(name), height=32, width=32)  # reads the codec's factor 4
    assert [(s.name, s.pe, s.pe_max_len, s.h) for s in meta] == [
        (s.name, s.pe, s.pe_max_len, s.h) for s in table
    ]
    # the weights are the committed ones, within the size budget, with their training record
    unet_file = WEIGHTS / name / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet_file.stat().st_size < 20 * 2**20
    rec = training_record(name)
    assert rec["config"]["frame_pe"] == kind and rec["device"] == "cpu"
    assert rec["image_phase"]["steps"] > 0
    # every step asked was run, or the run was stopped (touch <run>/STOP) and says at which step
    assert rec["steps"] == rec["config"]["steps"] or rec["stopped"].startswith(
        f"at step {rec['steps']} of the {rec['config']['steps']} asked"
    )
    first = rec  # a fine-tuning stage records the run it started from, down to the first one
    while "init_record" in first:
        first = first["init_record"]
    assert first["loss_last100"] < first["loss_first100"]  # (the run from the image phase)
    if "init_record" in rec:
        parent = rec["init_record"]
        before = parent.get("video_steps_total", parent["steps"])
        assert rec["video_steps_total"] == before + rec["steps"]
        assert rec["image_phase"] == parent["image_phase"] and "fresh optimiser" in rec["init"]


def test_organisms_share_data_seed_schedule_and_image_phase():
    """One lineage: the same data, seed, schedule and options in every stage the variants have
    in common (the architecture differs only in the family shape, and so the frame PE);
    organism-sinusoidal and organism-rope went through the same reshaping stages."""
    recs = {name: training_record(name) for name in ORGANISMS}

    def chain(rec):  # the last stage first, then the stages it started from
        out = []
        while rec is not None:
            out.append(rec)
            rec = rec.get("init_record")
        return out

    def same(stages, but=()):
        configs = [
            {k: v for k, v in r["config"].items() if k not in ("frame_pe", "spec", *but)}
            for r in stages
        ]
        return all(c == configs[0] for c in configs)

    chains = {name: chain(r) for name, r in recs.items()}
    # stages 1-5 (the ModelScope-shaped lineage) are common to all three
    base = 2
    assert all(same([c[-i] for c in chains.values()]) for i in range(1, base + 1))
    pair = [chains["organism-sinusoidal"], chains["organism-rope"]]
    # (stage 7 ran 2,000 steps for organism-sinusoidal, 1,500 for organism-rope)
    assert len(pair[0]) == len(pair[1]) and all(same(s, but=("steps",)) for s in zip(*pair))
    # the stages against the background speckle (every layer, half of the pairs at t <= t_max)
    # are alike but for t_max, the steps and organism-none's temporal-convolution dropout
    speckle = {n: [r for r in c if r["config"].get("t_max", 999) < 999] for n, c in chains.items()}
    assert same(
        [r for rs in speckle.values() for r in rs], but=("t_max", "steps", "temporal_conv_dropout")
    )
    assert {n: [r["config"]["t_max"] for r in rs] for n, rs in speckle.items()} == {
        "organism-none": [200, 200, 400, 400],
        "organism-sinusoidal": [200, 400],
        "organism-rope": [200, 400],
    }
    # organism-none skipped its temporal convolutions at random in them (0.5, then 0.8)
    drop = {n: [r["config"]["temporal_conv_dropout"] for r in rs] for n, rs in speckle.items()}
    assert drop == {
        "organism-none": [0.8, 0.8, 0.8, 0.5],
        "organism-sinusoidal": [0.0, 0.0],
        "organism-rope": [0.0, 0.0],
    }
    shapes = {name: r["config"]["spec"].get("shape", "modelscope") for name, r in recs.items()}
    assert shapes == {f"organism-{pe}": s for pe, s in FAMILY_SHAPE.items()}
    assert len({json.dumps(r["image_phase"]["config"], sort_keys=True) for r in recs.values()}) == 1


def test_loading_an_organism_prints_no_type_or_deprecation_warnings(caplog):
    import logging

    from diffusers.utils import logging as dlogging

    dlogging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            load_pipeline("organism-rope", progress=False)
    finally:
        dlogging.disable_propagation()
    text = caplog.text
    assert "Expected types" not in text and "cannot get type annotation" not in text
    assert "deprecated" not in text


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORGANISMS))
def test_short_generation_is_deterministic_for_a_seed(name, organisms):
    pipe = organisms[name]
    prompt = "a red circle moving to the right on a black background"
    a = generate(pipe, prompt, frames=8, steps=2, guidance=3.0)
    b = generate(pipe, prompt, frames=8, steps=2, guidance=3.0)
    c = generate(pipe, prompt, frames=8, steps=2, guidance=3.0, seed=1)
    assert a.shape == (8, 32, 32, 3)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.05
    assert a.std() > 0.02  # not a blank video


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORGANISMS))
def test_organism_draws_the_captioned_colour(name):
    """Behaviour, from pure noise with the pipeline's own defaults (16 frames, guidance) and 10
    DDIM steps to stay cheap: the object is found and has the captioned colour."""
    from attnlab.data.evaluator import score_world_video

    pipe = load_pipeline(name, progress=False)
    captions = [
        "a red circle moving to the right on a black background",
        "a green square moving up on a black background",
        "a yellow circle growing on a dark blue background",
        "a blue circle shrinking on a black background",
    ]
    out = pipe(
        captions,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    scores = [score_world_video(v, c) for v, c in zip(np.asarray(out.frames), captions)]
    assert np.asarray(out.frames).shape == (4, 16, 32, 32, 3)
    # margins below the 64-video measurement of docs/organisms.md (colour 0.92-0.94, found 1.00;
    # here 4 of 4 and 1.00 for each organism when written)
    assert sum(s.color_ok for s in scores) >= 3
    assert np.mean([s.found_rate for s in scores]) >= 0.75


DIRECTION_SCENES = (
    "a red circle {} on a black background",
    "a yellow square {} on a dark blue background",
)
DIRECTION_WORDS = ("moving to the right", "moving to the left", "moving up", "moving down")


def _direction_batch(pipe, seed: int = 0):
    """The same scene under each of the four direction words, two scenes, the same noise per
    scene (only the word differs); 10 DDIM steps, the pipeline's other defaults."""
    from attnlab.data.evaluator import score_world_video

    captions = [s.format(w) for s in DIRECTION_SCENES for w in DIRECTION_WORDS]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, 16, 16, 8, 8, generator=gen).repeat_interleave(4, 0)
    out = pipe(captions, num_inference_steps=10, latents=noise, output_type="np")
    videos = np.asarray(out.frames)
    return videos, [score_world_video(v, c) for v, c in zip(videos, captions)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORGANISMS))
def test_organism_moves_the_object_the_captioned_way_and_identity_everywhere_takes_it(name):
    """The direction word is followed (only the word differs between videos of a scene; a model
    that ignores it scores about 2 of 8), and the motion passes through the temporal attention:
    with every frame attending only to itself (the paper's identity probe at every level) the
    direction words are no longer followed, in organism-none too (its temporal convolutions
    carry the frame order, its attention spreads it). Outside the edit the model is exactly as
    before."""
    pipe = load_pipeline(name, progress=False)
    levels = attnlab.sites(pipe).levels
    plain, scores = _direction_batch(pipe)
    with attnlab.edit(pipe, attnlab.Replace("identity", levels=levels)):
        _, probed = _direction_batch(pipe)
    again, _ = _direction_batch(pipe)
    assert np.array_equal(again, plain)
    ok = sum(bool(s.direction_ok) for s in scores)
    ok_probed = sum(bool(s.direction_ok) for s in probed)
    # plain / identity, generator seeds 0-3, when written: sinusoidal 8/1, 8/2, 8/2, 8/2; rope 8/1, 8/1,
    # 8/2, 8/1; none 8/3, 8/2 (seeds 0-1) (chance: 2 of 8)
    assert ok >= 6, ok
    assert ok_probed <= 4 and ok - ok_probed >= 4, (ok, ok_probed)


@pytest.mark.parametrize("name", list(ORGANISMS))
def test_organism_backgrounds(name):
    """Background cleanliness by the evaluator (corner-patch spatial noise; the world's clips
    read 0): what each organism reaches, per background, pinned at the level measured."""
    from attnlab.data.evaluator import score_world_video

    pipe = load_pipeline(name, progress=False)
    captions = [
        f"a {c} {s} moving {d} on a {bg} background"
        for bg in ("black", "gray", "dark blue")
        for c, s, d in (("red", "circle", "up"), ("green", "square", "to the left"))
    ]
    out = pipe(
        captions,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    noise = [
        score_world_video(v, c).background_noise for v, c in zip(np.asarray(out.frames), captions)
    ]
    by_bg = dict(zip(("black", "gray", "dark blue"), np.reshape(noise, (3, 2)).max(1)))
    for bg, limit in BACKGROUND_LIMITS[name].items():
        assert by_bg[bg] <= limit, (bg, by_bg)


def test_sinusoidal_organism_refuses_long_videos_until_its_table_is_extended():
    pipe = load_pipeline("organism-sinusoidal", progress=False)
    prompt = "a red circle moving to the right on a black background"
    short = generate(pipe, prompt, frames=8, steps=2)
    stored = [b.pos_embed.pe.clone() for b in _temporal_blocks(pipe.unet)]
    with pytest.raises(attnlab.FrameLimitError, match="extend_frame_positions"):
        generate(pipe, prompt, frames=20, steps=2)
    extend_frame_positions(pipe.unet, 20)
    assert attnlab.sites(pipe).max_frames == 20
    for b, old in zip(_temporal_blocks(pipe.unet), stored):
        new = b.pos_embed.pe
        assert new.shape[1] == 20
        assert torch.equal(new[:, :16], old)  # stored rows kept as they are, not recomputed
        # appended rows follow the formula: sin / cos of position * 10000^(-2i/d) (Vaswani 2017)
        d = new.shape[-1]
        freq = torch.exp(torch.arange(0, d, 2) * (-np.log(10000.0) / d))
        assert torch.allclose(new[0, 19, 0::2], torch.sin(19 * freq), atol=1e-5)
        assert torch.allclose(new[0, 19, 1::2], torch.cos(19 * freq), atol=1e-5)
    assert generate(pipe, prompt, frames=20, steps=2).shape[0] == 20
    # positions already in the table keep their values: short videos are bit-identical
    assert torch.equal(generate(pipe, prompt, frames=8, steps=2), short)
    extend_frame_positions(pipe.unet, 12)  # shorter than the table: nothing changes
    assert attnlab.sites(pipe).max_frames == 20
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


def test_v_loss_is_the_v_prediction_objective_with_min_snr_weights():
    """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022); weight min(SNR, 5) / (SNR + 1)
    (Hang et al. 2023): a denoiser that outputs exactly v has zero loss; one that outputs zero
    has loss |v|^2 times the weight."""
    from types import SimpleNamespace

    from attnlab.models.training import v_loss

    torch.manual_seed(0)
    alphas = torch.linspace(0.99, 0.01, 1000)
    lat, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = torch.tensor([100, 900])
    a = alphas[t].view(-1, 1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * lat

    class Exact(torch.nn.Module):
        def forward(self, x, tt, emb):
            return SimpleNamespace(sample=v)

    class Zero(torch.nn.Module):
        def forward(self, x, tt, emb):
            return SimpleNamespace(sample=torch.zeros_like(x))

    assert v_loss(Exact(), alphas, lat, None, t, noise, 5.0).abs().max() < 1e-12
    snr = alphas[t] / (1 - alphas[t])
    want = (v**2).mean((1, 2, 3, 4)) * torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)
    assert torch.allclose(v_loss(Zero(), alphas, lat, None, t, noise, 5.0), want)
    assert torch.allclose(
        v_loss(Zero(), alphas, lat, None, t, noise, None), (v**2).mean((1, 2, 3, 4))
    )


@pytest.mark.slow
def test_training_resumes_bit_for_bit_and_starts_from_the_image_phase(tmp_path):
    """Three steps straight equal two steps, a checkpoint, a new Trainer and one more step (same
    process, same computation: bit-identical); a video phase starts from given image weights."""
    from attnlab.models.training import TrainConfig, Trainer, fit_codec, save_organism

    spec = OrganismSpec(block_out_channels=(16, 16, 32, 32), latent_channels=8, text_adapter_dim=8)
    codec = fit_codec(spec, torch.rand(8, 3, 32, 32) * 2 - 1)
    text = text_encoder_and_tokenizer()
    cfg = TrainConfig(frame_pe="rope", steps=3, batch=2, seed=3, spec=spec)
    straight = Trainer(cfg, codec, tmp_path / "a.pt", text=text)
    straight.run(3, log=None)
    part = Trainer(cfg, codec, tmp_path / "b.pt", text=text)
    part.run(2, log=None)
    resumed = Trainer(cfg, codec, tmp_path / "b.pt", text=text)
    assert resumed.step == 2
    resumed.run(3, log=None)
    for (n, x), y in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().values()):
        assert torch.equal(x, y), n
    assert straight.losses == resumed.losses
    assert resumed.record()["stages"] == []  # resumed with the same options: one stage
    curriculum = dataclasses.replace(cfg, steps=4, noisy_share=0.5, noisy_min=900)
    later = Trainer(curriculum, codec, tmp_path / "b.pt", text=text)
    later.run(4, log=None)
    again = Trainer(curriculum, codec, tmp_path / "b.pt", text=text)  # (and once more: no new)
    want = [{"from_step": 3, "changed": {"noisy_share": 0.5, "noisy_min": 900}}]
    assert again.record()["stages"] == want and again.step == 4
    init = {k: v + 1 for k, v in straight.unet.state_dict().items()}
    video = Trainer(
        TrainConfig(frame_pe="sinusoidal", spec=spec),
        codec,
        tmp_path / "c.pt",
        init=init,
        text=text,
    )
    shared = [k for k in init if k in video.unet.state_dict()]
    assert all(torch.equal(video.unet.state_dict()[k], init[k]) for k in shared)
    out = save_organism(resumed.ema, resumed.record(), tmp_path)
    back = OrganismUNet.from_pretrained(out / "unet")
    assert back.config.frame_pe == "rope" and back.config.text_adapter_dim == 8
    assert all(torch.equal(x, y) for x, y in zip(back.parameters(), resumed.ema.parameters()))
    assert json.loads((out / "training.json").read_text())["steps"] == 3


def test_noisy_share_trains_that_share_of_clip_pairs_at_the_noisy_end(tmp_path, monkeypatch):
    """``noisy_share`` draws that share of the (pair-shared) timesteps from noisy_min..999;
    bad values are refused before training."""
    from attnlab.models import training as T

    spec = OrganismSpec(block_out_channels=(16, 16, 32, 32), latent_channels=8, text_adapter_dim=8)
    codec = T.fit_codec(spec, torch.rand(8, 3, 32, 32) * 2 - 1)
    text = text_encoder_and_tokenizer()
    seen: list[list[int]] = []
    v_loss = T.v_loss
    monkeypatch.setattr(
        T,
        "v_loss",
        lambda u, a, lat, e, t, *r: seen.append(t.tolist()) or v_loss(u, a, lat, e, t, *r),
    )
    for share, name in ((1.0, "all"), (0.0, "none")):
        cfg = T.TrainConfig(
            frame_pe="none", batch=8, seed=1, spec=spec, noisy_share=share, noisy_min=990
        )
        T.Trainer(cfg, codec, tmp_path / f"{name}.pt", text=text).run(2, log=None)
    high, plain = seen[:2], seen[2:]
    assert all(t >= 990 for ts in high for t in ts)
    assert all(ts[0::2] == ts[1::2] for ts in high + plain)  # a pair shares its timestep
    assert sum(t >= 990 for ts in plain for t in ts) < len(plain) * 8  # uniform 0..999
    with pytest.raises(ValueError, match="noisy_share"):
        T.Trainer(T.TrainConfig(spec=spec, noisy_share=1.5), codec, tmp_path / "x.pt", text=text)


def test_reference_target_is_the_posterior_mean_of_the_clip_and_its_references():
    """Stable target field (Xu et al. 2023) against a direct computation: softmax over the
    candidates (clip first) of -|x_t - sqrt(a) z|^2 / (2 (1 - a)), then the weighted mean.
    Pure noise (a = 0): the plain mean of all; a clear input (a near 1): the clip itself. The
    two computations differ (float64 differences vs float32 distances): tolerance 1e-5."""
    from attnlab.models.training import reference_target

    g = torch.Generator().manual_seed(0)
    lat, refs = torch.randn(3, 2, 4, 3, 3, generator=g), torch.randn(3, 5, 2, 4, 3, 3, generator=g)
    noise = torch.randn(3, 2, 4, 3, 3, generator=g)
    alpha = torch.tensor([0.0, 0.004, 0.999])
    got = reference_target(lat, refs, alpha, noise)
    for i, a in enumerate(alpha.tolist()):
        xt = a**0.5 * lat[i] + (1 - a) ** 0.5 * noise[i]
        cands = torch.cat([lat[i : i + 1], refs[i]])
        logp = torch.stack([-((xt - a**0.5 * z) ** 2).sum() / (2 * (1 - a)) for z in cands])
        want = (torch.softmax(logp, 0).view(-1, 1, 1, 1, 1) * cands).sum(0)
        assert torch.allclose(got[i], want, atol=1e-5), i
    assert torch.allclose(got[0], torch.cat([lat[:1], refs[0]]).mean(0), atol=1e-6)
    assert torch.allclose(got[2], lat[2], atol=1e-6)
    w = torch.softmax(torch.tensor([0.0]), 0)  # (one candidate: the clip, whatever the noise)
    assert torch.allclose(reference_target(lat, refs[:, :0], alpha, noise), lat * w)


def test_sampler_target_is_the_posterior_mean_of_the_references_given_any_input():
    """Against a direct computation: softmax over the references of
    -|x_t - sqrt(a) z|^2 / (2 (1 - a)) for an arbitrary input x_t (not a noised clip), then the
    weighted mean; pure noise (a = 0) gives the references' plain mean, and an input that is
    one reference, nearly clean, gives that reference. float64 vs float32: tolerance 1e-5."""
    from attnlab.models.training import sampler_target

    g = torch.Generator().manual_seed(1)
    refs = torch.randn(3, 6, 2, 4, 3, 3, generator=g)
    x_t = torch.randn(3, 2, 4, 3, 3, generator=g)
    alpha = torch.tensor([0.0, 0.01, 0.999])
    x_t[2] = 0.999**0.5 * refs[2, 4] + 0.001**0.5 * x_t[2]
    got = sampler_target(x_t, refs, alpha)
    for i, a in enumerate(alpha.tolist()):
        logp = torch.stack([-((x_t[i] - a**0.5 * z) ** 2).sum() / (2 * (1 - a)) for z in refs[i]])
        want = (torch.softmax(logp, 0).view(-1, 1, 1, 1, 1) * refs[i]).sum(0)
        assert torch.allclose(got[i], want, atol=1e-5), i
    assert torch.allclose(got[0], refs[0].mean(0), atol=1e-6)
    assert torch.allclose(got[2], refs[2, 4], atol=1e-5)


def test_self_inputs_are_the_pipelines_own_sampler_states_with_the_posterior_as_target(tmp_path):
    """``self_inputs``: the selected pairs' inputs are exactly the latents diffusers' own
    sampling loop (the organism pipeline, the EMA weights, its default guidance and 25 trailing
    DDIM steps, started from the pair's noise) holds after 1..self_depth steps, at that step's
    timestep, and their target is :func:`sampler_target` of those states; the rest of the batch
    is left as it was. A pair shares its start and depth. Two computations of the same states
    (batch of 2 vs 4 through the UNet): tolerance 1e-4. Refused without the zero-terminal-SNR
    schedule or references."""
    import copy

    from attnlab.models import training as T
    from attnlab.models.organisms import build_pipeline, organism_scheduler

    spec = OrganismSpec(block_out_channels=(16, 16, 32, 32), latent_channels=8, text_adapter_dim=8)
    codec = T.fit_codec(spec, torch.rand(8, 3, 32, 32) * 2 - 1)
    text = text_encoder_and_tokenizer()
    cfg = T.TrainConfig(
        frame_pe="rope", batch=4, seed=2, spec=spec, zero_terminal_snr=True, min_snr=None,
        reference_clips=3, self_inputs=0.5, self_depth=3,
    )  # fmt: skip
    tr = T.Trainer(cfg, codec, tmp_path / "s.pt", text=text)
    caps = ["a red circle moving to the left on a black background"]
    caps += ["a red circle moving to the right on a black background", "", ""]
    g = torch.Generator().manual_seed(0)
    lat, noise = torch.randn(4, 8, 16, 8, 8, generator=g), torch.randn(4, 8, 16, 8, 8, generator=g)
    noise[1::2] = noise[0::2]
    t, x0 = torch.tensor([500, 500, 700, 700]), torch.randn(4, 8, 16, 8, 8, generator=g)
    refs, emb = tr._references(caps, 16), tr.text(caps)
    for seed in range(20):  # a draw that selects one pair and not the other
        tr.gen.manual_seed(seed)
        sel = torch.rand(4, generator=tr.gen) < cfg.self_inputs
        if sel[0] != sel[2]:
            break
    tr.gen.manual_seed(seed)
    new_lat, new_noise, new_t, new_x0 = tr._sampler_inputs(lat, noise, t, x0, emb, refs)
    on = [0, 1] if sel[0] else [2, 3]
    off = [i for i in range(4) if i not in on]
    for got, was in ((new_lat, lat), (new_noise, noise), (new_t, t), (new_x0, x0)):
        assert torch.equal(got[off], was[off])
    sched = organism_scheduler(True)
    sched.set_timesteps(25)
    steps = sched.timesteps.tolist()
    assert new_t[on[0]] == new_t[on[1]] and steps.index(int(new_t[on[0]])) in (1, 2, 3)
    a = tr.alphas[new_t].view(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * new_lat + (1 - a).sqrt() * new_noise
    states: list[torch.Tensor] = []
    pipe = build_pipeline(copy.deepcopy(tr.ema), codec, text, sched)
    pipe.set_progress_bar_config(disable=True)
    pipe(
        [caps[i] for i in on], latents=noise[on].clone(), output_type="latent",
        callback=lambda i, step, latents: states.append(latents.clone()),
    )  # fmt: skip
    depth = steps.index(int(new_t[on[0]]))
    assert torch.allclose(x_t[on], states[depth - 1], atol=1e-4)
    assert not torch.allclose(x_t[on], noise[on], atol=1e-2)  # (the steps moved it)
    want = T.sampler_target(x_t[on], refs[on], tr.alphas[new_t[on]])
    assert torch.allclose(new_lat[on], want, atol=1e-5) and torch.equal(new_x0[on], new_lat[on])
    for bad in ({"zero_terminal_snr": False}, {"reference_clips": 0}, {"self_depth": 25}):
        with pytest.raises(ValueError, match="self_inputs"):
            T.Trainer(dataclasses.replace(cfg, **bad), codec, tmp_path / "x.pt", text=text)


def test_v_loss_regresses_on_the_given_estimate_of_the_clip():
    """With ``x0`` the v target is (sqrt(a) x_t - x0) / sqrt(1 - a): at a = 0 (pure noise,
    zero terminal SNR) that is -x0 whatever the clip; with the clip itself as the estimate it is
    the plain target (float rounding apart: tolerance 1e-5)."""
    from types import SimpleNamespace

    from attnlab.models.training import v_loss

    class Zero(torch.nn.Module):
        def forward(self, x, tt, emb):
            return SimpleNamespace(sample=torch.zeros_like(x))

    torch.manual_seed(0)
    alphas = torch.linspace(0.99, 0.0, 1000)
    lat, noise, est = (torch.randn(2, 4, 3, 2, 2) for _ in range(3))
    t = torch.tensor([100, 999])
    plain = v_loss(Zero(), alphas, lat, None, t, noise, None)
    assert torch.allclose(v_loss(Zero(), alphas, lat, None, t, noise, None, lat), plain, atol=1e-5)
    got = v_loss(Zero(), alphas, lat, None, t, noise, None, est)
    assert torch.allclose(got[1], (est[1] ** 2).mean(), atol=1e-6)  # target -est at t = 999
    assert not torch.allclose(got[1], plain[1], atol=1e-3)


def test_reference_clips_are_clips_of_each_caption_and_change_the_noisy_end_target(
    tmp_path, monkeypatch
):
    """``reference_clips``: each training clip gets that many fresh clips of its own caption (of
    the training mix for the empty caption) and the v target at the pure-noise end becomes
    their mean with the clip; 0 (the default) leaves the step as it was; negative is refused."""
    from attnlab.models import training as T

    spec = OrganismSpec(block_out_channels=(16, 16, 32, 32), latent_channels=8, text_adapter_dim=8)
    codec = T.fit_codec(spec, torch.rand(8, 3, 32, 32) * 2 - 1)
    text = text_encoder_and_tokenizer()
    drawn: list[str] = []
    render = T.render
    monkeypatch.setattr(
        T, "render", lambda sc, *r, **k: drawn.append(sc.caption) or render(sc, *r, **k)
    )
    cfg = T.TrainConfig(frame_pe="none", batch=2, seed=1, spec=spec, reference_clips=3)
    tr = T.Trainer(cfg, codec, tmp_path / "r.pt", text=text)
    cap = "a red circle moving up on a black background"
    drawn.clear()
    z = tr._references([cap, ""], 16)
    assert z.shape == (2, 3, 8, 16, 8, 8)
    assert drawn[:3] == [cap] * 3 and len(drawn) == 6
    seen: list[tuple] = []
    v_loss = T.v_loss
    monkeypatch.setattr(T, "v_loss", lambda *r: seen.append(r) or v_loss(*r))
    for k, name in ((3, "with"), (0, "without")):
        c = T.TrainConfig(frame_pe="none", batch=2, seed=1, spec=spec, reference_clips=k)
        c.noisy_share, c.noisy_min = 1.0, 999  # pure noise: the estimate is the mean of 4 clips
        T.Trainer(c, codec, tmp_path / f"{name}.pt", text=text).run(1, log=None)
    (lat, t, x0), plain = (seen[0][i] for i in (2, 4, 7)), seen[1]
    assert t.tolist() == [999, 999] and plain[7] is None
    assert not torch.allclose(x0, lat, atol=1e-3)  # a mean of four clips, not the clip
    assert torch.allclose(plain[2], lat)  # (same data either way: references drawn after it)
    with pytest.raises(ValueError, match="reference_clips"):
        T.Trainer(T.TrainConfig(spec=spec, reference_clips=-1), codec, tmp_path / "x.pt", text=text)


def test_an_organism_samples_with_the_schedule_it_was_trained_with(tmp_path, monkeypatch):
    """``save_organism(..., scheduler=)`` stores the training schedule beside the weights and
    ``organism_path`` builds the pipeline with it (here the zero-terminal-SNR one); weights
    saved without one (as the session-4 organisms were) get the default schedule, and
    re-exporting without one removes a stale schedule."""
    import shutil

    from attnlab.models import organisms as O
    from attnlab.models.training import save_organism

    shutil.copytree(WEIGHTS / "codec", tmp_path / "w" / "codec")
    monkeypatch.setattr(O, "WEIGHTS", tmp_path / "w")
    unet = _tiny_unet()
    out = save_organism(unet, {"steps": 0}, tmp_path / "w", scheduler=O.organism_scheduler(True))
    pipe = O.OrganismPipeline.from_pretrained(organism_path("organism-rope", tmp_path / "zt"))
    cfg = pipe.scheduler.config
    assert cfg.rescale_betas_zero_snr and cfg.timestep_spacing == "trailing"
    pipe.scheduler.set_timesteps(25)
    assert (
        int(pipe.scheduler.timesteps[0]) == 999 and float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
    )
    save_organism(unet, {"steps": 0}, tmp_path / "w")
    assert not (out / "scheduler").exists()
    plain = O.OrganismPipeline.from_pretrained(organism_path("organism-rope", tmp_path / "plain"))
    assert not plain.scheduler.config.rescale_betas_zero_snr
    assert plain.scheduler.config.timestep_spacing == O.organism_scheduler().config.timestep_spacing


def _tiny_unet(**kw) -> OrganismUNet:
    spec = OrganismSpec(block_out_channels=(16, 16, 32, 32), latent_channels=8, text_adapter_dim=8)
    torch.manual_seed(0)
    return OrganismUNet(**{**spec.unet_config("rope"), **kw}).eval()


def test_temporal_text_path_starts_as_identity_and_adds_the_pooled_caption():
    """``temporal_text=True`` loads weights made without it (only its own zero-initialised
    projections are missing) and is then bit-identical; once trained (here: random), a temporal
    block's input is its input without the path plus ``W mean_tokens(adapted text)``, computed
    independently here from the block's input and the text adapter."""
    from attnlab.models.organisms import TemporalText

    plain = _tiny_unet()
    path = _tiny_unet(temporal_text=True)
    missing, unexpected = path.load_state_dict(plain.state_dict(), strict=False)
    assert (
        unexpected == [] and missing and all(".attnlab_temporal_text.proj." in k for k in missing)
    )
    blocks = list(_temporal_blocks(path))
    assert len(missing) == 2 * len(blocks) and len(blocks) == len(list(_temporal_blocks(plain)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 4, 4, generator=g)
    emb = torch.randn(2, 24, 384, generator=g)
    t = torch.tensor([100, 900])
    with torch.no_grad():
        assert torch.equal(plain(x, t, emb).sample, path(x, t, emb).sample)

    # only the first temporal block's path trained: its input = plain input + the bias
    first = blocks[0].attnlab_temporal_text
    assert isinstance(first, TemporalText)
    with torch.no_grad():
        first.proj.weight.normal_(generator=g)
        first.proj.bias.normal_(generator=g)
    seen = {}

    def grab(key):
        def hook(module, args, kwargs):
            seen[key] = (args[0] if args else kwargs["hidden_states"]).clone()

        return hook

    # registered after the path's own pre-hook, so it sees the block's input with the bias
    hooks = [
        next(_temporal_blocks(plain)).register_forward_pre_hook(grab("plain"), with_kwargs=True),
        blocks[0].register_forward_pre_hook(grab("path"), with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            plain(x, t, emb)
            out = path(x, t, emb).sample
    finally:
        for h in hooks:
            h.remove()
    pooled = plain.text_adapter(emb).mean(1)  # [2, 384]
    bias = pooled @ first.proj.weight.T + first.proj.bias  # [2, dim]
    rows = seen["plain"].shape[0] // 2  # batch-major rows: sample b owns rows b*h*w ...
    want = seen["plain"] + bias.repeat_interleave(rows, 0)[:, None, :]
    assert torch.allclose(seen["path"], want, atol=1e-5)
    assert (out - plain(x, t, emb).sample).abs().max() > 1e-3
    assert first.context is None  # set only during the forward call
    with pytest.raises(RuntimeError, match=r"outside OrganismUNet\.forward"):
        first(seen["plain"])


def test_temporal_text_keeps_the_organism_sites_and_recording(organisms):
    """A committed organism given the caption path (here with random projections) has the same
    attention sites, and attnlab's explicit recording path reproduces its output."""
    pipe = organisms["organism-rope"]
    unet = OrganismUNet(**{**pipe.unet.config, "temporal_text": True})
    unet.load_state_dict(pipe.unet.state_dict(), strict=False)
    torch.manual_seed(0)
    for block in _temporal_blocks(unet):
        torch.nn.init.normal_(block.attnlab_temporal_text.proj.weight, std=0.05)
    unet.eval()
    from attnlab.models.organisms import build_pipeline

    other = build_pipeline(unet, pipe.vae, (pipe.text_encoder, pipe.tokenizer))
    before = [(s.name, s.pe, s.h) for s in attnlab.sites(pipe, height=32, width=32)]
    assert [(s.name, s.pe, s.h) for s in attnlab.sites(other, height=32, width=32)] == before
    prompt = "a blue square moving up on a gray background"
    plain = generate(other, prompt, frames=8, steps=2)
    assert (plain - generate(pipe, prompt, frames=8, steps=2)).abs().max() > 1e-3
    with attnlab.record(other, levels=[0]) as rec:
        recorded = generate(other, prompt, frames=8, steps=2)
    assert (recorded - plain).abs().max() < 1e-4
    assert rec.to_xarray()["probs"].sizes["query_frame"] == 8


def test_flip_probe_reports_each_timestep_and_their_mean():
    """The probe's losses per timestep are the v-loss (computed here from the formula) of the
    fixed noised clips under each caption; the top-level numbers are their means, and ``gap``
    is (swapped - true) / (empty - true) at each timestep and for the means. A stand-in model
    whose output scales with a caption-dependent number makes the three captions differ."""
    from types import SimpleNamespace

    from attnlab.data.world import DIRECTIONS, render, sample_scene
    from attnlab.models.training import PROBE_TIMESTEPS, flip_probe

    codec = PatchCodec(patch=4, latent_channels=8).fit(torch.rand(8, 3, 32, 32) * 2 - 1)
    alphas = torch.linspace(0.999, 0.005, 1000)

    def scale_of(caption: str) -> float:
        return 0.0 if not caption else (0.3 if " up " in caption or "right" in caption else 0.6)

    def text(captions):
        return torch.tensor([scale_of(c) for c in captions]).view(-1, 1, 1).expand(-1, 2, 4)

    class Stand(torch.nn.Module):
        def forward(self, x, t, emb):
            return SimpleNamespace(sample=x * emb[:, 0, 0].view(-1, 1, 1, 1, 1))

    ts = (200, 900)
    out = flip_probe(Stand(), codec, text, alphas, clips=3, seed=5, timesteps=ts)
    assert set(out["by_t"]) == set(ts)
    rng = np.random.default_rng(5)
    clips = [render(sample_scene(rng, DIRECTIONS), 16, 32) for _ in range(3)]
    lat = codec.encode(torch.cat([c.video for c in clips])).latent_dist.mode()
    lat = lat.unflatten(0, (3, 16)).transpose(1, 2)
    gen = torch.Generator().manual_seed(5)
    noises = [torch.randn(lat.shape, generator=gen) for _ in ts]
    swap = {"right": "left", "left": "right", "up": "down", "down": "up"}
    for name, caps in (
        ("true", [c.caption for c in clips]),
        ("swapped", [c.caption.replace(c.scene.motion, swap[c.scene.motion]) for c in clips]),
        ("empty", [""] * 3),
    ):
        s = torch.tensor([scale_of(c) for c in caps]).view(-1, 1, 1, 1, 1)
        for t, noise in zip(ts, noises):
            a = alphas[t]
            x = a.sqrt() * lat + (1 - a).sqrt() * noise
            want = ((x * s - (a.sqrt() * noise - (1 - a).sqrt() * lat)) ** 2).mean()
            assert out["by_t"][t][name] == pytest.approx(want.item(), rel=1e-5)
        assert out[name] == pytest.approx(np.mean([out["by_t"][t][name] for t in ts]), rel=1e-9)
    defined = 0
    for d in (out, *out["by_t"].values()):
        if d["empty"] > d["true"]:
            assert d["gap"] == pytest.approx((d["swapped"] - d["true"]) / (d["empty"] - d["true"]))
            assert abs(d["gap"]) > 0.01  # the stand-in model does use the direction word
            defined += 1
        else:  # the caption does not help at all: no share to speak of
            assert np.isnan(d["gap"])
    assert defined >= 1
    assert PROBE_TIMESTEPS == (300, 500, 700)  # the default, as logged in training.json


def test_zero_terminal_snr_schedule_is_lin_et_al_rescaling_and_default_is_unchanged():
    """Default: ModelScope's scaled-linear schedule (computed here from its formula), sampling
    from t = 961 (leading spacing). ``zero_terminal_snr``: sqrt(alpha_bar) shifted and scaled so
    the first step keeps its value and the last is 0 (Lin et al. 2024, Algorithm 1), sampling
    from t = 999 (trailing spacing)."""
    from attnlab.models.organisms import organism_scheduler

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    plain, zero = organism_scheduler(), organism_scheduler(zero_terminal_snr=True)
    assert torch.allclose(plain.alphas_cumprod.double(), sqrt_ab**2, atol=1e-6)
    want = (sqrt_ab - sqrt_ab[-1]) * sqrt_ab[0] / (sqrt_ab[0] - sqrt_ab[-1])
    assert torch.allclose(zero.alphas_cumprod.double(), want**2, atol=1e-6)
    assert zero.alphas_cumprod[-1] == 0 and plain.alphas_cumprod[-1] > 0.004
    plain.set_timesteps(25)
    zero.set_timesteps(25)
    assert plain.timesteps[0] == 961 and zero.timesteps[0] == 999 and len(zero.timesteps) == 25


def test_a_saved_organism_folder_loads_by_path_with_its_own_scheduler(tmp_path):
    """A fine-tuned organism saved as a complete folder (as ``train_organisms.py --finetune
    --save`` writes it) loads with ``load_pipeline(folder)``, with its zero-terminal-SNR
    scheduler; attnlab leaves diffusers' namespace alone."""
    import diffusers

    from attnlab.models.organisms import build_pipeline, organism_scheduler

    unet = _tiny_unet(temporal_text=True)
    codec = PatchCodec(patch=4, latent_channels=8).fit(torch.rand(4, 3, 32, 32) * 2 - 1)
    text = text_encoder_and_tokenizer()
    build_pipeline(unet, codec, text, organism_scheduler(True)).save_pretrained(tmp_path / "p")
    pipe = load_pipeline(tmp_path / "p", progress=False)
    assert not hasattr(diffusers, "OrganismPipeline")
    assert type(pipe).__name__ == "OrganismPipeline" and pipe.unet.config.temporal_text
    assert pipe.scheduler.config.rescale_betas_zero_snr
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), unet.parameters()))


def test_world_batch_motion_curriculum_and_refusals():
    from attnlab.data.world import DIRECTIONS, parse_caption
    from attnlab.models.training import world_batch

    videos, caps = world_batch(
        np.random.default_rng(0), 12, motions=DIRECTIONS, motion_weights=None
    )
    assert videos.shape[:2] == (12, 16)
    motions = [parse_caption(c)["motion"] for c in caps]
    assert set(motions) <= set(DIRECTIONS) and len(set(motions)) >= 3
    with pytest.raises(ValueError, match="allowed"):
        world_batch(np.random.default_rng(0), 2, motions=("sideways",), motion_weights=None)
    with pytest.raises(ValueError, match="motion_weights"):
        world_batch(np.random.default_rng(0), 2, motions=DIRECTIONS)  # 7 default weights


def test_train_organisms_refuses_finetune_only_options_and_records_the_learning_rate(
    tmp_path, capsys
):
    """``--batch``, ``--motions`` and ``--temporal-text`` would change a run's phases behind its
    record, so they are refused outside ``--finetune``; ``--lr`` applies to the video phases and
    goes into the recorded command when it is not the recipe's."""
    import runpy
    from pathlib import Path

    script = Path(attnlab.__file__).parents[1] / "analyses" / "train_organisms.py"
    mod = runpy.run_path(str(script), run_name="train_organisms")
    for opts in (["--batch", "8"], ["--motions", "directions"], ["--temporal-text"]):
        with pytest.raises(SystemExit):
            mod["main"](["--worker", "--run", str(tmp_path), *opts])
        err = capsys.readouterr().err
        assert f"{opts[0]}: only with --finetune" in err
    assert not (tmp_path / "none").exists()  # refused before anything was trained
    video = {"phase": "video", "zero_terminal_snr": True}
    assert mod["_options"](video) == " --zero-terminal-snr"
    assert mod["_options"]({**video, "lr": 3e-4}) == " --zero-terminal-snr --lr 0.0003"
    assert mod["_options"]({"phase": "image", "lr": 3e-4}) == ""  # (the image phase's own)


def test_export_takes_each_checkpoints_last_stage_and_refuses_disagreeing_options(tmp_path):
    """``train_organisms.py --export`` writes a checkpoint's weights with the options of its
    last stage (a curriculum recorded once, no spurious stage, the zero-terminal-SNR scheduler it
    was trained with although the command line does not say so) and refuses, before writing
    anything, an option that disagrees with the checkpoint."""
    import runpy
    from pathlib import Path

    from attnlab.models.training import TrainConfig, Trainer, checkpoint_config, fit_codec

    spec = OrganismSpec(block_out_channels=(16, 16, 32, 32), latent_channels=8, text_adapter_dim=8)
    codec = fit_codec(spec, torch.rand(8, 3, 32, 32) * 2 - 1)
    codec.save_pretrained(tmp_path / "out" / "codec")
    run, text = tmp_path / "run", text_encoder_and_tokenizer()
    (run / "image").mkdir(parents=True)
    image = {"steps": 0, "wall_s": 0.0, "config": {"phase": "image"}}
    (run / "image" / "record.json").write_text(json.dumps(image))
    first = TrainConfig(frame_pe="rope", steps=1, batch=2, spec=spec, zero_terminal_snr=True)
    Trainer(first, codec, run / "rope" / "ckpt.pt", text=text).run(1, log=None)
    second = dataclasses.replace(first, steps=2, noisy_share=0.5, noisy_min=900)
    Trainer(second, codec, run / "rope" / "ckpt.pt", text=text).run(2, log=None)
    assert checkpoint_config(run / "rope" / "ckpt.pt") == second

    script = Path(attnlab.__file__).parents[1] / "analyses" / "train_organisms.py"
    main = runpy.run_path(str(script), run_name="train_organisms")["main"]
    common = ["--export", "--variant", "rope", "--run", str(run), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        main([*common, "--noisy-share", "1"])
    assert not (tmp_path / "out" / "organism-rope").exists()  # refused before writing
    assert main(common) == 0
    rec = json.loads((tmp_path / "out" / "organism-rope" / "training.json").read_text())
    assert rec["steps"] == 2 and rec["config"]["noisy_share"] == 0.5
    assert rec["stages"] == [{"from_step": 1, "changed": {"noisy_share": 0.5, "noisy_min": 900}}]
    assert "--zero-terminal-snr --noisy-share 0.5 --noisy-min 900" in rec["command"]
    sched = json.loads(
        (tmp_path / "out" / "organism-rope" / "scheduler" / "scheduler_config.json").read_text()
    )
    assert sched["rescale_betas_zero_snr"] and sched["timestep_spacing"] == "trailing"
