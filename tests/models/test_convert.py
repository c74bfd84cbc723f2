"""LaVie and VideoCrafter2 from their original checkpoint layouts (issues 17 and 29).

No weights can be downloaded here: checkpoints are random tensors written in the original key
layout and shapes (``attnlab.models.convert.lavie_layout`` / ``vc2_layout``, enumerated from the
authors' model code) at a reduced width; the full-width layouts are checked against the models
on the meta device. The files are written as the authors' code writes them, whatever attnlab's
layouts say (issue 29): LaVie's one ``RotaryEmbedding(32)`` shared by every temporal layer
(``base/models/unet.py``) is ONE tensor under all ``rotary_emb.freqs`` keys, inside the ``ema``
wrapper that LaVie's ``find_model`` unwraps; VideoCrafter2's ``init_attn`` is lvdm's
``TemporalTransformer`` built without ``use_linear`` (``nn.Conv1d(kernel_size=1)``
projections), there is no ``scale_factor`` key (``scale_by_std: false`` keeps it an
attribute), and the state dict sits in ``{"state_dict": ...}`` (lvdm's
``load_model_checkpoint``) or, from DeepSpeed, in ``{"module": {"_forward_module.<key>": ...}}``.
Every reference below is re-implemented from the original block math on the *original* tensors
(functional torch), never through the converted modules.
"""

from __future__ import annotations

import inspect
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab.models import convert
from attnlab.models.convert import VC2Config

# --- LaVie -------------------------------------------------------------------------------------

# SD-1.x UNet config at reduced width: 2 heads of 32 / 64 channels, so RoPE(32) fits every head
LAVIE_SMALL = dict(
    sample_size=8,
    block_out_channels=[64, 64, 128, 128],
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=32,
)


def _random_state(layout: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        t = torch.randn(shape, generator=g) * (0.08 if len(shape) > 1 else 0.02)
        if re.search(r"norm\w*\.weight$|in_layers\.0\.weight$|out_layers\.0\.weight$", key):
            t = 1 + t  # norms near identity keep activations at unit scale
        if key.endswith("relative_attention_bias.weight"):
            t = torch.randn(shape, generator=g)  # O(1) biases, so they matter in the softmax
        state[key] = t
    return state


@pytest.fixture(scope="module")
def sd14_small(tmp_path_factory):
    """A Stable-Diffusion-1.x-shaped diffusers folder at reduced width (what --sd14 expects)."""
    from diffusers import PNDMScheduler

    from attnlab.models.tiny import _text_encoder, clip_tokenizer, kl_vae

    root = tmp_path_factory.mktemp("sd14")
    torch.manual_seed(0)
    kl_vae().save_pretrained(root / "vae")
    _text_encoder().save_pretrained(root / "text_encoder")
    clip_tokenizer().save_pretrained(root / "tokenizer")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    ).save_pretrained(root / "scheduler")
    (root / "unet").mkdir()
    unet_cfg = {"_class_name": "UNet2DConditionModel", **LAVIE_SMALL}
    (root / "unet" / "config.json").write_text(json.dumps(unet_cfg))
    return root


@pytest.fixture(scope="module")
def lavie(sd14_small, tmp_path_factory):
    """Random weights in lavie_base.pt's layout, converted with the CLI; returns (state, pipe)."""
    from attnlab.models import load_pipeline
    from attnlab.models.lavie import LaVieRoPE
    from attnlab.tools.cli import main

    root = tmp_path_factory.mktemp("lavie")
    layout = convert.lavie_layout(convert.lavie_unet_config(sd14_small))
    state = _random_state(layout, seed=1)
    # LaVie builds ONE RotaryEmbedding(32) and hands it to every temporal layer
    # (base/models/unet.py): its freqs is the same tensor under every rotary_emb.freqs key
    shared = LaVieRoPE().freqs
    rope_keys = [k for k in state if k.endswith("rotary_emb.freqs")]
    for key in rope_keys:
        state[key] = shared
    assert len(rope_keys) == 10 and all(state[k] is shared for k in rope_keys)
    torch.save({"ema": state}, root / "lavie_base.pt")  # LaVie's find_model unwraps "ema"
    rc = main(
        [
            "convert",
            "lavie",
            str(root / "lavie_base.pt"),
            "--sd14",
            str(sd14_small),
            str(root / "out"),
        ]
    )
    assert rc == 0
    return state, load_pipeline(str(root / "out"), progress=False)


def test_lavie_layout_matches_model_at_full_width():
    """SD 1.4 width on the meta device: the original layout is exactly the model's state dict."""
    from attnlab.models.lavie import LaVieUNet

    layout = convert.lavie_layout()
    with torch.device("meta"):
        unet = LaVieUNet.from_config(convert.LAVIE_UNET_CONFIG)
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert ours == layout
    # the 16 temporal layers of SD 1.4's layout, 8 heads of 40 / 80 / 160 channels
    table = attnlab.sites(unet, height=320, width=512)
    assert len(table) == 16
    assert {(s.level, s.heads, s.head_dim, s.h, s.w) for s in table} == {
        (0, 8, 40, 40, 64),
        (1, 8, 80, 20, 32),
        (2, 8, 160, 10, 16),
        (3, 8, 160, 5, 8),
    }
    assert table.max_frames is None and table[0].pe == "rope+relative"
    assert sum(math.prod(s) for s in layout.values()) == sum(
        p.numel() for p in unet.parameters()
    ) + sum(b.numel() for b in unet.buffers())


def test_lavie_conversion_round_trip(lavie):
    """Every original key lands in the converted model unchanged; none is invented."""
    state, pipe = lavie
    assert type(pipe.unet).__name__ == "LaVieUNet"
    converted = pipe.unet.state_dict()
    assert set(converted) == set(state)
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
    # LaVie's sampler: DDPM, linear betas 1e-4..0.02
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert pipe.scheduler.config.beta_schedule == "linear"
    assert pipe.scheduler.config.beta_start == 1e-4 and pipe.scheduler.config.beta_end == 0.02


def test_lavie_shared_rotary_tensor_is_read_apart(tmp_path):
    """LaVie's file holds one tensor under every ``rotary_emb.freqs`` key, saved either as the
    same object (as the fixture) or, as ``nn.Module.state_dict`` of a module shared by several
    parents writes it, as one ``detach()`` view per key of one storage. Both come back from
    ``load_checkpoint`` as independent, equal tensors that safetensors can write."""
    from safetensors.torch import load_file, save_file

    class Rotary(torch.nn.Module):  # rotary_embedding_torch: freqs is a Parameter, no grad
        def __init__(self):
            super().__init__()
            freqs = 1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32)
            self.freqs = torch.nn.Parameter(freqs, requires_grad=False)

    class Attn(torch.nn.Module):
        def __init__(self, rope):
            super().__init__()
            self.to_q = torch.nn.Linear(4, 4, bias=False)
            self.rotary_emb = rope

    rope = Rotary()
    net = torch.nn.ModuleDict({f"a{i}": Attn(rope) for i in range(3)})
    by_module = net.state_dict()
    keys = [f"a{i}.rotary_emb.freqs" for i in range(3)]
    assert len({id(by_module[k]) for k in keys}) == 3  # three views ...
    assert len({by_module[k].untyped_storage().data_ptr() for k in keys}) == 1  # ... of one tensor
    same_object = {**by_module, **{k: by_module[keys[0]] for k in keys}}
    for name, state, wrapper in (("views", by_module, "ema"), ("object", same_object, None)):
        path = tmp_path / f"{name}.pt"
        torch.save({wrapper: state} if wrapper else state, path)
        assert convert.shared_keys(torch.load(path)[wrapper] if wrapper else torch.load(path)) == [
            keys
        ]
        loaded = convert.load_checkpoint(path)
        assert convert.shared_keys(loaded) == []
        assert set(loaded) == set(state)
        for key in state:
            assert torch.equal(loaded[key], state[key])
        save_file(loaded, tmp_path / f"{name}.safetensors")  # refused for shared tensors
        assert torch.equal(load_file(tmp_path / f"{name}.safetensors")[keys[2]], rope.freqs)


