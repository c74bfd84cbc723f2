"""Site tables: which modules are temporal self-attention, their level, size and PE."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.core.sites import UnsupportedModelError, family_of
from tests.helpers import generate


def test_modelscope_table(ms_pipe):
    table = attnlab.sites(ms_pipe, latent=(9, 7))
    assert table.family.name == "unet3d"
    # 11 TransformerTemporalModel blocks x (attn1, attn2) in the tiny layout
    assert len(table) == 22
    assert all(s.name.endswith(("attn1", "attn2")) for s in table)
    first = table.get("transformer_in.transformer_blocks.0.attn1")
    assert (first.block, first.level, first.h, first.w) == ("in", 0, 9, 7)
    mid = table.get("mid_block.temp_attentions.0.transformer_blocks.0.attn1")
    assert (mid.block, mid.level, mid.h, mid.w) == ("mid", 3, 2, 1)
    up = table.get("up_blocks.1.temp_attentions.0.transformer_blocks.0.attn1")
    assert (up.level, up.h, up.w) == (2, 3, 2)
    assert {s.pe for s in table} == {"none"}
    assert table.levels == [0, 1, 2, 3]


def test_animatediff_table(ad_pipe):
    table = attnlab.sites(ad_pipe)
    assert table.family.name == "motion"
    assert len(table) == 26
    assert {(s.pe, s.pe_max_len) for s in table} == {("sinusoidal", 32)}
    assert table.get("down_blocks.3.motion_modules.0.transformer_blocks.0.attn1").level == 3


def test_table_from_local_folder_matches_loaded_model(tiny_dirs, ms_pipe):
    from_dir = attnlab.sites(str(tiny_dirs["tiny-modelscope"]), latent=(5, 3))
    loaded = attnlab.sites(ms_pipe, latent=(5, 3))
    assert [s.as_dict() for s in from_dir] == [s.as_dict() for s in loaded]


def _shape_hook(seen: dict, name: str):
    def hook(module, args):
        seen.setdefault(name, args[0].shape)  # returns None: arguments unchanged

    return hook


@pytest.mark.parametrize("size", [(72, 56), (40, 24)])  # latents 9x7 (odd) and 5x3 (odd)
def test_level_by_name_agrees_with_level_by_shape(pipe, size):
    """Independent check: rows seen by each temporal layer == batch * h_level * w_level."""
    height, width = size
    table = attnlab.sites(pipe)
    latent = (height // 8, width // 8)
    seen = {}
    modules = dict(pipe.unet.named_modules())
    handles = [modules[s.name].register_forward_pre_hook(_shape_hook(seen, s.name)) for s in table]
    try:
        generate(pipe, height=height, width=width, num_inference_steps=1)
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == set(table.names)
    batch = 2  # classifier-free guidance: [uncond, cond]
    for s in table:
        rows, frames, _ = seen[s.name]
        assert frames == 8
        assert table.level_from_rows(rows, batch, latent) == s.level, s.name
        h, w = table.level_size(s.level, latent)
        assert rows == batch * h * w


def _tiny_svd():
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        layers_per_block=1,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        projection_class_embeddings_input_dim=3 * 32,
        addition_time_embed_dim=32,
    )


def test_svd_table_excludes_image_cross_attention_and_levels_match_shape():
    torch.manual_seed(0)
    model = _tiny_svd()
    table = attnlab.sites(model)
    assert table.family.name == "svd"
    assert table.names and all(
        n.endswith("temporal_transformer_blocks.0.attn1") for n in table.names
    )
    assert {s.pe for s in table} == {"learned"}
    # run-time shapes on an odd latent (7x5): batch 1, 3 frames
    seen = {}
    mods = dict(model.named_modules())
    for s in table:
        mods[s.name].register_forward_pre_hook(_shape_hook(seen, s.name))
    sample = torch.randn(1, 3, 8, 7, 5)
    model(
        sample,
        torch.tensor([10.0]),
        encoder_hidden_states=torch.randn(1, 1, 32),
        added_time_ids=torch.zeros(1, 3),
    )
    for s in table:
        assert table.level_from_rows(seen[s.name][0], 1, (7, 5)) == s.level, s.name


def test_latte_and_i2vgenxl_tables():
    from diffusers import I2VGenXLUNet, LatteTransformer3DModel

    with torch.device("meta"):
        latte = LatteTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=8,
            patch_size=2,
            video_length=16,
            caption_channels=16,
            cross_attention_dim=16,
        )
        i2v = I2VGenXLUNet(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=4,
        )
    t = attnlab.sites(latte, latent=(8, 6))
    assert [s.name for s in t] == [
        "temporal_transformer_blocks.0.attn1",
        "temporal_transformer_blocks.1.attn1",
    ]
    assert {(s.block, s.level, s.h, s.w, s.pe, s.pe_max_len) for s in t} == {
        ("transformer", 0, 4, 3, "sinusoidal", 16)
    }
    t = attnlab.sites(i2v)
    assert "image_latents_temporal_encoder.attn1" in t
    assert t.get("image_latents_temporal_encoder.attn1").level == 0
    assert any(s.block == "up" for s in t)


def test_full_3d_attention_models_are_mapped_and_others_get_a_clear_error():
    """CogVideoX, Wan, HunyuanVideo, LTX-Video, Mochi and LTX-2 are mapped to the frame level
    (tests/test_joint*.py, tests/models/test_families_av.py); a linear-attention video model has
    no probabilities to map; an image transformer has no frame axis at all."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
            pooled_projection_dim=16, out_channels=4,
        )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"Stable Diffusion 3.*image transformer.*no frame axis"):  # fmt: skip
        attnlab.sites(model)
    with pytest.raises(
        UnsupportedModelError, match=r"linear attention.*no attention probabilities"
    ):
        family_of("SanaVideoTransformer3DModel")
    assert family_of("LTX2VideoTransformer3DModel").name == "ltx2"
    assert family_of("WanTransformer3DModel").name == "wan"
    assert family_of("LTXVideoTransformer3DModel").name == "ltx-video"
    assert family_of("MochiTransformer3DModel").name == "mochi"


