"""Analyses: experiments run into stores, skip stored work, and figures redraw from stores only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnlab.core import dims as D
from attnlab.lab.experiments import (
    Context,
    draw_all,
    frame_change,
    run_experiment,
    stored_frames,
)
from attnlab.tools.cli import main


def _ctx(tmp_path, tiny_dirs, **kw):
    return Context(
        model=str(tiny_dirs["tiny-modelscope"]),
        data=tmp_path / "data",
        figures=tmp_path / "fig",
        frames=(6, 8),
        steps=2,
        reference=kw.pop("reference", "carphone"),
        **kw,
    )


def test_maps_experiment_runs_once_then_skips_everything(tmp_path, tiny_dirs, samples):
    ctx = _ctx(tmp_path, tiny_dirs)
    assert stored_frames(ctx) is None  # no store yet
    paths = run_experiment("maps", ctx)
    # `attnlab figures` without --frames draws with the lengths the stores were run with
    assert stored_frames(Context(model=ctx.model, data=ctx.data)) == (6, 8)
    assert {p.name for p in paths} >= {
        "fig3_attention_maps.png",
        "fig3_attention_maps.pdf",
        "band_profile.png",
        "fig3_metrics.json",
    }
    rows = json.loads((ctx.figure("fig3_metrics.json")).read_text())
    assert {r["run"] for r in rows} == {
        "real-f6",
        "synthetic-f6",
        "tar-f6",
        "real-f8",
        "synthetic-f8",
        "tar-f8",
    }
    tar, plain = (next(r for r in rows if r["run"] == k) for k in ("tar-f8", "synthetic-f8"))
    assert tar["band_concentration_k1"] > plain["band_concentration_k1"]
    # second run: every job is stored, so the model is never even loaded
    again = Context(**{**ctx.__dict__, "_pipes": {}})
    logs = []
    again.log = logs.append
    run_experiment("maps", again, draw=False)
    assert again._pipes == {}
    assert sum("skipped" in line for line in logs) == 6
    # a re-run with other settings into the same folder is refused, naming what differs
    # (before, it reused the runs made with the old settings in the new figures)
    other = Context(**{**ctx.__dict__, "_pipes": {}, "steps": 3})
    with pytest.raises(ValueError, match=r"holds run 'real-f6' made with other settings: steps 2"):
        run_experiment("maps", other, draw=False)
    assert other._pipes == {}
    # guidance is one of a generated run's settings (a clip's runs have none)
    own = Context(**{**ctx.__dict__, "_pipes": {}, "guidance": None})
    with pytest.raises(
        ValueError,
        match=r"'synthetic-f6' made with other settings: guidance 7.5 \(now \"the model's",
    ):
        run_experiment("maps", own, draw=False)


def test_a_run_stored_before_guidance_was_a_setting_was_made_at_the_default():
    from attnlab.lab.experiments import GUIDANCE, _generation_fingerprint, _setting_differences

    now = json.loads(_generation_fingerprint(Context(model="m"), "m", frames=8, edits=[]))
    assert now["guidance"] == GUIDANCE == 7.5
    before = json.dumps({k: v for k, v in now.items() if k != "guidance"})
    assert _setting_differences(before, json.dumps(now)) == ""  # made at 7.5: reused
    other = json.dumps({**now, "guidance": "the model's default"})
    assert _setting_differences(before, other) == 'guidance 7.5 (now "the model\'s default")'
    # a real clip's runs have no guidance: their fingerprints are as before
    real = json.dumps({"model": "m", "clip": "cup", "timesteps": [600]})
    assert _setting_differences(real, real) == ""


@pytest.mark.slow
def test_figures_redraw_from_stores_without_a_model(tmp_path, tiny_dirs, samples, monkeypatch):
    ctx = _ctx(tmp_path, tiny_dirs)
    run_experiment("probes", ctx, draw=False)
    assert stored_frames(ctx) == (6, 6)  # only the short length was run (no maps store)
    import attnlab.models

    def no_model(*a, **k):
        raise AssertionError("figures must not load a model")

    monkeypatch.setattr(attnlab.models, "load_pipeline", no_model)
    code = main(
        [
            "figures",
            "--all",
            "--model",
            ctx.model,
            "--data",
            str(ctx.data),
            "--out",
            str(ctx.figures),
        ]
    )
    assert code == 0
    png = ctx.figure("fig4_probes.png")
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.std() > 10
    dyn = json.loads(ctx.figure("fig4_dynamics.json").read_text())
    assert set(dyn) == {"baseline"} | {
        f"{k}-{ls}" for k in ("identity", "ones") for ls in ("0", "1", "2", "3", "0+1")
    }
    assert set(dyn["baseline"]) == {
        "flow_magnitude_mean", "dynamic_degree", "dynamic_pairs", "temporal_flickering"
    }  # fmt: skip
    # identity frees frames from each other, all-ones ties them: the paper's Fig. 4 direction
    # (J_N / N gives every frame the same temporal output at levels 0+1: frames change less)
    # VBench's flickering score is 1 - mean |frame difference| / 255: lower = more change.
    # (Optical flow on a random-weight model's noise-like frames says nothing about this.)
    flicker = {k: v["temporal_flickering"] for k, v in dyn.items()}
    assert flicker["identity-0+1"] < flicker["ones-0+1"]
    assert ctx.figure("fig4_dynamics.png").is_file()
    out = draw_all(ctx, ["maps"])
    assert out["maps"] == "no store (run the analysis first)"


def test_frame_change_golden():
    still = np.zeros((4, 2, 2, 3), np.uint8)
    assert frame_change(still) == 0.0
    flicker = np.stack([np.zeros((2, 2, 3)), np.full((2, 2, 3), 255)] * 2).astype(np.uint8)
    assert frame_change(flicker) == 1.0


def test_detail_measures_fine_structure_per_frame():
    from attnlab.lab.experiments import detail

    flat = np.full((3, 8, 8, 3), 128, np.uint8)
    assert detail(flat) == 0
    checker = np.zeros((3, 8, 8, 3), np.uint8)
    checker[:, ::2, ::2] = checker[:, 1::2, 1::2] = 255
    # 3x3 box blur of a checkerboard: 4/9 or 5/9 of full scale in the interior
    assert 0.4 < detail(checker) < 0.6


def test_models_experiment_puts_a_dit_beside_a_unet(tmp_path, tiny_dirs):
    """Fig. 10 with a full-3D attention DiT (tiny CogVideoX pipeline) beside a UNet: the DiT
    runs on its own frame grid (c_t k + 1 video frames), its maps are over latent frames, and
    both land in one figure with the PE kind as the row facet."""
    from attnlab.models.tiny_dit import cogvideox_pipeline

    unet = str(tiny_dirs["tiny-modelscope"])
    ctx = _ctx(tmp_path, tiny_dirs, models=(unet, "tiny-cogvideox"))
    ctx.frames = (4, 8)
    from attnlab.models import NAME_ATTR

    ctx._pipes["tiny-cogvideox"] = pipe = cogvideox_pipeline()
    setattr(pipe, NAME_ATTR, "tiny-cogvideox")  # as load_pipeline names what it loads
    paths = run_experiment("models", ctx)
    assert {"fig10_models.png", "fig10_metrics.json"} <= {p.name for p in paths}
    rows = json.loads(ctx.figure("fig10_metrics.json").read_text())
    dit = sorted((r["map_frames"], r["frames"]) for r in rows if r["model"] == "tiny-cogvideox")
    # 4, 8, 12 frames -> the 4x-compressing VAE's grid 5, 9, 13 -> 2, 3, 4 latent frames
    assert [m for m, _ in dit] == [2, 3, 4] and all(n > m for m, n in dit)  # n: decoded frames
    assert sorted((r["frames"], r["map_frames"]) for r in rows if r["model"] == unet) == [
        (4, 4), (8, 8), (12, 12)
    ]  # fmt: skip
    from attnlab import load

    # CogVideoX's text is in its attention sequence: its runs (with text mass) have a store
    # of their own; the UNet's have the plain layout
    unets, dits = load(ctx.store("models")), load(ctx.store("models-text"))
    for ds, model, pe in ((unets, unet, "none"), (dits, "tiny-cogvideox", "rope3d")):
        assert set(ds[D.MODEL].values) == {model} and set(ds[D.PE].values) == {pe}
    assert D.TEXT_MASS in dits and D.TEXT_MASS not in unets
    img = np.asarray(Image.open(ctx.figure("fig10_models.png")).convert("L"), dtype=float)
    assert img.std() > 10