def test_load_checkpoint_reads_the_authors_wrappers_and_prefixes(tmp_path):
    """The same state dict from the files the authors' loaders read: bare, LaVie's
    ``{"ema": sd}``, lvdm's ``{"state_dict": sd}``, DeepSpeed's ``{"module": sd}`` with lvdm's
    ``_forward_module.`` prefix (its loader drops the first 16 characters of every key) and
    ``DataParallel``'s ``module.`` prefix: every key back under its own name."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3, generator=g),
        "first_stage_model.encoder.conv_in.bias": torch.randn(8, generator=g),
        "scale_arr": torch.linspace(1, 0.7, 10),
    }
    prefix = "_forward_module."
    assert len(prefix) == 16
    files = {
        "bare": sd,
        "ema": {"ema": sd, "model": {"x": torch.zeros(1)}},
        "state_dict": {"state_dict": sd, "epoch": 3, "global_step": 10},
        "deepspeed": {"module": {prefix + k: v for k, v in sd.items()}},
        "dataparallel": {"module." + k: v for k, v in sd.items()},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        # what lvdm's load_model_checkpoint hands to load_state_dict (deepspeed: key[16:])
        if name == "deepspeed":
            assert {k[16:] for k in obj["module"]} == set(sd)
        loaded = convert.load_checkpoint(tmp_path / f"{name}.pt")
        assert set(loaded) == set(sd), name
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), name


#: CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json, as published
SD14_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.7.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def _sd14_ddpm(tmp_path) -> dict:
    """The scheduler LaVie's sample.py builds from SD 1.4's folder:
    ``DDPMScheduler.from_pretrained(sd, subfolder="scheduler", beta_start=1e-4, ...)``."""
    from diffusers import DDPMScheduler

    sd14 = tmp_path / "sd14"
    (sd14 / "scheduler").mkdir(parents=True)
    (sd14 / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD14_SCHEDULER_CONFIG))
    # steps_offset 0: LaVie's diffusers 0.16 DDPMScheduler has none (SD 1.4's 1 is ignored)
    overrides = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", steps_offset=0)
    want = _public(DDPMScheduler.from_pretrained(sd14, subfolder="scheduler", **overrides).config)
    assert _public(convert.lavie_scheduler(sd14).config) == want
    return want


def test_lavie_scheduler_samples_at_lavies_timesteps(tmp_path):
    # diffusers 0.16 (LaVie's pin): timesteps = arange(0, N) * (1000 // N), reversed
    _sd14_ddpm(tmp_path)
    for scheduler in (convert.lavie_scheduler(tmp_path / "sd14"), convert.lavie_scheduler(None)):
        for n in (50, 25, 30):
            scheduler.set_timesteps(n)
            want = (np.arange(0, n) * (1000 // n))[::-1]
            assert scheduler.timesteps.tolist() == want.tolist(), n


def test_lavie_scheduler_without_a_scheduler_folder(tmp_path):
    """No scheduler/ (or no SD folder): SD 1.4's settings stand in, the same scheduler as from
    SD 1.4's folder (diffusers 0.42's DDPMScheduler takes no ``set_alpha_to_one``)."""
    want = _sd14_ddpm(tmp_path)
    (tmp_path / "sd_no_scheduler").mkdir()
    assert _public(convert.lavie_scheduler(tmp_path / "sd_no_scheduler").config) == want
    assert _public(convert.lavie_scheduler(None).config) == want


def test_lavie_converts_without_a_scheduler_folder(lavie, sd14_small, tmp_path):
    """An SD folder without scheduler/ converts, every key consumed, with SD 1.4's settings."""
    import shutil

    from attnlab.models import load_pipeline

    want = _sd14_ddpm(tmp_path)
    bare = tmp_path / "sd_no_scheduler"
    for sub in ("vae", "text_encoder", "tokenizer", "unet"):
        shutil.copytree(sd14_small / sub, bare / sub)
    state, _ = lavie
    torch.save({"ema": state}, tmp_path / "lavie_base.pt")
    report = convert.convert_lavie(tmp_path / "lavie_base.pt", bare, tmp_path / "out")
    assert (
        report.consumed == len(state) == len(convert.lavie_layout(convert.lavie_unet_config(bare)))
    )
    assert any("no scheduler/" in note for note in report.notes)
    pipe = load_pipeline(str(tmp_path / "out"), progress=False)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert _public(pipe.scheduler.config) == want
    assert torch.allclose(pipe.scheduler.betas.double(), torch.linspace(1e-4, 0.02, 1000).double())


def _public(config) -> dict:
    """A scheduler config's DDPMScheduler settings (PNDM-only keys that from_config carries
    along unused, such as ``set_alpha_to_one``, left out)."""
    from diffusers import DDPMScheduler

    known = inspect.signature(DDPMScheduler.__init__).parameters
    return {k: v for k, v in dict(config).items() if k in known}


def test_lavie_converter_names_bad_keys(lavie, sd14_small, tmp_path):
    state, _ = lavie
    bad = dict(state)
    bad.pop("mid_block.attentions.0.transformer_blocks.0.attn_temp.to_q.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(
        convert.CheckpointLayoutError, match=r"(?s)missing.*attn_temp\.to_q.*unexpected.*extra"
    ):
        convert.convert_lavie(tmp_path / "bad.pt", sd14_small, tmp_path / "out")


def _ref_buckets(frames: int) -> torch.Tensor:
    """T5 buckets of ``key - query`` as LaVie defines them, in double precision, scalar code."""
    out = torch.empty(frames, frames, dtype=torch.long)
    for i in range(frames):
        for j in range(frames):
            n = i - j
            base = 16 if n < 0 else 0
            n = abs(n)
            out[i, j] = base + (
                n if n < 8 else min(15, 8 + math.floor(math.log(n / 8) / math.log(4) * 8))
            )
    return out


