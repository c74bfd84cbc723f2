"""Edits: replacement probes, TAR, reference transfer; targeting, composition, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core import dims as D
from attnlab.core.protocol import CallContext, RunInfo
from attnlab.core.selection import SelectionError
from attnlab.edits import (
    TAR,
    EditError,
    Replace,
    Transfer,
    from_json,
    from_spec,
    parse_edit,
    preset_sigma,
    regularise,
)
from tests.helpers import layer_input_and_probs

LEVEL0 = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1"


def _record_with(pipe, gen, *edits, **rec):
    with attnlab.record(pipe, **rec) as r:
        if edits:
            with attnlab.edit(pipe, *edits):
                video = gen(pipe)
        else:
            video = gen(pipe)
    return video, r.to_xarray()


# ---- serialisation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit",
    [
        TAR("64D1_32D8"),
        TAR(
            {0: 1.5, 2: 4.0},
            t_min=0.2,
            t_max=0.9,
            max_mode="head",
            scale=0.5,
            cfg="cond",
            steps=[0, 1],
        ),
        Replace("identity", levels=[0, 1]),
        Replace("ones", levels=3, blocks="up", names="attn1$", steps=slice(0, 5)),
        Replace(np.array([[2.0, 1.0], [0.0, 3.0]]), levels=0, cfg="uncond"),
        Transfer(
            np.array([[1.0, 0.5], [0.5, 1.0]]),
            similarity="pixel",
            normalise="max",
            levels=[0, 1],
            max_mode="global",
        ),
        attnlab.Synopsis(["a young boy", "an old man"], key_frames=[0, 5], mode="same"),
    ],
)
def test_json_round_trip_keeps_every_argument(edit):
    text = edit.to_json()
    again = from_json(text)
    assert type(again) is type(edit)
    assert again.spec() == edit.spec() == json.loads(text)
    assert from_spec(edit.spec()) == edit


def test_presets_and_parsing():
    assert preset_sigma("64D1") == {0: 1.0}
    assert preset_sigma("64D1_32D8") == {0: 1.0, 1: 8.0}
    assert {p: TAR(p).sigma for p in attnlab.PRESETS} == {
        "64D1": {0: 1.0},
        "64D4": {0: 4.0},
        "64D8": {0: 8.0},
        "64D1_32D8": {0: 1.0, 1: 8.0},
        "64D1_32D1": {0: 1.0, 1: 1.0},
    }
    assert parse_edit("tar:64D4") == TAR("64D4")
    assert parse_edit("tar:2@0,1").sigma == {0: 2.0, 1: 2.0}
    assert parse_edit("replace:ones@0,1") == Replace("ones", levels=[0, 1])
    with pytest.raises(EditError, match="bad TAR preset"):
        TAR("64X1")
    with pytest.raises(EditError, match="unknown edit"):
        parse_edit("blur:3")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TAR(0), "positive"),
        (lambda: TAR({0: -1}), "positive"),
        (lambda: TAR({0: float("nan")}), "positive"),
        (lambda: TAR(1, max_mode="mean"), "max_mode"),
        (lambda: TAR(1, t_min=2.0), "fraction"),
        (lambda: TAR(1, t_min="x"), "fraction"),
        (lambda: Transfer(np.zeros((3, 3)), normalise="max"), "needs a positive one"),
        (lambda: Transfer(-np.ones((3, 3)), normalise="max"), "needs a positive one"),
        (lambda: Replace("zeros"), "'identity', 'ones'"),
        (lambda: Replace(np.ones((2, 3))), "square"),
        (lambda: Replace([[1.0, float("nan")], [1, 1]]), "NaN"),
        (lambda: Replace([[1.0, -1.0], [1, 1]]), "negative"),
        (lambda: Replace([[0.0, 0.0], [1, 1]]), "sum to 0"),
        (lambda: Transfer("/no/such/video.mp4"), "not found"),
        (lambda: Transfer("world:a purple cat"), "not a caption of the world"),
        (lambda: Transfer(np.ones((2, 3))), "square"),
        (lambda: attnlab.Synopsis(["a", "b"], key_frames=[3, 1]), "strictly increasing"),
        (lambda: attnlab.Synopsis(["a", "b"], key_frames=[0]), "one frame per state"),
        (lambda: attnlab.Synopsis([]), "non-empty"),
    ],
)
def test_bad_parameters_raise_one_clear_error(make, match):
    with pytest.raises(EditError, match=match):
        make()


@pytest.mark.parametrize("steps", [[], range(0), True, [0, True], [0.5]])
def test_a_step_selection_that_selects_nothing_or_is_not_integers_is_refused(steps):
    with pytest.raises(SelectionError, match="steps"):
        TAR(1, steps=steps)


def test_unknown_level_is_refused_when_meeting_the_model(ms_pipe):
    with pytest.raises(SelectionError, match=r"level \[5\]"), attnlab.edit(ms_pipe, TAR({5: 1.0})):
        pass
    assert not any(hasattr(m, "hook_logits") for m in ms_pipe.unet.modules())


# ---- replacement probes ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["identity", "ones"])
def test_replace_sets_the_maps_changes_output_and_restores(pipe, gen, kind):
    ref = gen(pipe)
    video, ds = _record_with(pipe, gen, Replace(kind, levels=[0]), levels=[0, 1])
    n = 8
    target = np.eye(n) if kind == "identity" else np.full((n, n), 1 / n)
    lvl0 = ds[D.PROBS].where(ds[D.LEVEL] == 0, drop=True)
    np.testing.assert_allclose(lvl0.values, np.broadcast_to(target, lvl0.shape), atol=1e-7)
    lvl1 = ds[D.PROBS].where(ds[D.LEVEL] == 1, drop=True)
    assert float(abs(lvl1 - target).max()) > 1e-3  # other levels untouched
    assert (video - ref).abs().max() > 1e-4
    assert torch.equal(gen(pipe), ref)


def test_replace_matrix_rows_are_normalised_and_frames_checked(ms_pipe, gen):
    m = np.triu(np.ones((8, 8)))
    _, ds = _record_with(ms_pipe, gen, Replace(m, levels=[1]), levels=[1], steps=[0])
    np.testing.assert_allclose(
        ds[D.PROBS].isel(layer=0, run=0, step=0, cfg=1, sample=0),
        m / m.sum(1, keepdims=True),
        atol=1e-7,
    )
    with (
        pytest.raises(EditError, match="2 x 2 but the run has 8 frames"),
        attnlab.edit(ms_pipe, Replace(np.eye(2), levels=[0])),
    ):
        gen(ms_pipe)


def test_replace_targets_one_cfg_half(ms_pipe, gen):
    """Replace covers every block at the level (transformer_in too) but only the chosen half."""
    _, plain = _record_with(ms_pipe, gen, levels=[0], steps=[0])
    _, edited = _record_with(
        ms_pipe, gen, Replace("identity", levels=[0], cfg="cond"), levels=[0], steps=[0]
    )
    cond = edited[D.PROBS].sel(cfg="cond").values
    np.testing.assert_allclose(cond, np.broadcast_to(np.eye(8), cond.shape), atol=1e-7)
    # batch halves never mix inside the UNet: at step 0 the unconditional half is untouched
    np.testing.assert_allclose(
        edited[D.PROBS].sel(cfg="uncond").values, plain[D.PROBS].sel(cfg="uncond").values, atol=1e-7
    )


# ---- TAR ------------------------------------------------------------------------------------
def _eq3_numpy(phi: np.ndarray, sigma: float, mode: str = "row") -> np.ndarray:
    """Independent Eq. 2-3: softmax(phi + max(phi) * dA), dA[i, j] = exp(-0.5 ((j - i)/sigma)^2)."""
    n = phi.shape[-1]
    dA = np.array([[math.exp(-0.5 * ((j - i) / sigma) ** 2) for j in range(n)] for i in range(n)])
    if mode == "row":
        m = phi.max(-1, keepdims=True)
    elif mode == "head":
        m = phi.max((-2, -1), keepdims=True)
    else:
        m = phi.max()
    z = phi + m * dA
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.mark.parametrize("mode", ["row", "head", "global"])
def test_regularise_matches_eq3_on_random_q_k(mode):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 2, 10, 4, generator=g, dtype=torch.float64)
    k = torch.randn(3, 2, 10, 4, generator=g, dtype=torch.float64)
    phi = q @ k.transpose(-1, -2) / 2.0
    from attnlab.data.metrics import gaussian_prior

    dA = torch.as_tensor(gaussian_prior(10, 1.7))
    got = regularise(phi, dA, mode).softmax(-1).numpy()
    np.testing.assert_allclose(got, _eq3_numpy(phi.numpy(), 1.7, mode), rtol=1e-10)


def test_regularise_is_finite_for_extreme_logits():
    dA = torch.as_tensor(np.eye(6) + 0.1)
    for phi in (
        torch.full((2, 6, 6), -1e30),
        torch.full((2, 6, 6), 1e30),
        torch.randn(2, 6, 6) * 1e4,
    ):
        for mode in ("row", "head", "global"):
            out = regularise(phi.float(), dA.float(), mode).softmax(-1)
            assert torch.isfinite(out).all()


def test_tar_on_a_real_layer_matches_eq3(ms_pipe):
    """Probabilities under TAR at a level-0 layer == Eq. 3 from the layer's own q, k (numpy)."""
    attn = dict(ms_pipe.unet.named_modules())[LEVEL0]
    x_in, p_out = layer_input_and_probs(ms_pipe, attn, attnlab.edit(ms_pipe, TAR(2.0, t_min=None)))
    x = x_in.double().numpy()
    rows, n, _ = x.shape
    heads = attn.heads
    q = (
        (x @ attn.to_q.weight.detach().double().numpy().T)
        .reshape(rows, n, heads, -1)
        .transpose(0, 2, 1, 3)
    )
    k = (
        (x @ attn.to_k.weight.detach().double().numpy().T)
        .reshape(rows, n, heads, -1)
        .transpose(0, 2, 1, 3)
    )
    phi = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    np.testing.assert_allclose(p_out.numpy(), _eq3_numpy(phi, 2.0), atol=1e-5)


