"""``attnlab demo``: its story end to end with small settings, and its pieces.

The end-to-end run uses the tiny model with 4/8 frames and 2 steps and leaves out the probes
(covered by test_analysis) and the cross-model experiment (run below on an organism, with the
sinusoidal table extended past 16 frames); the organisms' strips figure and the evaluator's
readings beside the figures are tested on their own, small.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnlab.lab.demo import STORY, run_demo
from attnlab.lab.experiments import Context, run_experiment
from attnlab.tools.cli import main

FIGURES = {
    "fig3_attention_maps.png", "band_profile.png", "fig4_probes.png", "fig8_transfer.png",
    "fig9_sigma.png", "figS1_similarity.png", "figS2_similarity_by_interval.png", "figS13_prior.png",
    "fig10_models.png", "fig4_dynamics.png", "fig9_dynamics.png", "fig10_dynamics.png",
}  # fmt: skip


@pytest.fixture
def cheap(monkeypatch):
    """The same code paths at a fraction of the cost: pixel similarity instead of ST-LPIPS
    (both tested in test_similarity) and figures saved as PNG at 60 dpi only (save_figure's
    formats and resolution are tested in test_plots)."""
    import attnlab.lab.experiments
    import attnlab.lab.plots

    monkeypatch.setattr(attnlab.lab.experiments, "SIMILARITY_BACKEND", "pixel")
    save = attnlab.lab.plots.save_figure
    monkeypatch.setattr(
        attnlab.lab.plots,
        "save_figure",
        lambda fig, path, *a, **k: save(fig, path, ("png",), dpi=60),
    )


@pytest.mark.slow
def test_demo_runs_its_story_offline(tmp_path, tiny_dirs, samples, capsys, cheap):
    ms = str(tiny_dirs["tiny-modelscope"])
    out = tmp_path / "demo"
    # every experiment but the probes (run and drawn by test_analysis's
    # test_figures_redraw_from_stores_without_a_model) and the cross-model one (run and drawn
    # below, on an organism): 17 generations fewer
    story = tuple(name for name in STORY if name not in ("probes", "models"))
    results = run_demo(out, model=ms, reference="carphone", frames=(4, 8), steps=2, story=story)
    text = capsys.readouterr().out
    assert "attnlab demo: what went where" in text
    assert "Redraw with: attnlab figures --all" in text and "--frames 4 8" in text
    assert set(results) == set(story)
    figs = {p.name for p in (out / "figures").rglob("*.png")}
    assert figs == FIGURES - {
        "fig4_probes.png", "fig4_dynamics.png", "fig10_models.png", "fig10_dynamics.png"
    }  # fmt: skip
    for p in (out / "figures").rglob("*.png"):  # every figure drew something
        assert np.asarray(Image.open(p).convert("L"), dtype=float).std() > 5, p.name
    for paths in results.values():  # every path the demo printed exists
        assert all(p.exists() for p in paths)
        assert all(str(p) in text for p in paths)
    # TAR concentrates the tiny model's attention on neighbouring frames (as in test_analysis)
    maps = {r["run"]: r for r in json.loads(next(out.rglob("fig3_metrics.json")).read_text())}
    assert set(maps) == {f"{k}-f{n}" for k in ("real", "synthetic", "tar") for n in (4, 8)}
    assert maps["tar-f8"]["band_concentration_k1"] > maps["synthetic-f8"]["band_concentration_k1"]


def test_demo_refuses_an_unknown_experiment(tmp_path):
    with pytest.raises(ValueError, match=r"unknown demo experiments.*available: maps"):
        run_demo(tmp_path, story=("maps", "fig11"))


def test_demo_command_passes_its_options_to_run_demo(tmp_path, monkeypatch):
    import attnlab.lab.demo

    seen = {}
    monkeypatch.setattr(attnlab.lab.demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    code = main(["demo", "--quick", "--out", str(tmp_path / "d"), "--reference", "carphone"])
    assert code == 0
    assert seen == {"out": tmp_path / "d", "model": None, "quick": True, "reference": "carphone"}


def test_the_printed_redraw_command_draws_with_the_demos_settings(tmp_path, monkeypatch):
    import shlex

    import attnlab.lab.experiments
    from attnlab.lab.demo import redraw_command

    seen = {}
    monkeypatch.setattr(
        attnlab.lab.experiments, "draw_all", lambda ctx, names: seen.update(ctx=ctx) or {}
    )
    for models in (Context.models, ("organism-none", "organism-rope")):
        demo = Context(  # what run_demo(quick=True) uses; a folder with a space
            model="organism-rope",
            data=tmp_path / "my demo" / "data",
            figures=tmp_path / "my demo" / "figures",
            frames=(8, 16),
            models=models,
        )
        argv = shlex.split(redraw_command(demo))
        assert argv[:3] == ["attnlab", "figures", "--all"]
        assert main(argv[1:]) == 0
        ctx = seen["ctx"]
        assert (ctx.model, ctx.data, ctx.figures) == (demo.model, demo.data, demo.figures)
        assert ctx.frames == (8, 16) and ctx.models == demo.models  # not the defaults
        assert ("--models" in argv) == (models != Context.models)


def test_cross_model_experiment_extends_the_sinusoidal_table_past_16_frames(tmp_path, cheap):
    ctx = Context(
        model="organism-sinusoidal",
        data=tmp_path / "data",
        figures=tmp_path / "fig",
        frames=(6, 12),
        steps=2,
        height=32,
        width=32,
        models=("organism-sinusoidal",),
    )
    run_experiment("models", ctx)  # 6, 12 and 18 frames: 18 > the table of 16
    assert ctx.pipe("organism-sinusoidal").unet.config.motion_max_seq_length == 18
    rows = json.loads(ctx.figure("fig10_metrics.json").read_text())
    assert sorted(r["frames"] for r in rows) == [6, 12, 18]
    assert (
        max(rows, key=lambda r: r["frames"])["detail_after_16"] is not None
    )  # frames past the training length exist


def test_organism_strips_show_frames_maps_and_the_evaluators_reading(tmp_path):
    from attnlab.data.evaluator import score_world_video
    from attnlab.lab.organisms import fig_organism_strips, run_organisms

    caption = "a red circle moving to the right on a black background"
    res = run_organisms(models=("organism-none",), captions=(caption,), frames=8)
    (r,) = res
    assert r["videos"].shape == (1, 8, 32, 32, 3)
    assert r["map"].shape == (8, 8)
    np.testing.assert_allclose(r["map"].sum(-1), 1.0, atol=1e-4)  # rows of attention
    # the reading beside the video is the evaluator's on that very video
    again = score_world_video(r["videos"][0], caption)
    assert (r["scores"][0].found_rate, r["scores"][0].color_ok) == (
        again.found_rate,
        again.color_ok,
    )
    fig = fig_organism_strips(res, n_frames=4)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith(f"found {again.found_rate:.0%}") for t in texts)
    assert any("coherence" in t for t in texts)


def test_dependence_figure_probes_every_level_from_the_same_noise(tmp_path):
    import torch

    from attnlab.lab.organisms import PROBES, fig_dependence, run_dependence
    from attnlab.models import load_pipeline

    caption = "a red circle moving to the right on a black background"
    res = run_dependence(models=("organism-rope",), captions=(caption,), frames=8)
    assert [r["probe"] for r in res] == list(PROBES)
    plain = load_pipeline("organism-rope", progress=False)(
        [caption], num_frames=8, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    np.testing.assert_array_equal(res[0]["videos"], np.asarray(plain.frames).clip(0, 1))
    for r in res[1:]:  # each probe changes the video
        assert np.abs(r["videos"] - res[0]["videos"]).max() > 0.05
    fig = fig_dependence(res, n_frames=4)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == 3 and all("coherence" in t for t in texts)


def test_evaluator_readings_score_each_generated_video_and_leave_the_real_clip_out(tmp_path, cheap):
    from attnlab.core.store import load_video
    from attnlab.data.evaluator import score_world_video
    from attnlab.lab.demo import evaluator_readings
    from attnlab.lab.experiments import ORGANISM_PROMPT

    ctx = Context(
        model="organism-none",
        data=tmp_path / "data",
        figures=tmp_path / "fig",
        frames=(6, 12),
        steps=2,
        height=32,
        width=32,
    )
    assert ctx.real_clip() == f"world:{ORGANISM_PROMPT}"  # the organisms' default reference
    run_experiment("transfer", ctx, draw=False)  # reference (a real clip), before, after
    real = score_world_video(
        load_video(ctx.store("transfer"), "reference") / 255.0, ORGANISM_PROMPT
    )
    assert real.found_rate == 1.0 and real.color_ok and real.direction_ok  # a clip of the prompt
    readings = evaluator_readings(ctx, "transfer")
    assert set(readings) == {"before", "after"}
    for name, (scores, text) in readings.items():
        s = score_world_video(load_video(ctx.store("transfer"), name) / 255.0, ORGANISM_PROMPT)
        assert scores["found"] == s.found_rate and scores["coherence"] == round(s.coherence, 4)
        assert text.startswith(f"found {s.found_rate:.0%}")
    assert evaluator_readings(Context(**{**ctx.__dict__, "prompt": "a cat"}), "transfer") == {}