def _ref_rope(x: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Interleaved-pair rotary embedding as a complex product: (x_2i + i x_2i+1) e^{i t f_i}."""
    frames = x.shape[-2]
    freqs = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = torch.arange(frames, dtype=torch.float64)[:, None] * freqs[None]
    rot = torch.view_as_complex(
        x[..., :dim].double().reshape(*x.shape[:-1], dim // 2, 2).contiguous()
    )
    rot = torch.view_as_real(rot * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    return torch.cat([rot.to(x.dtype), x[..., dim:]], dim=-1)


def _ref_temporal_attention(sd, p, x, heads):
    """LaVie ``TemporalAttention`` on ``x`` = [rows, F, C] from the original tensors:
    (probabilities [rows, heads, F, F], output [rows, F, C])."""
    rows, frames, c = x.shape
    d = c // heads

    def split(t):
        return t.view(rows, frames, heads, d).transpose(1, 2)

    q = split(x @ sd[f"{p}.to_q.weight"].T) * d**-0.5
    k = split(x @ sd[f"{p}.to_k.weight"].T)
    v = split(x @ sd[f"{p}.to_v.weight"].T)
    bias = sd[f"{p}.time_rel_pos_bias.relative_attention_bias.weight"][_ref_buckets(frames)]
    s = torch.einsum("rhid,rhjd->rhij", _ref_rope(q), _ref_rope(k)) + bias.permute(2, 0, 1)
    s = s - s.amax(-1, keepdim=True)
    probs = s.softmax(-1)
    o = torch.einsum("rhij,rhjd->rhid", probs, v).transpose(1, 2).reshape(rows, frames, c)
    return probs, o @ sd[f"{p}.to_out.0.weight"].T + sd[f"{p}.to_out.0.bias"]


def _ref_lavie_transformer(sd, p, x, context, heads):
    """LaVie ``Transformer3DModel`` (conv projections, one ``BasicTransformerBlock``)."""
    b, c, frames, h, w = x.shape
    xf = x.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
    t = F.group_norm(xf, 32, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], eps=1e-6)
    t = F.conv2d(t, sd[f"{p}.proj_in.weight"], sd[f"{p}.proj_in.bias"])
    t = t.permute(0, 2, 3, 1).reshape(b * frames, h * w, c)
    q = f"{p}.transformer_blocks.0"
    ctx = context.repeat_interleave(frames, dim=0)

    def ln(y, name):
        return F.layer_norm(y, (c,), sd[f"{q}.{name}.weight"], sd[f"{q}.{name}.bias"])

    def attn(y, kv, name):
        n, lq, _ = y.shape
        d = c // heads
        qq = (y @ sd[f"{q}.{name}.to_q.weight"].T).view(n, lq, heads, d).transpose(1, 2)
        kk = (kv @ sd[f"{q}.{name}.to_k.weight"].T).view(n, -1, heads, d).transpose(1, 2)
        vv = (kv @ sd[f"{q}.{name}.to_v.weight"].T).view(n, -1, heads, d).transpose(1, 2)
        o = ((qq @ kk.transpose(-1, -2)) * d**-0.5).softmax(-1) @ vv
        o = o.transpose(1, 2).reshape(n, lq, c)
        return o @ sd[f"{q}.{name}.to_out.0.weight"].T + sd[f"{q}.{name}.to_out.0.bias"]

    t = attn(ln(t, "norm1"), ln(t, "norm1"), "attn1") + t
    t = attn(ln(t, "norm2"), ctx, "attn2") + t
    tt = t.view(b, frames, h * w, c).transpose(1, 2).reshape(b * h * w, frames, c)
    tt = _ref_temporal_attention(sd, f"{q}.attn_temp", ln(tt, "norm_temp"), heads)[1] + tt
    t = tt.view(b, h * w, frames, c).transpose(1, 2).reshape(b * frames, h * w, c)
    y = ln(t, "norm3") @ sd[f"{q}.ff.net.0.proj.weight"].T + sd[f"{q}.ff.net.0.proj.bias"]
    y, gate = y.chunk(2, dim=-1)
    t = (y * F.gelu(gate)) @ sd[f"{q}.ff.net.2.weight"].T + sd[f"{q}.ff.net.2.bias"] + t
    t = t.reshape(b * frames, h, w, c).permute(0, 3, 1, 2)
    t = F.conv2d(t, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"]) + xf
    return t.reshape(b, frames, c, h, w).permute(0, 2, 1, 3, 4)


def test_lavie_block_equals_original_math(lavie):
    """One converted transformer block (spatial, text, temporal attention, FF) against the
    original block math on the original tensors; fp32 rounding of different op orders: 1e-5."""
    state, pipe = lavie
    torch.manual_seed(2)
    x = torch.randn(2, 64, 5, 4, 3)
    context = torch.randn(2, 7, 32)
    p = "down_blocks.0.attentions.0"
    with torch.no_grad():
        ours = pipe.unet.down_blocks[0].attentions[0](x, context)
        ref = _ref_lavie_transformer(state, p, x, context, heads=2)
    assert (ours - ref).abs().max() < 1e-5
    assert (ours - x).abs().max() > 0.1  # the block does something


@pytest.mark.slow
def test_lavie_recorded_probabilities_equal_reference(lavie):
    """attnlab's probabilities (hook point and head-wise recording) equal
    softmax(RoPE(q) RoPE(k)^T / sqrt d + bias) from the original tensors, within 1e-5."""
    state, pipe = lavie
    unet = pipe.unet
    name = "up_blocks.3.attentions.0.transformer_blocks.0.attn_temp"
    attn = dict(unet.named_modules())[name]
    seen = {}
    pre = attn.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    torch.manual_seed(3)
    x, ctx = torch.randn(1, 4, 12, 8, 6), torch.randn(1, 7, 32)
    try:
        with torch.no_grad():
            fused = unet(x, 500, ctx).sample  # no attnlab: the model's own fused processor
        with attnlab.hooks(unet), torch.no_grad():
            h = attn.hook_probs.register_forward_hook(
                lambda m, a, o: seen.setdefault("p", o.clone())
            )
            unet(x, 500, ctx)
            h.remove()
        with attnlab.record(unet, names=[name], reduce="head") as rec, torch.no_grad():
            recorded = unet(x, 500, ctx).sample
    finally:
        pre.remove()
    ref_probs, _ = _ref_temporal_attention(state, name, seen["x"], heads=2)
    assert seen["p"].shape == (48, 2, 12, 12)
    assert (seen["p"] - ref_probs).abs().max() < 1e-5
    probs = rec.to_xarray()["probs"]
    maps = torch.as_tensor(probs.isel(run=0, step=0, layer=0, cfg=0, sample=0).values)
    assert (maps - ref_probs.mean(0)).abs().max() < 1e-5
    # the explicit path computes what the model's own (fused) processor computes
    assert (recorded - fused).abs().max() < 1e-4


def test_lavie_bias_is_applied_on_the_explicit_path(lavie):
    """Without the model's relative bias hook the explicit path would compute another model:
    removing ``attnlab_logit_bias`` changes the recorded output; the hook restores it."""
    _, pipe = lavie
    unet = pipe.unet
    torch.manual_seed(4)
    x, ctx = torch.randn(1, 4, 6, 8, 6), torch.randn(1, 7, 32)
    with torch.no_grad():
        plain = unet(x, 500, ctx).sample
        with attnlab.record(unet):  # every temporal layer on attnlab's explicit path
            with_bias = unet(x, 500, ctx).sample
        cls = type(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn_temp)
        prop = cls.attnlab_logit_bias
        try:
            cls.attnlab_logit_bias = None
            with attnlab.record(unet):
                without = unet(x, 500, ctx).sample
        finally:
            cls.attnlab_logit_bias = prop
    assert (with_bias - plain).abs().max() < 1e-4
    assert (without - plain).abs().max() > 1e-3


def test_lavie_relative_bias_beyond_32_frames(lavie):
    """40 frames run (no frame limit); the bias is the original's clamped buckets: recorded
    logits minus RoPE(q) RoPE(k)^T / sqrt d are bias[h, bucket(j - i)], constant for offsets
    >= 27 in each direction."""
    state, pipe = lavie
    unet = pipe.unet
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp"
    attn = dict(unet.named_modules())[name]
    buckets = attn.time_rel_pos_bias.buckets(40)
    assert torch.equal(buckets, _ref_buckets(40))
    assert buckets[39, 0] == buckets[27, 0] == 15 and buckets[0, 39] == buckets[0, 27] == 31
    assert buckets[26, 0] == 14
    seen = {}
    pre = attn.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    try:
        with attnlab.hooks(unet), torch.no_grad():
            h = attn.hook_logits.register_forward_hook(
                lambda m, a, o: seen.setdefault("l", o.clone())
            )
            unet(torch.randn(1, 4, 40, 8, 8), 500, torch.randn(1, 7, 32))
            h.remove()
    finally:
        pre.remove()
    x = seen["x"]
    d = 32
    q = (x @ state[f"{name}.to_q.weight"].T).view(64, 40, 2, d).transpose(1, 2)
    k = (x @ state[f"{name}.to_k.weight"].T).view(64, 40, 2, d).transpose(1, 2)
    content = _ref_rope(q) @ _ref_rope(k).transpose(-1, -2) / math.sqrt(d)
    bias = (seen["l"] - content).mean(0)  # [heads, F, F]
    table = state[f"{name}.time_rel_pos_bias.relative_attention_bias.weight"]
    assert (bias - table[_ref_buckets(40)].permute(2, 0, 1)).abs().max() < 1e-4
    assert (bias[:, 39, 0] - table[15]).abs().max() < 1e-4


@pytest.mark.slow
def test_lavie_pipeline_tar(lavie):
    """The converted pipeline runs and the paper's edits act on it; leaving restores it."""
    _, pipe = lavie
    kw = dict(
        prompt="a bear", num_frames=6, height=64, width=48, num_inference_steps=2, output_type="pt"
    )

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    base = run()
    with attnlab.edit(pipe, attnlab.TAR({0: 1.0})):
        tar = run()
    assert (tar - base).abs().max() > 1e-4
    assert torch.equal(run(), base)


def test_lavie_folder_loads_as_lavie_pipeline_at_lavies_size(lavie, monkeypatch):
    """LaVie samples 320 x 512 (base/configs/sample.yaml), not the 512 x 512 that SD 1.4's
    UNet sample_size (64) gives TextToVideoSDPipeline; None means the default too. Its
    guidance is LaVie's 7.5 over 50 steps (TextToVideoSDPipeline's own default is 9.0)."""
    from attnlab.models import generate

    _, pipe = lavie
    assert type(pipe).__name__ == "LaViePipeline"
    defaults = {k: v.default for k, v in inspect.signature(type(pipe).__call__).parameters.items()}
    assert (defaults["height"], defaults["width"]) == (320, 512)
    assert tuple(generate(pipe, "a bear", frames=1, steps=1).shape) == (1, 320, 512, 3)
    out = pipe("a bear", height=None, width=None, num_frames=1, num_inference_steps=1)
    assert out.frames.shape[-3:-1] == (320, 512)
    seen: dict = {}
    monkeypatch.setattr(type(pipe).__mro__[1], "__call__", lambda self, **kw: seen.update(kw))
    pipe("a bear")
    assert (seen["guidance_scale"], seen["num_inference_steps"]) == (7.5, 50)


def _known_notices(text: str) -> list[str]:
    notices = ("Expected types for", "should be kept in float32: []", "has been deprecated")
    return [line for line in text.splitlines() if any(n in line for n in notices)]


def test_conversions_and_loading_print_no_known_library_notices(sd14_small, tmp_path, capfd):
    """Converting (with a dtype) and loading print none of the known-harmless library notices
    (the float32-modules note of .to(), the pipeline deprecation notice, the UNet type
    warning of a LaVie folder), and pass no deprecated ``torch_dtype=``."""
    import warnings

    from attnlab.models import load_pipeline
    from attnlab.models.lavie import LaVieRoPE

    layout = convert.lavie_layout(convert.lavie_unet_config(sd14_small))
    state = _random_state(layout, seed=2)
    state |= {k: LaVieRoPE().freqs for k in state if k.endswith("rotary_emb.freqs")}
    torch.save({"ema": state}, tmp_path / "lavie_base.pt")
    torch.save({"state_dict": _lvdm_state(VC2_SMALL, seed=3)}, tmp_path / "model.ckpt")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert.convert_lavie(
            tmp_path / "lavie_base.pt", sd14_small, tmp_path / "lavie", dtype=torch.float16
        )
        convert.convert_videocrafter2(
            tmp_path / "model.ckpt", tmp_path / "vc2", config=VC2_SMALL, dtype=torch.float16
        )
        for name in ("lavie", "vc2"):
            pipe = load_pipeline(str(tmp_path / name), dtype=torch.float16, progress=False)
            assert pipe.unet.dtype == torch.float16
    err = capfd.readouterr().err
    assert _known_notices(err) == []
    assert [str(w.message) for w in caught if "torch_dtype" in str(w.message)] == []


# --- VideoCrafter2 ----------------------------------------------------------------------------

VC2_SMALL = VC2Config(
    model_channels=32,
    num_head_channels=16,
    context_dim=64,
    vae_ch=32,
    vae_ch_mult=(1, 1, 1, 1),
    vae_num_res_blocks=1,
    text_width=64,
    text_layers=3,
    text_heads=1,
    text_embed_dim=32,
)


def _lvdm_schedule_buffers(cfg: VC2Config) -> dict[str, torch.Tensor]:
    """The schedule buffers lvdm's DDPM.register_schedule and use_scale write (numpy float64
    -> float32, as there)."""
    betas = (
        np.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=np.float64)
        ** 2
    )
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = dict(
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1 - ac),
        log_one_minus_alphas_cumprod=np.log(1 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1 / ac - 1),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.maximum(post_var, 1e-20)),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1 - ac),
        posterior_mean_coef2=(1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac),
        scale_arr=np.concatenate(
            [np.linspace(1.0, cfg.scale_b, 400), np.full(cfg.timesteps, cfg.scale_b)]
        ),
    )
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def _lvdm_state(cfg: VC2Config, seed: int) -> dict[str, torch.Tensor]:
    """Random weights as lvdm's ``LatentDiffusion.state_dict()`` holds them for
    ``inference_t2v_512_v2.0.yaml`` at ``cfg``'s width, whatever attnlab's layout says:
    ``init_attn`` is a ``TemporalTransformer`` built without ``use_linear``, so its
    projections are ``nn.Conv1d(C, 8 * d_head, kernel_size=1)`` and
    ``nn.Conv1d(8 * d_head, C, kernel_size=1)`` (weights ``(out, in, 1)``); ``scale_by_std:
    false`` keeps ``scale_factor`` an attribute, so there is no such key."""
    layout = dict(convert.vc2_layout(cfg))
    c, inner = cfg.model_channels, 8 * cfg.num_head_channels
    layout["model.diffusion_model.init_attn.0.proj_in.weight"] = (inner, c, 1)
    layout["model.diffusion_model.init_attn.0.proj_out.weight"] = (c, inner, 1)
    layout.pop("scale_factor", None)
    state = _random_state(layout, seed=seed)
    state.update(_lvdm_schedule_buffers(cfg))
    return state


