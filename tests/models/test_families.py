"""The family registry (the public extension point), reversible patches and the layered
package's compatibility paths."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.core.sites import (
    Family,
    PositionalEncoding,
    PositionTerms,
    UnsupportedModelError,
    family_of,
    register_family,
    registered_families,
)

# The explicit path (q k^T -> softmax -> @ v, per head and block) and the fused SDPA kernel sum in
# different orders: float32 rounding, not a different computation. 1e-5 on unit-scale outputs.
TOL = 1e-5


def _compare_with_own_processor(model: torch.nn.Module, call) -> float:
    """Max |explicit - own| of one bare denoiser call: every temporal layer through attnlab's
    explicit path (``attnlab.hooks`` forces it) against the model's own processors."""
    model.eval()
    with torch.no_grad():
        ref = call(model)
        with attnlab.hooks(model):
            explicit = call(model)
        again = call(model)
    assert torch.equal(again, ref)  # restored exactly
    return float((explicit - ref).abs().max())


def _unet_call(frames: int = 3, batch: int = 1, size: int = 8):
    def call(model):
        g = torch.Generator().manual_seed(0)
        c = model.config.in_channels
        sample = torch.randn(batch, c, frames, size, size, generator=g)
        text = torch.randn(batch, 4, model.config.cross_attention_dim, generator=g)
        return model(sample, torch.tensor([500]), encoder_hidden_states=text).sample

    return call


# unet3d (ModelScope) and motion (AnimateDiff): tests/core/test_processor.py
# ::test_explicit_path_close_to_default compares whole pipeline runs on both tiny models.
# lavie, videocrafter2: tests/models/test_convert.py; the joint families: tests/core/test_joint.py.


@pytest.mark.parametrize("name", ["organism-none", "organism-sinusoidal", "organism-rope"])
def test_explicit_path_equals_own_processor_organisms(name):
    from attnlab.models import load_pipeline

    unet = load_pipeline(name, progress=False).unet
    # organism-sinusoidal is a UNetMotionModel: the AnimateDiff family maps it
    assert family_of(unet).name == ("motion" if name == "organism-sinusoidal" else "organism")
    assert attnlab.sites(unet)[0].pe == name.split("-")[1]
    assert _compare_with_own_processor(unet, _unet_call(frames=5, batch=2)) < TOL


def test_explicit_path_equals_own_processor_svd_and_latte():
    from diffusers import LatteTransformer3DModel, UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    svd = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=(2, 4), layers_per_block=1, sample_size=16,
        in_channels=8, out_channels=4, projection_class_embeddings_input_dim=3 * 32,
        addition_time_embed_dim=32,
    )  # fmt: skip

    def svd_call(model):
        g = torch.Generator().manual_seed(0)
        return model(
            torch.randn(1, 3, 8, 7, 5, generator=g),
            torch.tensor([10.0]),
            encoder_hidden_states=torch.randn(1, 1, 32, generator=g),
            added_time_ids=torch.zeros(1, 3),
        ).sample

    assert family_of(svd).name == "svd"
    assert _compare_with_own_processor(svd, svd_call) < TOL
    latte = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, video_length=4, caption_channels=16, cross_attention_dim=16,
        norm_type="ada_norm_single",
    )  # fmt: skip

    def latte_call(model):
        g = torch.Generator().manual_seed(0)
        return model(
            torch.randn(1, 4, 4, 8, 6, generator=g),
            encoder_hidden_states=torch.randn(1, 5, 16, generator=g),
            timestep=torch.tensor([10]),
        ).sample

    assert family_of(latte).name == "latte"
    assert _compare_with_own_processor(latte, latte_call) < TOL


def test_explicit_path_equals_own_processor_i2vgenxl():
    from diffusers import I2VGenXLUNet

    torch.manual_seed(0)
    unet = I2VGenXLUNet(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
    )  # fmt: skip

    def call(model):
        g = torch.Generator().manual_seed(0)
        return model(
            torch.randn(1, 4, 3, 8, 8, generator=g),
            torch.tensor([500]),
            fps=torch.tensor([8]),
            image_latents=torch.randn(1, 4, 3, 8, 8, generator=g),
            image_embeddings=torch.randn(1, 32, generator=g),
            encoder_hidden_states=torch.randn(1, 4, 32, generator=g),
        ).sample

    assert family_of(unet).name == "i2vgenxl"
    assert _compare_with_own_processor(unet, call) < TOL


# ---- the extension point ---------------------------------------------------------------------


def _my_family(**overrides):
    from attnlab.models.families.unet3d import FAMILY as UNET3D

    fields = dict(
        name="test-rotated-unet",
        model_classes=("RotatedUNet",),
        examples="tests/models/test_families.py",
        path=UNET3D.path,
        positional_encoding=lambda config: PositionalEncoding("rope", None, "a test rotation"),
        position_terms=lambda attn: PositionTerms(rotate=_swap_halves),
    )
    fields.update(overrides)
    return Family(**fields)


