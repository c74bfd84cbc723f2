"""Sweeps: spec parsing, cells and ids, a real LocalCluster sweep, resuming, lazy analyses."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import attnlab
from attnlab.core import dims as D
from attnlab.data.metrics import band_concentration
from attnlab.lab.sweep import (
    SweepSpecError,
    load_spec,
    parse_spec,
    plan_sweep,
    run_sweep,
)
from attnlab.tools.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "analyses" / "sweeps" / "example.toml"
FAST = {"steps": 2, "height": 64, "width": 48}


def base_spec(models, **over):
    """A small valid spec as a mapping (8 frames, 64x48, 2 steps, level 0 recorded)."""
    spec = {
        "name": "test",
        "models": [str(m) for m in models],
        "prompts": ["a polar bear playing drums"],
        "seeds": [0],
        "frames": [8],
        "generation": dict(FAST),
        "record": {"levels": [0]},
    }
    spec.update(over)
    return spec


# ---- spec --------------------------------------------------------------------------------


def test_toml_spec_with_prompt_file_expands_into_cells(tmp_path):
    (tmp_path / "prompts.json").write_text(
        json.dumps(
            [
                {"prompt": "a boy is getting old", "subprompts": ["a young boy", "an old man"]},
                {"prompt": "a car on a road"},
                "a polar bear playing drums",
            ]
        )
    )
    path = tmp_path / "s.toml"
    path.write_text(
        textwrap.dedent(
            """
            name = "grid"
            models = ["tiny-modelscope", "tiny-animatediff"]
            prompt_file = "prompts.json"
            seeds = [0, 1]
            frames = [8, 16]
            edits = ["none", "tar:64D1", {kind = "replace", matrix = "identity", levels = [0]},
                     "synopsis", ["tar:64D1", "synopsis"]]
            [generation]
            steps = 2
            guidance = 9
            [record]
            levels = 0
            steps = "0:1"
            """
        )
    )
    spec = load_spec(path)
    cells = spec.cells()
    # 2 models x 3 prompts x 2 seeds x 2 frames x 3 plain edits + 2 x 1 x 2 x 2 x 2 synopsis ones
    assert len(cells) == 2 * 3 * 2 * 2 * 3 + 2 * 1 * 2 * 2 * 2
    ids = [c.cell_id for c in cells]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    # synopsis cells exist only for the prompt with subprompts, with its key states
    syn = [c for c in cells if "synopsis" in c.label]
    assert {c.prompt for c in syn} == {"a boy is getting old"}
    both = next(c for c in syn if c.label == "tar:64D1+synopsis")
    assert [e["kind"] for e in both.edits] == ["tar", "synopsis"]
    assert both.edits[1]["key_states"] == ["a young boy", "an old man"]
    assert cells[0].record["levels"] == [0] and cells[0].record["steps"] == {"slice": [0, 1, None]}
    # ids are deterministic and depend on what defines the result
    again = load_spec(path).cells()
    assert [c.cell_id for c in again] == ids
    other = parse_spec(
        {**base_spec(["tiny-modelscope"]), "generation": {**FAST, "steps": 3}}
    ).cells()
    same = parse_spec(base_spec(["tiny-modelscope"])).cells()
    assert other[0].cell_id != same[0].cell_id
    assert same[0].run_id == "sweep-" + same[0].cell_id


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_yaml_and_json_specs_read_like_mappings(tmp_path, suffix):
    import yaml

    data = base_spec(["tiny-modelscope"], edits=["none", {"kind": "tar", "sigma": 2.0}])
    path = tmp_path / f"s{suffix}"
    path.write_text(yaml.safe_dump(data) if suffix == ".yaml" else json.dumps(data))
    cells = load_spec(path).cells()
    assert [c.cell_id for c in cells] == [c.cell_id for c in parse_spec(data).cells()]
    assert cells[1].edits[0]["sigma"] == {"0": 2.0}


def test_example_spec_is_valid():
    spec = load_spec(EXAMPLE)
    assert spec.cells() and spec.name


@pytest.mark.parametrize(
    "change, key, match",
    [
        ({"seed": [0]}, "seed", "did you mean 'seeds'"),
        ({"record": {"level": [0]}}, "record.level", "did you mean 'levels'"),
        ({"generation": {"stepz": 2}}, "generation.stepz", "unknown key"),
        ({"seeds": [0, "1"]}, r"seeds\[1\]", "must be an integer, got str"),
        ({"seeds": 0}, "seeds", "must be a list"),
        ({"frames": []}, "frames", "empty list"),
        ({"models": []}, "models", "empty list"),
        ({"frames": [0]}, r"frames\[0\]", ">= 1"),
        ({"edits": ["tar:64X1"]}, r"edits\[0\]", "bad TAR preset"),
        ({"edits": [{"kind": "blur"}]}, r"edits\[0\]", "unknown edit kind"),
        ({"edits": [["none", "tar:64D1"]]}, r"edits\[0\]\[0\]", "cannot be combined"),
        ({"edits": ["synopsis"]}, "edits", "needs prompts with subprompts"),
        ({"record": {"reduce": "max"}}, "record.reduce", "must be one of"),
        ({"record": {"steps": "a:b"}}, "record.steps", "expected"),
        ({"generation": {"height": 65}}, "generation.height", "multiple of 8"),
        ({"generation": {"guidance": "high"}}, "generation.guidance", "must be a number"),
        ({"prompts": [{"prompt": "x", "subprompts": "a"}]}, r"prompts\[0\].subprompts", "list"),
        ({"prompt_file": "p.json"}, "prompts", "exactly one of"),
        # one edit spelled two ways is one cell id: two cells would write one run
        (
            {"edits": ["none", "tar:64D1", {"kind": "tar", "sigma": "64D1"}]},
            "edits",
            r"edits\[1\] and edits\[2\] are the same edit",
        ),
        ({"device": "gpu"}, "device", "'gpu' is not a torch device"),
        ({"device": "cuda:x"}, "device", "not a torch device"),
        ({"device": "meta"}, "device", "holds no data"),
    ],
)
def test_malformed_spec_names_the_key(change, key, match, tmp_path):
    spec = {**base_spec(["tiny-modelscope"]), **change}
    with pytest.raises(SweepSpecError, match=match) as info:
        run_sweep(spec, tmp_path / "s.zarr", progress=False)
    assert info.value.key == key.replace("\\", "")
    assert key.replace("\\", "") in str(info.value)
    assert not (tmp_path / "s.zarr").exists()  # nothing written


def test_same_edit_spelled_two_ways_is_refused_also_in_combinations():
    spec = base_spec(["tiny-modelscope"], edits=[["tar:64D1"], {"kind": "tar", "sigma": "64D1"}])
    with pytest.raises(SweepSpecError, match=r"edits\[0\] and edits\[1\] are the same edit"):
        parse_spec(spec)
    # different settings of one kind are different edits
    spec["edits"] = ["tar:64D1", {"kind": "tar", "sigma": "64D1", "scale": 0.5}]
    assert len({c.cell_id for c in parse_spec(spec).cells()}) == 2


def test_device_syntax_at_parse_time_availability_at_preflight(monkeypatch, tmp_path):
    """A spec may name a device this machine lacks (written here for a GPU machine): it parses
    and plans; running its cells here is refused before any work."""
    import torch

    from attnlab.lab.sweep.spec import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = parse_spec(base_spec(["tiny-modelscope"], device="cuda:1"))
    assert spec.device == "cuda:1"
    assert [state.state for _, state in plan_sweep(spec, tmp_path / "s.zarr")] == ["missing"]
    with pytest.raises(SweepSpecError, match="no CUDA device") as info:
        run_sweep(spec, tmp_path / "s.zarr", progress=False)
    assert info.value.key == "device" and not (tmp_path / "s.zarr").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    check_device("cuda")
    with pytest.raises(SweepSpecError, match="1 CUDA device"):
        check_device("cuda:1")
    check_device("cpu")
    check_device("auto")


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('models = ["a"]\nseeds = [0, =]\nframes = [8]\n')
    with pytest.raises(SweepSpecError, match=r"bad.toml.*line 2"):
        load_spec(path)


# ---- a real sweep on a LocalCluster --------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tiny_dirs, tmp_path_factory):
    """6 cells (2 models x 1 prompt x 3 edits: none, TAR, synopsis) on 2 local workers."""
    store = tmp_path_factory.mktemp("sweep") / "s.zarr"
    spec = parse_spec(
        base_spec(
            [tiny_dirs["tiny-modelscope"], tiny_dirs["tiny-animatediff"]],
            prompts=[
                {"prompt": "a boy is getting old", "subprompts": ["a young boy", "an old man"]}
            ],
            edits=["none", "tar:64D1", "synopsis"],
        )
    )
    summary = run_sweep(spec, store, scheduler="local", workers=2, progress=False)
    return spec, store, summary


def test_sweep_records_every_cell_once(swept):
    spec, store, summary = swept
    cells = spec.cells()
    assert len(cells) == 6
    assert summary.ok and len(summary.done) == 6 and not summary.skipped, summary.failed
    assert summary.workers == 2
    ds = attnlab.load(store)
    assert sorted(ds[D.RUN].values) == sorted(c.run_id for c in cells)
    by_run = {c.run_id: c for c in cells}
    for rid in ds[D.RUN].values:
        cell = by_run[str(rid)]
        run = ds.sel(run=rid)
        assert run[D.MODEL].item() == cell.model and run[D.PROMPT].item() == cell.prompt
        assert [e["kind"] for e in json.loads(run[D.EDITS].item())] == [
            e["kind"] for e in cell.edits
        ]
        prov = json.loads(run["provenance"].item())
        assert prov["sweep_cell"] == cell.cell_id and prov["num_inference_steps"] == 2
    # layers one model lacks are NaN-padded (outer join); every recorded row sums to 1
    rows = ds[D.PROBS].sum(D.KEY, skipna=False).values
    assert np.isfinite(rows).mean() >= 0.5
    np.testing.assert_allclose(rows[np.isfinite(rows)], 1.0, atol=1e-5)
    # TAR changes the attention it acts on: the edited run differs from the plain one
    plain = next(c for c in cells if c.label == "none")
    tar = next(
        c
        for c in cells
        if c.label == "tar:64D1" and (c.model, c.prompt) == (plain.model, plain.prompt)
    )
    diff = abs(ds[D.PROBS].sel(run=plain.run_id) - ds[D.PROBS].sel(run=tar.run_id)).max()
    assert float(diff) > 1e-4


def test_models_load_once_per_worker(swept):
    # whatever the scheduler's placement: 3 cells per model ran in at most 2 worker processes,
    # so some process ran 2 cells of one model (pigeonhole), and in every process each model
    # was loaded once (a cache miss would count 2 loads)
    spec, _, summary = swept
    model_of = {c.cell_id: c.model for c in spec.cells()}
    per_process_model: dict[tuple[int, str], int] = {}
    for r in summary.results:
        key = (r["pid"], model_of[r["cell_id"]])
        per_process_model[key] = per_process_model.get(key, 0) + 1
        assert r["loads"] == 1, r  # this model was loaded once in this process
    assert len({pid for pid, _ in per_process_model}) <= 2
    assert max(per_process_model.values()) >= 2  # the cache was exercised


def test_rerun_skips_complete_cells_without_starting_a_cluster(swept):
    spec, store, _ = swept
    # an unreachable scheduler: the sweep would fail if it tried to start any task
    again = run_sweep(spec, store, scheduler="tcp://127.0.0.1:9", progress=False)
    assert len(again.skipped) == 6 and not again.done and again.ok and again.workers == 0
    assert all(st.state == "complete" for _, st in plan_sweep(spec, store))


def test_store_opens_lazily_and_a_metric_computes_lazily(swept):
    import dask
    import dask.array as da
    from dask.callbacks import Callback

    _, store, _ = swept
    computes = []

    class Count(Callback):
        def _start(self, dsk):
            computes.append([str(k) for k in dict(dsk)])

    with Count():
        ds = attnlab.load(store)
        probs = ds[D.PROBS].sel(cfg="cond").mean([D.STEP, D.LAYER, D.SAMPLE], skipna=True)
    # opening compares a few small coordinates; no attention data is read
    assert not [k for keys in computes for k in keys if D.PROBS in k], computes
    assert isinstance(ds[D.PROBS].data, da.Array)
    with Count():
        bc = band_concentration(probs, k=1)
    assert isinstance(bc.data, da.Array)  # the metric is a lazy graph over the store's chunks
    # building it reads the maps at most once: metrics' eager non-negativity check
    reads = [keys for keys in computes if any(D.PROBS in k for k in keys)]
    assert len(reads) <= 1
    with dask.config.set(scheduler="synchronous"):
        lazy = bc.compute()
    eager = band_concentration(probs.load(), k=1)
    np.testing.assert_allclose(lazy.values, eager.values)
    assert lazy.sizes[D.RUN] == 6 and ((lazy > 0) & (lazy <= 1)).all()


def test_cli_dry_run_lists_cells_and_states(swept, capsys, tmp_path):
    spec, store, _ = swept
    path = tmp_path / "spec.json"
    data = base_spec(spec.models, prompts=["a boy is getting old", "a new prompt"])
    path.write_text(json.dumps(data))
    assert main(["sweep", str(path), "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the "none" cells of the first prompt are in the store; the new prompt's are not
    assert "4 cells: 2 complete, 2 missing" in out