@pytest.fixture(scope="module")
def vc2(tmp_path_factory):
    """Random weights in VideoCrafter2 model.ckpt's layout, converted; (state, report, pipe)."""
    from attnlab.models import load_pipeline

    root = tmp_path_factory.mktemp("vc2")
    state = _lvdm_state(VC2_SMALL, seed=5)
    assert state["model.diffusion_model.init_attn.0.proj_in.weight"].shape == (128, 32, 1)
    assert "scale_factor" not in state
    torch.save({"state_dict": state}, root / "model.ckpt")  # lvdm's load_model_checkpoint
    report = convert.convert_videocrafter2(root / "model.ckpt", root / "out", config=VC2_SMALL)
    return state, report, load_pipeline(str(root / "out"), progress=False)


def test_vc2_prompts_are_tokenized_as_open_clip_tokenizes_them(vc2):
    """lvdm's text encoder tokenizes with ``open_clip.tokenize`` (ftfy, HTML entities, white
    space cleaned first); the converted pipeline gives its CLIPTokenizer the cleaned text, so
    typographic quotes and ``&amp;`` give the authors' ids."""
    import open_clip

    _, _, pipe = vc2
    prompts = ["Van Gogh’s starry night, it’s windy", "a “vintage” car",
               "salt &amp;amp; pepper", "a  plain\tprompt"]  # fmt: skip
    seen: list = []
    hook = pipe.text_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0] if args else kwargs["input_ids"]),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=["\u201cblurry\u201d"] * 4)
    finally:
        hook.remove()
    want = open_clip.tokenize(prompts)
    assert torch.equal(seen[0], want)
    assert torch.equal(seen[1][:1], open_clip.tokenize(["\u201cblurry\u201d"]))
    raw = pipe.tokenizer(prompts[0], padding="max_length", max_length=77).input_ids
    assert raw != want[0].tolist()  # uncleaned, the tokenizer gives other ids


