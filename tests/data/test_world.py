"""The procedural world (deterministic captioned clips with ground truth, continuing past 16
frames) and its evaluator (scores from pixels and caption only), checked against the ground
truth and against corruptions that must lower the right score."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.data.evaluator import read_frame, score_world_video, summarize
from attnlab.data.world import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    Scene,
    flip_direction,
    grammar,
    parse_caption,
    render,
    sample_scene,
    scene_for_caption,
    world_clip,
    world_video,
)
from attnlab.models.training import reverse_caption, world_batch

SEEDS = range(40)


def test_clips_are_deterministic_and_continue_past_16_frames():
    for seed in range(10):
        a, b = world_clip(seed), world_clip(seed)
        assert a.caption == b.caption
        assert np.array_equal(a.video.numpy(), b.video.numpy())
        long = world_clip(seed, frames=128)
        assert long.caption == a.caption
        # the first 16 frames of a long clip are the 16-frame clip (same formula per frame)
        assert np.allclose(long.video[:16].numpy(), a.video.numpy(), atol=1e-6)
        # the object stays whole inside the frame for 128 frames (bounces off the borders)
        r = long.truth.radius
        assert (long.truth.x - r >= -1e-6).all() and (long.truth.x + r <= 32 + 1e-6).all()
        assert (long.truth.y - r >= -1e-6).all() and (long.truth.y + r <= 32 + 1e-6).all()
    assert world_clip(0).caption != world_clip(1).caption or not np.array_equal(
        world_clip(0).video.numpy(), world_clip(1).video.numpy()
    )


def test_ground_truth_follows_the_caption():
    seen = set()
    for seed in range(80):
        clip = world_clip(seed, frames=16)
        w = parse_caption(clip.caption)
        t = clip.truth
        seen.add(w["motion"])
        if w["motion"] == "right":
            assert t.x[-1] - t.x[0] > 0.35 * 32 and np.ptp(t.y) < 0.01
        elif w["motion"] == "left":
            assert t.x[0] - t.x[-1] > 0.35 * 32
        elif w["motion"] == "down":
            assert t.y[-1] - t.y[0] > 0.35 * 32 and np.ptp(t.x) < 0.01
        elif w["motion"] == "up":
            assert t.y[0] - t.y[-1] > 0.35 * 32
        elif w["motion"] == "grow":
            assert t.area[-1] > 2 * t.area[0] and np.all(np.diff(t.radius) > 0)
        elif w["motion"] == "shrink":
            assert t.area[0] > 2 * t.area[-1] and np.all(np.diff(t.radius) < 0)
        else:
            assert np.allclose(t.color[0], COLORS[w["color"]])
            assert np.allclose(t.color[15], COLORS[w["color2"]])
        # the drawn background is the captioned one (a corner pixel, far from the object)
        corner = (clip.video[0, :, 0, 0].numpy() + 1) / 2
        assert np.allclose(corner, BACKGROUNDS[w["background"]], atol=0.02)
    assert seen == set(MOTIONS)
    # recolouring holds the new colour after the transition
    scene = Scene("circle", "red", "black", "recolor", 0.5, 0.5, 0.15, color2="blue")
    assert np.allclose(render(scene, 40).truth.color[16:], COLORS["blue"])


def test_caption_grammar_parses_flips_and_reverses():
    caps = grammar()
    assert len(caps) == len(set(caps)) == 3 * 2 * 5 * (6 + 4)
    for c in caps:
        w = parse_caption(c)
        scene = Scene(
            w["shape"], w["color"], w["background"], w["motion"], 0.5, 0.5, 0.1, 0.03, w["color2"]
        )
        assert scene.caption == c
    assert flip_direction("a red circle moving up on a black background") == (
        "a red circle moving down on a black background"
    )
    assert reverse_caption("a square turning from red to blue on a gray background") == (
        "a square turning from blue to red on a gray background"
    )
    for bad in ("a purple circle moving up on a black background", "a red triangle", ""):
        with pytest.raises(ValueError, match=r"caption|unknown"):
            parse_caption(bad)
    with pytest.raises(ValueError, match="allowed"):
        Scene("circle", "red", "black", "sideways", 0.5, 0.5, 0.1)


def test_world_clips_by_caption_or_seed_are_real_clips_for_the_experiments():
    """``world:<caption>`` renders a clip of that caption (its words, random geometry),
    ``world:<seed>`` the clip of the seed; ``load_clip`` reads both, at any length."""
    from attnlab.lab.real import load_clip

    for c in grammar()[::7]:
        scene = scene_for_caption(c, seed=3)
        assert scene.caption == c
        clip = render(scene, 16, 32)
        s = score_world_video(clip.frames01(), c)
        assert s.found_rate == 1.0 and s.color_ok, c
        if s.direction_ok is not None:
            assert s.direction_ok, c
    video = load_clip("world:a blue square moving up on a gray background", frames=48)
    assert video.frames.shape == (48, 64, 64, 3) and video.frames.dtype == np.uint8
    assert score_world_video(video.frames / 255.0, video.id[len("world:") :]).direction_ok
    by_seed = world_video("world:7", frames=16, size=32)
    want = (world_clip(7).frames01() * 255).round().astype(np.uint8)
    assert np.array_equal(by_seed.frames, want)
    later = load_clip("world:7", frames=8, start=4)
    assert np.array_equal(later.frames, world_video("world:7", frames=12).frames[4:])
    with pytest.raises(ValueError, match="not a caption of the world"):
        load_clip("world:a purple cat", frames=8)
    with pytest.raises(FileNotFoundError, match=r"world:<caption>"):
        load_clip("no-such-clip", frames=8)


def test_training_pairs_are_time_reversals_with_the_opposite_caption():
    videos, caps = world_batch(np.random.default_rng(0), 8)
    assert videos.shape == (8, 16, 3, 32, 32)
    for k in range(0, 8, 2):
        assert np.array_equal(videos[k + 1].numpy(), videos[k].flip(0).numpy())
        assert caps[k + 1] == reverse_caption(caps[k]) and caps[k + 1] != caps[k]
        # the reversed clip satisfies its own caption by the evaluator
        s = score_world_video(((videos[k + 1].permute(0, 2, 3, 1).numpy() + 1) / 2), caps[k + 1])
        assert s.motion_ok and s.color_ok


def test_evaluator_reads_world_frames_like_the_ground_truth():
    for seed in range(12):
        clip = world_clip(seed)
        frames = clip.frames01()
        for i in (0, 7, 15):
            r = read_frame(frames[i])
            if not r.found:  # only a mid-transition colour close to the background
                assert parse_caption(clip.caption)["motion"] == "recolor"
                continue
            assert abs(r.x - clip.truth.x[i]) < 0.6 and abs(r.y - clip.truth.y[i]) < 0.6
            # the thresholded region vs the soft opacity sum: at most the soft edge apart. The
            # edge is logistic with width 0.7 px: opacity > 0.1 reaches 0.7 ln 9 = 1.54 px out,
            # so at most 1.6 x the perimeter (8 r for a square, 2 pi r for a circle)
            per = (8 if clip.scene.shape == "square" else 2 * np.pi) * clip.truth.radius[i]
            assert abs(r.area - clip.truth.area[i]) < 1.6 * per + 4


def test_evaluator_scores_real_world_clips_near_perfect():
    scores = [score_world_video(world_clip(s).frames01(), world_clip(s).caption) for s in SEEDS]
    summary = summarize(scores)
    assert summary["found_frames"] > 0.97
    for key in ("color_acc", "shape_acc", "background_acc", "motion_acc", "direction_acc"):
        assert summary[key] == 1.0, key
    assert summary["coherence"] > 0.97
    assert 0.8 < summary["dynamics_ratio"] < 1.25
    long = [
        score_world_video(world_clip(s, 48).frames01(), world_clip(s, 48).caption) for s in range(8)
    ]
    assert summarize(long)["motion_acc"] == 1.0 and summarize(long)["coherence"] > 0.97


def _moving(n):
    rng = np.random.default_rng(5)
    out = []
    while len(out) < n:
        clip = render(sample_scene(rng, ("right", "left", "up", "down")), 16, 32)
        out.append((clip.frames01(), clip.caption))
    return out


def test_corruptions_lower_the_right_scores():
    clips = _moving(10)
    rng = np.random.default_rng(0)
    real = summarize([score_world_video(v, c) for v, c in clips])
    shuffled = summarize([score_world_video(v[rng.permutation(16)], c) for v, c in clips])
    frozen = summarize([score_world_video(np.repeat(v[:1], 16, 0), c) for v, c in clips])
    # removed object: every pixel set to the frame's background (its corner colour)
    removed = summarize(
        [score_world_video(np.broadcast_to(v[:, :1, :1], v.shape), c) for v, c in clips]
    )
    assert real["direction_acc"] == 1.0 and real["coherence"] > 0.97
    # shuffling breaks direction and makes the object jump around: dynamics far too high
    assert (
        shuffled["direction_acc"] <= 0.5 and shuffled["dynamics_ratio"] > 2 * real["dynamics_ratio"]
    )
    assert shuffled["coherence"] < real["coherence"]
    assert shuffled["color_acc"] == 1.0  # colour is not a temporal property
    # freezing stops the motion: no direction, no dynamics, still a coherent coloured object
    assert frozen["direction_acc"] == 0.0 and frozen["dynamics_ratio"] == 0.0
    assert frozen["color_acc"] == 1.0
    # removing the object: nothing found, no colour, no coherence
    assert removed["found_frames"] == 0.0 and removed["color_acc"] == 0.0
    assert removed["coherence"] < 0.3
    # removing it from every other frame: flicker lowers coherence, colour stays right
    half = [(v.copy(), c) for v, c in clips]
    for v, _ in half:
        v[1::2] = v[1::2, :1, :1]
    flicker = summarize([score_world_video(v, c) for v, c in half])
    assert flicker["found_frames"] == pytest.approx(0.5) and flicker["color_acc"] == 1.0
    assert flicker["coherence"] < real["coherence"] - 0.2
