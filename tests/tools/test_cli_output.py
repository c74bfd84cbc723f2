"""A quiet, fast command line: no heavy imports before a command runs, one line per problem."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attnlab
from attnlab.core import dims as D
from attnlab.models.loading import DEFAULT_MODEL
from attnlab.tools.cli import main

HEAVY = ("torch", "diffusers", "transformers", "xarray", "zarr", "dask", "nnsight")


def test_help_argument_errors_and_datasets_list_load_no_heavy_module(tmp_path):
    # what a command line waits for before it answers: a fresh interpreter, no torch & co.
    code = f"""
import sys
from attnlab.models.loading import DEFAULT_MODEL
from attnlab.tools.cli import main
for argv in (["--help"], ["record", "--help"], ["record", "--frames", "many"], ["nope"]):
    try:
        main(argv)
    except SystemExit:
        pass
assert main(["datasets", "list", "--cache-dir", {str(tmp_path)!r}]) == 0
print("HEAVY", [m for m in {HEAVY!r} if m in sys.modules])
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-500:]
    assert "invalid int value: 'many'" in done.stderr
    assert "carphone" in done.stdout  # the list itself was printed


def test_import_attnlab_is_light_and_names_load_on_use():
    code = "import sys, attnlab; print([m for m in ('torch', 'xarray') if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]", out.stderr
    assert callable(attnlab.sites) and attnlab.TAR.__name__ == "TAR"
    assert set(attnlab.__all__) <= set(dir(attnlab))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        attnlab.nothing  # noqa: B018