def test_vc2_layout_matches_model_at_full_width():
    """The published config on the meta device: every mapped UNet key exists with its shape,
    none is left over; the KL-VAE likewise through diffusers' LDM-VAE mapping."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from attnlab.models.videocrafter import VideoCrafter2UNet

    cfg = VC2Config()
    layout = convert.vc2_unet_layout(cfg)
    # lvdm's init_attn (TemporalTransformer without use_linear): kernel-1 Conv1d projections
    assert layout["init_attn.0.proj_in.weight"] == (512, 320, 1)
    assert layout["init_attn.0.proj_out.weight"] == (320, 512, 1)
    assert layout["input_blocks.1.2.proj_in.weight"] == (320, 320)  # use_linear: true there
    assert "scale_factor" not in convert.vc2_layout(cfg)  # scale_by_std: false
    with torch.device("meta"):
        unet = VideoCrafter2UNet.from_config(convert.vc2_unet_config(cfg))
        original = {k: torch.empty(s) for k, s in layout.items()}
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    mapped = convert.convert_vc2_unet(original, cfg)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == ours
    assert len(layout) == len(ours) == 1484
    table = attnlab.sites(unet, height=320, width=512)
    assert len(table) == 34 and table[0].pe == "none" and table.family.name == "videocrafter2"
    assert table.get("transformer_in.transformer_blocks.0.attn1").heads == 8
    assert {(s.level, s.h, s.w) for s in table} == {
        (0, 40, 64),
        (1, 20, 32),
        (2, 10, 16),
        (3, 5, 8),
    }
    vae_layout = convert.vc2_vae_layout(cfg)
    with torch.device("meta"):
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
        )
        vae_state = {k: torch.empty(s) for k, s in vae_layout.items()}
    mapped = convert_ldm_vae_checkpoint(vae_state, vae.config)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {
        k: tuple(v.shape) for k, v in vae.state_dict().items()
    }


def test_vc2_conversion_round_trip(vc2):
    state, report, pipe = vc2
    assert report.consumed == len(state) == len(convert.vc2_layout(VC2_SMALL))
    # dropped by name only what lvdm never reads: the last OpenCLIP block (penultimate layer),
    # the text projection and logit scale
    last = [k for k in state if k.startswith("cond_stage_model.model.transformer.resblocks.2.")]
    assert sorted(report.dropped) == sorted(
        [*last, "cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale"]
    )
    assert "scale_factor" not in state
    assert any("no scale_factor key" in note for note in report.notes)
    converted = pipe.unet.state_dict()
    mapping = convert.vc2_unet_key_map(VC2_SMALL)
    for key, new in mapping.items():
        value = state[f"model.diffusion_model.{key}"]
        if key.startswith("init_attn.0.proj_") and key.endswith(".weight"):
            value = value[:, :, 0]  # a kernel-1 Conv1d is the Linear with these weights
        assert torch.equal(converted[new], value), key
    assert type(pipe).__name__ == "VideoCrafter2Pipeline"
    assert type(pipe.scheduler).__name__ == "VideoCrafter2Scheduler"
    defaults = {k: v.default for k, v in inspect.signature(type(pipe).__call__).parameters.items()}
    assert (defaults["num_inference_steps"], defaults["eta"], defaults["guidance_scale"]) == (
        25,
        1.0,
        12.0,
    )
    assert (defaults["fps"], defaults["height"], defaults["width"]) == (28, 320, 512)
    assert pipe.vae.config.scaling_factor == 0.18215  # the config's (lvdm: an attribute)


def test_vc2_generates_at_its_size_without_height_and_width(vc2, tmp_path):
    """The converted UNet has no sample_size: no height / width means VideoCrafter2's 320 x 512
    (attnlab's generate passes no None over the pipeline's defaults, and the pipeline takes
    None for its default), as `attnlab generate --model vc2/` runs it."""
    from attnlab.models import generate
    from attnlab.tools.cli import main

    _, _, pipe = vc2
    assert pipe.unet.config.sample_size is None
    assert tuple(generate(pipe, "a bear", frames=1, steps=1).shape) == (1, 320, 512, 3)
    out = pipe("a bear", height=None, width=None, num_frames=1, num_inference_steps=1)
    assert out.frames.shape[-3:-1] == (320, 512)
    folder = tmp_path / "vc2"
    pipe.save_pretrained(folder)
    args = ["generate", "--model", str(folder), "--edit", "tar:64D1", "--guidance", "12"]
    assert main([*args, "--frames", "1", "--steps", "1", "--out", str(tmp_path / "b.gif")]) == 0


def test_vc2_from_deepspeed_with_a_scale_factor_buffer(vc2, tmp_path):
    """DeepSpeed's ``{"module": {"_forward_module.<key>": ...}}`` (lvdm's loader drops the
    16-character prefix) with a ``scale_factor`` buffer (``scale_by_std: true``): the same
    model, and the checkpoint's scale factor (noted) over the config's."""
    state, _, pipe = vc2
    ds = {"_forward_module." + k: v for k, v in state.items()}
    ds["_forward_module.scale_factor"] = torch.tensor(0.2)
    torch.save({"module": ds}, tmp_path / "model.ckpt")
    report = convert.convert_videocrafter2(
        tmp_path / "model.ckpt", tmp_path / "out", config=VC2_SMALL
    )
    assert report.consumed == len(state) + 1
    assert any("0.2" in note and "from the checkpoint" in note for note in report.notes)
    from attnlab.models import load_pipeline

    again = load_pipeline(str(tmp_path / "out"), progress=False)
    assert again.vae.config.scaling_factor == pytest.approx(0.2)
    theirs = again.unet.state_dict()
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(theirs[key], value), key
    bad = {**state, "model.diffusion_model.init_attn.0.proj_in.weight": torch.zeros(128, 32, 3)}
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(
        convert.CheckpointLayoutError,
        match=r"init_attn\.0\.proj_in\.weight: \(128, 32, 3\) \(expected \(128, 32, 1\)\)",
    ):
        convert.convert_videocrafter2(tmp_path / "bad.ckpt", tmp_path / "bad", config=VC2_SMALL)


def _ref_group_norm_silu(x, w, b):
    return F.silu(F.group_norm(x, 32, w, b, eps=1e-5))


def _ref_resblock(sd, p, x, emb, frames):
    """lvdm ``ResBlock._forward`` with ``temopral_conv`` on ``x`` = [(b t), c, h, w]."""
    h = F.conv2d(
        _ref_group_norm_silu(x, sd[f"{p}.in_layers.0.weight"], sd[f"{p}.in_layers.0.bias"]),
        sd[f"{p}.in_layers.2.weight"],
        sd[f"{p}.in_layers.2.bias"],
        padding=1,
    )
    h = (
        h
        + (F.silu(emb) @ sd[f"{p}.emb_layers.1.weight"].T + sd[f"{p}.emb_layers.1.bias"])[
            :, :, None, None
        ]
    )
    h = F.conv2d(
        _ref_group_norm_silu(h, sd[f"{p}.out_layers.0.weight"], sd[f"{p}.out_layers.0.bias"]),
        sd[f"{p}.out_layers.3.weight"],
        sd[f"{p}.out_layers.3.bias"],
        padding=1,
    )
    skip = f"{p}.skip_connection.weight"
    h = h + (F.conv2d(x, sd[skip], sd[f"{p}.skip_connection.bias"]) if skip in sd else x)
    bt, c, hh, ww = h.shape
    t = h.view(bt // frames, frames, c, hh, ww).permute(0, 2, 1, 3, 4)
    identity = t
    for n, idx in (("conv1", 2), ("conv2", 3), ("conv3", 3), ("conv4", 3)):
        q = f"{p}.temopral_conv.{n}"
        t = F.conv3d(
            _ref_group_norm_silu(t, sd[f"{q}.0.weight"], sd[f"{q}.0.bias"]),
            sd[f"{q}.{idx}.weight"],
            sd[f"{q}.{idx}.bias"],
            padding=(1, 0, 0),
        )
    t = t + identity
    return t.permute(0, 2, 1, 3, 4).reshape(bt, c, hh, ww)


def _ref_temporal_transformer(sd, p, x, frames, heads):
    """lvdm ``TemporalTransformer`` (only_self_att) on [(b t), c, h, w]: ``use_linear``
    projections, or, for 3-d projection weights, ``nn.Conv1d(kernel_size=1)`` ones applied as
    lvdm does without ``use_linear`` (on ``(b h w) c t``, before the ``c t -> t c`` swap)."""
    bt, c, h, w = x.shape
    b = bt // frames
    x5 = x.view(b, frames, c, h, w).permute(0, 2, 1, 3, 4)
    t = F.group_norm(x5, 32, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], eps=1e-6)
    conv = sd[f"{p}.proj_in.weight"].dim() == 3
    if conv:  # 'b c t h w -> (b h w) c t', proj_in, 'bhw c t -> bhw t c'
        t = t.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, frames)
        t = F.conv1d(t, sd[f"{p}.proj_in.weight"], sd[f"{p}.proj_in.bias"]).transpose(1, 2)
    else:
        t = t.permute(0, 3, 4, 2, 1).reshape(b * h * w, frames, c)
        t = t @ sd[f"{p}.proj_in.weight"].T + sd[f"{p}.proj_in.bias"]
    inner = t.shape[-1]
    q = f"{p}.transformer_blocks.0"

    def ln(y, name):
        return F.layer_norm(y, (inner,), sd[f"{q}.{name}.weight"], sd[f"{q}.{name}.bias"])

    def attn(y, name):
        n, L, _ = y.shape
        d = inner // heads
        qq, kk, vv = (
            (y @ sd[f"{q}.{name}.to_{s}.weight"].T).view(n, L, heads, d).transpose(1, 2)
            for s in "qkv"
        )
        o = torch.einsum("nhid,nhjd->nhij", qq, kk).mul(d**-0.5).softmax(-1)
        o = torch.einsum("nhij,nhjd->nhid", o, vv).transpose(1, 2).reshape(n, L, inner)
        return o @ sd[f"{q}.{name}.to_out.0.weight"].T + sd[f"{q}.{name}.to_out.0.bias"]

    t = attn(ln(t, "norm1"), "attn1") + t
    t = attn(ln(t, "norm2"), "attn2") + t
    y = ln(t, "norm3") @ sd[f"{q}.ff.net.0.proj.weight"].T + sd[f"{q}.ff.net.0.proj.bias"]
    y, gate = y.chunk(2, dim=-1)
    t = (y * F.gelu(gate)) @ sd[f"{q}.ff.net.2.weight"].T + sd[f"{q}.ff.net.2.bias"] + t
    if conv:  # '(b hw) t c -> (b hw) c t', proj_out, '(b h w) c t -> b c t h w'
        t = F.conv1d(t.transpose(1, 2), sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])
        t = t.view(b, h, w, c, frames).permute(0, 4, 3, 1, 2).reshape(bt, c, h, w)
    else:
        t = t @ sd[f"{p}.proj_out.weight"].T + sd[f"{p}.proj_out.bias"]
        t = t.view(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bt, c, h, w)
    return t + x


def _ref_embedding(sd, t, fps, mc):
    def sinus(v):
        half = mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = torch.as_tensor(v, dtype=torch.float32).reshape(-1)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def mlp(name, e):
        e = F.silu(e @ sd[f"{name}.0.weight"].T + sd[f"{name}.0.bias"])
        return e @ sd[f"{name}.2.weight"].T + sd[f"{name}.2.bias"]

    return mlp("time_embed", sinus(t)) + mlp("fps_embedding", sinus(fps))


def test_vc2_blocks_equal_original_math(vc2):
    """Time + fps embedding, one ResBlock with its temporal convolution and one temporal
    transformer of the converted UNet against lvdm's math on the original tensors (1e-5)."""
    state, _, pipe = vc2
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}
    unet = pipe.unet
    frames, b = 5, 2
    torch.manual_seed(6)
    with torch.no_grad():
        emb = unet._embedding(torch.tensor(321), 28, b, "cpu", torch.float32)
        ref_emb = _ref_embedding(sd, [321, 321], [28, 28], 32)
        assert (emb - ref_emb).abs().max() < 1e-5
        x = torch.randn(b * frames, 32, 6, 4)
        e = emb.repeat_interleave(frames, 0)
        block = unet.down_blocks[1]
        ours = block.temp_convs[0](block.resnets[0](x, e), num_frames=frames)
        ref = _ref_resblock(sd, "input_blocks.4.0", x, e, frames)
        assert ours.shape == (b * frames, 64, 6, 4)
        assert (ours - ref).abs().max() < 1e-5
        y = torch.randn(b * frames, 64, 3, 2)
        ours = block.temp_attentions[0](y, num_frames=frames, return_dict=False)[0]
        ref = _ref_temporal_transformer(sd, "input_blocks.4.2", y, frames, heads=4)
        assert (ours - ref).abs().max() < 1e-5
        z = torch.randn(b * frames, 32, 3, 2)
        ours = unet.transformer_in(z, num_frames=frames, return_dict=False)[0]
        ref = _ref_temporal_transformer(sd, "init_attn.0", z, frames, heads=8)
        assert (ours - ref).abs().max() < 1e-5