def test_image_model_has_no_temporal_attention():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            norm_num_groups=8,
        )
    with pytest.raises(UnsupportedModelError, match="no temporal attention"):
        attnlab.sites(model)


def test_recording_on_svd_and_latte_bare_calls():
    """The controller reads batch/frames/latent from each family's own sample layout."""
    from diffusers import LatteTransformer3DModel

    torch.manual_seed(0)
    svd = _tiny_svd()
    with attnlab.record(svd) as rec:
        svd(
            torch.randn(1, 3, 8, 7, 5),
            torch.tensor([10.0]),
            encoder_hidden_states=torch.randn(1, 1, 32),
            added_time_ids=torch.zeros(1, 3),
        )
    p = rec.to_xarray()["probs"]
    assert p.sizes["query_frame"] == 3 and p.sizes["layer"] == len(attnlab.sites(svd))
    torch.testing.assert_close(
        torch.from_numpy(p.sum("key_frame").values), torch.ones(p.sum("key_frame").shape)
    )
    latte = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, video_length=4, caption_channels=16, cross_attention_dim=16, norm_type="ada_norm_single",
    )  # fmt: skip
    with attnlab.record(latte) as rec:
        latte(
            torch.randn(1, 4, 4, 8, 6),
            encoder_hidden_states=torch.randn(1, 5, 16),
            timestep=torch.tensor([10]),
        )
    p = rec.to_xarray()["probs"]
    assert p.sizes["query_frame"] == 4 and list(p["level"].values) == [0, 0]


def test_levels_that_share_a_size_are_recorded(ms_pipe):
    """A 32 x 32 video of the tiny ModelScope has a 4 x 4 latent: levels 2 and 3 are both 1 x 1.
    Each site is checked against its own level's size, so recording works at this size."""
    table = attnlab.sites(ms_pipe, height=32, width=32)
    sizes = {s.level: (s.h, s.w) for s in table}
    assert sizes.get(2) == sizes.get(3) == (1, 1)
    with attnlab.record(ms_pipe, levels=[2, 3]) as rec:
        generate(ms_pipe, height=32, width=32)
    p = rec.to_xarray()["probs"]
    assert set(p["level"].values) == {2, 3}
    sums = p.sum("key_frame").values
    assert abs(sums - 1).max() < 1e-5


