"""analyses/organisms_dependence.py: the plain maps' distance from uniform against a brute-force
sum, its two ends (all-ones 0, identity 1 - 1/N), the record's file name for a folder, and one
draw on an organism end to end."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "organisms_dependence.py"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT), run_name="organisms_dependence")


def test_uniform_distance_is_the_mean_row_total_variation_per_level(script):
    n, rng = 6, np.random.default_rng(0)
    rows = rng.random((2, 5, 3, n, n))  # step, layer, sample, query_frame, key_frame
    maps = rows / rows.sum(-1, keepdims=True)
    maps[:, 0] = np.eye(n)  # level 0: identity and one random layer
    maps[:, 2] = 1.0 / n  # level 1: all-ones and one random layer
    levels = [0, 0, 1, 1, 2]
    probs = xr.DataArray(
        maps,
        dims=("step", "layer", "sample", "query_frame", "key_frame"),
        coords={"level": ("layer", levels)},
    )
    got = script["uniform_distance"](probs)
    tv = 0.5 * np.abs(maps - 1.0 / n).sum(-1)  # [step, layer, sample, query_frame]
    want = {lv: tv[:, np.asarray(levels) == lv].mean() for lv in (0, 1, 2)}
    assert got.keys() == want.keys()
    for lv in want:
        assert got[lv] == pytest.approx(want[lv], abs=1e-12)
    ends = script["uniform_distance"](probs.isel(layer=[0, 2]))
    assert ends == pytest.approx({0: 1 - 1 / n, 1: 0.0}, abs=1e-12)


def test_a_folders_record_is_named_by_its_whole_path(script):
    name = script["record_name"]
    assert name("organism-none") == "organism-none"
    runs = [name(f"/runs/{r}/out/organism-none/pipeline/") for r in ("a", "b")]
    assert runs == ["runs_a_out_organism-none_pipeline", "runs_b_out_organism-none_pipeline"]


def test_one_draw_on_an_organism_writes_conditions_targets_and_map_distances(script, tmp_path):
    assert (
        script["main"](
            [
                "--model",
                "organism-none",
                "--seeds",
                "1",
                "--n",
                "1",
                "--every-level-only",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "organism-none.json").read_text())
    conds = rec["conditions"]
    assert list(conds) == ["plain", "identity every level", "ones every level"]
    assert conds["plain"]["speed_ratio"]["mean"] == 1.0
    dist = conds["plain"]["map_distance"]
    assert set(dist) == {"draws", "level 0", "level 1", "level 2", "level 3"}
    assert all(0 < dist[f"level {lv}"]["mean"] < 15 / 16 for lv in range(4))
    assert set(rec["targets"]) == {"identity_breaks", "ones_breaks"}
