"""``attnlab report`` / ``attnlab.report``: one self-contained HTML page of a store's runs.

The stores are made by the real commands on the tiny ModelScope pipeline (6 frames, 2 steps,
64 x 48): ``record --video`` then ``generate --edit tar --record`` into one store (plain vs
TAR), ``record-real`` of a world clip, ``probe``, a head-reduced recording, a sweep and the
demo. The page's data is read back with an HTML parser and base64/float32 decoding, and
compared with ``attnlab.load`` of the store and :mod:`attnlab.data.metrics`.
"""

from __future__ import annotations

import base64
import html
import html.parser
import io
import json
import re

import numpy as np
import pytest
import xarray as xr
from PIL import Image

import attnlab
from attnlab.core import dims as D
from attnlab.data.metrics import band_concentration, band_profile, diagonalness, row_entropy
from attnlab.lab.report import DEFAULT_MAX_MB, ReportError, report
from attnlab.tools.cli import REPORT_MAX_MB, main

GEN = ["--frames", "6", "--steps", "2", "--height", "64", "--width", "48", "--device", "cpu"]


@pytest.fixture(scope="module")
def stores(tiny_dirs, ms_pipe, tmp_path_factory):
    """Stores written by the commands: plain + TAR (each with its video), a real world clip
    (``attnlab.record_real``, what ``record-real`` runs), probes."""
    root = tmp_path_factory.mktemp("report-stores")
    model = ["--model", str(tiny_dirs["tiny-modelscope"])]
    rec = root / "runs.zarr"
    assert main(["record", *model, *GEN, "--seed", "1", "--out", str(rec), "--video", str(root / "v.gif")]) == 0  # fmt: skip
    assert main(["generate", *model, *GEN, "--seed", "1", "--edit", "tar:64D4", "--out", str(root / "t.gif"), "--record", str(rec)]) == 0  # fmt: skip
    real = root / "real.zarr"
    attnlab.record_real(ms_pipe, "world:0", frames=6, height=64, width=48, timesteps=[600, 200], store=real, progress=False)  # fmt: skip
    assert main(["probe", *model, *GEN, "--kind", "identity", "--levels", "0", "--out", str(root / "probe")]) == 0  # fmt: skip
    return {"runs": rec, "real": real, "probe": root / "probe" / "probe.zarr", "root": root}


def page_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', text, re.S)
    assert m, "the page holds its data"
    return json.loads(m.group(1))


def notice(text: str) -> str:
    """The page's top notice (what is not in the page), as HTML."""
    m = re.search(r'<div class="notice" id="left-out">(.*?)</div>', text, re.S)
    return m.group(1) if m else ""


def floats(b64: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape)


