"""Figures render from small synthetic xarray data in the attnlab vocabulary, save as PNG and
PDF, show the expected panels and labels, and drop the NaN padding of shorter runs."""

from __future__ import annotations

import json
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from attnlab.core import dims as D
from attnlab.data.metrics import band_profile
from attnlab.data.video import Video
from attnlab.lab import plots

matplotlib.use("Agg")

TAR = json.dumps([{"name": "tar", "sigma": {"64": 1}}])  # an old store's spec ("name")
TAR_LABEL = "synthetic+TAR σ1@64"
LEVELS = (0, 1)
HW = ((4, 6), (2, 3))


def _band(n: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Row-stochastic n x n map, banded for small ``width``, flat-ish for large."""
    i = np.arange(n)
    logits = -np.abs(i[:, None] - i[None, :]) / width + 0.1 * rng.standard_normal((n, n))
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


def make_run(
    n: int,
    source: str = "synthetic",
    edits: str = "[]",
    model: str = "org/vc2",
    pe: str = "none",
    seed: int = 0,
    steps: int = 2,
    heads: int = 2,
    pe_along_layer: bool = False,
) -> xr.DataArray:
    """One run: dims (run, step, layer, cfg, sample, head, query_frame, key_frame).

    Coordinates follow attnlab.core.store.load: ``h``/``w`` along (run, layer), ``timestep``
    along (run, step), ``pe`` along run (or along layer with ``pe_along_layer``).
    """
    rng = np.random.default_rng(seed + n)
    width = 1.5 if source == "real" or edits != "[]" else 8.0
    shape = (1, steps, len(LEVELS), 2, 1, heads, n, n)
    data = np.empty(shape)
    for idx in np.ndindex(shape[:-2]):
        data[idx] = _band(n, width, rng)
    pe_coord = (D.LAYER, [pe] * len(LEVELS)) if pe_along_layer else (D.RUN, [pe])
    return xr.DataArray(
        data,
        dims=(D.RUN, D.STEP, D.LAYER, D.CFG, D.SAMPLE, D.HEAD, D.QUERY, D.KEY),
        coords={
            D.RUN: [f"{source}-{n}-{seed}-{len(edits)}"],
            D.STEP: np.arange(steps),
            D.TIMESTEP: ((D.RUN, D.STEP), np.linspace(999, 500, steps).astype(int)[None]),
            D.LAYER: [f"down_blocks.{lv}.temp_attentions.0" for lv in LEVELS],
            D.LEVEL: (D.LAYER, list(LEVELS)),
            D.BLOCK: (D.LAYER, ["down"] * len(LEVELS)),
            D.LAYER_H: ((D.RUN, D.LAYER), [[h for h, _ in HW]]),
            D.LAYER_W: ((D.RUN, D.LAYER), [[w for _, w in HW]]),
            D.PE: pe_coord,
            D.CFG: [D.UNCOND, D.COND],
            D.QUERY: np.arange(n),
            D.KEY: np.arange(n),
            D.SOURCE: (D.RUN, [source]),
            D.MODEL: (D.RUN, [model]),
            D.PROMPT: (D.RUN, ["a bear"]),
            D.SEED: (D.RUN, [seed]),
            D.FRAMES: (D.RUN, [n]),
            D.EDITS: (D.RUN, [edits]),
        },
        name=D.PROBS,
    )


def concat(runs: list[xr.DataArray]) -> xr.DataArray:
    return xr.concat(runs, dim=D.RUN, join="outer")


@pytest.fixture(scope="module")
def probs() -> xr.DataArray:
    """Runs of 8 and 16 frames (NaN-padded to 16) for real, synthetic and synthetic+TAR."""
    runs = []
    for n in (8, 16):
        runs.append(make_run(n, "real"))
        runs.append(make_run(n, "synthetic"))
        runs.append(make_run(n, "synthetic", seed=1))
        runs.append(make_run(n, "synthetic", edits=TAR))
    return concat(runs)


def video(n: int = 16, h: int = 20, w: int = 32, seed: int = 0) -> np.ndarray:
    """A moving colour gradient, (frame, height, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        r = (xx + 2 * t) % w / w
        g = yy / h
        b = np.full((h, w), t / max(n - 1, 1))
        frames.append(np.stack([r, g, b], -1) + 0.05 * rng.standard_normal((h, w, 3)))
    return (np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)


def sim_matrix(n: int, width: float) -> np.ndarray:
    i = np.arange(n)
    return 1.0 - (1.0 - np.exp(-np.abs(i[:, None] - i[None, :]) / width)) * 0.5


# ---------------------------------------------------------------------------------------------
# checks shared by all figures


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def all_text(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        parts += [ax.get_title(loc) for loc in ("left", "center", "right")]
        parts += [ax.get_xlabel(), ax.get_ylabel()]
        leg = ax.get_legend()
        if leg is not None:
            parts += [t.get_text() for t in leg.get_texts()]
    return "\n".join(parts)


def check_saved(fig, tmp_path, name: str) -> np.ndarray:
    paths = plots.save_figure(fig, tmp_path / name, dpi=100)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    img = np.asarray(Image.open(paths[0]).convert("RGB"), dtype=float)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 10, "PNG is nearly blank"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, "PNG has too few colours"
    return img


def map_shapes(fig) -> list[tuple[int, ...]]:
    return [ax.images[0].get_array().shape for ax in image_axes(fig)]


# ---------------------------------------------------------------------------------------------
# reduce_maps


def test_reduce_maps_matches_numpy(probs):
    out = plots.reduce_maps(probs, levels=0, steps=[1], normalize=False)
    assert out.dims == (D.RUN, D.QUERY, D.KEY)
    assert list(out[D.FRAMES].values) == list(probs[D.FRAMES].values)
    ref = probs.sel(cfg="cond").isel(layer=[0], step=[1]).values  # run, step, layer, s, h, q, k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmean(ref.reshape(ref.shape[0], -1, 16, 16), axis=1)
    np.testing.assert_allclose(out.values, expected, equal_nan=True)
    # padding stays NaN, real entries are rows of a stochastic matrix averaged -> sum to 1
    r8 = out.isel(run=0).values
    assert np.isnan(r8[8:]).all() and np.isnan(r8[:, 8:]).all()
    np.testing.assert_allclose(r8[:8, :8].sum(-1), 1.0)


def test_reduce_maps_minmax_per_panel(probs):
    raw = plots.reduce_maps(probs)  # probabilities by default
    norm = plots.reduce_maps(probs, normalize=True)
    for k in range(probs.sizes[D.RUN]):
        n = int(probs[D.FRAMES][k])
        r = raw.isel(run=k).values[:n, :n]
        m = norm.isel(run=k).values[:n, :n]
        np.testing.assert_allclose(m, (r - r.min()) / (r.max() - r.min()))
        assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    # all layers, all steps, cond only
    cond = probs.sel(cfg="cond").values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmean(cond.reshape(cond.shape[0], -1, 16, 16), axis=1)
    np.testing.assert_allclose(raw.values, expected, equal_nan=True)


def test_reduce_maps_cfg_none_and_errors(probs):
    both = plots.reduce_maps(probs, cfg=None, normalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmean(probs.values.reshape(probs.sizes[D.RUN], -1, 16, 16), axis=1)
    np.testing.assert_allclose(both.values, expected, equal_nan=True)
    kept = plots.reduce_maps(probs, over=(D.SAMPLE, D.HEAD), normalize=False)
    assert kept.dims == (D.RUN, D.STEP, D.LAYER, D.QUERY, D.KEY)
    with pytest.raises(ValueError, match="available"):
        plots.reduce_maps(probs, levels=5)


def test_condition_and_labels(probs):
    labels = list(plots.condition_labels(probs))
    assert labels[:4] == ["real", "synthetic", "synthetic", TAR_LABEL]
    assert plots.sigma_label({64: 1, 32: 8}) == "σ64=1,σ32=8"
    assert plots.level_label(0, 40, 64) == "level 0 (40x64)"


def edited_runs(specs: list[list[dict]], maps: list[np.ndarray], **coords) -> xr.DataArray:
    """One synthetic run per entry of ``specs`` (its edits), each with its own N x N map."""
    n, k = maps[0].shape[0], len(specs)
    return xr.DataArray(
        np.stack(maps)[:, None, None, None],
        dims=(D.RUN, D.STEP, D.LAYER, D.CFG, D.QUERY, D.KEY),
        coords={
            D.RUN: [f"r{i}" for i in range(k)],
            D.CFG: [D.COND],
            D.SOURCE: (D.RUN, ["synthetic"] * k),
            D.EDITS: (D.RUN, [json.dumps(s) for s in specs]),
            D.FRAMES: (D.RUN, [n] * k),
            **coords,
        },
        name=D.PROBS,
    )


def row_of(ax) -> str:
    """The row header of a panel: its y-label less the axis name, long labels on lines."""
    return "".join(ax.get_ylabel().split("\n")[:-1])


def test_each_edit_setting_is_its_own_condition():
    from attnlab.edits import TAR as Tar
    from attnlab.edits import Replace, SlidingWindow

    n = 8
    eye, uni = np.eye(n), np.full((n, n), 1 / n)
    specs = [
        [],
        [Tar("64D1").spec()],
        [Tar("64D8").spec()],
        [Replace("identity").spec()],
        [Replace("ones").spec()],
        [Replace("identity", levels=[0, 1]).spec()],
        [Tar({0: 1.0, 1: 8.0}).spec(), SlidingWindow(4, 2).spec()],
        [Tar("64D1", max_mode="global").spec()],
    ]
    maps = [uni, eye, uni, eye, uni, eye, uni, 0.5 * (eye + uni)]
    da = edited_runs(specs, maps)
    labels = list(plots.condition_labels(da))
    assert labels == [
        "synthetic",
        "synthetic+TAR 64D1 (max_mode=row)",  # short labels that coincide: what differs added
        "synthetic+TAR 64D8",
        "synthetic+replace identity",
        "synthetic+replace ones",
        "synthetic+replace identity@0,1",
        "synthetic+TAR σ1@0,σ8@1+sliding_window 4,2",
        "synthetic+TAR 64D1 (max_mode=global)",
    ]
    # one row per setting, each panel its own run's map (TAR sigma 1 and 8 were averaged)
    fig = plots.fig_attention_maps(da)
    panels = image_axes(fig)
    assert [row_of(ax) for ax in panels] == labels
    for ax, m in zip(panels, maps):
        np.testing.assert_allclose(ax.images[0].get_array(), m)
    # Fig. 9 from one DataArray: no TAR, sigma 1, sigma 8 are three rows
    fig9 = plots.fig_sigma_ablation(da.isel(run=[0, 1, 2]))
    rows = [row_of(ax) for ax in image_axes(fig9)]
    assert rows == ["synthetic", "synthetic+TAR 64D1", "synthetic+TAR 64D8"]


def test_runs_of_different_edits_are_never_averaged_under_one_label():
    from attnlab.edits import TAR as Tar
    from attnlab.edits import Synopsis

    n = 8
    eye, uni = np.eye(n), np.full((n, n), 1 / n)
    specs = [[Tar("64D1").spec()], [Tar("64D8").spec()]]
    pooled = edited_runs(specs, [eye, uni], condition=(D.RUN, ["TAR", "TAR"]))
    with pytest.raises(ValueError, match="different edits would be averaged into one panel"):
        plots.fig_attention_maps(pooled)  # a given condition coordinate that pools them
    with pytest.raises(ValueError, match=r"TAR 64D1.*TAR 64D8"):
        plots.fig_attention_maps({"TAR": pooled.drop_vars("condition")})
    with pytest.raises(ValueError, match="different edits"):
        plots.fig_attention_maps(pooled.drop_vars("condition"), row=D.SOURCE)
    # one edit setting over prompts is one condition: Synopsis' key states are the prompt's
    syn = [[Synopsis(["a boy", "an old man"]).spec()], [Synopsis(["a cat", "a dog"]).spec()]]
    same = edited_runs(syn, [eye, uni])
    assert list(plots.condition_labels(same)) == ["synthetic+synopsis"] * 2
    panel = image_axes(plots.fig_attention_maps(same))
    assert len(panel) == 1
    np.testing.assert_allclose(panel[0].images[0].get_array(), (eye + uni) / 2)


def test_a_dict_is_titled_by_what_all_its_entries_share():
    two = {
        "ModelScope": make_run(8, model="damo/modelscope", steps=5),
        "AnimateDiff": make_run(8, model="guoyww/animatediff", steps=2),
    }
    title = plots.fig_attention_maps(two)._suptitle.get_text()
    assert title == "levels 0 (4x6), 1 (2x3) · cond"  # not one model's name or steps
    assert "damo" not in title and "steps" not in title
    same = {"a": make_run(8, steps=3), "b": make_run(8, steps=3, seed=1)}
    title = plots.fig_attention_maps(same, levels=0)._suptitle.get_text()
    assert title == "org/vc2 · level 0 (4x6) · steps 0–2 · cond"


# ---------------------------------------------------------------------------------------------
# figures


def test_fig_attention_maps(probs, tmp_path):
    fig = plots.fig_attention_maps(probs, levels=0)
    check_saved(fig, tmp_path, "fig3")
    assert len(image_axes(fig)) == 6  # 3 conditions x 2 frame counts
    assert map_shapes(fig) == [(8, 8), (16, 16)] * 3  # padding dropped
    text = all_text(fig)
    for label in ("real", "synthetic", TAR_LABEL, "8 frames", "16 frames", "level 0 (4x6)"):
        assert label in text
    for ax in image_axes(fig):
        m = ax.images[0].get_array()
        assert not np.isnan(m).any()
        np.testing.assert_allclose(m.sum(-1), 1.0)  # probabilities, not min-max stretched


def _colorbar(fig):
    return next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")


def test_maps_are_absolute_on_one_shared_scale_with_uniform_marked(probs):
    fig = plots.fig_attention_maps(probs, levels=0)
    raw = plots.reduce_maps(probs, levels=0)
    panels = image_axes(fig)
    # every panel: the averaged probabilities of its runs, unchanged
    for ax, (cond, n) in zip(panels, [(c, n) for c in ("real", "synthetic", TAR_LABEL) for n in (8, 16)]):  # fmt: skip
        runs = [k for k in range(probs.sizes[D.RUN]) if plots.condition_labels(probs)[k] == cond and int(probs[D.FRAMES][k]) == n]  # fmt: skip
        expected = raw.isel(run=runs).mean(D.RUN).values[:n, :n]
        np.testing.assert_allclose(ax.images[0].get_array(), expected, rtol=1e-12)
        # the panel says how banded it is, against the uniform map's (3N - 2) / N^2
        note = " ".join(t.get_text() for t in ax.texts)
        from attnlab.data.metrics import band_concentration

        assert f"band {float(band_concentration(expected)):.3f}" in note
        assert f"uniform {(3 * n - 2) / n**2:.3f}" in note
    # one colour scale for all panels, from 0 to the largest probability drawn
    top = max(float(ax.images[0].get_array().max()) for ax in panels)
    assert {ax.images[0].get_clim() for ax in panels} == {(0.0, top)}
    cbar = _colorbar(fig)
    labels = [t.get_text() for t in cbar.get_yticklabels()]
    assert "1/8" in labels and "1/16" in labels  # the uniform levels are marked
    assert "probability" in cbar.get_ylabel() and "min-max" not in cbar.get_ylabel()


def test_minmax_only_on_request_and_then_labelled(probs):
    fig = plots.fig_attention_maps(probs, levels=0, scale="minmax")
    for ax in image_axes(fig):
        m = ax.images[0].get_array()
        assert m.min() == 0 and m.max() == pytest.approx(1)
    assert "min-max per panel" in _colorbar(fig).get_ylabel()
    with pytest.raises(ValueError, match="scale must be one of"):
        plots.fig_attention_maps(probs, scale="stretched")


def test_the_all_ones_probe_map_shows_its_uniform_value_not_black(tmp_path):
    videos = {(k, lv): video(16, h=64, w=64, seed=i) for i, (k, lv) in enumerate(
        (k, lv) for k in ("identity", "ones") for lv in ("0", "1", "2", "3", "0+1"))}  # fmt: skip
    maps = {key: np.eye(16) if key[0] == "identity" else np.full((16, 16), 1 / 16) for key in videos}  # fmt: skip
    fig = plots.fig_probe_grid(videos, maps, baseline=video(16, h=64, w=64, seed=99))
    ones = [ax for ax in image_axes(fig) if ax.images[0].get_array().shape == (16, 16) and ax.images[0].get_array().std() == 0]  # fmt: skip
    assert len(ones) == 5
    for ax in ones:
        assert ax.images[0].get_array().max() == pytest.approx(1 / 16)  # not 0 (black)
        assert ax.images[0].get_clim() == (0.0, 1.0)  # shared with the identity maps
        assert "band 0.180" in " ".join(t.get_text() for t in ax.texts)
    # a page-wide figure: about 7 inches, at most 1500 px at 200 dpi (was 3634 x 850)
    path = plots.save_figure(fig, tmp_path / "fig4", formats=("png",))[0]
    width, height = Image.open(path).size
    assert width <= 1500 and height <= 1600 and width / height < 1.5


def test_fig_attention_maps_without_frames_coord_or_run_dim(probs):
    # padding found from the NaNs when there is no `frames` coordinate
    bare = probs.drop_vars(D.FRAMES)
    fig = plots.fig_attention_maps(bare.isel(run=[0, 1, 5]), col=D.SOURCE, row=D.FRAMES)
    # rows 8 / 16 frames (counted from the NaNs), columns real / synthetic; no real 16
    assert map_shapes(fig) == [(8, 8), (8, 8), (16, 16)]
    assert "16 frames" in all_text(fig) and "real" in all_text(fig)
    with pytest.raises(ValueError, match="different frame counts"):
        plots.fig_attention_maps(bare, col=D.SOURCE, row=None)
    single = probs.isel(run=1)  # one synthetic 8-frame run, no run dim, still padded to 16
    fig2 = plots.fig_attention_maps(single)
    assert map_shapes(fig2) == [(8, 8)]
    assert "synthetic" in all_text(fig2) and "8 frames" in all_text(fig2)


def test_fig_attention_maps_dict_and_missing_cell(probs, tmp_path):
    real = probs.isel(run=[0])  # only 8 frames
    synth = probs.where((probs[D.SOURCE] == "synthetic") & (probs[D.EDITS] == "[]"), drop=True)
    fig = plots.fig_attention_maps(
        {"real (DAVIS)": real, "synthetic": synth}, steps=[0], title="dict input"
    )
    check_saved(fig, tmp_path, "fig3_dict")
    assert len(image_axes(fig)) == 3  # real has no 16-frame run: that panel is empty
    assert "real (DAVIS)" in all_text(fig)


def test_fig_cross_model(tmp_path):
    models = {
        "ModelScope": concat([make_run(8, model="ms"), make_run(16, model="ms")]),
        "AnimateDiff": concat(  # pe along layer, as the brief's vocabulary has it
            [
                make_run(8, model="ad", pe="sinusoidal", pe_along_layer=True),
                make_run(16, model="ad", pe="sinusoidal", pe_along_layer=True),
            ]
        ),
        "LaVie": concat([make_run(8, model="lv", pe="rope")]),
    }
    fig = plots.fig_cross_model(models)
    check_saved(fig, tmp_path, "fig10")
    assert len(image_axes(fig)) == 5
    text = all_text(fig)
    for label in ("ModelScope", "PE: none", "PE: sinusoidal", "PE: rope", "16 frames"):
        assert label in text
    # one DataArray faceted by the model run coordinate
    one = concat([make_run(8, model="org/ms"), make_run(16, model="org/ad", pe="rope")])
    fig2 = plots.fig_cross_model(one, levels=[0, 1])
    assert len(image_axes(fig2)) == 2
    assert "ad\nPE: rope" in all_text(fig2)
    # the title names what each map averages: levels and steps
    assert "mean over all levels" in all_text(fig) and "steps 0–1" in all_text(fig)
    assert "levels 0, 1" in all_text(fig2)
    late = plots.fig_cross_model(models, steps=[1])
    assert "step 1" in all_text(late) and "steps 0–1" not in all_text(late)


def test_fig_cross_model_puts_dits_beside_unets_with_the_pe_kind_as_facet(tmp_path):
    """Rows grouped by PE kind (PE_KINDS order), whatever order the models come in; a DiT
    (PE kind "rope3d": frame-level maps of joint attention) says its maps are over latent
    frames."""
    models = {
        "CogVideoX": concat([make_run(4, model="cog", pe="rope3d")]),
        "LaVie": concat([make_run(8, model="lv", pe="rope")]),
        "ModelScope": concat([make_run(8, model="ms")]),
        "AnimateDiff": concat([make_run(8, model="ad", pe="sinusoidal")]),
    }
    fig = plots.fig_cross_model(models)
    check_saved(fig, tmp_path, "fig10_dit")
    labelled = sorted(
        (ax for ax in image_axes(fig) if ax.get_ylabel()), key=lambda a: -a.get_position().y0
    )
    firsts = [ax.get_ylabel().split("\n")[0] for ax in labelled]
    assert firsts == ["ModelScope", "AnimateDiff", "LaVie", "CogVideoX"]
    assert "CogVideoX\nPE: rope3d\n(joint 3D attn., latent frames)" in all_text(fig)
    assert all_text(fig).count("(joint 3D attn.") == 1  # only the DiT gets the note
    kept = plots.fig_cross_model(models, by_pe=False)
    labelled = sorted(
        (ax for ax in image_axes(kept) if ax.get_ylabel()), key=lambda a: -a.get_position().y0
    )
    assert labelled[0].get_ylabel().startswith("CogVideoX")  # the given order


def test_fig_probe_grid(probs, tmp_path):
    kinds, levels = ("identity", "ones"), ("0", "1", "0+1", "3")
    videos = {
        (k, lv): video(16, seed=i)
        for i, (k, lv) in enumerate((k, lv) for k in kinds for lv in levels)
    }
    maps = {key: np.eye(16) + 0.1 for key in videos}
    fig = plots.fig_probe_grid(videos, maps, baseline=video(16, seed=99))
    check_saved(fig, tmp_path, "fig4")
    assert len(image_axes(fig)) == 1 + 8 + 8  # baseline + strips + map insets
    text = all_text(fig)
    for label in ("level 0", "levels 0+1", "level 3", "identity", "all-ones", "original"):
        assert label in text
    fig2 = plots.fig_probe_grid(videos, n=4)
    assert len(image_axes(fig2)) == 8


def test_fig_transfer(probs, tmp_path):
    sims = xr.DataArray(sim_matrix(16, 3.0), dims=(D.FRAME, D.FRAME2))
    before = probs.isel(run=[5])  # synthetic, 16 frames
    after = probs.isel(run=[7])  # synthetic + TAR, 16 frames
    fig = plots.fig_transfer(
        sims,
        before,
        after,
        sim_matrix(16, 30.0),
        sim_matrix(16, 4.0),
        reference_map=probs.isel(run=[4]),
        reference_video=video(16),
        before_video=video(16, seed=1),
        after_video=video(16, seed=2),
    )
    check_saved(fig, tmp_path, "fig8")
    assert len(image_axes(fig)) == 9
    text = all_text(fig)
    for label in ("reference", "synthetic + TAR", "inter-frame similarity", "temporal attention"):
        assert label in text
    # without videos and reference map: 2 maps + 3 similarity matrices
    fig2 = plots.fig_transfer(sims, before, after, sims, sims)
    assert len(image_axes(fig2)) == 5
    assert "reference (real)\nframe" in all_text(fig2)  # row label on the first drawn panel


def test_fig_sigma_ablation(probs, tmp_path):
    labels = [
        plots.sigma_label(s) for s in ({64: 1}, {64: 4}, {64: 8}, {64: 1, 32: 8}, {64: 1, 32: 1})
    ]
    maps = {lab: probs.isel(run=[(5, 7)[k % 2]]) for k, lab in enumerate(labels)}
    videos = {lab: video(16, seed=k) for k, lab in enumerate(labels)}
    fig = plots.fig_sigma_ablation(maps, videos)
    check_saved(fig, tmp_path, "fig9")
    assert len(image_axes(fig)) == 10
    text = all_text(fig)
    for lab in labels:
        assert lab in text
    # the title names the level and steps the maps show (every level and step unless told)
    assert "levels 0 (4x6), 1 (2x3)" in text and "steps 0–1" in text
    level0 = all_text(plots.fig_sigma_ablation(maps, videos, levels=[0], steps=[1]))
    assert "level 0 (4x6)" in level0 and "step 1" in level0 and "levels" not in level0
    # strips only; and maps grouped from one DataArray by condition
    assert len(image_axes(plots.fig_sigma_ablation(videos=videos))) == 5
    fig3 = plots.fig_sigma_ablation(probs.where(probs[D.FRAMES] == 8, drop=True))
    assert map_shapes(fig3) == [(8, 8)] * 3


def test_fig_similarity(tmp_path):
    padded = np.full((16, 16), np.nan)
    padded[:8, :8] = sim_matrix(8, 2.0)
    sims = {
        "real": sim_matrix(16, 3.0),
        "VideoCrafter2": sim_matrix(16, 40.0) * 0.5 + 0.5,
        "VSTAR": padded,
    }
    fig = plots.fig_similarity(sims)
    check_saved(fig, tmp_path, "figS1")
    assert map_shapes(fig) == [(16, 16), (16, 16), (8, 8)]
    text = all_text(fig)
    assert "real (16 frames)" in text and "VSTAR (8 frames)" in text
    lo = min(ax.images[0].get_array().min() for ax in image_axes(fig))
    hi = max(ax.images[0].get_array().max() for ax in image_axes(fig))
    assert lo == pytest.approx(0) and hi == pytest.approx(1)  # normalised jointly
    # not per panel: the real matrix does not reach 0 on its own
    assert image_axes(fig)[1].images[0].get_array().min() > 0.2
    # DataArray with a video dim
    da = xr.DataArray(
        np.stack([sim_matrix(8, 2.0), sim_matrix(8, 9.0)]),
        dims=("video", D.FRAME, D.FRAME2),
        coords={"video": ["a", "b"]},
    )
    assert "b (8 frames)" in all_text(plots.fig_similarity(da))


def test_interval_table_long_format():
    m = np.arange(16.0).reshape(4, 4)
    padded = np.full((6, 6), np.nan)
    padded[:4, :4] = m
    df = plots.interval_table({"real": m, "synthetic": [m, padded]})
    assert {D.SOURCE, "video", D.OFFSET, "similarity"} <= set(df.columns)
    real = df[df[D.SOURCE] == "real"]
    assert sorted(real[D.OFFSET]) == [1, 1, 1, 2, 2, 3]  # all pairs (i, i + d)
    assert sorted(real[real[D.OFFSET] == 1].similarity) == [1.0, 6.0, 11.0]
    synth = df[df[D.SOURCE] == "synthetic"]
    assert len(synth) == 12 and not synth.similarity.isna().any()  # padding dropped


@pytest.mark.parametrize("kind", ["violin", "kde"])
def test_fig_similarity_by_interval(kind, tmp_path):
    rng = np.random.default_rng(0)
    sims = {
        "real": [sim_matrix(16, w) + 0.02 * rng.standard_normal((16, 16)) for w in (2, 3, 4)],
        "VideoCrafter2": [sim_matrix(16, 40) + 0.02 * rng.standard_normal((16, 16))] * 2,
        "VSTAR": [sim_matrix(16, 3.5) + 0.02 * rng.standard_normal((16, 16))] * 2,
    }
    fig = plots.fig_similarity_by_interval(sims, kind=kind, offsets=[1, 4, 8, 12])
    check_saved(fig, tmp_path, f"figS2_{kind}")
    text = all_text(fig)
    for label in ("real", "VideoCrafter2", "VSTAR"):
        assert label in text
    if kind == "kde":
        assert "d = 12" in text and len(fig.axes) == 4
    df = plots.interval_table(sims)
    fig2 = plots.fig_similarity_by_interval(df, max_offsets=3, kind=kind)
    if kind == "violin":
        assert len(fig2.axes[0].get_xticklabels()) == 3
    else:
        assert len(fig2.axes) == 3
        assert [ax.get_ylabel() for ax in fig2.axes] == ["density", "", ""]
    # a figure that leaves intervals out says so; one that draws them all, or the user's, does not
    assert "3 of 15 intervals" in all_text(fig2)
    assert "intervals" not in all_text(fig)
    every = plots.fig_similarity_by_interval(
        plots.interval_table({"real": sims["real"][0][:8, :8]})
    )
    assert "intervals" not in all_text(every)  # 7 intervals at 8 frames: all drawn


def test_fig_prior(tmp_path):
    fig = plots.fig_prior(16, sigmas=(1, 4, 8))
    check_saved(fig, tmp_path, "figS13")
    assert len(image_axes(fig)) == 3
    text = all_text(fig)
    assert all(f"σ={s}" in text for s in (1, 4, 8)) and "N = 16" in text
    m = image_axes(fig)[0].images[0].get_array()
    i = np.arange(16)
    np.testing.assert_allclose(m, np.exp(-0.5 * (i[None] - i[:, None]) ** 2))


def test_fig_band_profile(probs, tmp_path):
    # from maps: reduced per layer, profiled per run after cropping the padding
    fig = plots.fig_band_profile(probs)
    check_saved(fig, tmp_path, "band")
    assert len(fig.axes) == 2
    text = all_text(fig)
    for label in ("level 0 (4x6)", "level 1 (2x3)", "real", TAR_LABEL, "frame offset"):
        assert label in text
    for line in fig.axes[0].get_lines():
        assert not np.isnan(line.get_ydata()).any()
    # 8- and 16-frame runs are never pooled: one line per condition and frame count
    lengths = sorted(len(line.get_xdata()) for line in fig.axes[0].get_lines())
    assert lengths == [8, 8, 8, 16, 16, 16]
    assert "8 frames" in text and "16 frames" in text
    # the synthetic 8-frame line is the mean profile of the synthetic 8-frame runs alone
    maps0 = plots.reduce_maps(probs, levels=0)
    synth8 = [k for k in range(probs.sizes[D.RUN]) if probs[D.SOURCE].values[k] == "synthetic" and probs[D.EDITS].values[k] == "[]" and int(probs[D.FRAMES][k]) == 8]  # fmt: skip
    expected = np.mean([band_profile(maps0.isel(run=k).values[:8, :8]).values for k in synth8], axis=0)  # fmt: skip
    assert any(
        # the same numbers reduced in another order: equal to float rounding
        len(line.get_ydata()) == 8 and np.allclose(line.get_ydata(), expected, rtol=1e-9)
        for line in fig.axes[0].get_lines()
    )

    # from a band profile (what attnlab.data.metrics.band_profile returns), computed per run
    maps = plots.reduce_maps(probs, over=(D.STEP, D.SAMPLE, D.HEAD), normalize=False)
    parts = []
    for k in range(probs.sizes[D.RUN]):
        n = int(probs[D.FRAMES][k])
        parts.append(
            band_profile(maps.isel(run=[k], query_frame=slice(0, n), key_frame=slice(0, n)))
        )
    prof = xr.concat(parts, dim=D.RUN, join="outer")
    assert prof.dims == (D.RUN, D.LAYER, D.OFFSET)
    with pytest.raises(ValueError, match="different edits would be averaged into one line"):
        plots.fig_band_profile(prof.isel(layer=0), hue=D.SOURCE, col=None)  # TAR in "synthetic"
    unedited = prof.isel(layer=0).where(prof[D.EDITS] == "[]", drop=True)
    fig2 = plots.fig_band_profile(unedited, hue=D.SOURCE, col=None)
    assert len(fig2.axes) == 1 and "synthetic" in all_text(fig2)
    # a profile of NaN-padded maps loses the short runs: warn instead of dropping silently
    with pytest.warns(UserWarning, match="no finite profile"):
        plots.fig_band_profile(band_profile(maps))


def test_frame_strip_and_video_with_maps(probs, tmp_path):
    fig = plots.frame_strip_figure(video(16), n=8, title="a bear, 16 frames")
    check_saved(fig, tmp_path, "strip")
    ax = image_axes(fig)[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "0",
        "2",
        "4",
        "6",
        "9",
        "11",
        "13",
        "15",
    ]
    assert "a bear, 16 frames" in all_text(fig)
    # channel-first float video in [-1, 1]
    chw = video(8).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    assert len(image_axes(plots.frame_strip_figure(chw, n=4))) == 1
    clip = Video(frames=video(8), fps=8.0, source_fps=8.0, indices=np.arange(8), id="clip")
    assert len(image_axes(plots.frame_strip_figure(clip, n=4))) == 1

    vid = xr.DataArray(video(8), dims=(D.FRAME, D.HEIGHT, D.WIDTH, D.CHANNEL))
    maps = {"level 0": probs.isel(run=[1]), "level 1": probs.isel(run=[1])}
    fig2 = plots.fig_video_with_maps(vid, maps, title="synthetic, 8 frames")
    check_saved(fig2, tmp_path, "video_maps")
    assert map_shapes(fig2)[1:] == [(8, 8), (8, 8)]
    assert "level 1" in all_text(fig2)
    with pytest.warns(UserWarning, match="16 frames but the maps"):
        plots.fig_video_with_maps(video(16), probs.isel(run=[1]))


def test_dataset_input(probs):
    ds = xr.Dataset({D.PROBS: probs})
    fig = plots.fig_attention_maps(ds, levels=1)
    assert map_shapes(fig) == [(8, 8), (16, 16)] * 3
    assert "level 1 (2x3)" in all_text(fig)
    xr.testing.assert_identical(plots.reduce_maps(ds), plots.reduce_maps(probs))


def test_save_figure_suffix(tmp_path):
    fig = plots.fig_prior(8, sigmas=(2,))
    assert plots.save_figure(fig, tmp_path / "a" / "prior.png") == [tmp_path / "a" / "prior.png"]
    assert plots.save_figure(fig, tmp_path / "p.svg", formats=("pdf",))[0].suffix == ".pdf"


def test_mixed_frame_counts_in_one_panel_fail(probs):
    with pytest.raises(ValueError, match="different frame counts"):
        plots.fig_attention_maps(probs, col=None)


def test_long_format_input_dataframe():
    df = pd.DataFrame({D.OFFSET: [1, 1, 2, 2], "similarity": [0.9, 0.8, 0.7, 0.6], "source": "x"})
    fig = plots.fig_similarity_by_interval(df)
    # the long-format rows are what is drawn: two offsets, values 0.6 .. 0.9
    ax = fig.axes[0]
    assert len(ax.collections) >= 2  # a violin per offset
    lo, hi = ax.get_ylim()
    assert lo <= 0.6 and hi >= 0.9


def metric_results(thresholds: list[float]) -> xr.Dataset:
    """Video metrics of runs of different sizes: VBench's threshold scales with min(h, w)."""
    k = len(thresholds)
    runs = [f"r{i}" for i in range(k)]
    return xr.Dataset(
        {
            "flow_magnitude": ((D.RUN, D.FRAME_PAIR), np.arange(k * 3.0).reshape(k, 3)),
            "flow_magnitude_mean": ((D.RUN,), np.arange(1.0, k + 1)),
            "temporal_flickering": ((D.RUN,), np.full(k, 0.9)),
            "dynamic_threshold": ((D.RUN,), thresholds),
        },
        coords={D.RUN: runs, D.FRAME_PAIR: np.arange(3)},
    )


def test_metric_bars_draw_each_runs_own_threshold_and_stay_off_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    ev = metric_results([1.5, 3.0, 6.0])  # e.g. 32, 64 and 128 px videos
    runs = {"small": "r0", "medium": "r1", "large": "r2"}
    fig = plots.fig_metric_bars(ev, runs)
    ax = fig.axes[0]
    assert ax.get_lines() == []  # no single line claiming one threshold for all runs
    (lines,) = ax.collections[-1:]
    segs = lines.get_segments()
    assert [float(s[0, 1]) for s in segs] == [1.5, 3.0, 6.0]  # each run's own threshold
    assert [float(s[:, 0].mean()) for s in segs] == pytest.approx([0, 1, 2])  # over its bar
    assert "VBench threshold (per run)" in all_text(fig)
    # thresholds that agree: one line
    one = plots.fig_metric_bars(metric_results([3.0, 3.0]), {"a": "r0", "b": "r1"})
    assert [list(line.get_ydata()) for line in one.axes[0].get_lines()] == [[3.0, 3.0]]
    assert "VBench threshold" in all_text(one)
    curves = plots.fig_metric_curves(ev, runs)
    assert {float(line.get_ydata()[0]) for line in curves.axes[0].get_lines()} >= {1.5, 3.0, 6.0}
    assert plt.get_fignums() == before  # not registered with pyplot
    assert isinstance(fig, matplotlib.figure.Figure) and fig.canvas.manager is None