def _ref_spatial_transformer(sd, p, x, context, heads):
    """lvdm ``SpatialTransformer`` (use_linear, depth 1) on [(b t), c, h, w], text ``context``
    [(b t), L, D]."""
    bt, c, h, w = x.shape
    t = F.group_norm(x, 32, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], eps=1e-6)
    t = t.permute(0, 2, 3, 1).reshape(bt, h * w, c)
    t = t @ sd[f"{p}.proj_in.weight"].T + sd[f"{p}.proj_in.bias"]
    inner = t.shape[-1]
    q = f"{p}.transformer_blocks.0"

    def ln(y, name):
        return F.layer_norm(y, (inner,), sd[f"{q}.{name}.weight"], sd[f"{q}.{name}.bias"])

    def attn(y, kv, name):
        n, lq, _ = y.shape
        d = inner // heads
        qq = (y @ sd[f"{q}.{name}.to_q.weight"].T).view(n, lq, heads, d).transpose(1, 2)
        kk = (kv @ sd[f"{q}.{name}.to_k.weight"].T).view(n, -1, heads, d).transpose(1, 2)
        vv = (kv @ sd[f"{q}.{name}.to_v.weight"].T).view(n, -1, heads, d).transpose(1, 2)
        o = torch.einsum("nhid,nhjd->nhij", qq, kk).mul(d**-0.5).softmax(-1)
        o = torch.einsum("nhij,nhjd->nhid", o, vv).transpose(1, 2).reshape(n, lq, inner)
        return o @ sd[f"{q}.{name}.to_out.0.weight"].T + sd[f"{q}.{name}.to_out.0.bias"]

    t = attn(ln(t, "norm1"), ln(t, "norm1"), "attn1") + t
    t = attn(ln(t, "norm2"), context, "attn2") + t
    y = ln(t, "norm3") @ sd[f"{q}.ff.net.0.proj.weight"].T + sd[f"{q}.ff.net.0.proj.bias"]
    y, gate = y.chunk(2, dim=-1)
    t = (y * F.gelu(gate)) @ sd[f"{q}.ff.net.2.weight"].T + sd[f"{q}.ff.net.2.bias"] + t
    t = t @ sd[f"{p}.proj_out.weight"].T + sd[f"{p}.proj_out.bias"]
    return t.view(bt, h, w, c).permute(0, 3, 1, 2) + x


