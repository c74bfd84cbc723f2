"""Video metrics (attnlab.lab.evaluation) against golden videos and independent computations.

Synthetic videos are exact translations of a smooth texture (a sum of sinusoids evaluated at
shifted coordinates), so the true motion is known to sub-pixel precision. CLIP-VL runs the
real open_clip loader on random weights written in open_clip's file layouts and is compared
with a forward pass written here from the state dict alone.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import attnlab
from attnlab.core import dims as D
from attnlab.data.metrics import band_concentration, diagonalness, map_distance
from attnlab.lab import evaluation as E
from attnlab.tools.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    for env in (E.CLIP_CHECKPOINT_ENV, E.CLIP_MODEL_ENV, E.RAFT_WEIGHTS_ENV):
        monkeypatch.delenv(env, raising=False)


def texture(h: int, w: int, shift: tuple[float, float], seed: int = 0, k: int = 24) -> np.ndarray:
    """uint8 (H, W, 3) smooth texture translated by ``shift`` = (dx, dy) pixels."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(k):
            lam, th, ph = rs.uniform(6, 48), rs.uniform(0, np.pi), rs.uniform(0, 2 * np.pi)
            kx, ky = math.cos(th) * 2 * math.pi / lam, math.sin(th) * 2 * math.pi / lam
            img[..., c] += np.cos(kx * (xx - shift[0]) + ky * (yy - shift[1]) + ph)
    return np.clip(127.5 + 50 * img / math.sqrt(k / 2), 0, 255).round().astype(np.uint8)


def translation(n: int, v: tuple[float, float], h: int = 64, w: int = 64) -> np.ndarray:
    return np.stack([texture(h, w, (v[0] * t, v[1] * t)) for t in range(n)])


# ---------------------------------------------------------------- golden videos


def test_static_video_has_no_dynamics_and_no_flicker():
    static = np.repeat(texture(64, 64, (0, 0))[None], 8, axis=0)
    ds = attnlab.evaluate(
        static,
        metrics=["dynamic_degree", "temporal_flickering", "motion_smoothness"],
        progress=False,
    ).isel(run=0)
    assert float(ds.dynamic_degree) == 0.0 and int(ds.dynamic_pairs) == 0
    # Farneback's noise floor on identical frames (measured <= 0.02 px on this texture)
    assert float(ds.flow_magnitude.max()) < 0.05
    assert float(ds.frame_difference.max()) == 0.0
    assert float(ds.temporal_flickering) == 1.0
    assert float(ds.motion_smoothness) > 0.999


@pytest.mark.parametrize("v", [(1.0, 0.0), (2.0, 1.0), (0.0, -3.0), (4.0, 4.0)])
def test_known_translation_gives_its_flow_magnitude(v):
    """Top-5 % flow magnitude of an exact translation = its speed, within 5 % + 0.05 px.

    The tolerance covers Farneback's error on this texture (measured: within 2 % for speeds
    up to 1/10 of the 64 px side; docs/evaluation.md has the calibration)."""
    speed = math.hypot(*v)
    ds = E.dynamic_degree(translation(6, v))
    assert ds.flow_magnitude.dims == (D.FRAME_PAIR,)
    np.testing.assert_allclose(ds.flow_magnitude.values, speed, rtol=0.05, atol=0.05)
    # VBench's threshold at a 64 px short side is 6 * 64 / 256 = 1.5 px; 6 frames need 2 pairs
    assert float(ds.dynamic_threshold) == 1.5 and int(ds.dynamic_count) == 2
    assert float(ds.dynamic_degree) == float(speed > 1.5)


def test_dynamic_degree_count_rule():
    """round(4 F / 16) pairs above the threshold make a video dynamic: 20 frames need 5."""
    still = texture(64, 64, (0, 0))

    def video(moving_pairs: int) -> np.ndarray:
        frames = [texture(64, 64, (3.0 * t, 0)) for t in range(moving_pairs + 1)]
        frames += [frames[-1]] * (20 - len(frames))
        return np.stack(frames)

    four, five = E.dynamic_degree(video(4)), E.dynamic_degree(video(5))
    assert int(four.dynamic_count) == int(five.dynamic_count) == 5
    assert int(four.dynamic_pairs) == 4 and float(four.dynamic_degree) == 0.0
    assert int(five.dynamic_pairs) == 5 and float(five.dynamic_degree) == 1.0
    assert still.shape == (64, 64, 3)


