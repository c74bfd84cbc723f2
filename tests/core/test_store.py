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
