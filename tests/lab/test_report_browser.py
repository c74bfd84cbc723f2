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