# ---- local folders: config only, and the VAE scale their pipeline uses ----------------------


def test_animatediff_folder_builds_its_models_on_the_meta_device(tmp_path, monkeypatch):
    """A folder with a 2D UNet and motion_adapter/ (AnimateDiff's hub layout) is read from its
    configs: the 2D UNet, the adapter and the combined UNetMotionModel hold no weights."""
    import json

    from diffusers import UNetMotionModel

    from attnlab.core.model_refs import meta_model as _meta_model

    unet = dict(
        _class_name="UNet2DConditionModel",
        block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    adapter = dict(
        _class_name="MotionAdapter",
        block_out_channels=[32, 64],
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
    )
    for sub, config in (("unet", unet), ("motion_adapter", adapter)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(config))
    built = []
    original = UNetMotionModel.from_unet2d.__func__

    def spy(cls, unet2d, motion_adapter=None, load_weights=True):
        built.extend([unet2d, motion_adapter])
        return original(cls, unet2d, motion_adapter, load_weights)

    monkeypatch.setattr(UNetMotionModel, "from_unet2d", classmethod(spy))
    model = _meta_model(str(tmp_path))
    assert isinstance(model, UNetMotionModel) and len(built) == 2
    for module in (*built, model):
        assert {p.device.type for p in module.parameters()} == {"meta"}, type(module).__name__
    assert attnlab.sites(str(tmp_path)).family.name == "motion"


def _pipeline_scale(pipe) -> int:
    """The spatial VAE scale factor a pipeline states (diffusers names it four ways)."""
    for attr in (
        "vae_scale_factor",
        "vae_scale_factor_spatial",
        "vae_spatial_compression_ratio",
        "vae_spatial_scale_factor",
    ):
        if isinstance(getattr(pipe, attr, None), int):
            return getattr(pipe, attr)
    raise AssertionError(f"{type(pipe).__name__} states no VAE scale factor")


@pytest.mark.parametrize("name", ["cogvideox", "wan", "ltx", "mochi", "hunyuan"])
def test_saved_dit_folder_uses_its_pipelines_vae_scale(name, tmp_path):
    """sites(folder, height=, width=) divides by the scale the pipeline itself uses: LTX-Video's
    VAE compresses by its patch size times its scaling blocks (4 here, 32 in the real model),
    not 2 ** (len(block_out_channels) - 1) (8)."""
    from attnlab.models import tiny_dit

    pipe = getattr(tiny_dit, f"{name}_pipeline")()
    pipe.save_pretrained(tmp_path)
    scale = _pipeline_scale(pipe)
    if name == "ltx":
        assert scale == 4  # the case the rule of thumb got wrong
    from_folder = attnlab.sites(str(tmp_path), height=64, width=64)
    loaded = attnlab.sites(pipe, height=64, width=64)
    assert from_folder.latent == loaded.latent == (-(-64 // scale),) * 2


@pytest.mark.parametrize("kind", ["tiny-modelscope", "tiny-animatediff"])
def test_saved_unet_folder_uses_its_pipelines_vae_scale(kind, tiny_dirs, ms_pipe, ad_pipe):
    pipe = {"tiny-modelscope": ms_pipe, "tiny-animatediff": ad_pipe}[kind]
    from_folder = attnlab.sites(str(tiny_dirs[kind]), height=64, width=48)
    loaded = attnlab.sites(pipe, height=64, width=48)
    assert from_folder.latent == loaded.latent
    assert [s.as_dict() for s in from_folder] == [s.as_dict() for s in loaded]


def test_a_local_file_is_refused_before_any_hub_call(tmp_path):
    """A file is no pipeline folder: it was taken for a hub id (a minute's wait offline)."""
    weights = tmp_path / "model.ckpt"
    weights.write_bytes(b"not a pipeline")
    with pytest.raises(ValueError, match="is a file, not a pipeline folder"):
        attnlab.sites(str(weights))
