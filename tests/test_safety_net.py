"""The safety net of the restructuring: what users and saved folders depend on stays the same.

The references in ``tests/fixtures/`` were written by attnlab 0.1.0 before any module moved
(``python -m tests.snapshot --write``, see :mod:`tests.snapshot`); a failure here is a change of
the public API, the command line, the store format or the module paths saved folders name.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from .snapshot import (
    API_FILE,
    CLI_FILE,
    STORE,
    STORE_VALUES,
    api_snapshot,
    cli_snapshot,
    store_values,
)


def test_public_api_names_and_signatures_are_unchanged():
    """Every name of 0.1's public API is there with the same signature (names may be added)."""
    want = json.loads(API_FILE.read_text())
    have = api_snapshot()
    assert not sorted(set(want) - set(have))
    changed = {k: (want[k], have[k]) for k in want if have[k] != want[k]}
    assert not changed


def test_cli_commands_and_their_options_are_unchanged():
    """Every command and option of 0.1's command line is still there (more may be added)."""
    want = json.loads(CLI_FILE.read_text())
    have = cli_snapshot()
    lost = {cmd: sorted(set(opts) - set(have.get(cmd, ()))) for cmd, opts in want.items()}
    assert not {cmd: opts for cmd, opts in lost.items() if opts or cmd not in have}


def test_a_store_written_by_0_1_loads_with_identical_values():
    want = dict(np.load(STORE_VALUES, allow_pickle=False))
    have = store_values(STORE)
    assert sorted(have) == sorted(want)
    for key, value in want.items():
        assert have[key].dtype == value.dtype, key
        np.testing.assert_array_equal(have[key], value, err_msg=key)
    # the fixture is real data: one run, probabilities whose rows sum to one
    import attnlab

    ds = attnlab.load(STORE)
    assert ds.sizes["run"] == 1 and ds.attrs["attnlab"]["schema"] == 1
    np.testing.assert_allclose(ds["probs"].sum("key_frame").values, 1.0, atol=1e-3)


# diffusers writes ``type(component).__module__`` into model_index.json: these paths are a
# persistence contract with every folder users have saved
FROZEN = {
    "OrganismUNet": "attnlab.models.organisms",
    "OrganismMotionUNet": "attnlab.models.organisms",
    "PatchCodec": "attnlab.models.organisms",
    "LaVieUNet": "attnlab.models.lavie",
    "VideoCrafter2UNet": "attnlab.models.videocrafter",
    "VideoCrafter2Scheduler": "attnlab.models.videocrafter",
    "VideoCrafter2Pipeline": "attnlab.models.videocrafter",
}


def _small(name: str):
    import attnlab

    cls = getattr(attnlab, name)
    if name == "PatchCodec":
        return cls(patch=2, latent_channels=4)
    if name == "VideoCrafter2Scheduler":
        return cls()
    tiny = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    tiny["cross_attention_dim"] = 8
    blocks_3d = dict(
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    )
    if name == "OrganismMotionUNet":
        return cls(
            **tiny,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            num_attention_heads=2,
            motion_num_attention_heads=2,
            motion_max_seq_length=16,
            text_adapter_dim=6,
        )
    if name == "LaVieUNet":
        return cls(**tiny, **blocks_3d, attention_head_dim=2, rope_dim=4)
    return cls(**tiny, **blocks_3d, attention_head_dim=4)


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_saved_folders_name_the_frozen_module_paths_and_round_trip(name, tmp_path):
    from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

    import attnlab

    cls = getattr(attnlab, name)
    assert cls.__module__ == FROZEN[name]
    if name == "VideoCrafter2Pipeline":  # its components are checked one by one above
        return
    obj = _small(name)
    assert _fetch_class_library_tuple(obj) == (FROZEN[name], name)
    obj.save_pretrained(tmp_path)
    back = cls.from_pretrained(tmp_path)
    assert type(back) is cls
    if isinstance(obj, torch.nn.Module):
        a, b = obj.state_dict(), back.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:
        drop = {"_use_default_values"}  # diffusers' own bookkeeping of which values were defaults
        assert {k: v for k, v in back.config.items() if k not in drop} == {
            k: v for k, v in obj.config.items() if k not in drop
        }


@pytest.mark.parametrize("name", ["OrganismUNet", "VideoCrafter2UNet"])
def test_unet3d_subclasses_keep_every_parameter_of_unet3d(name):
    """diffusers' register_to_config records only explicit parameters, so these classes spell
    out UNet3DConditionModel's signature: every parameter of it must be there, same default."""
    from diffusers import UNet3DConditionModel

    import attnlab

    base = inspect.signature(UNet3DConditionModel.__init__).parameters
    ours = inspect.signature(getattr(attnlab, name).__init__).parameters
    missing = [p for p in base if p not in ours]
    assert not missing
    differ = {
        p: (base[p].default, ours[p].default)
        for p in base
        if p != "self" and ours[p].default != base[p].default
    }
    # the deliberate differences (OrganismUNet's small-model defaults) are listed here
    assert set(differ) <= {"sample_size"}, differ