def _ref_lvdm_unet(sd, x, t, context, fps, cfg: VC2Config):
    """lvdm ``UNetModel.forward`` (openaimodel3d.py) from the original keys alone: time + fps
    embedding, ``input_blocks`` (``init_attn`` after the first), ``middle_block``,
    ``output_blocks`` on the skip connections, ``out``; ``x``: [b, c, t, h, w]."""
    b, _, frames, hh, ww = x.shape
    emb = _ref_embedding(sd, [t] * b, [fps] * b, cfg.model_channels).repeat_interleave(frames, 0)
    ctx = context.repeat_interleave(frames, 0)

    def sequential(p, h):  # TimestepEmbedSequential: each layer by its kind
        k = 0
        while any(key.startswith(f"{p}.{k}.") for key in sd):
            q = f"{p}.{k}"
            if f"{q}.in_layers.0.weight" in sd:
                h = _ref_resblock(sd, q, h, emb, frames)
            elif f"{q}.op.weight" in sd:  # Downsample: conv, stride 2
                h = F.conv2d(h, sd[f"{q}.op.weight"], sd[f"{q}.op.bias"], stride=2, padding=1)
            elif f"{q}.conv.weight" in sd:  # Upsample: nearest x 2, conv
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = F.conv2d(h, sd[f"{q}.conv.weight"], sd[f"{q}.conv.bias"], padding=1)
            elif f"{q}.weight" in sd:  # input_blocks.0: conv_in
                h = F.conv2d(h, sd[f"{q}.weight"], sd[f"{q}.bias"], padding=1)
            else:
                heads = sd[f"{q}.transformer_blocks.0.attn1.to_q.weight"].shape[0]
                heads //= cfg.num_head_channels
                if k == 1:  # [res, spatial, temporal, (upsample)]
                    h = _ref_spatial_transformer(sd, q, h, ctx, heads)
                else:
                    h = _ref_temporal_transformer(sd, q, h, frames, heads)
            k += 1
        return h

    h = x.permute(0, 2, 1, 3, 4).reshape(b * frames, -1, hh, ww)
    hs, n = [], 0
    while any(key.startswith(f"input_blocks.{n}.") for key in sd):
        h = sequential(f"input_blocks.{n}", h)
        if n == 0:
            h = sequential("init_attn", h)
        hs.append(h)
        n += 1
    h = sequential("middle_block", h)
    n = 0
    while any(key.startswith(f"output_blocks.{n}.") for key in sd):
        h = sequential(f"output_blocks.{n}", torch.cat([h, hs.pop()], dim=1))
        n += 1
    h = F.silu(F.group_norm(h, 32, sd["out.0.weight"], sd["out.0.bias"], eps=1e-5))
    h = F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)
    return h.view(b, frames, *h.shape[1:]).permute(0, 2, 1, 3, 4)


def test_vc2_unet_forward_equals_lvdm_math(vc2):
    """The whole converted UNet (from the file in lvdm's layout: Conv1d ``init_attn``, no
    ``scale_factor``) against lvdm's forward re-implemented on the original tensors: one noise
    prediction, fp32 rounding of different op orders only."""
    state, _, pipe = vc2
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("first_stage", "cond_stage"))}
    torch.manual_seed(9)
    x, ctx = torch.randn(2, 4, 5, 8, 8), torch.randn(2, 7, 64)
    with torch.no_grad():
        ours = pipe.unet(x, 321, ctx, fps=16).sample
        ref = _ref_lvdm_unet(sd, x, 321, ctx, 16, VC2_SMALL)
        # init_attn's contribution, to show the comparison would see an error there
        off = {
            **sd,
            "init_attn.0.proj_out.weight": torch.zeros_like(sd["init_attn.0.proj_out.weight"]),
        }
        without_init = _ref_lvdm_unet(off, x, 321, ctx, 16, VC2_SMALL)
    assert ours.shape == ref.shape == x.shape
    scale = float(ref.abs().max())
    assert scale > 1e-2  # a real signal, not zeros
    assert (ours - ref).abs().max() < 1e-5 * scale
    assert (without_init - ref).abs().max() > 1e-3 * scale


@pytest.mark.slow
def test_vc2_fps_conditions_the_model(vc2):
    _, _, pipe = vc2
    unet = pipe.unet
    torch.manual_seed(7)
    x, ctx = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 7, 64)
    with torch.no_grad():
        at28 = unet(x, 400, ctx, fps=28).sample
        default = unet(x, 400, ctx).sample
        at8 = unet(x, 400, ctx, fps=8).sample
        per_frame = unet(x, 400, ctx.repeat(4, 1, 1)).sample  # one (equal) text row per frame
    assert torch.equal(default, at28)  # config default_fps = 28
    assert (at8 - at28).abs().max() > 1e-3
    assert (per_frame - at28).abs().max() < 1e-6
    kw = dict(
        prompt="a bear", num_frames=4, height=64, width=64, num_inference_steps=2, output_type="pt"
    )
    a = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    b = pipe(**kw, fps=8, generator=torch.Generator().manual_seed(0)).frames
    assert (a - b).abs().max() > 1e-4


def test_vc2_explicit_path_equals_its_own_processor(vc2):
    """attnlab's explicit path on every temporal layer (``attnlab.hooks``) against the model's
    own fused attention: float rounding only (1e-5: summation order of SDPA vs softmax @ v)."""
    _, _, pipe = vc2
    unet = pipe.unet
    torch.manual_seed(8)
    x, ctx = torch.randn(1, 4, 5, 8, 8), torch.randn(1, 7, 64)
    with torch.no_grad():
        own = unet(x, 400, ctx).sample
        with attnlab.hooks(unet):
            explicit = unet(x, 400, ctx).sample
        assert torch.equal(unet(x, 400, ctx).sample, own)
    assert attnlab.sites(unet).family.name == "videocrafter2"
    assert (explicit - own).abs().max() < 1e-5


