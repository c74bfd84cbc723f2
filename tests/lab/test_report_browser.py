"""The report end to end in a real browser: Debian's chromium, headless, driven by Playwright.

A store like the demo's maps store (a plain and a TAR run of the tiny ModelScope pipeline,
8 frames, 3 steps, every layer, both guidance halves, each with its video) is reported; the
page must load from disk without an error or a request leaving the file, and moving the step
and layer controls must put the stored map of that step and layer into the plot (read back
from the plot's Bokeh data source). ``.ci/run`` installs chromium; Playwright downloads no
browser.
"""

from __future__ import annotations

import numpy as np
import pytest

import attnlab
from attnlab.core import dims as D

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def store(ms_pipe, tmp_path_factory):
    from attnlab.core.store import save_video
    from attnlab.lab.experiments import GenerationSettings, generate_recorded

    path = tmp_path_factory.mktemp("browser") / "maps.zarr"
    settings = GenerationSettings(prompt="a cat", frames=8, steps=3, seed=0, height=64, width=48)
    for name, edits in (("synthetic-f8", []), ("tar-f8", [attnlab.TAR("64D4")])):
        video, _ = generate_recorded(ms_pipe, settings, edits, store=path, name=name)
        save_video(path, name, video)
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_the_report_in_a_browser_shows_the_stored_maps(store, browser, tmp_path):
    page_file = attnlab.report(
        store, tmp_path / "report.html", compare=("synthetic-f8", "tar-f8")
    ).path
    ds = attnlab.load(store)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on(
        "request",
        lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else outside.append(r.url),
    )
    page.goto(page_file.as_uri())
    page.wait_for_function("window.attnlab && window.attnlab.ready", timeout=15000)

    def shown() -> tuple[dict, np.ndarray]:
        d = page.evaluate("window.attnlab.displayed()")
        image = np.asarray(d["image"]["values"], dtype=np.float64).reshape(d["image"]["shape"])
        return d, image

    def stored(run: str, step: int, layer: str, cfg: str) -> np.ndarray:
        cell = ds[D.PROBS].sel(run=run, step=step, layer=layer, cfg=cfg).isel(sample=0)
        return cell.values.astype(np.float64)

    layers = [str(v) for v in ds[D.LAYER].values]
    first, _ = shown()
    assert first["run"] == "synthetic-f8" and first["step"] == 0 and first["cfg"] == "cond"
    # a layer and a step: the plot holds that stored map
    page.select_option("#layer", label=layers[3])
    page.fill("#step", "2")  # sets the range input and fires its input event
    d, image = shown()
    assert (d["step"], d["layer"]) == (2, layers[3])
    np.testing.assert_allclose(
        image, stored("synthetic-f8", 2, layers[3], "cond"), rtol=0, atol=1e-7
    )
    # another layer, another step, the other half
    page.select_option("#layer", label=layers[-1])
    page.fill("#step", "1")
    page.select_option("#cfg", label="uncond")
    d, again = shown()
    assert (d["step"], d["layer"], d["cfg"]) == (1, layers[-1], "uncond")
    np.testing.assert_allclose(
        again, stored("synthetic-f8", 1, layers[-1], "uncond"), rtol=0, atol=1e-7
    )
    assert np.abs(again - image).max() > 1e-4  # the displayed map changed
    # the comparison: plain and TAR, their difference
    c = page.evaluate("window.attnlab.compared()")
    a = np.asarray(c["image_a"]["values"]).reshape(c["image_a"]["shape"])
    b = np.asarray(c["image_b"]["values"]).reshape(c["image_b"]["shape"])
    diff = np.asarray(c["image_diff"]["values"]).reshape(c["image_diff"]["shape"])
    mean = ds[D.PROBS].sel(cfg="cond").isel(sample=0).mean([D.STEP, D.LAYER])
    np.testing.assert_allclose(a, mean.sel(run="synthetic-f8").values, rtol=1e-5)
    np.testing.assert_allclose(b, mean.sel(run="tar-f8").values, rtol=1e-5)
    np.testing.assert_allclose(diff, a - b, atol=1e-7)
    # the video plays frame by frame
    page.fill("#frame", "5")
    assert page.inner_text("#frame-label") == "frame 6 / 8"
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert not errors, errors
    assert not outside, outside
    page.close()


# ---- the comparison and a windowed run: runs made from the store's maps ----------------------