def test_flow_magnitude_is_the_mean_of_the_top_five_percent():
    flow = np.random.RandomState(1).randn(3, 20, 30, 2).astype(np.float32)
    got = E.flow_magnitude(flow)
    for p in range(3):  # VBench's loop: sort descending, mean of the first int(H W 0.05)
        rad = np.sqrt(flow[p, ..., 0] ** 2 + flow[p, ..., 1] ** 2).flatten()
        ref = np.mean(np.sort(rad)[::-1][: int(20 * 30 * 0.05)])
        assert got[p] == pytest.approx(ref, rel=1e-6)
    with pytest.raises(E.EvaluationError, match=r"\(P, H, W, 2\)"):
        E.flow_magnitude(flow[0])


def test_temporal_flickering_matches_vbench_loop():
    import cv2

    frames = np.random.RandomState(2).randint(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    ds = E.temporal_flickering(frames)
    maes = [
        np.mean(cv2.absdiff(frames[i].astype(np.float32), frames[i + 1].astype(np.float32)))
        for i in range(4)
    ]
    np.testing.assert_allclose(ds.frame_difference.values, maes, rtol=1e-6)
    assert float(ds.temporal_flickering) == pytest.approx((255 - np.mean(maes)) / 255, rel=1e-6)
    black_white = np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 255)] * 2).astype(np.uint8)
    assert float(E.temporal_flickering(black_white).temporal_flickering) == 0.0


def test_shuffled_frames_are_less_consistent_and_less_smooth():
    video = translation(12, (1.5, 0.5))
    shuffled = video[np.random.RandomState(0).permutation(12)]
    a = attnlab.evaluate(
        {"ordered": video, "shuffled": shuffled},
        metrics=["consistency", "motion_smoothness"],
        similarity="pixel",
        progress=False,
    )
    c, s = a.consistency.values, a.motion_smoothness.values
    assert c[0] > c[1] + 0.1 and s[0] > s[1] + 0.05
    assert s[0] > 0.99  # constant velocity: the linear-motion interpolation is near exact
    # neighbours are more alike than distant frames: the similarity-vs-interval curve falls
    prof = a.similarity_by_offset.sel(run="ordered").values
    assert prof[0] == pytest.approx(1.0) and prof[1] > prof[5] > prof[10]


def test_consistency_formula_against_a_loop():
    from attnlab.data.similarity import similarity_matrix

    video = translation(6, (2.0, 0.0))
    ds = E.consistency(video, "pixel")
    s = similarity_matrix(video, "pixel").values
    ref = np.mean([(max(0, s[i, i - 1]) + max(0, s[i, 0])) / 2 for i in range(1, 6)])
    assert float(ds.consistency) == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(ds.consistency_to_first.values, s[:, 0])
    assert np.isnan(ds.consistency_to_previous.values[0])
    np.testing.assert_allclose(ds.consistency_to_previous.values[1:], np.diagonal(s, -1))


def test_metrics_are_deterministic():
    video = translation(8, (2.0, 1.0))
    kw = dict(metrics=["dynamic_degree", "motion_smoothness", "temporal_flickering"])
    a = attnlab.evaluate(video, progress=False, **kw)
    b = attnlab.evaluate(video, progress=False, **kw)
    xr.testing.assert_identical(a, b)  # the same computation twice: bit-identical


