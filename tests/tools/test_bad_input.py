"""Bad input: one clear error naming the option (or argument), before any model loads, with
nothing left behind; and no success reported for what is not on disk."""

from __future__ import annotations

import os

import pytest
import torch

import attnlab
from attnlab.core.selection import SelectionError, Steps
from attnlab.models.convert.layout import load_checkpoint
from attnlab.models.loading import check_generation
from attnlab.tools.cli import main
from tests.helpers import GEN

# (extra arguments of `attnlab record`, what the one error line must contain)
BAD_RECORD_OPTIONS = [
    (["--steps", "-1"], "argument --steps: steps must be a whole number >= 1, got -1"),
    (["--steps", "0"], "argument --steps: steps must be a whole number >= 1, got 0"),
    (["--frames", "0"], "argument --frames: frames must be a whole number >= 1, got 0"),
    (["--frames", "-3"], "argument --frames: frames must be a whole number >= 1, got -3"),
    (["--frames", "many"], "argument --frames: invalid int value: 'many'"),
    (["--height", "3"], "argument --height: height must be a multiple of 8 pixels"),
    (["--guidance", "nan"], "argument --guidance: guidance must be a finite number, got nan"),
    (["--guidance", "inf"], "argument --guidance: guidance must be a finite number, got inf"),
    (["--record-steps", "abc"], "argument --record-steps: invalid step selection 'abc'"),
    (["--record-steps", "5:2"], "argument --record-steps: steps 5:2 select no step in any run"),
    (["--record-steps", "1:3:0"], "argument --record-steps: steps 1:3:0: a slice step cannot"),
    (["--steps", "2", "--record-steps", "10:20"], "steps 10:20 select none of this run's 2"),
    (["--steps", "2", "--record-steps", "0,5"], "step 5 out of range: this run has 2 steps"),
    (["--video", "v.avi"], "--video 'v.avi' must end in .mp4 or .gif"),
]