def test_tar_concentrates_attention_on_the_band(pipe, gen):
    ref = gen(pipe)
    _, plain = _record_with(pipe, gen, levels=[0], blocks=["down", "up"])
    video, tar = _record_with(pipe, gen, TAR(1.0, t_min=None), levels=[0], blocks=["down", "up"])

    def band(ds):  # mean attention mass within |i - j| <= 1, per layer
        p = ds[D.PROBS].transpose(D.LAYER, ...).values
        i, j = np.indices(p.shape[-2:])
        return (p * (abs(i - j) <= 1)).sum(-1).reshape(p.shape[0], -1).mean(1)

    assert (band(tar) > band(plain) + 0.01).all()  # every regularised layer
    assert band(tar).mean() > band(plain).mean() + 0.05
    assert (video - ref).abs().max() > 1e-4
    assert torch.equal(gen(pipe), ref)


def test_tar_leaves_transformer_in_and_unselected_steps_alone(ms_pipe, gen):
    _, plain = _record_with(ms_pipe, gen, levels=[0], steps=[0])
    _, tar = _record_with(ms_pipe, gen, TAR(1.0, steps=[1], t_min=None), levels=[0], steps=[0])
    assert np.array_equal(plain[D.PROBS].values, tar[D.PROBS].values)  # TAR acts at step 1 only
    _, tar0 = _record_with(ms_pipe, gen, TAR(1.0, t_min=None), levels=[0], steps=[0])
    first = "transformer_in.transformer_blocks.0.attn1"
    np.testing.assert_array_equal(
        tar0[D.PROBS].sel(layer=first).values, plain[D.PROBS].sel(layer=first).values
    )