def run_arrays(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = run["frames"]
    shape = run["shape"]
    return (
        floats(run["maps"], [*shape, n, n]),
        floats(run["profiles"], [*shape, n]),
        floats(run["metrics"], [*shape, 3]),
    )


def strip_frames(video: dict) -> np.ndarray:
    """The frames of a page's video strip (a data URI of one image, frames side by side)."""
    head, data = video["src"].split(",", 1)
    assert head == "data:image/png;base64"
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    w = video["width"]
    return np.stack([img[:, i * w : (i + 1) * w] for i in range(video["frames"])])


class References(html.parser.HTMLParser):
    """Every URL the page's markup refers to: src/href attributes and CSS url()."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self._style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self.urls += [v or "" for k, v in attrs.items() if k in ("src", "href", "srcset", "poster")]
        self.urls += re.findall(r"url\(([^)]*)\)", attrs.get("style") or "")
        self._style = tag == "style"

    def handle_endtag(self, tag):
        self._style = False

    def handle_data(self, data):
        if self._style:
            self.urls += re.findall(r"url\(([^)]*)\)", data)


# ---- what the page holds ------------------------------------------------------------------


def test_the_page_holds_every_stored_map_and_its_means_and_metrics(stores, tmp_path):
    page = report(stores["runs"], tmp_path / "r.html")
    assert page.path.read_text() == page.html
    data = page_data(page.html)
    ds = attnlab.load(stores["runs"])
    assert [r["run_id"] for r in data["runs"]] == [str(r) for r in ds[D.RUN].values]
    assert page.left_out == [] and data["left_out"] == []
    for run in data["runs"]:
        maps, profiles, metrics = run_arrays(run)
        probs = ds[D.PROBS].sel(run=run["run_id"])
        steps = [s["index"] for s in run["steps"]]
        assert steps == list(range(probs.sizes[D.STEP])) and run["halves"] == ["uncond", "cond"]
        layers = [e["key"] for e in run["layers"] if e["kind"] == "layer"]
        assert layers == [str(v) for v in ds[D.LAYER].values]
        # every single map, exactly as stored (float32)
        for s in range(len(steps)):
            for li, key in enumerate(run["layers"]):
                if key["kind"] != "layer":
                    continue
                for c, half in enumerate(run["halves"]):
                    stored = probs.sel(step=steps[s], layer=key["key"], cfg=half).isel(sample=0)
                    np.testing.assert_array_equal(maps[s + 1, li, c, 0, 0], stored.values)
        # the means: over all steps (entry 0), over all layers, over a level
        cond = probs.sel(cfg="cond").isel(sample=0)
        np.testing.assert_allclose(
            maps[0, 0, 1, 0, 0], cond.mean([D.STEP, D.LAYER]).values, rtol=1e-5
        )
        lv = next(e for e in run["layers"] if e["kind"] == "level")
        at_level = cond.where(ds[D.LEVEL] == lv["level"], drop=True)
        i = run["layers"].index(lv)
        np.testing.assert_allclose(
            maps[1, i, 1, 0, 0], at_level.isel(step=0).mean(D.LAYER).values, rtol=1e-5
        )
        # the metrics of every map are attnlab.data.metrics' of it
        m = xr.DataArray(maps, dims=["s", "l", "c", "h", "k", D.QUERY, D.KEY])
        np.testing.assert_allclose(metrics[..., 0], diagonalness(m).values, atol=1e-6)
        np.testing.assert_allclose(metrics[..., 1], band_concentration(m, k=1).values, atol=1e-6)
        np.testing.assert_allclose(metrics[..., 2], row_entropy(m).mean(D.QUERY).values, atol=1e-6)
        np.testing.assert_allclose(profiles, band_profile(m).values, atol=1e-6)
        mean_map = cond.mean([D.STEP, D.LAYER]).values
        assert run["summary"]["diagonalness"] == pytest.approx(
            float(diagonalness(mean_map)), abs=1e-5
        )
        assert run["summary"]["band_mass"] == pytest.approx(
            float(band_concentration(mean_map)), abs=1e-5
        )
    # provenance and the edit: plain, then TAR
    plain, tar = data["runs"]
    assert plain["edits"] == "none" and tar["edits"] == "tar 64D4"
    assert tar["provenance"]["attnlab_version"] == attnlab.__version__
    assert plain["seed"] == 1 and plain["model"] == tar["model"]


def test_the_page_refers_to_nothing_outside_itself(stores):
    text = report([stores["runs"], stores["real"], stores["probe"]]).html
    refs = References()
    refs.feed(text)
    assert all("http" not in u and "//" not in u for u in refs.urls), refs.urls
    # every script and style is inline; videos are data URIs
    assert not [a for t, a in refs.tags if t == "script" and "src" in a]
    assert not [a for t, a in refs.tags if t == "link"]
    assert all(u.startswith(("data:", "#")) for u in refs.urls), refs.urls
    assert "BokehJS" in text or "Bokeh" in text  # the plotting library itself is inside


def test_videos_come_from_the_store_or_the_real_clip(stores):
    from attnlab.core.store import load_video
    from attnlab.data.world import world_video

    runs = {
        r["run_id"]: r for r in page_data(report([stores["runs"], stores["real"]]).html)["runs"]
    }
    ids = [str(r) for r in attnlab.load(stores["runs"])[D.RUN].values]
    plain, tar = runs[ids[0]], runs[ids[1]]
    # record --video and generate --record keep the video in the store: the page shows it
    np.testing.assert_array_equal(strip_frames(plain["video"]), load_video(stores["runs"], ids[0]))
    np.testing.assert_array_equal(strip_frames(tar["video"]), load_video(stores["runs"], ids[1]))
    # the real clip: the world clip its provenance names, at its frame indices
    real = next(r for r in runs.values() if r["kind"] == "real")
    want = world_video("world:0", frames=6).frames
    np.testing.assert_array_equal(strip_frames(real["video"]), want)
    assert [s["timestep"] for s in real["steps"]] == [600, 200]


def test_probe_runs_have_their_videos_and_edits(stores):
    from attnlab.core.store import load_video

    data = page_data(report(stores["probe"]).html)
    assert sorted(r["edits"] for r in data["runs"]) == ["none", "replace identity @0"]
    for run in data["runs"]:
        np.testing.assert_array_equal(
            strip_frames(run["video"]), load_video(stores["probe"], run["run_id"])
        )
        # the identity probe's level-0 maps are the identity
        if run["edits"] != "none":
            maps, _, _ = run_arrays(run)
            level0 = [
                i for i, e in enumerate(run["layers"]) if e["kind"] == "layer" and e["level"] == 0
            ]
            np.testing.assert_allclose(
                maps[1:, level0], np.broadcast_to(np.eye(6), maps[1:, level0].shape), atol=1e-6
            )


def test_head_reduction_has_a_head_control_with_each_head(ms_pipe, gen, tmp_path, capsys):
    store = tmp_path / "heads.zarr"
    with attnlab.record(ms_pipe, levels=[0], reduce="head", logits=True, store=store):
        gen(ms_pipe, num_frames=6)
    page = report(store)
    assert page.left_out == ["logits of heads (the page shows probs)"]  # said, not hidden
    assert not page.content.limited  # and not blamed on the size limit, here or by the CLI
    assert main(["report", str(store), "-o", str(tmp_path / "heads.html")]) == 0
    printed = capsys.readouterr().out
    assert "left out: logits of heads" in printed and "size limit" not in printed
    run = page_data(page.html)["runs"][0]
    ds = attnlab.load(store)
    heads = int(np.nanmax(ds[D.HEADS].values))
    assert run["heads"] == ["mean", *map(str, range(heads))]
    maps, _, _ = run_arrays(run)
    probs = ds[D.PROBS].isel(run=0, sample=0).sel(cfg="cond")
    li = next(i for i, e in enumerate(run["layers"]) if e["kind"] == "layer")
    c = run["halves"].index("cond")
    for h in range(heads):
        np.testing.assert_array_equal(
            maps[1, li, c, 1 + h, 0], probs.isel(step=0, layer=0, head=h).values
        )
    np.testing.assert_allclose(
        maps[1, li, c, 0, 0], probs.isel(step=0, layer=0).mean(D.HEAD).values, rtol=1e-5
    )


def test_a_free_noise_run_shows_the_mean_of_its_windows_and_says_so(tmp_path):
    """AnimateDiff's FreeNoise stores one map per window of frames (``window``): the page shows
    their mean, counted within the window, and names the windows."""
    import torch

    from attnlab.models.tiny import build_tiny

    pipe = build_tiny("tiny-animatediff")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_noise(context_length=16, context_stride=4)
    store = tmp_path / "windows.zarr"
    with attnlab.record(pipe, levels=[0], store=store):
        pipe(
            prompt="a bear", num_frames=24, height=64, width=48, num_inference_steps=2,
            output_type="latent", generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    page = report(store)
    data = page_data(page.html)
    run = data["runs"][0]
    assert any("starting at frames 0, 4, 8" in note for note in run["notes"])
    # the top notice says so too
    (line,) = data["reduced"]
    assert line.startswith("the maps of each window of frames of FreeNoise runs")
    assert line.endswith(": in 1 of 1 runs") and line in html.unescape(notice(page.html))
    # a video frame is a row of each window holding it (windows of 16 frames from 0, 4, 8)
    windows = run["windows"]
    assert (windows["starts"], windows["frames"], windows["video_frames"]) == ([0, 4, 8], 16, 24)
    assert windows["rows"][2] == [[0, 2]]
    assert windows["rows"][18] == [[4, 14], [8, 10]]
    assert windows["rows"][23] == [[8, 15]]
    assert len(windows["rows"]) == 24 and all(
        [r for s, r in rows] == [f - s for s in (0, 4, 8) if s <= f < s + 16]
        for f, rows in enumerate(windows["rows"])
    )
    maps, _, _ = run_arrays(run)
    probs = attnlab.load(store)[D.PROBS].isel(run=0, sample=0).sel(cfg="cond")
    assert probs.sizes[D.WINDOW] == 3 and maps.shape[-1] == 16
    li = next(i for i, e in enumerate(run["layers"]) if e["kind"] == "layer")
    c = run["halves"].index("cond")
    np.testing.assert_allclose(
        maps[1, li, c, 0, 0], probs.isel(step=0, layer=0).mean(D.WINDOW).values, rtol=1e-5
    )


def test_a_video_over_latent_frames_marks_each_frame_at_its_latent_frame(stores, tmp_path):
    """A 3D transformer's map is over latent frames, fewer than its video's: each video frame
    is marked at the latent frame the causal VAE put it in, not at its own index."""
    from attnlab.core.store import save_video
    from attnlab.lab.experiments import GenerationSettings, generate_recorded
    from attnlab.models.tiny_dit import cogvideox_pipeline

    store = tmp_path / "dit.zarr"
    settings = GenerationSettings(prompt="a cat", frames=9, steps=2, seed=0, height=32, width=32)
    video, run_id = generate_recorded(cogvideox_pipeline(), settings, store=store, name="dit")
    save_video(store, run_id, video)
    run = page_data(report(store).html)["runs"][0]
    c = 4  # CogVideoX's VAE: frame 0 alone, then 4 video frames per latent frame
    assert run["video"]["frames"] == len(video) == 9 and run["frames"] == 3
    # latent frame k holds video frames c (k - 1) + 1 .. c k: its members, listed per frame
    members = {0: [0], **{k: list(range(c * (k - 1) + 1, c * k + 1)) for k in (1, 2)}}
    expected = [next(k for k, fs in members.items() if f in fs) for f in range(9)]
    assert run["latent"] == {"rows": expected, "frames": 3, "factor": c, "exact": True}
    # a UNet's runs (map frames = video frames) have no such mapping
    assert all(r["latent"] is None for r in page_data(report(stores["runs"]).html)["runs"])


def test_a_dataset_reports_like_its_store(stores):
    from_path = page_data(report(stores["runs"]).html)["runs"]
    from_ds = page_data(report(attnlab.load(stores["runs"])).html)["runs"]
    assert [r["maps"] for r in from_path] == [r["maps"] for r in from_ds]
    assert from_ds[0]["video"] is None  # a Dataset has no store to read videos from
    assert "a Dataset has no store to read videos from" in from_ds[0]["video_note"]
    assert from_path[0]["video_note"] is None


def test_steps_are_labelled_by_recorded_step_denoising_step_and_timestep(ms_pipe, gen, stores):
    # step 1 of a 3-step run recorded alone: recorded step 1 of 1, denoising step 2 of 3
    store = stores["root"] / "one-step.zarr"
    with attnlab.record(ms_pipe, levels=[0], steps=[1], store=store):
        gen(ms_pipe, num_frames=6, num_inference_steps=3)
    run = page_data(report(store).html)["runs"][0]
    t = float(attnlab.load(store)[D.TIMESTEP].isel(run=0, step=0))
    assert run["recorded"] == [{"index": 1, "timestep": t}]
    (step,) = run["steps"]
    assert step["label"] == f"recorded step 1 of 1 · denoising step 2 of 3 · t = {t:g}"
    # a real clip's steps are the timesteps it was recorded at
    real = page_data(report(stores["real"]).html)["runs"][0]
    assert [s["label"] for s in real["steps"]] == [
        "recorded step 1 of 2 · t = 600",
        "recorded step 2 of 2 · t = 200",
    ]


def test_a_spatial_grid_is_named_in_the_top_notice(ms_pipe, gen, tmp_path):
    store = tmp_path / "grid.zarr"
    with attnlab.record(ms_pipe, levels=[0], reduce="spatial", grid=(2, 2), store=store):
        gen(ms_pipe, num_frames=6)
    page = report(store)
    data = page_data(page.html)
    (line,) = data["reduced"]
    assert line.startswith("the maps of each position of the spatial grid")
    assert line in html.unescape(notice(page.html))
    run = data["runs"][0]
    assert run["notes"] == [
        "the maps of each position of the 2 x 2 spatial grid (the maps are their mean)"
    ]
    assert run["video_note"].startswith("No video of this run is stored")
    maps, _, _ = run_arrays(run)
    probs = attnlab.load(store)[D.PROBS].isel(run=0, sample=0).sel(cfg="cond")
    li = next(i for i, e in enumerate(run["layers"]) if e["kind"] == "layer")
    np.testing.assert_allclose(
        maps[1, li, run["halves"].index("cond"), 0, 0],
        probs.isel(step=0, layer=0).mean([D.Y, D.X]).values,
        rtol=1e-5,
    )


# ---- choosing what goes in --------------------------------------------------------------------


def test_runs_and_compare_are_respected(stores, tmp_path, capsys):
    ids = [str(r) for r in attnlab.load(stores["runs"])[D.RUN].values]
    out = tmp_path / "one.html"
    assert main(["report", str(stores["runs"]), "-o", str(out), "--runs", ids[1]]) == 0
    assert [r["run_id"] for r in page_data(out.read_text())["runs"]] == [ids[1]]
    assert f"written to {out}" in capsys.readouterr().out
    out = tmp_path / "both.html"
    argv = [
        "report",
        str(stores["runs"]),
        str(stores["real"]),
        "-o",
        str(out),
        "--compare",
        ids[1],
        ids[0],
    ]
    assert main(argv) == 0
    data = page_data(out.read_text())
    assert data["compare"] == [ids[1], ids[0]] and len(data["runs"]) == 3
    # an unknown run: one line naming it and the runs there are, nothing written
    bad = tmp_path / "bad.html"
    assert main(["report", str(stores["runs"]), "-o", str(bad), "--compare", ids[0], "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run 'nope'" in err[0] and ids[0] in err[0]
    assert not bad.exists()
    with pytest.raises(ReportError, match="two runs"):
        report(stores["runs"], compare=[ids[0]])


def test_a_run_named_twice_is_one_run_of_the_page(stores, tmp_path, capsys):
    ids = [str(r) for r in attnlab.load(stores["runs"])[D.RUN].values]
    out = tmp_path / "twice.html"
    argv = ["report", str(stores["runs"]), "-o", str(out), "--runs", ids[1], ids[0], ids[1]]
    assert main(argv) == 0
    assert [r["run_id"] for r in page_data(out.read_text())["runs"]] == [ids[1], ids[0]]
    # by its id and by STORE_NAME/ID: still one run
    page = report([stores["runs"], stores["real"]], runs=[ids[0], f"runs/{ids[0]}"])
    assert page.runs == [ids[0]]


def test_stores_of_the_same_name_keep_all_their_runs(stores, tmp_path):
    # two experiments' out/runs.zarr holding runs of the same ids: every run stays on the page,
    # each under its store's label (as many parent folders as tell them apart); a store named
    # twice counts once; Datasets of such stores are numbered
    import shutil

    a, b = tmp_path / "exp1" / "out" / "runs.zarr", tmp_path / "exp2" / "out" / "runs.zarr"
    shutil.copytree(stores["runs"], a)
    shutil.copytree(stores["runs"], b)
    ids = [str(r) for r in attnlab.load(a)[D.RUN].values]
    page = report([a, b, a])
    assert sorted(page.runs) == sorted(f"exp{k}/out/runs/{r}" for k in (1, 2) for r in ids)
    loaded = report([attnlab.load(a), attnlab.load(b)])
    assert len(loaded.runs) == 2 * len(ids) and len(set(loaded.runs)) == 2 * len(ids)
    # printed, a page is one short line, not its megabytes
    n = 2 * len(ids)
    assert repr(loaded) == f"Report(not saved, {loaded.size / 1e6:.1f} MB, {n} runs, 0 left out)"


def test_a_size_limit_must_be_finite_and_hold_the_page_itself(stores, tmp_path, capsys):
    from attnlab.lab.report import minimum_mb

    assert 1.0 < minimum_mb() < DEFAULT_MAX_MB
    for bad in (float("inf"), float("nan"), 0, -1.0, True, "6"):
        with pytest.raises(ReportError, match="max_mb must be a finite positive number"):
            report(stores["runs"], max_mb=bad)
    with pytest.raises(
        ReportError, match=rf"max_mb 0.5 is below the page's fixed part.*at least {minimum_mb()}"
    ):
        report(stores["runs"], max_mb=0.5)
    out = tmp_path / "r.html"
    for value, message in [
        ("inf", "argument --max-mb: the size limit must be a finite positive number of MB"),
        ("nan", "argument --max-mb: the size limit must be a finite positive number of MB"),
        ("0.5", "error: max_mb 0.5 is below the page's fixed part: BokehJS, the page's script"),
    ]:
        try:
            rc = main(["report", str(stores["runs"]), "-o", str(out), "--max-mb", value])
        except SystemExit as stop:
            rc = stop.code
        assert rc == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_size_limit_leaves_out_detail_and_says_so(stores):
    full = report(stores["runs"])
    limit = (full.size - 1000) / 1e6  # a little less than everything needs
    small = report(stores["runs"], max_mb=limit)
    assert small.size <= limit * 1e6 < full.size
    # the largest runs give up detail first, runs alike alike: here both their uncond half
    assert small.left_out == ["the unconditional guidance half (cond is kept): in 2 of 2 runs"]
    assert "Not in this page" in small.html and "unconditional guidance half" in small.html
    runs = page_data(small.html)["runs"]
    assert [r["halves"] for r in runs] == [["cond"], ["cond"]]
    # what is kept is still exactly the stored maps
    run = runs[1]
    assert run["notes"] == ["the unconditional guidance half (cond is kept)"]
    maps, _, _ = run_arrays(run)
    probs = attnlab.load(stores["runs"])[D.PROBS].sel(run=run["run_id"]).isel(sample=0)
    li = next(i for i, e in enumerate(run["layers"]) if e["kind"] == "layer")
    np.testing.assert_array_equal(
        maps[2, li, 0, 0, 0], probs.sel(cfg="cond").isel(step=1, layer=0).values
    )
    # the last resort: the mean over steps at each level only
    from attnlab.lab.report import minimum_mb

    tiny = report(stores["runs"], max_mb=minimum_mb())
    for run in page_data(tiny.html)["runs"]:
        assert run["steps"] == [] and all(e["kind"] != "layer" for e in run["layers"])
    assert (
        "single layers (the means over each level and over all layers are kept): in 2 of 2 runs"
        in tiny.left_out
    )


def test_the_page_never_exceeds_the_size_limit(stores, monkeypatch):
    # five runs with videos: near the fixed part the least detail with their videos is more
    # than the limit allows, so they go too (the page says so); the page stays within limit
    from attnlab.lab import report as report_mod
    from attnlab.lab.report import minimum_mb

    three = [stores["runs"], stores["real"], stores["probe"]]
    full = report(three)
    for limit in (minimum_mb(), (minimum_mb() * 1e6 + full.size) / 2e6):
        page = report(three, max_mb=limit)
        assert page.size <= limit * 1e6 < full.size, limit
    assert "the videos (they do not fit in the size limit): 5 runs have one" in page.left_out
    assert "the videos" in page.html and not any(r["video"] for r in page_data(page.html)["runs"])
    # each run whose video was left out says so, and how to include it (not "no video")
    for run in page_data(page.html)["runs"]:
        assert run["video_note"].startswith(
            f"The video of this run was left out to keep the page under max_mb {limit:g}"
        )
        assert "a larger max_mb (attnlab report STORE --max-mb MB" in run["video_note"]
    # with more room the videos stay
    roomy = report(three, max_mb=full.size * 1.2 / 1e6)
    assert roomy.size == full.size and not roomy.left_out
    assert all(r["video"] and r["video_note"] is None for r in page_data(roomy.html)["runs"])
    # runs that do not fit even at their least detail: one clear error, no page written
    fixed = report_mod._fixed_bytes()
    monkeypatch.setattr(report_mod, "_fixed_bytes", lambda: fixed - 200_000)
    out = stores["root"] / "too-small.html"
    with pytest.raises(ReportError, match=r"the 5 runs do not fit in max_mb .*the page takes"):
        report(three, out, max_mb=minimum_mb())
    assert not out.exists()


def test_the_largest_runs_give_up_detail_first_and_runs_alike_alike():
    from attnlab.lab.report.content import RunShape, detail_ladder, fit, run_bytes

    def shape(frames, layers=22):
        return RunShape(np.arange(6), np.arange(layers), frames, ["uncond", "cond"], 0, 1, False)

    runs = [(shape(48), 4), (shape(32), 4), (shape(32), 4), (shape(16), 4), (shape(16, 26), 4)]
    ladder = detail_ladder(6)
    full = sum(run_bytes(s, lv, ladder[0]) for s, lv in runs)
    bottom = len(ladder) - 1
    assert fit(ladder, runs, full) == [0] * len(runs)
    assert fit(ladder, runs, 0) == [bottom] * len(runs)  # nothing fits: the last rung
    for budget in np.linspace(0.05, 0.95, 10) * full:
        rungs = fit(ladder, runs, int(budget))
        sizes = [run_bytes(s, lv, ladder[r]) for (s, lv), r in zip(runs, rungs)]
        assert sum(sizes) <= budget
        assert rungs[1] == rungs[2]  # runs alike stay alike
        assert rungs[0] >= rungs[1] >= rungs[3]  # the larger a run, the less detail it keeps
        # nothing left free would fit a rung more for any set of alike runs
        for members in ([0], [1, 2], [3], [4]):
            s, lv = runs[members[0]]
            better = [run_bytes(s, lv, d) for d in ladder[: rungs[members[0]]]]
            more = [b - sizes[members[0]] for b in better if b > sizes[members[0]]]
            assert not more or sum(sizes) + len(members) * min(more) > budget


# ---- bad input ---------------------------------------------------------------------------------


def _empty_store(path):
    from attnlab.core.store import prepare_store

    prepare_store(path, {"reduction": "mean", "grid": None, "variables": ["probs"]})
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.zarr", r"no store at .*missing\.zarr"),
        (
            lambda p: (p / "folder").mkdir() or p / "folder",
            r"not a readable zarr v3 group|not an attnlab store",
        ),
        (lambda p: _zarr_group(p / "other.zarr"), r"not an attnlab store"),
        (lambda p: _empty_store(p / "empty.zarr"), r"holds no complete runs"),
    ],
    ids=["missing", "not-zarr", "not-attnlab", "empty"],
)
def test_a_store_that_is_missing_empty_or_not_attnlabs_is_one_clear_error(
    make, message, tmp_path, capsys
):
    store = make(tmp_path)
    out = tmp_path / "r.html"
    assert main(["report", str(store), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnlab report: error:"), err
    assert re.search(message, err[0]), err[0]
    assert not out.exists() and not list(tmp_path.glob(".r.html*"))


def _zarr_group(path):
    import zarr

    zarr.open_group(str(path), mode="w", zarr_format=3).attrs["other"] = 1
    return path


def test_a_failed_write_leaves_no_partial_file(stores, tmp_path, monkeypatch):
    import attnlab.lab.report as R

    out = tmp_path / "r.html"
    out.write_text("the previous report")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        report(stores["runs"], out)
    assert out.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left
    monkeypatch.undo()
    assert main(["report", str(stores["runs"]), "-o", str(tmp_path)]) == 2  # a folder: refused


def test_in_jupyter_the_report_shows_itself(stores):
    import html

    page = report(stores["runs"])
    shown = page._repr_html_()
    assert (
        shown.startswith("<iframe")
        and html.unescape(re.search(r'srcdoc="(.*)"', shown, re.S).group(1)) == page.html
    )


def test_the_command_line_default_size_is_the_apis():
    assert REPORT_MAX_MB == DEFAULT_MAX_MB


# ---- the other commands' stores ----------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_store_reports_every_cell(tiny_dirs, tmp_path):
    from attnlab.lab.sweep import run_sweep

    spec = {
        "name": "report", "models": [str(tiny_dirs["tiny-modelscope"])], "prompts": ["a cat"],
        "seeds": [0], "frames": [6], "edits": ["tar:64D1"],
        "generation": {"steps": 2, "height": 64, "width": 48}, "record": {"levels": [0]},
    }  # fmt: skip
    store = tmp_path / "sweep.zarr"
    assert run_sweep(spec, store, workers=1, progress=False).ok
    data = page_data(report(store).html)
    (run,) = data["runs"]
    assert run["edits"] == "tar 64D1" and run["run_id"].startswith("sweep-")
    maps, _, _ = run_arrays(run)
    probs = attnlab.load(store)[D.PROBS].isel(run=0, sample=0).sel(cfg="cond")
    li = next(i for i, e in enumerate(run["layers"]) if e["kind"] == "layer")
    np.testing.assert_array_equal(
        maps[1, li, run["halves"].index("cond"), 0, 0], probs.isel(step=0, layer=0).values
    )


@pytest.mark.slow
def test_the_demo_front_page_is_the_report(tiny_dirs, tmp_path, capsys, monkeypatch):
    import attnlab.lab.experiments
    import attnlab.lab.plots
    from attnlab.lab.demo import run_demo

    # as test_demo's `cheap`: pixel similarity, figures as PNG at 60 dpi (both tested elsewhere)
    monkeypatch.setattr(attnlab.lab.experiments, "SIMILARITY_BACKEND", "pixel")
    save = attnlab.lab.plots.save_figure
    monkeypatch.setattr(
        attnlab.lab.plots,
        "save_figure",
        lambda fig, path, *a, **k: save(fig, path, ("png",), dpi=60),
    )

    out = tmp_path / "demo"
    run_demo(
        out,
        model=str(tiny_dirs["tiny-modelscope"]),
        reference="world:0",
        frames=(4, 6),
        steps=2,
        story=("maps",),
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"front page (open it in a browser): {out / 'report.html'}"
    text = (out / "report.html").read_text()
    data = page_data(text)
    assert {r["run_id"] for r in data["runs"]} == {
        f"{k}-f{n}" for k in ("real", "synthetic", "tar") for n in (4, 6)
    }
    assert data["compare"] == ["synthetic-f4", "tar-f4"]
    refs = References()
    refs.feed(text)
    figures = [u for u in refs.urls if u.endswith(".png")]
    assert figures and all((out / u).is_file() for u in figures)  # the figures, linked beside it
    assert all(r["video"] is not None for r in data["runs"])