def _lvdm_ddim(eps_fn, x, cfg: VC2Config, steps: int, eta: float, noises):
    """lvdm DDIMSampler.ddim_sampling with use_scale, from its arrays (independent of diffusers)."""
    bufs = _lvdm_schedule_buffers(cfg)
    ac = bufs["alphas_cumprod"].double()
    scale_arr = bufs["scale_arr"].double()
    ddim_t = np.arange(0, cfg.timesteps, cfg.timesteps // steps) + 1
    alphas, alphas_prev = ac[ddim_t], torch.cat([ac[:1], ac[ddim_t[:-1]]])
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    sc, sc_prev = scale_arr[ddim_t], torch.cat([scale_arr[:1], scale_arr[ddim_t[:-1]]])
    for i, index in enumerate(reversed(range(steps))):
        e = eps_fn(x, int(ddim_t[index]))
        x0 = (x - (1 - alphas[index]).sqrt() * e) / alphas[index].sqrt()
        dir_xt = (1 - alphas_prev[index] - sigmas[index] ** 2).sqrt() * e
        x0 = x0 / sc[index]
        x = alphas_prev[index].sqrt() * sc_prev[index] * x0 + dir_xt + sigmas[index] * noises[i]
    return x


def test_vc2_scheduler_steps_at_lvdms_timesteps_for_any_count(vc2):
    # lvdm's make_ddim_timesteps("uniform"): range(0, 1000, 1000 // N) + 1, reversed; a count
    # that does not divide 1000 gets more steps there (its length assert is commented out)
    from attnlab.models.videocrafter import VideoCrafter2Scheduler

    scheduler = VideoCrafter2Scheduler()
    for n in (25, 50, 30, 60, 75, 1):
        scheduler.set_timesteps(n)
        want = (np.asarray(list(range(0, 1000, 1000 // n))) + 1)[::-1]
        assert scheduler.timesteps.tolist() == want.tolist(), n
    assert len(scheduler.timesteps) == 1 and int(scheduler.timesteps[0]) == 1
    with pytest.raises(ValueError, match=r"num_inference_steps must be in 1\.\.1000"):
        scheduler.set_timesteps(0)
    # 3: range(0, 1000, 333) + 1 reaches t = 1000, past the schedule (lvdm fails there too)
    with pytest.raises(ValueError, match="reach t = 1000, past the 1000-step schedule"):
        scheduler.set_timesteps(3)
    # the pipeline runs them all: 7 steps -> stride 142: 8 calls from t = 995
    _, _, pipe = vc2
    seen: list = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(int(a[1])))
    try:
        pipe("a bear", num_frames=2, num_inference_steps=7, output_type="latent")
    finally:
        hook.remove()
    assert seen == (np.arange(0, 1000, 142) + 1)[::-1].tolist()


def test_vc2_scheduler_is_lvdm_ddim_with_scale():
    from attnlab.models.videocrafter import VideoCrafter2Scheduler

    cfg = VC2Config()
    sched = VideoCrafter2Scheduler()
    sched.set_timesteps(25)
    assert sched.timesteps.tolist() == list(range(961, 0, -40))
    torch.manual_seed(8)
    x0 = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    noises = [torch.randn_like(x0) for _ in range(25)]

    def eps_fn(x, t):
        return torch.tanh(x) * (t / 1000.0)

    for eta in (0.0, 1.0):
        ref = _lvdm_ddim(eps_fn, x0.clone(), cfg, 25, eta, noises)
        x = x0.clone()
        for i, t in enumerate(sched.timesteps):
            x = sched.step(eps_fn(x, int(t)), t, x, eta=eta, variance_noise=noises[i]).prev_sample
        assert (x - ref).abs().max() < 1e-5
    # forward process as lvdm's q_sample: sqrt(a_t) s(t) x0 + sqrt(1 - a_t) eps
    t = torch.tensor([200])
    a = sched.alphas_cumprod[200].double()
    s = 1 + (0.7 - 1) * 200 / 399
    expect = a.sqrt() * s * x0 + (1 - a).sqrt() * noises[0]
    assert (sched.add_noise(x0, noises[0], t) - expect).abs().max() < 1e-6


def test_vc2_tar_presets_and_synopsis_run(vc2):
    """The paper's TAR presets and Video Synopsis Prompting act on the converted model."""
    _, _, pipe = vc2
    kw = dict(
        prompt="a bear", num_frames=4, height=64, width=64, num_inference_steps=2, output_type="pt"
    )

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(1)).frames

    base = run()
    for preset in ("64D1", "64D1_32D8"):
        with attnlab.edit(pipe, attnlab.TAR(preset)):
            out = run()
        assert (out - base).abs().max() > 1e-5, preset
    with attnlab.edit(pipe, attnlab.Synopsis(["a young boy", "an old man"])):
        syn = run()
    assert (syn - base).abs().max() > 1e-5
    assert torch.equal(run(), base)


def test_half_precision_checkpoints_convert_and_the_other_family_is_named(
    lavie, vc2, sd14_small, tmp_path, capsys
):
    """Checkpoints saved in float16 / bfloat16 hold the schedule and rotary tensors within
    that dtype's rounding: they convert (as the authors' loaders read them). A checkpoint of
    the other authors' layout is refused with the command that takes it; the CLI prints the
    report's notes."""
    from attnlab.tools.cli import main

    def cast(state, dtype):
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    lavie_state, _ = lavie
    vc2_state = vc2[0]
    for dtype in (torch.float16, torch.bfloat16):
        torch.save({"ema": cast(lavie_state, dtype)}, tmp_path / "lavie_base.pt")
        convert.convert_lavie(tmp_path / "lavie_base.pt", sd14_small, tmp_path / f"l{dtype}")
        torch.save({"state_dict": cast(vc2_state, dtype)}, tmp_path / "model.ckpt")
        convert.convert_videocrafter2(tmp_path / "model.ckpt", tmp_path / f"v{dtype}", config=VC2_SMALL)  # fmt: skip
    wrong = {k: v * 1.01 if k == "betas" else v for k, v in vc2_state.items()}
    torch.save({"state_dict": cast(wrong, torch.float16)}, tmp_path / "wrong.ckpt")
    with pytest.raises(convert.CheckpointLayoutError, match="betas differ"):
        convert.convert_videocrafter2(tmp_path / "wrong.ckpt", tmp_path / "w", config=VC2_SMALL)
    with pytest.raises(
        convert.CheckpointLayoutError,
        match=r"this is a lavie checkpoint .*convert it with `attnlab convert lavie`",
    ):
        convert.convert_videocrafter2(tmp_path / "lavie_base.pt", tmp_path / "x", config=VC2_SMALL)
    with pytest.raises(convert.CheckpointLayoutError, match=r"this is a videocrafter2 checkpoint"):
        convert.convert_lavie(tmp_path / "model.ckpt", sd14_small, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    capsys.readouterr()
    cmd = ["convert", "lavie", str(tmp_path / "lavie_base.pt"), str(tmp_path / "cli")]
    assert main([*cmd, "--sd14", str(sd14_small)]) == 0
    out = capsys.readouterr().out
    assert f"note: VAE, text encoder and tokenizer from {sd14_small}" in out
