"""TAR with VSTAR's own semantics on request (issue 29): ``TAR(..., compat="vstar")``.

The references are VSTAR's rule computed by hand, as its code computes it
(boschresearch/VSTAR ``utils/attention_utils.py``, ``register_attention_control_vstar``):
``h_w = sim.shape[0] // heads``, ``cur_width = int(sqrt(h_w / (40 / 64)))``; a layer is
regularised when ``cur_width`` is in ``regularize_res_list`` (with ``diag_<width>`` as sigma and
``scale_<width>`` as scale), the layer is not the ``init`` block, and the sampler's loop index is
``<= until_time`` (13); the presets are its ``utils/test_list.py`` dictionaries, copied as data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlab
from attnlab.core.protocol import CallContext, RunInfo
from attnlab.edits import TAR, EditError, from_json, from_spec
from attnlab.edits.bias import VSTAR_UNTIL_STEP, preset_widths, vstar_width

#: VSTAR utils/test_list.py: regularization_dict (the presets it names), as data
VSTAR_PRESETS = {
    "64D1": {"regularize_res_list": [64], "scale_64": 1, "diag_64": 1, "until_time": 13},
    "64D4": {"regularize_res_list": [64], "scale_64": 1, "diag_64": 4, "until_time": 13},
    "64D8": {"regularize_res_list": [64], "scale_64": 1, "diag_64": 8, "until_time": 13},
    "64D1_32D1": {
        "regularize_res_list": [64, 32],
        "scale_64": 1,
        "diag_64": 1,
        "scale_32": 1,
        "diag_32": 1,
        "until_time": 13,
    },
    "64D1_32D8": {
        "regularize_res_list": [64, 32],
        "scale_64": 1,
        "diag_64": 1,
        "scale_32": 1,
        "diag_32": 8,
        "until_time": 13,
    },
    "64D1_32D12": {
        "regularize_res_list": [64, 32],
        "scale_64": 1,
        "diag_64": 1,
        "scale_32": 1,
        "diag_32": 12,
        "until_time": 13,
    },
    "64D4_32D8": {
        "regularize_res_list": [64, 32],
        "scale_64": 1,
        "diag_64": 4,
        "scale_32": 1,
        "diag_32": 8,
        "until_time": 13,
    },
    "64D4_32D12": {
        "regularize_res_list": [64, 32],
        "scale_64": 1,
        "diag_64": 4,
        "scale_32": 1,
        "diag_32": 12,
        "until_time": 13,
    },
}


def test_presets_are_vstars_dictionaries():
    for name, d in VSTAR_PRESETS.items():
        want = {w: float(d[f"diag_{w}"]) for w in d["regularize_res_list"]}
        assert preset_widths(name) == want, name
        tar = TAR(name, compat="vstar")
        assert tar.sigma == want and tar.scale == 1.0 and tar.max_mode == "row"
        assert tar.until_step == d["until_time"] == VSTAR_UNTIL_STEP
        assert tar.t_min is None and tar.cfg == "both"


def test_vstar_width_by_hand():
    """``int(sqrt(h * w / 0.625))`` worked out by hand for the four levels of three latents."""
    # 320 x 512 video, latent 40 x 64: 2560 / 0.625 = 4096 -> 64; 640 -> 1024 -> 32; ...
    assert [vstar_width(h * w) for h, w in [(40, 64), (20, 32), (10, 16), (5, 8)]] == [
        64,
        32,
        16,
        8,
    ]
    # 128 x 320 video, latent 16 x 40: 640 -> 1024 -> 32; 160 -> 256 -> 16; 40 -> 64 -> 8;
    # 10 -> 16 -> 4
    assert [vstar_width(h * w) for h, w in [(16, 40), (8, 20), (4, 10), (2, 5)]] == [32, 16, 8, 4]
    # 384 x 640 video, latent 48 x 80: 6144 -> 78.4 -> 78; 1536 -> 39.2 -> 39: neither 64 nor 32
    assert [vstar_width(h * w) for h, w in [(48, 80), (24, 40)]] == [78, 39]


def _vstar_sigma(rows: int, name: str, preset: str) -> float | None:
    """VSTAR's process_sim decision for one layer call of one video (batch 1 per pass)."""
    d = VSTAR_PRESETS[preset]
    cur_width = int(math.sqrt(rows / (40.0 / 64.0)))
    if name.startswith("transformer_in") or cur_width not in d["regularize_res_list"]:
        return None  # place_in_unet == 'init', or a width not in regularize_res_list
    return float(d[f"diag_{cur_width}"])


