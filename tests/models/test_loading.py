"""Saved model folders: what their model_index.json may name, and the errors when it is wrong."""

from __future__ import annotations

import shutil

import pytest

from attnlab.models import load_pipeline


@pytest.fixture
def organism_folder(tmp_path):
    from attnlab.models.organisms import organism_path

    folder = tmp_path / "organism"
    shutil.copytree(organism_path("organism-none"), folder)
    return folder


def _rename_module(folder, old: str, new: str) -> None:
    index = folder / "model_index.json"
    index.write_text(index.read_text().replace(f'"{old}"', f'"{new}"'))


def test_a_folder_naming_a_flat_layout_module_gets_one_error_with_the_fix(organism_folder):
    _rename_module(organism_folder, "attnlab.models.organisms", "attnlab.organisms")
    with pytest.raises(ValueError) as err:
        load_pipeline(str(organism_folder), progress=False)
    text = str(err.value)
    assert "model_index.json" in text and "'attnlab.organisms'" in text
    assert "'attnlab.models.organisms'" in text and "'unet'" in text
    # the fix the error names makes the folder load
    _rename_module(organism_folder, "attnlab.organisms", "attnlab.models.organisms")
    pipe = load_pipeline(str(organism_folder), progress=False)
    assert type(pipe.unet).__module__ == "attnlab.models.organisms"


@pytest.mark.parametrize("module", ["attnlab.models.nothing", "attnlab.nowhere.deep"])
def test_a_folder_naming_a_module_attnlab_lacks_is_refused_by_name(organism_folder, module):
    _rename_module(organism_folder, "attnlab.models.organisms", module)
    with pytest.raises(ValueError, match=rf"'{module}'.*attnlab does not have"):
        load_pipeline(str(organism_folder), progress=False)


def test_a_broken_model_index_names_the_file(organism_folder):
    (organism_folder / "model_index.json").write_text('{"_class_name": \n')
    with pytest.raises(ValueError, match=r"organism/model_index.json is not valid JSON"):
        load_pipeline(str(organism_folder), progress=False)


def test_an_embedded_name_that_is_also_a_folder_here_is_refused(tmp_path, monkeypatch):
    """``tiny-modelscope`` with a folder of that name in the working directory: no silent
    choice; ``./tiny-modelscope`` is the folder, the bare name elsewhere the embedded model."""
    from attnlab.models.loading import AmbiguousModelError, resolve_model
    from attnlab.tools.cli import main

    (tmp_path / "tiny-modelscope").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AmbiguousModelError, match=r"give '\./tiny-modelscope' for the folder"):
        resolve_model("tiny-modelscope")
    with pytest.raises(AmbiguousModelError):
        load_pipeline("tiny-modelscope", progress=False)
    assert main(["sites", "tiny-modelscope"]) != 0
    assert resolve_model("./tiny-modelscope") == "./tiny-modelscope"
    monkeypatch.chdir(tmp_path / "tiny-modelscope")
    assert resolve_model("tiny-modelscope") != "tiny-modelscope"  # the embedded one


def test_a_dtype_loads_without_the_deprecated_torch_dtype(tiny_dirs):
    import warnings

    import torch

    from attnlab.models.loading import dtype_kwargs

    assert dtype_kwargs(None) == {}
    assert dtype_kwargs(torch.float16) == {"dtype": torch.float16}  # diffusers 0.42
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(str(tiny_dirs["tiny-modelscope"]), dtype=torch.float16, progress=False)
    assert pipe.unet.dtype == torch.float16
    assert [str(w.message) for w in caught if "torch_dtype" in str(w.message)] == []
