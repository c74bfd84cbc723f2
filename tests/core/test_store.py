"""Stores other tools can read (only specified zarr v3 data types) and provenance to group by."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core import store as S
from tests.helpers import GEN

# the data types of the zarr v3 core specification (no extension, no zarr-python-only type)
CORE_DTYPES = {
    "bool",
    *(f"int{n}" for n in (8, 16, 32, 64)),
    *(f"uint{n}" for n in (8, 16, 32, 64)),
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
}


def _arrays(store: Path) -> dict[str, dict]:
    """Every array's metadata document in a store, by path."""
    out = {}
    for meta in sorted(store.rglob("zarr.json")):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array":
            out[str(meta.parent.relative_to(store))] = doc
    return out


@pytest.fixture(scope="module")
def recorded(ms_pipe, tmp_path_factory) -> Path:
    """A store with a seeded run, an unseeded run and a stored video, written with warnings as
    errors (zarr's UnstableSpecificationWarning for unspecified dtypes fails the fixture)."""
    store = tmp_path_factory.mktemp("portable") / "runs.zarr"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*does not have a Zarr V3 specification")
        with attnlab.record(ms_pipe, levels=[0], store=store, logits=True):
            ms_pipe(**GEN, generator=torch.Generator().manual_seed(3), output_type="pt")
            ms_pipe(**GEN, output_type="pt")  # no generator: torch's global random state
        S.save_video(store, "clip", np.zeros((2, 4, 4, 3), np.uint8))
    return store


def test_every_array_has_a_specified_zarr_v3_dtype(recorded):
    arrays = _arrays(recorded)
    assert any(path.endswith("/layer") for path in arrays)  # string coordinates are stored
    bad = {p: d["data_type"] for p, d in arrays.items() if d["data_type"] not in CORE_DTYPES}
    assert not bad, bad


def test_plain_zarr_without_xarray_reads_every_array_and_the_labels(recorded):
    import zarr

    root = zarr.open_group(str(recorded), mode="r", zarr_format=3)
    for path in _arrays(recorded):
        arr = root[path]
        values = arr[...]
        assert values.shape == arr.shape
    run = next(iter(root["runs"].group_keys()))
    layer = root[f"runs/{run}/layer"]
    labels = layer.attrs[S.LABELS_ATTR]
    names = [labels[i] for i in layer[...]]
    assert len(set(names)) == len(names) > 0
    assert sorted(names) == sorted(attnlab.load(recorded)[D.LAYER].values.tolist())
    cfg = root[f"runs/{run}/cfg"]
    assert [cfg.attrs[S.LABELS_ATTR][i] for i in cfg[...]] == ["uncond", "cond"]


def test_tensorstore_reads_every_array_as_zarr_does(recorded):
    import tensorstore as ts
    import zarr

    root = zarr.open_group(str(recorded), mode="r", zarr_format=3)
    for path in _arrays(recorded):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(recorded / path)}}
        got = ts.open(spec, read=True).result().read().result()
        # the same stored bytes decoded by two readers: equal exactly
        np.testing.assert_array_equal(got, root[path][...], err_msg=path)


def test_loaded_strings_round_trip(recorded, ms_pipe):
    ds = attnlab.load(recorded)
    names = [s.name for s in attnlab.sites(ms_pipe) if s.level == 0]
    assert sorted(ds[D.LAYER].values.tolist()) == sorted(names)
    assert ds[D.CFG].values.tolist() == ["uncond", "cond"]
    assert ds[D.LAYER].dtype.kind == "U" and ds[D.BLOCK].dtype.kind == "U"
    assert set(ds[D.BLOCK].values.tolist()) <= {"down", "mid", "up", "in"}
    assert S.load_video(recorded, "clip").shape == (2, 4, 4, 3)


def test_encode_decode_strings_is_exact_and_leaves_numbers_alone():
    import xarray as xr

    ds = xr.Dataset(
        {"v": (("a",), np.array(["x", "yy", "x"], dtype=object)), "n": (("a",), [1.5, 2.5, 3.5])},
        coords={"a": ["p", "q", "r"]},
    )
    enc = S.encode_strings(ds)
    assert enc["v"].dtype == np.int32 and enc["v"].values.tolist() == [0, 1, 0]
    assert enc["v"].attrs[S.LABELS_ATTR] == ["x", "yy"]
    assert enc["a"].attrs[S.LABELS_ATTR] == ["p", "q", "r"] and enc["n"].dtype == np.float64
    back = S.decode_strings(enc)
    assert back["v"].values.tolist() == ["x", "yy", "x"] and back["a"].values.tolist() == [
        "p",
        "q",
        "r",
    ]
    assert S.LABELS_ATTR not in back["v"].attrs