def test_bad_inputs_give_one_clear_error():
    with pytest.raises(E.EvaluationError, match="unknown metrics"):
        attnlab.evaluate(np.zeros((2, 8, 8, 3), np.uint8), metrics=["dynamism"])
    with pytest.raises(E.EvaluationError, match="at least 2 frames"):
        E.temporal_flickering(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(E.EvaluationError, match="flow must be"):
        attnlab.evaluate(np.zeros((2, 8, 8, 3), np.uint8), flow="lk")
    with pytest.raises(E.EvaluationError, match="needs recorded runs"):
        attnlab.evaluate(np.zeros((2, 8, 8, 3), np.uint8), metrics=["attention"])


# ---------------------------------------------------------------- RAFT


def test_raft_needs_local_weights_and_matches_torchvision(tmp_path):
    from torchvision.models.optical_flow import raft_small

    video = translation(2, (2.0, 0.0), 128, 136)  # RAFT needs >= 128 px; 136 pads to 136
    with pytest.raises(E.RaftWeightsError, match="never downloads"):
        E.optical_flow(video, method="raft")
    with pytest.raises(E.RaftWeightsError, match="does not exist"):
        E.optical_flow(video, method="raft", raft_weights=tmp_path / "nope.pth")
    torch.manual_seed(0)
    ref_model = raft_small(weights=None, progress=False).eval()
    path = tmp_path / "raft_small_C_T_V2-01064c6d.pth"  # torchvision's file layout
    torch.save(ref_model.state_dict(), path)
    flow = E.optical_flow(video, method="raft", raft_weights=path, raft_updates=2)
    assert flow.shape == (1, 128, 136, 2)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ref = ref_model(x[:1], x[1:], num_flow_updates=2)[-1][0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(flow[0], ref, atol=1e-4)  # same weights, same input
    with pytest.raises(E.EvaluationError, match="at least 128"):
        E.optical_flow(translation(2, (1, 0)), method="raft", raft_weights=path)


# ---------------------------------------------------------------- CLIP-VL

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _manual_clip(sd: dict, images: torch.Tensor, tokens: torch.Tensor):
    """CLIP forward from the state dict alone (OpenAI/open_clip ViT and text transformer)."""
    f = torch.nn.functional

    def block(x, p, heads, mask=None):
        def ln(t, n):
            return f.layer_norm(t, t.shape[-1:], sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"])

        h = ln(x, "ln_1")
        q, k, v = (h @ sd[f"{p}attn.in_proj_weight"].T + sd[f"{p}attn.in_proj_bias"]).chunk(3, -1)
        b, n, w = q.shape
        q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
        if mask is not None:
            logits = logits + mask
        a = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
        x = x + a @ sd[f"{p}attn.out_proj.weight"].T + sd[f"{p}attn.out_proj.bias"]
        h = ln(x, "ln_2") @ sd[f"{p}mlp.c_fc.weight"].T + sd[f"{p}mlp.c_fc.bias"]
        return x + f.gelu(h) @ sd[f"{p}mlp.c_proj.weight"].T + sd[f"{p}mlp.c_proj.bias"]

    def ln(t, n):
        return f.layer_norm(t, t.shape[-1:], sd[f"{n}.weight"], sd[f"{n}.bias"])

    x = f.conv2d(images, sd["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(len(x), 1, -1)
    x = ln(torch.cat([cls, x], 1) + sd["visual.positional_embedding"], "visual.ln_pre")
    for i in range(2):
        x = block(x, f"visual.transformer.resblocks.{i}.", heads=2)
    img = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]
    t = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    causal = torch.full((77, 77), float("-inf")).triu(1)
    for i in range(2):
        t = block(t, f"transformer.resblocks.{i}.", heads=2, mask=causal)
    t = ln(t, "ln_final")[torch.arange(len(t)), tokens.argmax(-1)] @ sd["text_projection"]
    return f.normalize(img, dim=-1), f.normalize(t, dim=-1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Random tiny CLIP in open_clip's Hub layout (folder) and as a single weights file."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    folder = root / "tiny-clip"
    folder.mkdir()
    cfg = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    # a single weights file needs a named architecture: register the tiny one as open_clip does
    (root / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    single = root / "tiny.bin"
    torch.save(sd, single)
    return folder, single, sd


def test_clip_vl_on_random_weights_equals_an_independent_forward(tiny_clip):
    import open_clip

    folder, _, sd = tiny_clip
    frames = np.random.RandomState(3).randint(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    prompt = "a peony starts to bloom"
    ds = attnlab.evaluate(
        frames, prompt=prompt, metrics=["clip_vl"], clip_checkpoint=folder, progress=False
    ).isel(run=0)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).double() / 255 - mean) / std
    tokens = open_clip.tokenize([prompt])
    img, txt = _manual_clip({k: v.double() for k, v in sd.items()}, x, tokens)
    ref = (img @ txt.T)[:, 0].numpy()
    # float32 model vs float64 reference: agreement to 1e-4 on cosines in [-1, 1]
    np.testing.assert_allclose(ds.clip_vl_frame.values, ref, atol=1e-4)
    assert float(ds.clip_vl) == pytest.approx(ref.mean(), abs=1e-4)
    assert str(ds.prompt.values) == prompt


def test_clip_vl_single_file_layout_and_resizing(tiny_clip):
    folder, single, _ = tiny_clip
    frames = translation(3, (1.0, 0.0), 48, 64)  # shortest side -> 32, centre crop 32 x 32
    a = E.clip_vl(frames, "a texture", E.ClipScorer(single, "tiny-clip"))
    b = E.clip_vl(frames, "a texture", E.ClipScorer(folder))
    np.testing.assert_allclose(a.clip_vl_frame.values, b.clip_vl_frame.values, atol=1e-6)
    assert np.all(np.abs(a.clip_vl_frame.values) <= 1)


def test_clip_vl_without_weights_is_one_clear_error(tmp_path):
    video = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(E.ClipWeightsError, match="No package registry ships CLIP weights"):
        attnlab.evaluate(video, prompt="x", metrics=["clip_vl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(E.ClipWeightsError, match=r"open_clip_config\.json"):
        E.ClipScorer(tmp_path / "empty")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(E.ClipWeightsError, match="architecture"):
        E.ClipScorer(tmp_path / "w.bin")


def test_mtscore_is_a_hook_not_a_fake():
    video = translation(4, (1.0, 0.0), 16, 16)
    with pytest.raises(E.MTScoreUnavailableError, match="InternVideo2"):
        attnlab.evaluate(video, metrics=["mtscore"])
    seen = {}

    def scorer(frames, prompt):
        seen["shape"], seen["prompt"] = frames.shape, prompt
        return 0.5

    ds = attnlab.evaluate(video, "a clock", ["mtscore"], mtscore=scorer, progress=False).isel(run=0)
    assert float(ds.mtscore) == 0.5 and seen == {"shape": (4, 16, 16, 3), "prompt": "a clock"}


# ---------------------------------------------------------------- stores and the CLI


@pytest.fixture(scope="module")
def scored_store(tmp_path_factory, ms_pipe):
    from attnlab.core.store import save_video
    from tests.helpers import generate as gen

    store = tmp_path_factory.mktemp("store") / "runs.zarr"
    for name, edits in (("plain", ()), ("tar", (attnlab.TAR(sigma=1.0),))):
        with attnlab.record(ms_pipe, store=store, name=name):
            if edits:
                with attnlab.edit(ms_pipe, *edits):
                    video = gen(ms_pipe)
            else:
                video = gen(ms_pipe)
        save_video(store, name, video[0].permute(0, 2, 3, 1))
    save_video(store, "extra", translation(8, (2.0, 0.0)))  # a video without a run
    return store


def test_store_evaluation_is_written_beside_the_runs(scored_store, monkeypatch):
    ds = attnlab.evaluate(
        scored_store, metrics=["dynamic_degree", "temporal_flickering", "attention"],
        progress=False,
    )  # fmt: skip
    assert set(ds[D.RUN].values) == {"plain", "tar", "extra"}
    assert ds.flow_magnitude.dims == (D.RUN, D.FRAME_PAIR)
    # attention side, joined by run id; an independent reduction of the same maps
    runs = attnlab.load(scored_store)  # the store stays readable as before
    assert set(runs[D.RUN].values) == {"plain", "tar"}
    m = runs.probs.sel(run="tar", cfg="cond").mean(["step", "layer", "sample"])
    assert float(ds.attention_band_concentration.sel(run="tar")) == pytest.approx(
        float(band_concentration(m, k=1)), rel=1e-9
    )
    assert float(ds.attention_diagonalness.sel(run="tar")) == pytest.approx(
        float(diagonalness(m)), rel=1e-9
    )
    assert np.isnan(float(ds.attention_band_concentration.sel(run="extra")))
    assert "attention_distance_to_real" not in ds  # no real runs in this store
    # stored and read back
    back = attnlab.load_evaluation(scored_store)
    xr.testing.assert_allclose(
        back.flow_magnitude.sel(run=["plain", "tar", "extra"]),
        ds.flow_magnitude.sel(run=["plain", "tar", "extra"]),
    )
    # a second call reuses what is stored (same settings): no flow is computed
    monkeypatch.setattr(E.flow, "_farneback", lambda *a, **k: pytest.fail("recomputed"))
    again = attnlab.evaluate(scored_store, metrics=["dynamic_degree"], progress=False)
    np.testing.assert_array_equal(
        again.flow_magnitude.sel(run="tar").values, ds.flow_magnitude.sel(run="tar").values
    )
    # a stored video that changed is scored again
    monkeypatch.undo()
    from attnlab.core.store import save_video

    save_video(scored_store, "extra", translation(8, (0.0, 0.0)))
    moved = attnlab.evaluate(
        scored_store, metrics=["dynamic_degree"], runs=["extra"], progress=False
    )
    assert (
        float(moved.flow_magnitude_mean.sel(run="extra"))
        < 0.05
        < float(ds.flow_magnitude_mean.sel(run="extra"))
    )
    # a reference map: distance to it, as map_distance computes it
    ref = xr.DataArray(np.eye(8) * 0.6 + 0.05, dims=(D.QUERY, D.KEY))
    att = attnlab.evaluate(
        scored_store, metrics=["attention"], reference=ref, write=False, progress=False
    )
    assert float(att.attention_distance_to_real.sel(run="plain")) == pytest.approx(
        float(map_distance(runs.probs.sel(run="plain", cfg="cond").mean(["step", "layer", "sample"]), ref)),
        rel=1e-9,
    )  # fmt: skip


def test_cli_evaluate_store_and_video(scored_store, tmp_path, capsys):
    from attnlab.data.video import write_video

    code = main(["evaluate", str(scored_store), "--metrics", "temporal_flickering"])
    assert code == 0
    out = capsys.readouterr().out
    assert "temporal_flickering" in out and "plain" in out and "tar" in out
    path = write_video(translation(6, (3.0, 0.0)), tmp_path / "clip.gif", fps=8)
    code = main(["evaluate", str(path), "--metrics", "dynamic_degree", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["dynamic_degree"] == 1.0
    assert main(["evaluate", str(path), "--metrics", "clip_vl", "--prompt", "x"]) == 2
    assert "CLIP" in capsys.readouterr().err


# ---------------------------------------------------------------- the world scorer


def test_world_scorer_refuses_what_it_cannot_score():
    """A recolouring changes colour over TRANSITION (16) frames: a shorter clip cannot show its
    end colour (12 frames scored colour False while its frames 9-11 read blue, 14 passed on
    frame 13 alone); an empty video raised a bare ZeroDivisionError."""
    from attnlab.data import evaluator
    from attnlab.data.video import VideoError
    from attnlab.data.world import TRANSITION, render, scene_for_caption, world_clip

    caption = "a circle turning from red to blue on a black background"
    clip = render(scene_for_caption(caption), TRANSITION, 32)
    assert evaluator.score_world_video(clip.frames01(), caption).color_ok
    with pytest.raises(VideoError, match=f"needs at least {TRANSITION} frames, got 14"):
        evaluator.score_world_video(clip.frames01()[:14], caption)
    moving = world_clip(0)
    assert evaluator.score_world_video(moving.frames01()[:8], moving.caption).found_rate > 0
    for n in (0, 1):
        with pytest.raises(VideoError, match="at least 2 frames"):
            evaluator.score_world_video(moving.frames01()[:n], moving.caption)


def test_world_scorer_reads_every_frame_form_and_its_old_name_warns():
    from attnlab.data import evaluator
    from attnlab.data.world import world_clip

    clip = world_clip(0)
    want = evaluator.score_world_video(clip.frames01(), clip.caption)
    # the model-side tensor (F, 3, H, W) in [-1, 1] reads as the same frames
    assert evaluator.score_world_video(clip.video, clip.caption) == want
    # uint8 frames (rounded to 1/255) give the same verdicts
    u8 = evaluator.score_world_video(clip.to_video("clip").frames, clip.caption)
    for name in ("found_rate", "color_ok", "shape_ok", "background_ok", "motion_ok", "jumps"):
        assert getattr(u8, name) == getattr(want, name), name
    with pytest.raises(
        ValueError, match=r"must lie in \[0, 1\] or \[-1, 1\]; pass value_range=\(0, 255\)"
    ):
        evaluator.score_world_video(clip.frames01() * 255, clip.caption)
    with pytest.warns(
        FutureWarning, match=r"`evaluate` is deprecated .* 0\.3\.0\. Use .*score_world_video"
    ):
        assert evaluator.evaluate(clip.frames01(), clip.caption) == want


def test_a_world_clip_by_name_and_an_empty_metric_list(tmp_path):
    """``evaluate("world:0")`` scores the world clip at its default length; ``metrics=[]`` is
    refused as empty, not as "unknown metrics []"."""
    ds = E.evaluate("world:0", metrics=["temporal_flickering"], write=False, progress=False)
    assert ds.sizes["run"] == 1 and np.isfinite(ds["temporal_flickering"].values).all()
    with pytest.raises(E.EvaluationError, match="metrics is empty"):
        E.evaluate("world:0", metrics=[], write=False, progress=False)


# ---------------------------------------------------------------- stored results and reuse


def _tex(shift: int) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    field = 127 + 100 * np.sin((x - shift) / 3.0) * np.cos(y / 5.0)
    return np.repeat(field[..., None], 3, -1).astype(np.uint8)


def test_a_changed_video_keeps_none_of_its_old_scores(tmp_path):
    """Re-scored after its video changed (even to another frame count), a run's stored
    results are the new video's alone: the merge kept the old digest (so the old scores came
    back for the old video later) and the old video's other metrics, and crashed on a new length."""
    from attnlab.core.store import prepare_store, save_video
    from attnlab.lab.evaluation.results import _stored
    from attnlab.lab.evaluation.scoring import _digest
    from attnlab.lab.evaluation.vbench import dynamic_degree

    store = tmp_path / "s.zarr"
    prepare_store(store, {})
    still = np.stack([_tex(0)] * 8)
    moving = np.stack([_tex(4 * i) for i in range(8)])
    save_video(store, "v", still)
    attnlab.evaluate(store, metrics=["dynamic_degree", "temporal_flickering"], progress=False)
    save_video(store, "v", moving)
    attnlab.evaluate(store, metrics=["dynamic_degree"], progress=False)
    kept = _stored(store, "v")
    assert kept.attrs["frames_sha256"] == _digest(moving)
    assert "temporal_flickering" not in kept  # the still video's, not this one's
    save_video(store, "v", still)
    again = attnlab.evaluate(store, metrics=["dynamic_degree"], progress=False)
    want = float(dynamic_degree(still).flow_magnitude_mean)
    assert float(again.flow_magnitude_mean.sel(run="v")) == pytest.approx(want)
    save_video(store, "v", moving[:4])  # another length
    short = attnlab.evaluate(store, metrics=["dynamic_degree"], progress=False)
    assert short.sizes["frame_pair"] == 3


def test_reuse_needs_the_same_prompt_and_backend_settings(tmp_path):
    from attnlab.core.store import prepare_store, save_video
    from attnlab.data.similarity import PixelBackend
    from attnlab.lab.evaluation.vbench import consistency

    store = tmp_path / "s.zarr"
    prepare_store(store, {})
    video = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    save_video(store, "v", video)

    def scorer(frames, prompt):
        return float(len(prompt))

    for prompt in ("a cat", "a peony blooming"):
        got = attnlab.evaluate(
            store, prompt=prompt, metrics=["mtscore"], mtscore=scorer, progress=False
        )
        assert float(got.mtscore.sel(run="v")) == len(prompt)
    for size in (4, 64):
        backend = PixelBackend(size=size)
        got = attnlab.evaluate(store, metrics=["consistency"], similarity=backend, progress=False)
        want = float(consistency(video, PixelBackend(size=size)).consistency)
        assert float(got.consistency.sel(run="v")) == pytest.approx(want)


def test_the_real_reference_is_the_whole_stores_whichever_runs_are_scored(ms_pipe, tmp_path):
    """With runs=[...] the default reference was built from the selected runs alone: scoring
    the synthetic run only dropped its distance to the real one."""
    from tests.helpers import generate

    store = tmp_path / "att.zarr"
    with attnlab.record(ms_pipe, store=store, name="synth"):
        generate(ms_pipe)
    n = attnlab.load(store).sizes["query_frame"]
    attnlab.record_real(
        ms_pipe, "world:0", frames=n, timesteps=[400], store=store, name="real", progress=False
    )
    every = attnlab.evaluate(store, metrics=["attention"], write=False, progress=False)
    one = attnlab.evaluate(
        store, metrics=["attention"], runs=["synth"], write=False, progress=False
    )
    want = float(every.attention_distance_to_real.sel(run="synth"))
    assert float(one.attention_distance_to_real.sel(run="synth")) == pytest.approx(want)