def test_help_texts_show_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sampler steps (default: 25)" in text
    assert f"(default: {DEFAULT_MODEL})" in text
    assert "classifier-free guidance scale (default: the model's own" in text
    with pytest.raises(SystemExit):
        main(["record-real", "--help"])
    assert "(default: 200 400 600)" in " ".join(capsys.readouterr().out.split())


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_model_name_typo_is_one_line_with_the_embedded_names_and_the_closest(capsys):
    assert main(["sites", "organism-nnone"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("attnlab sites: error: unknown model 'organism-nnone'")
    assert "closest: 'organism-none'" in line and "tiny-modelscope" in line


def test_hub_id_while_offline_is_one_line_before_any_network_call(capsys, monkeypatch, tmp_path):
    from attnlab.models import loading

    monkeypatch.setattr(loading, "_hub_offline", lambda: True)

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr("diffusers.DiffusionPipeline.from_pretrained", no_network)
    out = tmp_path / "x.zarr"
    assert main(["record", "--model", "someone/no-such-model", "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "'someone/no-such-model' is not in the local hub cache and the hub is offline" in line
    assert "organism-none" in line and not out.exists()


def test_figures_all_without_data_names_the_path_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--all"]) == 2
    line = _one_error_line(capsys)
    assert str(Path("analyses/data") / DEFAULT_MODEL) in line
    assert list(tmp_path.iterdir()) == []  # no data folder, no figures folder


def test_figures_draws_with_the_frame_counts_and_models_it_is_given(tmp_path, monkeypatch, capsys):
    import attnlab.lab.experiments
    from attnlab.lab.experiments import Context

    seen = []
    monkeypatch.setattr(
        attnlab.lab.experiments, "draw_all", lambda ctx, names: seen.append(ctx) or {}
    )
    data = str(tmp_path / "data")
    assert main(["figures", "prior", "--data", data, "--frames", "8", "16", "--models", "m1"]) == 0
    assert main(["figures", "prior", "--data", data]) == 0
    assert (seen[0].frames, seen[0].models) == ((8, 16), ("m1",))
    assert (seen[1].frames, seen[1].models) == (Context.frames, Context.models)  # the defaults
    # without --frames: the lengths the stores say they were run with (stored_frames)
    monkeypatch.setattr(attnlab.lab.experiments, "stored_frames", lambda ctx: (5, 7))
    assert main(["figures", "prior", "--data", data]) == 0
    assert main(["figures", "prior", "--data", data, "--frames", "8", "16"]) == 0
    assert [c.frames for c in seen[2:]] == [(5, 7), (8, 16)]
    del seen[2:]
    with pytest.raises(SystemExit):
        main(["figures", "--all", "--frames", "0", "16"])
    assert "frames must be a whole number >= 1" in capsys.readouterr().err
    assert seen[2:] == []


def test_ctrl_c_is_one_line_exit_130_and_load_warns_once(tiny_dirs, tmp_path, monkeypatch, capsys):
    from attnlab.lab import experiments

    store = tmp_path / "runs.zarr"
    args = ["record", "--model", str(tiny_dirs["tiny-modelscope"]), "--frames", "4", "--steps", "3",
            "--height", "64", "--width", "48", "--record-levels", "0", "--out", str(store), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    real_generate = experiments.generate

    def interrupted(pipe, prompt, **kw):
        calls = []

        def ctrl_c(module, args):
            calls.append(1)
            if len(calls) == 3:  # step 0 is in the store, step 2 never runs
                raise KeyboardInterrupt

        handle = pipe.unet.register_forward_pre_hook(ctrl_c)
        try:
            return real_generate(pipe, prompt, **kw)
        finally:
            handle.remove()

    monkeypatch.setattr(experiments, "generate", interrupted)
    capsys.readouterr()
    assert main(args) == 130
    err = capsys.readouterr().err  # (besides the progress bars of the pipeline)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("attnlab")]
    assert lines == [
        f"attnlab record: interrupted; 1 completed run kept in {store}; "
        "the incomplete run is ignored by load"
    ], err
    with pytest.warns(UserWarning, match=r"skipped 1 incomplete run") as seen:
        ds = attnlab.load(store)
    assert len([w for w in seen if "incomplete" in str(w.message)]) == 1
    assert ds.sizes[D.RUN] == 1
    assert attnlab.load(store, include_incomplete=True).sizes[D.RUN] == 2


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_videos_follow_the_umask(tmp_path, umask):
    from attnlab.data.video import write_video

    old = os.umask(umask)
    try:
        path = write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "v.gif", fps=4)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_log():
    """Every message diffusers' loggers pass on (they do not propagate to the root logger)."""
    import diffusers  # noqa: F401

    collect = _Collect()
    root = logging.getLogger("diffusers")
    root.addHandler(collect)
    try:
        yield collect.messages
    finally:
        root.removeHandler(collect)


def test_known_harmless_library_logs_are_dropped_only_inside_the_block(diffusers_log):
    from attnlab.util.quiet import quiet_library_logs

    log = logging.getLogger("diffusers.pipelines.pipeline_utils")
    deprecated = (
        "The TextToVideoSDPipeline has been deprecated and will not receive bug fixes or "
        "feature updates after Diffusers version 0.33.1. "
    )
    with quiet_library_logs():
        log.warning(deprecated)
        log.warning("Expected types for unet: something real")
    log.warning(deprecated)  # outside the block: shown again
    assert diffusers_log == ["Expected types for unet: something real", deprecated]


def test_loading_a_pipeline_logs_no_known_harmless_message(tiny_dirs, diffusers_log):
    from attnlab.models import load_pipeline

    load_pipeline(str(tiny_dirs["tiny-modelscope"]), progress=False)
    load_pipeline(str(tiny_dirs["tiny-animatediff"]), progress=False)
    harmless = ("has been deprecated and will not receive", "kept in float32: []")
    assert not [m for m in diffusers_log if any(h in m for h in harmless)]


def test_progress_false_loads_without_the_libraries_bars_and_restores_them(tmp_path, capsys):
    """``load_pipeline(progress=False)`` (what the demo uses) draws none of diffusers' or
    transformers' loading bars; ``progress=True`` does; the libraries' own settings come back
    after the load, also after a load that fails."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from attnlab.models import load_pipeline

    load_pipeline("organism-none", progress=True)
    assert "Loading pipeline components" in capsys.readouterr().err
    load_pipeline("organism-none", progress=False)
    assert "Loading" not in capsys.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
    with pytest.raises(FileNotFoundError):
        load_pipeline(str(tmp_path), progress=False)  # (an empty folder)
    assert diffusers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()


def test_ffmpeg_notes_are_dropped_and_other_c_stderr_lines_kept(capfd):
    from attnlab.util.quiet import filtered_stderr

    with filtered_stderr():
        os.write(2, b"[h264 @ 0x55] A non-intra slice in an IDR NAL unit.\n")
        os.write(2, b"[h264 @ 0x55] decode_slice_header error\n")
        os.write(2, b"[mov @ 0x55] a real problem\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "non-intra" not in err and "decode_slice_header" not in err
    assert err.splitlines() == ["[mov @ 0x55] a real problem", "after"]


def test_sample_clip_names_work_as_transfer_references(samples, tmp_path):
    by_name = attnlab.Transfer("carphone", similarity="pixel", frames=6, levels=[0])
    by_path = attnlab.Transfer(samples["carphone"], similarity="pixel", frames=6, levels=[0])
    # the same clip read through the sample table or its path: the same frames, same matrix
    np.testing.assert_array_equal(by_name.reference_similarity(), by_path.reference_similarity())
    parsed = attnlab.parse_edit("transfer:carphone@0")
    assert isinstance(parsed, attnlab.Transfer) and parsed.reference == "carphone"
    with pytest.raises(attnlab.EditError, match=r"'carphnoe' not found.*sample clip.*carphone"):
        attnlab.Transfer("carphnoe")


def test_generate_with_a_sample_clip_transfer_on_the_command_line(tiny_dirs, samples, tmp_path):
    video, store = tmp_path / "v.gif", tmp_path / "t.zarr"
    args = ["generate", "--model", str(tiny_dirs["tiny-modelscope"]), "--frames", "4", "--steps", "1", "--height", "64",
            "--width", "48", "--edit", "transfer:carphone@0", "--out", str(video), "--record", str(store), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    (edit,) = json.loads(attnlab.load(store)[D.EDITS].item())
    assert edit["kind"] == "transfer" and edit["reference"] == "carphone"


def test_record_real_without_sample_size_says_which_option_gives_the_size(ms_pipe):
    before = ms_pipe.unet.config.sample_size
    ms_pipe.unet.register_to_config(sample_size=None)
    try:
        with pytest.raises(ValueError, match=r"no sample_size.*height= and width=.*--height"):
            attnlab.record_real(ms_pipe, "carphone", frames=4, timesteps=[500])
    finally:
        ms_pipe.unet.register_to_config(sample_size=before)


def test_cli_default_model_is_the_libraries():
    from attnlab import models
    from attnlab.tools import cli

    assert cli.DEFAULT_MODEL == models.DEFAULT_MODEL
    assert re.fullmatch(r"organism-\w+", cli.DEFAULT_MODEL)


def test_generation_without_guidance_takes_the_models_own(tmp_path):
    # the organisms' pipeline defaults to guidance 3.0 (at 7.5 gray backgrounds get noisier):
    # the command line leaves it to the pipeline unless told
    store = tmp_path / "g.zarr"
    base = ["record", "--model", "organism-rope", "--frames", "4", "--steps", "2",
            "--record-levels", "0", "--out", str(store)]  # fmt: skip
    assert main([*base, "--prompt", "a red circle moving up on a black background"]) == 0
    assert main([*base, "--prompt", "a red circle moving up on a gray background",
                 "--guidance", "5"]) == 0  # fmt: skip
    ds = attnlab.load(store)
    scales = [json.loads(p)["guidance_scale"] for p in ds[D.PROVENANCE].values]
    assert scales == [3.0, 5.0]
