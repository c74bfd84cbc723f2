"""What the command line can know without a model is checked before the model loads, with one
error line naming the option; outputs are refused before any work and created only after the
checks; no error is a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import attnlab
from attnlab.core.store import prepare_store
from attnlab.tools import cli
from attnlab.tools.cli import main

FAST = ["--frames", "2", "--steps", "1", "--height", "64", "--width", "48", "--device", "cpu"]


def _rc(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own exit for option errors
        return int(stop.code or 0)


def _one_error_line(capsys) -> str:
    """The one error line (besides argparse's usage and the libraries' progress bars)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("attnlab")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model fails the test: every refusal below comes before it."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("attnlab.models.loading.load_pipeline", load)


# ---- 1: the device ---------------------------------------------------------------------------


def test_a_bad_device_is_one_line_before_the_model_loads(no_loading, tmp_path, monkeypatch, capsys):
    import torch

    video = tmp_path / "v.gif"
    base = ["generate", "--model", "tiny-modelscope", "--out", str(video), "--device"]
    assert _rc([*base, "gpu"]) == 2
    assert "--device 'gpu' is not a torch device: give cpu, cuda, cuda:N or mps" in (
        _one_error_line(capsys)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _rc([*base, "cuda"]) == 2
    assert "--device 'cuda': CUDA is not available on this machine" in _one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _rc([*base, "cuda:3"]) == 2
    assert "this machine has 1 CUDA device (cuda:0 to cuda:0)" in _one_error_line(capsys)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert _rc([*base, "mps"]) == 2
    assert "--device 'mps': MPS is not available" in _one_error_line(capsys)
    assert not video.exists()


def test_runtime_and_os_errors_are_one_line_naming_the_exception(capsys, monkeypatch):
    def device_error():
        raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported")

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.delenv("ATTNLAB_DEBUG", raising=False)
    assert cli._run("generate", device_error, None) == 1
    line = _one_error_line(capsys)
    assert line.startswith("attnlab generate: error: RuntimeError: CUDA error: out of memory")
    assert "ATTNLAB_DEBUG=1" in line
    assert cli._run("record", disk_full, None) == 1
    assert "error: OSError: [Errno 28] No space left on device" in _one_error_line(capsys)
    monkeypatch.setenv("ATTNLAB_DEBUG", "1")  # the traceback, for whoever asks
    with pytest.raises(RuntimeError):
        cli._run("generate", device_error, None)


# ---- 3, 4: settings known without a model ----------------------------------------------------

BEFORE_LOADING = [
    (["record", "--record-levels", "-1"], "--record-levels: levels must be whole numbers >= 0"),
    (["record", "--record-blocks", "side"], "--record-blocks: unknown block ['side']; allowed"),
    (["record", "--record-names", "(unclosed"], "--record-names: '(unclosed' is not a valid"),
    (["probe", "--levels", "0,a"], "--levels: bad level set '0,a': give whole numbers >= 0"),
    (["probe", "--levels", "0", "-1"], "--levels: bad level set '-1'"),
    (["probe", "--levels", "0,1", "1,0"], "--levels: the level set '1,0' is given twice"),
    (["generate", "--height", "36", "--width", "44"], "height must be a multiple of 8 pixels"),
    (["generate", "--width", "44"], "width must be a multiple of 8 pixels (8, 16, 24, ...)"),
    (
        ["generate", "--record-levels", "0", "--logits", "--reduce", "head"],
        "--record-levels, --reduce, --logits act only with --record STORE",
    ),
    (["generate", "--cfg", "cond"], "--cfg acts only with --record STORE: add --record, or"),
    (["record", "--model", "__file__"], "is a file, not a pipeline folder"),
]


@pytest.mark.parametrize(
    "argv, message", BEFORE_LOADING, ids=[" ".join(a) for a, _ in BEFORE_LOADING]
)
def test_settings_known_without_a_model_are_refused_before_it_loads(
    argv, message, no_loading, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    Path("__file__").write_text("not a pipeline")
    out = {"record": "s.zarr", "probe": "probe-out", "generate": "v.gif"}[argv[0]]
    model = [] if "--model" in argv else ["--model", "tiny-modelscope"]
    assert _rc([*argv, *model, "--out", out]) == 2
    assert message in _one_error_line(capsys)
    assert not Path(out).exists()  # nothing created


@pytest.mark.parametrize(
    "extra, layout",
    [
        (["--reduce", "head"], "--reduce mean; this recording is --reduce head"),
        (["--logits"], "--reduce mean; this recording is --reduce mean --logits"),
        (["--reduce", "spatial"], "this recording is --reduce spatial (grid [4, 4])"),
    ],
)
def test_a_store_of_another_layout_is_refused_before_the_model_loads(
    extra, layout, no_loading, tmp_path, capsys
):
    store = tmp_path / "s.zarr"
    prepare_store(store, {"reduction": "mean", "grid": None, "variables": ["probs"]})
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    argv = ["record", "--model", "tiny-modelscope", *extra, "--out", str(store)]
    assert _rc(argv) == 2
    line = _one_error_line(capsys)
    assert f"--out {store} holds runs recorded with" in line and layout in line
    video = tmp_path / "v.gif"
    assert _rc(["generate", "--model", "tiny-modelscope", *extra, "--record", str(store), "--out", str(video)]) == 2  # fmt: skip
    assert f"--record {store} holds runs recorded with" in _one_error_line(capsys)
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert not video.exists()


def test_probe_levels_the_model_lacks_fail_before_the_baseline_and_create_nothing(
    tiny_dirs, tmp_path, monkeypatch, capsys
):
    from attnlab.lab import experiments

    def generate_recorded(*args, **kwargs):
        raise AssertionError("a video was generated")

    monkeypatch.setattr(experiments, "generate_recorded", generate_recorded)
    out = tmp_path / "probe"
    model = ["--model", str(tiny_dirs["tiny-modelscope"])]
    assert _rc(["probe", *model, *FAST, "--levels", "0", "9", "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "--levels: no temporal attention layer at level [9]" in line
    assert "has levels [0, 1, 2, 3]" in line
    assert _rc(["probe", *model, *FAST, "--record-levels", "7", "--out", str(out)]) == 2
    assert "no temporal attention layer at level [7]" in _one_error_line(capsys)
    assert not out.exists()


# ---- 6: probe into a folder that holds a probe -----------------------------------------------


def test_probe_refuses_an_out_holding_a_probe_unless_force_replaces_it(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "probe"
    base = ["probe", "--model", str(tiny_dirs["tiny-modelscope"]), *FAST, "--out", str(out)]
    assert _rc([*base, "--kind", "identity", "--levels", "0"]) == 0
    store = out / "probe.zarr"
    assert attnlab.load(store).sizes["run"] == 2  # baseline + identity at level 0
    grid = (out / "probe_grid.png").stat().st_mtime_ns
    capsys.readouterr()
    assert _rc([*base, "--kind", "identity", "--levels", "0"]) == 2
    line = _one_error_line(capsys)
    assert f"--out '{out}' already holds a probe ({store})" in line and "--force" in line
    assert attnlab.load(store).sizes["run"] == 2
    assert (out / "probe_grid.png").stat().st_mtime_ns == grid
    # --force: the earlier probe's results are replaced, not appended to
    assert _rc([*base, "--kind", "ones", "--levels", "1", "--force"]) == 0
    assert attnlab.load(store).sizes["run"] == 2
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        "baseline.gif",
        "ones_levels1.gif",
    ]
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    assert "--force" in capsys.readouterr().out


# ---- 2: convert's OUT ------------------------------------------------------------------------


def _Report():
    """What a converter returns (nothing converted here)."""
    from attnlab.models.convert import ConversionReport

    return ConversionReport("m.ckpt")


def test_convert_checks_out_before_reading_the_checkpoint(tmp_path, monkeypatch, capsys):
    from attnlab.models import convert

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was read")

    monkeypatch.setattr(convert, "convert_videocrafter2", refuse)
    ckpt = str(tmp_path / "model.ckpt")
    a_file = tmp_path / "existing.gif"
    a_file.write_bytes(b"GIF")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "model_index.json").write_text("{}")
    for out, force, message in [
        (a_file, [], "is a file: give a folder for the diffusers pipeline"),
        (other, [], "is a folder holding other files, not a pipeline: give a new or empty"),
        (other, ["--force"], "is a folder holding other files, not a pipeline"),
        (earlier, [], "already holds a pipeline (model_index.json): give a new folder, or pass"),
    ]:
        assert _rc(["convert", "videocrafter2", ckpt, str(out), *force]) == 2
        assert f"OUT '{out}' {message}" in _one_error_line(capsys)
    assert (other / "notes.txt").read_text() == "mine" and a_file.read_bytes() == b"GIF"


def test_convert_force_replaces_an_earlier_conversion_only_once_it_succeeded(
    tmp_path, monkeypatch, capsys
):
    from attnlab.models import convert

    out = tmp_path / "vc2"
    out.mkdir()
    (out / "model_index.json").write_text('{"old": true}')
    (out / "stale.safetensors").write_text("old")

    def fails(checkpoint, where, **kwargs):
        (Path(where) / "model_index.json").write_text('{"half": true}')
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(convert, "convert_videocrafter2", fails)
    assert _rc(["convert", "videocrafter2", "m.ckpt", str(out), "--force"]) == 1
    assert "OSError: [Errno 5] Input/output error" in _one_error_line(capsys)
    assert (out / "model_index.json").read_text() == '{"old": true}'  # the earlier one is kept

    def works(checkpoint, where, **kwargs):
        (Path(where) / "model_index.json").write_text('{"new": true}')
        return _Report()

    monkeypatch.setattr(convert, "convert_videocrafter2", works)
    assert _rc(["convert", "videocrafter2", "m.ckpt", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json"]
    assert (out / "model_index.json").read_text() == '{"new": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vc2"]  # no temporary folder left
    fresh = tmp_path / "new" / "vc2"
    assert _rc(["convert", "videocrafter2", "m.ckpt", str(fresh)]) == 0
    assert (fresh / "model_index.json").is_file()


# ---- 5: sites --------------------------------------------------------------------------------


def test_sites_refuses_half_a_size_a_bad_latent_and_a_file(tmp_path, monkeypatch, capsys):
    def no_table(*args, **kwargs):
        raise AssertionError("the model was read")

    monkeypatch.setattr("attnlab.core.sites.sites", no_table)
    monkeypatch.setattr("attnlab.models.loading.resolve_model", no_table)  # no hub id either
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"")
    for argv, message in [
        (["--height", "32"], "--height needs --width too"),
        (["--width", "32"], "--width needs --height too"),
        (["--latent", "0", "-3"], "argument --latent: latent size must be a whole number >= 1"),
        (["--height", "0", "--width", "32"], "argument --height: height must be a whole number"),
        (["--latent", "4", "4", "--height", "32", "--width", "32"], "not both"),
    ]:
        assert _rc(["sites", "organism-rope", *argv]) == 2
        assert message in _one_error_line(capsys)
    assert _rc(["sites", str(a_file)]) == 2
    assert "is a file, not a pipeline folder" in _one_error_line(capsys)


# ---- 7: bench --help -------------------------------------------------------------------------


def test_bench_help_loads_no_torch_and_the_names_are_the_benchmarks():
    code = """
import sys
from attnlab.tools.cli import main
try:
    main(["bench", "--help"])
except SystemExit:
    pass
print("TORCH", "torch" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout and "--variants" in done.stdout
    from attnlab.tools import bench, bench_names

    assert bench.CONFIGS is bench_names.CONFIGS and bench.ALL_VARIANTS == bench_names.ALL_VARIANTS
    assert bench.VARIANTS == bench_names.VARIANTS and bench.PEERS == bench_names.PEERS
    assert bench.__doc__.split("\n")[0] == bench_names.DESCRIPTION