def _swap_halves(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A position term that changes the logits: rotate q by 90 degrees in each channel pair
    (frame-dependent angle)."""
    frames = q.shape[-2]
    angle = torch.arange(frames, dtype=q.dtype)[:, None] * 0.7
    cos, sin = angle.cos(), angle.sin()
    q1, q2 = q[..., 0::2], q[..., 1::2]
    k1, k2 = k[..., 0::2], k[..., 1::2]
    rq = torch.stack((q1 * cos - q2 * sin, q1 * sin + q2 * cos), -1).flatten(-2)
    rk = torch.stack((k1 * cos - k2 * sin, k1 * sin + k2 * cos), -1).flatten(-2)
    return rq, rk


def test_a_user_family_is_registered_and_its_position_terms_are_applied(ms_pipe):
    from diffusers import UNet3DConditionModel

    class RotatedUNet(UNet3DConditionModel):
        pass

    unet = RotatedUNet.from_config(ms_pipe.unet.config)
    unet.load_state_dict(ms_pipe.unet.state_dict())
    # before registration a subclass belongs to its base class's family
    assert family_of(unet).name == "unet3d"
    fam = register_family(_my_family())
    try:
        assert fam in registered_families()
        table = attnlab.sites(unet)
        assert table.family.name == "test-rotated-unet" and {s.pe for s in table} == {"rope"}
        call = _unet_call()
        with torch.no_grad():
            plain = call(unet)
            with attnlab.hooks(unet):  # the explicit path applies the family's rotation
                rotated = call(unet)
            assert torch.equal(call(unet), plain)
        assert (rotated - plain).abs().max() > 1e-3
        # the same registration again is harmless; another family under the name is refused
        register_family(fam)
        with pytest.raises(ValueError, match="already registered"):
            register_family(_my_family(examples="another"))
    finally:
        from attnlab.core import sites as S

        S._FAMILIES.pop("test-rotated-unet", None)
    assert family_of(unet).name == "unet3d"


def test_unknown_model_error_names_the_extension_point():
    with pytest.raises(UnsupportedModelError, match="register_family"):
        family_of("NoSuchVideoModel")
    # full-3D video transformers attnlab has no family for are not said to lack attention
    for name in ("SomeNewVideoTransformer3DModel", "MyLabTransformer3DModel"):
        with pytest.raises(
            UnsupportedModelError, match="full-3D attention video transformer"
        ) as err:
            family_of(name)
        assert "JointFamily" in str(err.value) and "no temporal attention" not in str(err.value)
    with pytest.raises(TypeError, match="Family"):
        register_family({"name": "x"})  # type: ignore[arg-type]


# ---- reversible patches ----------------------------------------------------------------------


def test_patches_are_listed_while_active_and_restore_prior_overrides(ms_pipe, gen):
    pipe = ms_pipe
    scheduler = pipe.scheduler
    calls = []
    original = scheduler.set_timesteps

    def users_override(*args, **kwargs):  # another library's instance-level wrapper
        calls.append(args)
        return original(*args, **kwargs)

    scheduler.set_timesteps = users_override
    try:
        ref = gen(pipe)
        assert not attnlab.is_instrumented(pipe) and attnlab.active_patches(pipe) == []
        with attnlab.record(pipe, levels=[0]):
            assert attnlab.is_instrumented(pipe) and attnlab.is_instrumented(pipe.unet)
            described = [p.description for p in attnlab.active_patches(pipe)]
            site = attnlab.sites(pipe).names[0]
            assert f"{site}.processor" in described
            assert f"{site}.hook_probs" in described
            assert any("set_timesteps" in d for d in described)
            hook = dict(pipe.unet.named_modules())[site].hook_probs
            assert hook.name == f"{site}.hook_probs"
            inside = gen(pipe)
        assert not attnlab.is_instrumented(pipe) and attnlab.active_patches() == []
        # the user's instance attribute is back (not deleted), and it ran inside the context
        assert scheduler.__dict__["set_timesteps"] is users_override
        assert len(calls) == 2
        assert torch.equal(gen(pipe), ref)
        assert inside.shape == ref.shape
    finally:
        del scheduler.set_timesteps


def test_global_module_hooks_do_not_force_the_explicit_path(ms_pipe, gen):
    """torch's global hooks are not read (private state): with one registered, a recording
    still takes the blocked path, so its maps equal those recorded without it bit for bit."""
    with attnlab.record(ms_pipe, levels=[0]) as rec:
        gen(ms_pipe)
    ref = rec.to_xarray()["probs"].values
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, a, o: seen.append(type(m).__name__) if type(m).__name__ == "HookPoint" else None
    )
    try:
        with attnlab.record(ms_pipe, levels=[0]) as rec:
            gen(ms_pipe)
    finally:
        handle.remove()
    assert "HookPoint" not in seen
    assert (rec.to_xarray()["probs"].values == ref).all()


# ---- the layered package ---------------------------------------------------------------------


def test_attnlab_sites_stays_the_function():
    import attnlab.core.sites

    assert callable(attnlab.sites) and attnlab.sites is attnlab.core.sites.sites
    # attnlab's own families arrive through the entry point like any package's
    names = {f.name for f in registered_families()}
    assert {"unet3d", "motion", "svd", "latte", "lavie", "videocrafter2", "organism"} <= names