def test_tar_window_is_the_papers_first_14_of_25_ddim_steps():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(steps_offset=1, set_alpha_to_one=False, beta_schedule="scaled_linear")
    sched.set_timesteps(25)
    tar = TAR()
    tar.on_run_start(RunInfo(0, timesteps=[float(t) for t in sched.timesteps]))
    active = [
        i
        for i, t in enumerate(sched.timesteps)
        if tar.active(CallContext(RunInfo(0), i, float(t), 1000, 1, 16, (40, 64)))
    ]
    assert active == list(range(14))
    # the same window for a bare denoiser call (real-video analysis) at a known timestep
    bare = TAR()
    bare.on_run_start(RunInfo(0))
    assert bare.active(CallContext(RunInfo(0), 0, 600.0, 1000, 1, 16, (40, 64)))
    assert not bare.active(CallContext(RunInfo(0), 0, 400.0, 1000, 1, 16, (40, 64)))


def test_composition_bias_then_replace_and_provenance(ms_pipe, gen):
    edits = (TAR(1.0, t_min=None), Replace("identity", levels=[0]))
    _, ds = _record_with(ms_pipe, gen, *edits, levels=[0], steps=[0])
    np.testing.assert_allclose(
        ds[D.PROBS].sel(layer=LEVEL0).squeeze(), np.broadcast_to(np.eye(8), (2, 8, 8)), atol=1e-7
    )
    assert json.loads(ds[D.EDITS].item()) == [e.spec() for e in edits]


