"""Sweep specs for length extrapolation: frame counts as ratios of the training length
(``lengths`` x ``train_frames``), the attention-side edits as cells (strings and tables), and
preflight naming an edit a model cannot take, before any work."""

from __future__ import annotations

import pytest

from attnlab.edits import SlidingWindow, SpectralBlend, WindowDecay, from_spec
from attnlab.lab.sweep import SweepSpecError, parse_spec
from attnlab.lab.sweep.spec import preflight

EDITS = [
    "none",
    "tar:64D1",
    "window_decay:16,0.9",
    "sliding_window:16,4",
    "spectral_blend:16,0.25",
    {"kind": "sliding_window", "window": 8, "stride": 2, "weighting": "flat"},
    ["tar:64D1", "spectral_blend:16,1,filter=box"],
]


def _spec(**over):
    spec = {
        "models": ["tiny-modelscope"],
        "prompts": ["a polar bear playing drums"],
        "seeds": [0],
        "lengths": [1, 2, 4],
        "train_frames": 16,
        "edits": EDITS,
        "generation": {"steps": 2, "height": 64, "width": 48},
        "record": {"levels": [0]},
    }
    spec.update(over)
    return {k: v for k, v in spec.items() if v is not None}


def test_lengths_are_ratios_of_the_training_length_and_the_edits_are_cells():
    spec = parse_spec(_spec())
    assert spec.frames == [16, 32, 64] and spec.lengths == [1.0, 2.0, 4.0]
    assert spec.train_frames == 16
    cells = spec.cells()
    assert len(cells) == 3 * len(EDITS)
    assert sorted({c.frames for c in cells}) == [16, 32, 64]
    by_label = {c.label: c for c in cells if c.frames == 32}
    assert from_spec(by_label["sliding_window:16,4"].edits[0]) == SlidingWindow(16, 4)
    assert from_spec(by_label["spectral_blend:16,0.25"].edits[0]) == SpectralBlend(16, 0.25)
    assert from_spec(by_label["window_decay:16,0.9"].edits[0]) == WindowDecay(16, 0.9)
    table = by_label["sliding_window(window=8,stride=2,weighting=flat)"]
    assert from_spec(table.edits[0]) == SlidingWindow(8, 2, weighting="flat")
    combo = by_label["tar:64D1+spectral_blend:16,1,filter=box"]
    assert [s["kind"] for s in combo.edits] == ["tar", "spectral_blend"]
    # a ratio that is not a whole number of frames rounds; the ids differ by frame count
    assert parse_spec(_spec(lengths=[1, 1.5], train_frames=9)).frames == [9, 14]
    assert len({c.cell_id for c in cells}) == len(cells)


@pytest.mark.parametrize(
    "over, key, match",
    [
        ({"frames": [8]}, "frames", "exactly one of 'frames'"),
        ({"lengths": None}, "frames", "exactly one of 'frames'"),
        ({"train_frames": None}, "train_frames", "is missing"),
        ({"lengths": None, "frames": [8]}, "train_frames", "applies with 'lengths' only"),
        ({"train_frames": 0}, "train_frames", ">= 1"),
        ({"train_frames": 16.5}, "train_frames", "must be an integer"),
        ({"lengths": []}, "lengths", "empty list"),
        ({"lengths": [1, "x"]}, r"lengths\[1\]", "must be a number"),
        ({"lengths": [0.01]}, r"lengths\[0\]", "is no frame"),
        ({"lengths": [1, 1.01]}, "lengths", "same frame counts twice"),
        ({"edits": ["sliding_window:16,32"]}, r"edits\[0\]", r"stride \(32\) must be <= window"),
        ({"edits": ["spectral_blend:16,0"]}, r"edits\[0\]", "cutoff must be a positive"),
    ],
)
def test_bad_lengths_and_edits_name_the_entry(over, key, match):
    with pytest.raises(SweepSpecError, match=match) as err:
        parse_spec(_spec(**over))
    assert err.value.key.startswith(key.replace("\\", ""))


def test_preflight_takes_the_window_fusions_on_a_dit_and_names_a_bad_target(tmp_path):
    from attnlab.models.tiny_dit import cogvideox_pipeline

    folder = tmp_path / "cog"
    cogvideox_pipeline().save_pretrained(str(folder))
    spec = _spec(
        models=[str(folder)],
        train_frames=9,
        lengths=[1, 2],
        edits=["none", "window_decay:2,0.9", "sliding_window:2,1", "spectral_blend:2,0.25@7"],
        generation={"steps": 2, "height": 64, "width": 64},
    )
    with pytest.raises(SweepSpecError, match="level") as err:
        preflight(parse_spec(spec))
    assert err.value.key == "edits[3]"
    spec["edits"] = ["none", "window_decay:2,0.9", "sliding_window:2,1", "spectral_blend:2,0.25"]
    assert str(folder) in preflight(parse_spec(spec))


def test_preflight_takes_the_new_edits_on_a_unet():
    spec = parse_spec(_spec(lengths=[0.5, 1], edits=EDITS))
    assert "tiny-modelscope" in preflight(spec)
