"""analyses/extrapolation.py, plumbing only on the tiny ModelScope UNet: one run per method and
length ratio into a store, a method the model cannot take left out, the table and the figure
of its PE kind drawn from the store, a rerun that generates nothing; on the tiny CogVideoX: the
frame counts its pipeline takes and the window fusions on joint attention."""

from __future__ import annotations

import csv
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "extrapolation.py"


def test_extrapolation_analysis_writes_a_store_a_table_and_a_figure(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT), run_name="extrapolation")["main"]
    args = ["--models", "tiny-modelscope", "--train", "4", "--lengths", "1", "2", "--steps", "1"]
    args += ["--height", "64", "--width", "48", "--methods", "plain", "riflex", "sliding_window"]
    args += ["--data", str(tmp_path / "data"), "--figures", str(tmp_path / "fig")]
    paths = main(args)
    out = capsys.readouterr().out
    assert "riflex does not apply" in out  # ModelScope's frames have no RoPE
    table = tmp_path / "fig" / "extrapolation" / "metrics.csv"
    assert table in paths and (tmp_path / "fig" / "extrapolation" / "none.png") in paths
    rows = {(r["method"], float(r["ratio"])): r for r in csv.DictReader(table.open())}
    assert set(rows) == {(m, r) for m in ("plain", "sliding_window") for r in (1.0, 2.0)}
    assert {int(rows[("plain", r)]["frames"]) for r in (1.0, 2.0)} == {4, 8}
    # windows of 4 frames: no attention beyond offset 3 under SlidingWindow, some without it
    assert float(rows[("sliding_window", 2.0)]["mass_beyond"]) == 0.0
    assert float(rows[("plain", 2.0)]["mass_beyond"]) > 0.01
    assert rows[("plain", 1.0)]["repetition_score"] == ""  # NaN: no lag >= 4 frames
    assert -1 <= float(rows[("plain", 2.0)]["repetition_score"]) <= 1
    assert 0 < float(rows[("plain", 2.0)]["sink_score"]) < 1
    store = tmp_path / "data" / "extrapolation" / "tiny-modelscope.zarr"
    assert store.is_dir()
    before = table.read_text()
    main([*args, "--draw-only"])  # from the store alone
    assert table.read_text() == before
    main(args)  # every run stored: nothing generated
    assert "frames" not in capsys.readouterr().out.replace("metrics.csv", "")


def test_on_a_dit_frame_counts_are_ones_its_pipeline_takes_and_the_window_fusions_run(tmp_path):
    """The tiny CogVideoX (4 frames per latent frame, trained length 9 = 3 latent frames): ratio
    2 asks for 18 frames and runs 17 (4 k + 1); SlidingWindow over 3 latent frames leaves no
    attention beyond them."""
    from attnlab.models.tiny_dit import cogvideox_pipeline

    folder = tmp_path / "cog"
    cogvideox_pipeline().save_pretrained(str(folder))
    main = runpy.run_path(str(SCRIPT), run_name="extrapolation")["main"]
    args = ["--models", str(folder), "--train", "9", "--lengths", "1", "2", "--steps", "1"]
    args += ["--height", "64", "--width", "64", "--methods", "plain", "sliding_window"]
    args += ["spectral_blend", "--data", str(tmp_path / "data")]
    main([*args, "--figures", str(tmp_path / "fig")])
    table = tmp_path / "fig" / "extrapolation" / "metrics.csv"
    rows = {(r["method"], float(r["ratio"])): r for r in csv.DictReader(table.open())}
    assert {(int(r["frames"]), int(r["latent"])) for r in rows.values()} == {(9, 3), (17, 5)}
    assert float(rows[("sliding_window", 2.0)]["mass_beyond"]) == 0.0
    assert float(rows[("plain", 2.0)]["mass_beyond"]) > 0.01
    assert float(rows[("spectral_blend", 2.0)]["mass_beyond"]) != float(
        rows[("plain", 2.0)]["mass_beyond"]
    )