def _calls(unet, tar, latent, steps=1, frames=6):
    """Bare denoiser calls under ``tar``: per call, per site, (raw logits, probabilities)."""
    table = attnlab.sites(unet)
    mods = dict(unet.named_modules())
    seen: list[dict] = []
    handles = []

    def keep(name, what):
        def hook(module, args, output):
            seen[-1].setdefault(name, {})[what] = output.detach().double().clone()

        return hook

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, frames, *latent, generator=g)
    ctx = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    with attnlab.edit(unet, tar), attnlab.hooks(unet), torch.no_grad():
        for site in table:
            handles.append(mods[site.name].hook_logits.register_forward_hook(keep(site.name, "l")))
            handles.append(mods[site.name].hook_probs.register_forward_hook(keep(site.name, "p")))
        try:
            for _ in range(steps):
                seen.append({})
                unet(x, 500, encoder_hidden_states=ctx)
        finally:
            for h in handles:
                h.remove()
    return table, seen


def _eq3(logits: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """VSTAR's process_sim on ``[rows, heads, F, F]``: ``softmax(sim + max_row(sim) * dA)``,
    dA the Gaussian over the frame offset divided by its diagonal (scipy's pdf / pdf(0))."""
    if sigma is None:
        return logits.softmax(-1)
    n = logits.shape[-1]
    off = np.subtract.outer(np.arange(n), np.arange(n))
    pdf = np.exp(-0.5 * (off / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    dA = torch.as_tensor(pdf / pdf[0, 0])
    return (logits + logits.amax(-1, keepdim=True) * dA).softmax(-1)


@pytest.mark.parametrize(
    "latent, preset, differs",
    [((16, 40), "64D1_32D8", True), ((16, 40), "64D1", True), ((40, 64), "64D1_32D8", False)],
)
def test_vstar_mode_regularises_the_layers_vstar_does(ms_pipe, latent, preset, differs):
    """Every temporal layer's probabilities under ``TAR(preset, compat="vstar")`` equal VSTAR's
    rule applied by hand to the layer's own raw logits (row count -> width -> sigma); the
    default (level) mode differs from it at a 16 x 40 latent and agrees at 40 x 64."""
    import contextlib

    unet = ms_pipe.unet
    nothing = (latent, preset) == ((16, 40), "64D1")  # no layer is 64 wide there: said
    with pytest.warns(UserWarning, match="no layer") if nothing else contextlib.nullcontext():
        table, calls = _calls(unet, TAR(preset, compat="vstar"), latent)
    vstar = {}
    for site in table:
        logits, probs = calls[0][site.name]["l"], calls[0][site.name]["p"]
        sigma = _vstar_sigma(logits.shape[0], site.name, preset)
        torch.testing.assert_close(probs, _eq3(logits, sigma), atol=2e-6, rtol=0)
        vstar[site.name] = sigma
    by_level = {0: 1.0, 1: 8.0} if preset == "64D1_32D8" else {0: 1.0}
    levels = {s.name: None if s.block == "in" else by_level.get(s.level) for s in table}
    assert (vstar != levels) is differs
    if latent == (16, 40) and preset == "64D1_32D8":  # sigma 8 on level 0, nothing on level 1
        assert {s.level: vstar[s.name] for s in table if s.block == "down"} == {
            0: 8.0,
            1: None,
            2: None,
        }
    if latent == (16, 40) and preset == "64D1":  # no layer is 64 wide in VSTAR's rule
        assert set(vstar.values()) == {None}
    # the default mode is attnlab's level rule, checked the same way
    table, calls = _calls(unet, TAR(preset), latent)
    for site in table:
        logits, probs = calls[0][site.name]["l"], calls[0][site.name]["p"]
        torch.testing.assert_close(probs, _eq3(logits, levels[site.name]), atol=2e-6, rtol=0)


def test_vstar_mode_acts_up_to_its_step_index(ms_pipe):
    """``until_step``: calls 0..until_step are regularised, later ones are not (any timestep);
    at a 16 x 40 latent level 0 is 32 wide in VSTAR's rule."""
    table, calls = _calls(
        ms_pipe.unet, TAR({32: 1.0}, compat="vstar", until_step=1), (16, 40), steps=3
    )
    name = next(s.name for s in table if s.level == 0 and s.block == "down")
    for step, call in enumerate(calls):
        logits, probs = call[name]["l"], call[name]["p"]
        want = _eq3(logits, 1.0 if step <= 1 else None)
        torch.testing.assert_close(probs, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("steps, vstar_last, default_last", [(25, 13, 13), (50, 13, 27)])
def test_step_window_vstar_against_timestep_window(steps, vstar_last, default_last):
    """VideoCrafter2's DDIM schedule: VSTAR's loop index <= 13 is t >= 441 for 25 steps (the
    default window) but t >= 721 for 50 steps, where the default acts down to t = 441."""
    from attnlab.models.videocrafter import VideoCrafter2Scheduler

    sched = VideoCrafter2Scheduler()
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    assert ts[0] == 1000 - 1000 // steps + 1 and ts[1] - ts[0] == -1000 // steps  # 961/-40, 981/-20

    def active(tar):
        tar.on_run_start(RunInfo(0, timesteps=[float(t) for t in ts]))
        return [
            i
            for i, t in enumerate(ts)
            if tar.active(CallContext(RunInfo(0), i, t, 1000, 1, 16, (40, 64)))
        ]

    assert active(TAR("64D1", compat="vstar")) == list(range(vstar_last + 1))
    assert active(TAR("64D1")) == list(range(default_last + 1))
    assert ts[13] == (441 if steps == 25 else 721) and ts[default_last] == 441


@pytest.mark.parametrize(
    "edit",
    [
        TAR("64D1_32D8", compat="vstar"),
        TAR({64: 2.0, 16: 4.0}, compat="vstar", until_step=5, cfg="cond", max_mode="head"),
        TAR(3.0, compat="vstar", t_max=0.9, steps=[0, 2]),
    ],
)
def test_vstar_mode_round_trips_through_json(edit):
    again = from_json(edit.to_json())
    assert again == edit and from_spec(edit.spec()) == edit
    assert again.compat == "vstar" and again.sigma == edit.sigma
    assert again.until_step == edit.until_step and again.t_min == edit.t_min


def test_default_mode_spec_is_unchanged():
    spec = TAR("64D1").spec()
    assert "compat" not in spec and "until_step" not in spec and spec["t_min"] == 0.441
    assert TAR(3.0, compat="vstar").sigma == {64: 3.0}
    # no timestep window in VSTAR's mode, also when the default t_min is passed explicitly
    assert TAR("64D1", compat="vstar", t_min=0.441).t_min is None
    assert TAR("64D1", compat="vstar", t_min=None) == TAR("64D1", compat="vstar")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TAR("64D1", compat="lavie"), "compat must be None"),
        (lambda: TAR("64D1", until_step=13), "pass compat='vstar'"),
        (lambda: TAR("64D1", compat="vstar", until_step=-1), "until_step must be an int >= 0"),
        (lambda: TAR("64D1", compat="vstar", until_step=2.5), "until_step must be an int >= 0"),
        (lambda: TAR("64D1", compat="vstar", levels=[0]), "picks layers by VSTAR's width"),
        (lambda: TAR({0: 1.0}, compat="vstar"), "positive int"),
        (lambda: TAR({64: -1.0}, compat="vstar"), "positive"),
        (lambda: TAR("64D1", compat="vstar", t_min=0.5), "leave t_min out"),
        (lambda: TAR("64X1", compat="vstar"), "bad TAR preset"),
    ],
)
def test_vstar_mode_bad_parameters(make, match):
    with pytest.raises(EditError, match=match):
        make()


def test_vstar_widths_that_name_no_layer_are_said(recwarn):
    # the organisms' 8 x 8 latent gives VSTAR widths 10, 5, 2, 1: "64D1" regularises nothing
    # there, as VSTAR's code would not; the run is the plain one, and a warning says why
    import torch

    import attnlab
    from attnlab.models import load_pipeline

    pipe = load_pipeline("organism-rope", progress=False)
    call = dict(prompt="a red circle moving to the right on a black background", num_frames=4,
                num_inference_steps=2, output_type="np")  # fmt: skip
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    with (
        pytest.warns(UserWarning, match=r"widths \[64\].*widths \[1, 2, 5, 10\]: no layer"),
        attnlab.edit(pipe, attnlab.TAR("64D1", compat="vstar")),
    ):
        same = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    assert (same == plain).all()
    with attnlab.edit(pipe, attnlab.TAR("64D1")):  # levels: regularised
        assert not (pipe(**call, generator=torch.Generator().manual_seed(0)).frames == plain).all()