@pytest.mark.parametrize("extra, message", BAD_RECORD_OPTIONS, ids=lambda v: " ".join(v))
def test_bad_record_options_are_one_error_before_any_work(extra, message, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    argv = ["record", "--model", "tiny-modelscope", "--out", str(store), *extra]
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse's own exit for option errors
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert not store.exists()


def test_generate_refuses_an_output_it_cannot_write_before_generating(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = main(["generate", "--model", "tiny-modelscope", "--out", str(blocker / "v.mp4")])
    assert rc == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-modelscope", "--out", str(tmp_path)]) == 2
    assert "must end in .mp4 or .gif" in capsys.readouterr().err


def test_a_run_that_is_not_on_disk_is_never_reported_as_recorded(
    tiny_dirs, tmp_path, capsys, monkeypatch
):
    """The success line is printed only after the store is re-read and holds the run."""
    import attnlab.lab.experiments as experiments

    def ghost(pipe, settings, edits=(), *, store=None, record_kwargs=None):
        return torch.zeros(2, 8, 8, 3), "ghost-run"

    monkeypatch.setattr(experiments, "generate_recorded", ghost)
    store = tmp_path / "s.zarr"
    from attnlab.core.store import prepare_store

    prepare_store(store, {"reduction": "mean"})
    rc = main(["record", "--model", str(tiny_dirs["tiny-modelscope"]), "--out", str(store)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "no complete run ghost-run" in captured.err
    assert "recorded run" not in captured.out


def test_step_selections_are_checked_as_ranges_and_slices_alike():
    with pytest.raises(SelectionError, match="select no step in any run"):
        Steps.make(slice(5, 2))
    with pytest.raises(SelectionError, match="slice step cannot be zero"):
        Steps.make(slice(0, 4, 0))
    with pytest.raises(SelectionError, match="takes integers"):
        Steps.make(slice(0.5, 4))
    with pytest.raises(SelectionError, match=r"10:20 select none of this run's 2 steps \(0..1\)"):
        Steps.make(slice(10, 20)).resolve(2)
    with pytest.raises(SelectionError, match=r"10:20 select none of this run's 2 steps"):
        Steps.make(range(10, 20)).resolve(2)
    # a range is a slice: "the first 14 steps" is all of a 3-step run, as --record-steps 0:14
    assert Steps.make(range(0, 14)).resolve(3) == Steps.parse("0:14").resolve(3) == {0, 1, 2}
    assert Steps.make(range(0, 14)).resolve(25) == set(range(14))
    with pytest.raises(SelectionError, match="step 14 out of range"):
        Steps.make([0, 14]).resolve(3)  # an index past the end is refused
    # what a selection chooses is what Python's slicing of range(n) chooses
    for text, sl in [
        ("0:14", slice(0, 14)),
        ("::2", slice(None, None, 2)),
        ("-3:", slice(-3, None)),
    ]:
        assert Steps.parse(text).resolve(10) == set(range(10)[sl])
    assert Steps.parse("0,5").resolve(10) == {0, 5} and Steps.parse("all").resolve(10) is None


def test_the_api_refuses_a_step_slice_that_selects_nothing_at_the_first_step(ms_pipe):
    with (
        pytest.raises(SelectionError, match="10:20 select none of this run's 2 steps"),
        attnlab.record(ms_pipe, levels=[0], steps=slice(10, 20)),
    ):
        ms_pipe(**GEN, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert not attnlab.is_instrumented(ms_pipe)


def test_levels_and_generation_settings_are_named_in_api_errors(ms_pipe):
    with (
        pytest.raises(SelectionError, match=r"levels must be whole numbers >= 0.*\['a'\]"),
        attnlab.record(ms_pipe, levels=["a"]),
    ):
        pass
    assert not attnlab.is_instrumented(ms_pipe)
    with pytest.raises(ValueError, match="frames must be a whole number >= 1, got 0"):
        check_generation(frames=0, steps=2)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        check_generation(frames=8, steps=2, guidance=float("nan"))
    check_generation(frames=8, steps=2, guidance=7.5, height=64, width=48, record_steps=[0, 1])


class _NotATensor:
    pass


def test_convert_tells_junk_from_pickles_and_reads_older_tensor_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    for path, what in [(empty, "an empty file"), (junk, "neither torch.save's zip format")]:
        with pytest.raises(ValueError, match=f"not a PyTorch checkpoint \\({what}") as err:
            load_checkpoint(path)
        assert "trust_pickle" not in str(err.value)
    # a tensors-only file in the format torch.save wrote before 1.6 loads safely
    old = tmp_path / "old.pt"
    weights = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}
    torch.save(weights, old, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(old)["w"], weights["state_dict"]["w"])
    # pickled objects beyond tensors: the advice names them
    objects = tmp_path / "objects.pt"
    torch.save({"w": torch.ones(2), "cfg": _NotATensor()}, objects)
    with pytest.raises(ValueError, match=r"pickled objects beyond tensors \(.*_NotATensor\)"):
        load_checkpoint(objects)
    assert set(load_checkpoint(objects, trust_pickle=True)) == {"w"}
    # a download cut short: torch.save's zip without its end record
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.ones(1000)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 9 // 10])
    with pytest.raises(ValueError, match="truncated or damaged PyTorch checkpoint"):
        load_checkpoint(cut)
    # trusted objects of a package that is not installed: the module named, not a traceback
    import importlib
    import sys

    (tmp_path / "attnlab_gone_mod.py").write_text("class Config:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        gone = importlib.import_module("attnlab_gone_mod")
        torch.save({"w": torch.ones(2), "cfg": gone.Config()}, tmp_path / "gone.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("attnlab_gone_mod", None)
        (tmp_path / "attnlab_gone_mod.py").unlink()
    with pytest.raises(ValueError, match="module 'attnlab_gone_mod', which is not installed"):
        load_checkpoint(tmp_path / "gone.pt", trust_pickle=True)


def test_a_failure_before_the_first_step_leaves_no_store_skeleton(ms_pipe, tmp_path):
    new, kept = tmp_path / "new.zarr", tmp_path / "kept.zarr"
    with (
        pytest.raises(RuntimeError, match="before any step"),
        attnlab.record(ms_pipe, levels=[0], store=new),
    ):
        raise RuntimeError("before any step")
    assert not new.exists()
    # a store that held runs before is left as it was
    with attnlab.record(ms_pipe, levels=[0], store=kept):
        ms_pipe(**GEN, generator=torch.Generator().manual_seed(0), output_type="pt")
    with pytest.raises(RuntimeError), attnlab.record(ms_pipe, levels=[0], store=kept):
        raise RuntimeError("before any step")
    assert attnlab.load(kept).sizes["run"] == 1