def test_provenance_model_name_integer_seed_and_unseeded_marker(recorded, tiny_dirs):
    ds = attnlab.load(recorded)
    assert ds[D.SEED].dtype.kind == "i"
    assert ds[D.SEED].values.tolist() == [3, S.UNSEEDED]
    prov = [json.loads(p) for p in ds[D.PROVENANCE].values]
    assert prov[0]["seed"] == 3 and prov[1]["seed"] is None
    # the fixture loaded the pipeline from a folder: the name given is that folder
    assert ds[D.MODEL].values.tolist() == [str(tiny_dirs["tiny-modelscope"])] * 2
    assert prov[0]["model_path"] == str(tiny_dirs["tiny-modelscope"])


def test_model_coordinate_is_the_embedded_name_with_the_path_as_attribute(tmp_path):
    from attnlab.models import generate, load_pipeline, resolve_model

    pipe = load_pipeline("tiny-modelscope", progress=False)
    store = tmp_path / "named.zarr"
    with attnlab.record(pipe, levels=[0], store=store):
        generate(pipe, "a cat", frames=4, steps=1, height=64, width=48)
    ds = attnlab.load(store)
    assert ds[D.MODEL].item() == "tiny-modelscope"  # not the cache folder
    assert json.loads(ds[D.PROVENANCE].item())["model_path"] == resolve_model("tiny-modelscope")


def test_height_and_width_are_the_size_generated(ms_pipe, tmp_path):
    # without height/width the pipeline uses sample_size x vae_scale_factor: 8 x 8 = 64
    store = tmp_path / "size.zarr"
    before = ms_pipe.unet.config.sample_size
    ms_pipe.unet.register_to_config(sample_size=8)
    try:
        kw = {k: v for k, v in GEN.items() if k not in ("height", "width")}
        with attnlab.record(ms_pipe, levels=[0], store=store):
            ms_pipe(**{**kw, "num_inference_steps": 1}, output_type="pt")  # size not given
            ms_pipe(**{**GEN, "num_inference_steps": 1}, output_type="pt")  # 64 x 48 given
    finally:
        ms_pipe.unet.register_to_config(sample_size=before)
    prov = [json.loads(p) for p in attnlab.load(store)[D.PROVENANCE].values]
    assert [(p["height"], p["width"]) for p in prov] == [(64, 64), (64, 48)]
    assert [(p["latent_height"], p["latent_width"]) for p in prov] == [(8, 8), (8, 6)]


def test_older_stores_with_list_seeds_read_as_one_integer():
    assert S._coord_value("seed", [5, 6]) == 5
    assert S._coord_value("seed", "") == S.UNSEEDED and S._coord_value("seed", None) == -1
    assert S._coord_value("seed", 7) == 7


# ---- checksums: a damaged store is found out, never read as numbers -----------------------------


def _two_runs(ms_pipe, store):
    for seed in (0, 1):
        with attnlab.record(ms_pipe, levels=[0], store=store):
            ms_pipe(**GEN, generator=torch.Generator().manual_seed(seed), output_type="pt")
    return [str(r) for r in attnlab.load(store).run.values]