def _derived(ds):
    """Runs the store does not hold, made from its maps: every run with a second sample (the
    other run's maps); ``tar-later``, TAR's steps 1 and 2 as its steps 0 and 1 (the same
    timesteps) without the last two layers; ``windowed``, the plain run's first 6 frames as two
    FreeNoise windows starting at frames 0 and 2 (a FreeNoise run's layout)."""
    import xarray as xr

    ds = ds.load()
    two = ds.isel(sample=[0, 0]).assign_coords(sample=[0, 1])
    vals = two[D.PROBS].values.copy()
    axis = two[D.PROBS].dims.index(D.SAMPLE)
    first = np.take(vals, 0, axis=axis)
    index = [slice(None)] * vals.ndim
    index[axis] = 1
    vals[tuple(index)] = first[::-1]  # run is the first dimension: the runs swapped
    two[D.PROBS].values = vals
    later = two.sel(run=["tar-f8"]).isel(step=[1, 2], layer=slice(0, -2))
    later = later.assign_coords(run=["tar-later"], step=[0, 1])
    one = ds.sel(run=["synthetic-f8"]).isel(query_frame=slice(0, 6), key_frame=slice(0, 6))
    probs = one[D.PROBS]
    windows = xr.concat([probs, probs], dim=xr.DataArray([0, 2], dims=D.WINDOW, name=D.WINDOW))
    order = list(probs.dims)
    order.insert(order.index(D.LAYER) + 1, D.WINDOW)
    windowed = one.drop_vars(D.PROBS).assign({D.PROBS: windows.transpose(*order)})
    return two, later, windowed.assign_coords(run=["windowed"])


@pytest.fixture(scope="module")
def derived_page(store, tmp_path_factory):
    two, later, windowed = _derived(attnlab.load(store))
    path = tmp_path_factory.mktemp("derived") / "derived.html"
    attnlab.report([two, later, windowed], path, compare=("synthetic-f8", "tar-later"))
    return path, two


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri())
    page.wait_for_function("window.attnlab && window.attnlab.ready", timeout=15000)
    return page, errors


def test_compare_matches_steps_by_timestep_layers_by_name_and_the_chosen_sample(
    derived_page, browser
):
    path, two = derived_page
    page, errors = _open(browser, path)

    def compared() -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        c = page.evaluate("window.attnlab.compared()")
        a, b, d = (
            np.asarray(c[k]["values"], dtype=np.float64).reshape(c[k]["shape"])
            for k in ("image_a", "image_b", "image_diff")
        )
        return c, a, b, d

    def stored(run: str, step: int, layer: str, sample: int) -> np.ndarray:
        cell = two[D.PROBS].sel(run=run, step=step, layer=layer, cfg="cond", sample=sample)
        return cell.values.astype(np.float64)

    t = [float(v) for v in two[D.TIMESTEP].sel(run="tar-f8").values]
    # the means over steps: A's over 3 steps, B's over 2 (other steps): shown, not subtracted
    c, _, _, _ = compared()
    assert (c["a"], c["b"], c["difference"]) == ("synthetic-f8", "tar-later", False)
    assert "different steps" in c["caption"]
    # step by step: A's step 1 is B's step 0 (the same timestep), on a layer both recorded
    layer = str(two[D.LAYER].values[0])
    page.select_option("#cmp-layer", label=layer)
    page.fill("#cmp-step", "0")
    c, a, b, d = compared()
    assert c["steps"] == [1, 0] and c["difference"]
    np.testing.assert_allclose(a, stored("synthetic-f8", 1, layer, 0), rtol=0, atol=1e-7)
    np.testing.assert_allclose(b, stored("tar-f8", 1, layer, 0), rtol=0, atol=1e-7)
    np.testing.assert_allclose(d, a - b, atol=1e-7)
    assert f"recorded step 2 of 3 · denoising step 2 of 3 · t = {t[1]:g}" in c["step_label"]
    assert f"recorded step 1 of 2 · denoising step 1 of 3 · t = {t[1]:g}" in c["step_label"]
    # the mean over all layers: B recorded two layers fewer, so no difference
    page.select_option("#cmp-layer", label=f"all {two.sizes[D.LAYER]} layers (mean)")
    c, _, _, _ = compared()
    assert not c["difference"] and "mean over different layers" in c["caption"]
    # the chosen sample: sample 1 holds the other run's maps
    page.select_option("#cmp-layer", label=layer)
    page.select_option("#cmp-sample", "1")
    c, a, b, d = compared()
    assert c["sample"] == 1 and c["difference"] and "sample 1" in c["caption"]
    np.testing.assert_allclose(a, stored("synthetic-f8", 1, layer, 1), rtol=0, atol=1e-7)
    np.testing.assert_allclose(b, stored("tar-f8", 1, layer, 1), rtol=0, atol=1e-7)
    np.testing.assert_allclose(a, stored("tar-f8", 1, layer, 0), rtol=0, atol=1e-7)  # swapped
    assert not errors, errors
    page.close()


def test_a_windowed_run_marks_the_frames_row_in_each_window(derived_page, browser):
    path, _ = derived_page
    page, errors = _open(browser, path)
    page.select_option("#run-select", "windowed")
    page.fill("#frame", "4")  # video frame 4: row 4 of the window from 0, row 2 of that from 2
    assert page.evaluate("window.attnlab.displayed()")["rows"] == [4, 2]
    assert "row 4 of the window from frame 0, row 2 of the window from frame 2" in page.inner_text(
        "#row-note"
    )
    page.fill("#frame", "7")  # only in the window from 2 (frames 2 to 7)
    assert page.evaluate("window.attnlab.displayed()")["rows"] == [5]
    assert page.inner_text("#frame-label") == "frame 8 / 8"
    assert not errors, errors
    page.close()