# ---- reference transfer ---------------------------------------------------------------------
def test_transfer_uses_the_resampled_reference_matrix(ms_pipe, gen):
    ref_sim = np.array(
        [[1.0, 0.8, 0.2, 0.1], [0.8, 1.0, 0.8, 0.2], [0.2, 0.8, 1.0, 0.8], [0.1, 0.2, 0.8, 1.0]]
    )
    edit = Transfer(ref_sim, levels=[0], t_min=None)
    site = attnlab.sites(ms_pipe).get(LEVEL0)
    prior = edit.prior(site, 8)
    assert prior.shape == (8, 8) and prior.min() == 0.0 and prior.max() == 1.0
    np.testing.assert_allclose(prior, prior.T)
    ref = gen(ms_pipe)
    _, plain = _record_with(ms_pipe, gen, levels=[0], steps=[0])
    video, out = _record_with(ms_pipe, gen, edit, levels=[0], steps=[0])
    assert (video - ref).abs().max() > 1e-4
    assert not np.allclose(
        out[D.PROBS].sel(layer=LEVEL0).values, plain[D.PROBS].sel(layer=LEVEL0).values
    )
    assert torch.equal(gen(ms_pipe), ref)


def test_transfer_from_frames_with_an_offline_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(6, 3, 32, 32, generator=g) * 2 - 1).cumsum(0).clamp(-1, 1)
    edit = Transfer(frames, similarity="pixel", levels=[0])
    sim = edit.reference_similarity()
    assert sim.shape == (6, 6)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-6)


def test_transfer_from_a_world_clip_is_that_clips_similarity(tmp_path, monkeypatch):
    """``Transfer("world:<caption>")`` (also ``transfer:world:...`` on the command line) takes
    the similarity matrix of that world clip, as computed from its frames directly."""
    from attnlab.data.similarity import similarity_matrix
    from attnlab.data.world import world_video
    from attnlab.edits import parse_edit

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    ref = "world:a red circle moving to the right on a black background"
    edit = parse_edit(f"transfer:{ref}")
    assert isinstance(edit, Transfer) and edit.reference == ref
    edit.similarity = "pixel"
    want = similarity_matrix(world_video(ref, frames=16).frames, "pixel").values
    np.testing.assert_allclose(edit.reference_similarity(), want, rtol=0, atol=0)
    # a moving object: similarity falls with the frame distance until the object no longer
    # overlaps its first position (from about 4 frames on: no further change worth comparing)
    assert want[0, 1] > want[0, 2] + 0.1 > want[0, 4] + 0.2 > 0.2 > want[0, 8]


def test_timestep_windows_refuse_continuous_noise_levels():
    """SVD-style schedulers pass c_noise = log(sigma) / 4 as 'timestep': a window must not silently never fire."""
    ctx = CallContext(RunInfo(0), 0, 1.64, 1000, 1, 16, (40, 64), continuous=True)
    tar = TAR()
    tar.on_run_start(RunInfo(0))
    with pytest.raises(ValueError, match="continuous noise level"):
        tar.active(ctx)
    index_window = TAR(steps=[0], t_min=None)
    index_window.on_run_start(RunInfo(0))
    assert index_window.active(ctx)