def _chunk_files(store, run_id, array="probs"):
    folder = store / "runs" / run_id / array / "c"
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_chunk_is_named_and_the_other_runs_stay_readable(ms_pipe, tmp_path, damage):
    from attnlab.core.store import verify_store
    from attnlab.tools.cli import main

    store = tmp_path / "s.zarr"
    first, second = _two_runs(ms_pipe, store)
    assert verify_store(store).ok
    chunk = _chunk_files(store, first)[0]
    data = bytearray(chunk.read_bytes())
    if damage == "flip":  # ten bytes inside the compressed chunk
        middle = len(data) // 2
        data[middle : middle + 10] = bytes(b ^ 0x5A for b in data[middle : middle + 10])
    else:
        data = data[: len(data) // 2]
    if damage == "delete":  # zarr reads a missing chunk back as NaN: still damage
        chunk.unlink()
    else:
        chunk.write_bytes(bytes(data))

    check = verify_store(store)
    assert not check.ok and list(check.damaged) == [f"runs/{first}"]
    (line,) = check.damaged[f"runs/{first}"]
    assert line.startswith("probs chunk (0,")
    assert f"runs/{second}" in check.intact
    with pytest.raises((ValueError, S.StoreError)):  # never numbers from a damaged chunk
        _ = attnlab.load(store, runs=[first]).probs.values
    assert np.isfinite(attnlab.load(store, runs=[second]).probs.values).all()
    assert main(["check", str(store)]) == 1


def test_every_array_is_written_with_a_checksum(ms_pipe, tmp_path):
    import zarr

    from attnlab.core.store import save_video

    store = tmp_path / "s.zarr"
    (run_id, _) = _two_runs(ms_pipe, store)
    save_video(store, run_id, np.zeros((2, 8, 8, 3), np.uint8))
    arrays = [a for _, a in zarr.open_group(store, mode="r").members(max_depth=None)]
    arrays = [a for a in arrays if isinstance(a, zarr.Array)]
    assert len(arrays) > 10
    assert all(
        "crc32c" in [type(c).__name__.lower().replace("codec", "") for c in a.metadata.codecs]
        for a in arrays
    )


def test_a_store_written_before_checksums_loads_and_says_so_once(recwarn):
    import shutil
    import tempfile
    from pathlib import Path

    from attnlab.core.store import verify_store
    from tests.snapshot import STORE

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old.zarr"
        shutil.copytree(STORE, old)
        attnlab.load(old)
        attnlab.load(old)
        said = [w for w in recwarn if "without checksums" in str(w.message)]
        assert len(said) == 1 and str(old) in str(said[0].message)
        check = verify_store(old)
        assert check.ok and len(check.unchecked) == 3


def test_runs_given_as_a_generator_are_checked_like_a_list():
    from tests.snapshot import STORE

    (run_id,) = [str(r) for r in attnlab.load(STORE).run.values]
    assert attnlab.load(STORE, runs=(r for r in [run_id])).sizes["run"] == 1
    with pytest.raises(S.StoreError, match=r"runs not found.*\['nope'\]"):
        attnlab.load(STORE, runs=(r for r in [run_id, "nope"]))


def test_a_run_is_read_once():
    from tests.snapshot import STORE

    (run_id,) = [str(r) for r in attnlab.load(STORE).run.values]
    with pytest.raises(S.StoreError, match="more than once"):
        attnlab.load(STORE, runs=[run_id, run_id])
    with pytest.raises(S.StoreError, match="more than once"):
        attnlab.load([STORE, STORE])


def test_two_writers_of_one_run_name_the_second_is_refused_and_nothing_is_mixed(ms_pipe, tmp_path):
    """Two recorders (cond, uncond) with one name in one store: the second is refused before any
    work, and the first's unfinished run is taken back (before, the second deleted the first's
    group and the two wrote their steps into one run marked complete)."""
    store = tmp_path / "s.zarr"
    with (
        pytest.raises(S.StoreError, match="being written now"),
        attnlab.record(ms_pipe, levels=[0], cfg="cond", store=store, name="x"),
        attnlab.record(ms_pipe, levels=[0], cfg="uncond", store=store, name="x"),
    ):
        ms_pipe(**GEN, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert not store.exists()  # the recorder made it, and no run was written
    with attnlab.record(ms_pipe, levels=[0], cfg="cond", store=store, name="x"):
        ms_pipe(**GEN, generator=torch.Generator().manual_seed(0), output_type="pt")
    ds = attnlab.load(store)
    assert ds.run.values.tolist() == ["x"] and ds.cfg.values.tolist() == ["cond"]
    assert ds.step.values.tolist() == [0, 1]


def test_a_run_another_live_process_writes_is_refused_and_a_dead_writers_is_replaced(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    import zarr

    store = tmp_path / "s.zarr"
    S.prepare_store(store, {"reduction": "mean", "grid": None, "variables": ["probs"]})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid, refused in ((child.pid, True), (None, False)):
            runs = zarr.open_group(store, mode="r+")["runs"]
            if "job" in runs:
                del runs["job"]
            if pid is None:  # a process that has ended
                child.kill()
                child.wait()
                pid = child.pid
            writer = {"pid": pid, "host": socket.gethostname(), "token": "elsewhere"}
            runs.create_group("job", attributes={"complete": False, "writer": writer})
            if refused:
                with pytest.raises(S.StoreError, match=rf"being written now \(process {pid}"):
                    S.claim_run(store, "job")
            else:
                mark = S.claim_run(store, "job")
                assert mark["pid"] == os.getpid()
                attrs = json.loads((store / "runs" / "job" / "zarr.json").read_text())
                assert attrs["attributes"]["writer"] == mark
                S.abandon_claim(store, "job", mark)
                assert not (store / "runs" / "job").exists()
    finally:
        child.kill()
        child.wait()


def test_guidance_halves_stay_in_batch_order_whichever_run_comes_first(ms_pipe, tmp_path):
    """An unguided run (cfg: cond) loaded before a guided one: cfg is still (uncond, cond),
    and each run's maps stay under their own half."""
    store = tmp_path / "s.zarr"
    with attnlab.record(ms_pipe, levels=[0], store=store) as rec:
        ms_pipe(**GEN, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
        ms_pipe(**GEN, generator=torch.Generator().manual_seed(0))
    alone = [rec.to_xarray().sel(run=r.id) for r in rec.runs]
    for ds in (rec.to_xarray(), attnlab.load(store)):
        assert ds[D.CFG].values.tolist() == ["uncond", "cond"]
        unguided, guided = (ds.sel(run=r.id) for r in rec.runs)
        assert not unguided[D.RAN].sel(cfg="uncond").values.any()
        assert unguided[D.RAN].sel(cfg="cond").values.all() and guided[D.RAN].values.all()
        np.testing.assert_array_equal(
            guided[D.PROBS].sel(cfg="uncond").values, alone[1][D.PROBS].sel(cfg="uncond").values
        )
