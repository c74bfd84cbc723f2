"""Converters from the authors' original checkpoints to diffusers folders.

* ``convert_lavie(lavie_base.pt, SD_1_4_FOLDER, OUT)``: LaVie's base UNet (Vchitect/LaVie) on
  Stable Diffusion 1.4's VAE, CLIP text encoder and tokenizer -> ``TextToVideoSDPipeline`` with
  :class:`~attnlab.lavie.LaVieUNet` and LaVie's sampling schedule (DDPM, linear betas
  1e-4..0.02, as ``base/configs/sample.yaml``).
* ``convert_videocrafter2(model.ckpt, OUT)``: the lvdm ``LatentDiffusion`` checkpoint
  (UNet, KL-VAE, OpenCLIP ViT-H/14 text tower) -> :class:`~attnlab.videocrafter.VideoCrafter2Pipeline`.

The original key layouts (:func:`lavie_layout`, :func:`vc2_layout`) are written from the
authors' model definitions (LaVie ``base/models/{unet,unet_blocks,attention,resnet}.py``;
lvdm ``modules/networks/openaimodel3d.py``, ``modules/attention.py``,
``modules/networks/ae_modules.py``, ``models/ddpm3d.py``, open_clip's text tower). A
conversion checks the checkpoint against them first (missing, unexpected and mis-shaped keys
are reported by name), maps every key, and loads the result strictly: nothing is left over and
nothing is invented. Keys that the model as its authors run it never reads are *dropped by
name* and listed in the report (VideoCrafter2: the last OpenCLIP block, as lvdm takes the
penultimate layer; the text projection and logit scale; the training-schedule buffers, which
are checked against the scheduler written instead).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

Layout = dict[str, tuple[int, ...]]


@dataclass
class ConversionReport:
    """What a conversion did with every key of the original checkpoint."""

    source: str
    consumed: int = 0
    dropped: list[str] = field(default_factory=list)
    components: dict[str, int] = field(default_factory=dict)  # component -> tensors written
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v} tensors" for k, v in self.components.items())
        text = f"{self.source}: {self.consumed} keys consumed ({parts})"
        if self.dropped:
            text += f"; {len(self.dropped)} dropped by name (unused by the original model)"
        return text


class CheckpointLayoutError(ValueError):
    """The checkpoint does not have the key layout of the model it claims to be."""


def check_layout(state: dict[str, Any], layout: Layout, what: str) -> None:
    """Raise :class:`CheckpointLayoutError` naming missing, unexpected and mis-shaped keys."""
    missing = sorted(set(layout) - set(state))
    unexpected = sorted(set(state) - set(layout))
    shapes = [
        f"{k}: {tuple(state[k].shape)} (expected {layout[k]})"
        for k in sorted(set(layout) & set(state))
        if tuple(state[k].shape) != tuple(layout[k])
    ]
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not have the expected key layout"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" ... (+{len(items) - 5})" if len(items) > 5 else ""
                lines.append(f"  {label} ({len(items)}): {', '.join(items[:5])}{more}")
        raise CheckpointLayoutError("\n".join(lines))


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (``state_dict`` / ``ema`` wrappers unwrapped).

    Pickled checkpoints are read with ``weights_only=True`` (tensors and plain containers only);
    ``trust_pickle=True`` allows arbitrary pickled objects (only for files you trust).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except Exception as err:
        if trust_pickle:
            raise
        raise ValueError(
            f"{path} holds more than tensors and cannot be read safely ({err}); if you trust "
            "the file, pass trust_pickle=True (CLI: --trust-pickle)"
        ) from err
    for wrapper in ("state_dict", "ema", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}


# --- LaVie ------------------------------------------------------------------------------------

#: SD 1.4's UNet config as LaVie reads it (``from_pretrained_2d``)
LAVIE_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    use_linear_projection=False,
)


def _norm(p: str, c: int) -> Layout:
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _lin(p: str, o: int, i: int, bias: bool = True) -> Layout:
    out = {f"{p}.weight": (o, i)}
    if bias:
        out[f"{p}.bias"] = (o,)
    return out


def _conv(p: str, o: int, i: int, k: int | tuple[int, ...] = 3) -> Layout:
    ks = (k, k) if isinstance(k, int) else tuple(k)
    return {f"{p}.weight": (o, i, *ks), f"{p}.bias": (o,)}


def _lavie_resnet(p: str, cin: int, cout: int, temb: int) -> Layout:
    out = {**_norm(f"{p}.norm1", cin), **_conv(f"{p}.conv1", cout, cin)}
    out |= _lin(f"{p}.time_emb_proj", cout, temb)
    out |= {**_norm(f"{p}.norm2", cout), **_conv(f"{p}.conv2", cout, cout)}
    if cin != cout:
        out |= _conv(f"{p}.conv_shortcut", cout, cin, 1)
    return out


def _lavie_transformer(p: str, c: int, heads: int, cross: int, linear: bool, rope: int) -> Layout:
    """LaVie ``Transformer3DModel`` with one ``BasicTransformerBlock`` (attention.py)."""
    proj = (lambda q, o, i: _lin(q, o, i)) if linear else (lambda q, o, i: _conv(q, o, i, 1))
    b = f"{p}.transformer_blocks.0"
    out = {**_norm(f"{p}.norm", c), **proj(f"{p}.proj_in", c, c)}
    for name, kv in (("attn1", c), ("attn2", cross), ("attn_temp", c)):
        out |= _lin(f"{b}.{name}.to_q", c, c, bias=False)
        out |= _lin(f"{b}.{name}.to_k", c, kv, bias=False)
        out |= _lin(f"{b}.{name}.to_v", c, kv, bias=False)
        out |= _lin(f"{b}.{name}.to_out.0", c, c)
    out[f"{b}.attn_temp.time_rel_pos_bias.relative_attention_bias.weight"] = (32, heads)
    out[f"{b}.attn_temp.rotary_emb.freqs"] = (rope // 2,)  # the shared RotaryEmbedding(32)
    for name in ("norm1", "norm2", "norm_temp", "norm3"):
        out |= _norm(f"{b}.{name}", c)
    out |= _lin(f"{b}.ff.net.0.proj", 8 * c, c) | _lin(f"{b}.ff.net.2", c, 4 * c)
    return out | proj(f"{p}.proj_out", c, c)


def lavie_layout(config: dict[str, Any] | None = None) -> Layout:
    """Keys and shapes of LaVie's ``UNet3DConditionModel`` state dict for an SD-1.x UNet config
    (``lavie_base.pt``), enumerated from the original construction code."""
    cfg = {**LAVIE_UNET_CONFIG, **(config or {})}
    chans = list(cfg["block_out_channels"])
    levels, layers = len(chans), cfg["layers_per_block"]
    heads = cfg["attention_head_dim"]
    heads = [heads] * levels if isinstance(heads, int) else list(heads)
    cross, linear, rope = cfg["cross_attention_dim"], cfg["use_linear_projection"], 32
    attn_levels = [True] * (levels - 1) + [False]  # CrossAttnDownBlock3D x3 + DownBlock3D
    temb = chans[0] * 4
    out = _conv("conv_in", chans[0], cfg["in_channels"])
    out |= _lin("time_embedding.linear_1", temb, chans[0])
    out |= _lin("time_embedding.linear_2", temb, temb)
    ch = chans[0]
    for i in range(levels):
        for j in range(layers):
            p = f"down_blocks.{i}"
            out |= _lavie_resnet(f"{p}.resnets.{j}", ch, chans[i], temb)
            ch = chans[i]
            if attn_levels[i]:
                out |= _lavie_transformer(f"{p}.attentions.{j}", ch, heads[i], cross, linear, rope)
        if i < levels - 1:
            out |= _conv(f"down_blocks.{i}.downsamplers.0.conv", ch, ch)
    out |= _lavie_resnet("mid_block.resnets.0", ch, ch, temb)
    out |= _lavie_transformer("mid_block.attentions.0", ch, heads[-1], cross, linear, rope)
    out |= _lavie_resnet("mid_block.resnets.1", ch, ch, temb)
    rev = chans[::-1]
    prev = rev[0]
    for i in range(levels):
        cout, skip_in = rev[i], rev[min(i + 1, levels - 1)]
        for j in range(layers + 1):
            cin = (prev if j == 0 else cout) + (skip_in if j == layers else cout)
            out |= _lavie_resnet(f"up_blocks.{i}.resnets.{j}", cin, cout, temb)
            if attn_levels[levels - 1 - i]:
                out |= _lavie_transformer(
                    f"up_blocks.{i}.attentions.{j}",
                    cout,
                    heads[levels - 1 - i],
                    cross,
                    linear,
                    rope,
                )
        if i < levels - 1:
            out |= _conv(f"up_blocks.{i}.upsamplers.0.conv", cout, cout)
        prev = cout
    out |= _norm("conv_norm_out", chans[0]) | _conv("conv_out", cfg["out_channels"], chans[0])
    return out


def lavie_unet_config(sd_folder: str | Path | None) -> dict[str, Any]:
    """The LaVie UNet config: SD's ``unet/config.json`` keys that LaVie reads (else SD 1.4's)."""
    cfg = dict(LAVIE_UNET_CONFIG)
    if sd_folder is not None:
        path = Path(sd_folder).expanduser() / "unet" / "config.json"
        if path.is_file():
            sd = json.loads(path.read_text())
            for key in (*LAVIE_UNET_CONFIG, "flip_sin_to_cos", "freq_shift", "downsample_padding"):
                if key in sd:
                    cfg[key] = tuple(sd[key]) if isinstance(sd[key], list) else sd[key]
    return cfg


def lavie_scheduler(sd_folder: str | Path | None = None):
    """LaVie's sampler (``base/configs/sample.yaml``: DDPM, linear betas 1e-4..0.02) on SD's
    scheduler settings, as its ``sample.py`` builds it."""
    from diffusers import DDPMScheduler

    overrides = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    path = Path(sd_folder).expanduser() / "scheduler" if sd_folder is not None else None
    if path is not None and (path / "scheduler_config.json").is_file():
        config = json.loads((path / "scheduler_config.json").read_text())
        return DDPMScheduler.from_config(config, **overrides)
    return DDPMScheduler(
        **overrides,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def convert_lavie(
    checkpoint: str | Path,
    sd_folder: str | Path,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
) -> ConversionReport:
    """``lavie_base.pt`` + a Stable Diffusion 1.4 diffusers folder -> a diffusers folder
    (``TextToVideoSDPipeline`` with :class:`~attnlab.lavie.LaVieUNet`)."""
    from diffusers import AutoencoderKL, TextToVideoSDPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from attnlab.models.lavie import LaVieRoPE, LaVieUNet

    sd = Path(sd_folder).expanduser()
    for sub in ("vae", "text_encoder", "tokenizer"):
        if not (sd / sub).is_dir():
            raise FileNotFoundError(
                f"{sd} has no {sub}/ folder: pass a Stable Diffusion 1.4 diffusers folder "
                "(CompVis/stable-diffusion-v1-4 with vae/, text_encoder/, tokenizer/)"
            )
    state = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    config = lavie_unet_config(sd)
    check_layout(state, lavie_layout(config), f"LaVie UNet ({checkpoint})")
    reference = LaVieRoPE().freqs
    for key, value in state.items():
        if key.endswith("rotary_emb.freqs") and not torch.allclose(value.float(), reference):
            raise CheckpointLayoutError(
                f"{key}: rotary frequencies differ from RotaryEmbedding(32)'s 10000^(-2i/32)"
            )
    with torch.device("meta"):
        unet = LaVieUNet.from_config(config)
    unet.load_state_dict(state, strict=True, assign=True)
    unet = unet.to(dtype or torch.float32)
    report = ConversionReport(str(checkpoint), consumed=len(state))
    report.components["unet"] = len(state)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = TextToVideoSDPipeline(
        vae=AutoencoderKL.from_pretrained(sd / "vae", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(sd / "text_encoder", **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        unet=unet,
        scheduler=lavie_scheduler(sd),
    )
    pipe.save_pretrained(out)
    report.notes.append(f"VAE, text encoder and tokenizer from {sd}")
    return report


# --- VideoCrafter2 ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VC2Config:
    """The parts of ``configs/inference_t2v_512_v2.0.yaml`` a conversion needs (the defaults)
    plus the OpenCLIP ViT-H-14 text tower (open_clip's ``ViT-H-14`` config)."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    context_dim: int = 1024
    in_channels: int = 4
    out_channels: int = 4
    norm_groups: int = 32  # lvdm normalization() / TemporalConvBlock: GroupNorm(32, ...)
    # first_stage_config.ddconfig
    vae_ch: int = 128
    vae_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_num_res_blocks: int = 2
    z_channels: int = 4
    scale_factor: float = 0.18215
    # cond_stage_config: FrozenOpenCLIPEmbedder(ViT-H-14, layer="penultimate")
    text_width: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    text_embed_dim: int = 1024
    vocab_size: int = 49408
    context_length: int = 77
    # schedule: linear_start / linear_end, use_scale / scale_b
    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000
    scale_b: float = 0.7


def _vc2_resblock(p: str, cin: int, cout: int, temb: int) -> Layout:
    """lvdm ``ResBlock`` with ``use_temporal_conv`` (``temopral_conv``, the authors' spelling)."""
    out = _norm(f"{p}.in_layers.0", cin) | _conv(f"{p}.in_layers.2", cout, cin)
    out |= _lin(f"{p}.emb_layers.1", cout, temb)
    out |= _norm(f"{p}.out_layers.0", cout) | _conv(f"{p}.out_layers.3", cout, cout)
    if cin != cout:
        out |= _conv(f"{p}.skip_connection", cout, cin, 1)
    for n, idx in (("conv1", 2), ("conv2", 3), ("conv3", 3), ("conv4", 3)):
        out |= _norm(f"{p}.temopral_conv.{n}.0", cout)
        out |= _conv(f"{p}.temopral_conv.{n}.{idx}", cout, cout, (3, 1, 1))
    return out


def _vc2_transformer(p: str, c: int, inner: int, cross: int | None) -> Layout:
    """lvdm ``SpatialTransformer`` (``cross`` = context dim) or ``TemporalTransformer``
    (``cross`` None: ``only_self_att``), ``use_linear`` projections, depth 1."""
    b = f"{p}.transformer_blocks.0"
    out = _norm(f"{p}.norm", c) | _lin(f"{p}.proj_in", inner, c)
    for name, kv in (("attn1", inner), ("attn2", cross or inner)):
        out |= _lin(f"{b}.{name}.to_q", inner, inner, bias=False)
        out |= _lin(f"{b}.{name}.to_k", inner, kv, bias=False)
        out |= _lin(f"{b}.{name}.to_v", inner, kv, bias=False)
        out |= _lin(f"{b}.{name}.to_out.0", inner, inner)
    for name in ("norm1", "norm2", "norm3"):
        out |= _norm(f"{b}.{name}", inner)
    out |= _lin(f"{b}.ff.net.0.proj", 8 * inner, inner) | _lin(f"{b}.ff.net.2", inner, 4 * inner)
    return out | _lin(f"{p}.proj_out", c, inner)


def _vc2_plan(cfg: VC2Config) -> list[tuple[str, str, tuple]]:
    """The lvdm UNet's modules in construction order: ``(original prefix, kind, target)``.

    Kinds: ``res`` (target: diffusers resnet and temporal-conv prefixes), ``spatial`` /
    ``temporal`` / ``conv`` / ``lin`` (target: one diffusers prefix).
    """
    mult = cfg.channel_mult
    plan: list[tuple[str, str, tuple]] = [
        ("time_embed.0", "lin", ("time_embedding.linear_1",)),
        ("time_embed.2", "lin", ("time_embedding.linear_2",)),
        ("fps_embedding.0", "lin", ("fps_embedding.linear_1",)),
        ("fps_embedding.2", "lin", ("fps_embedding.linear_2",)),
        ("input_blocks.0.0", "conv", ("conv_in",)),
        ("init_attn.0", "temporal", ("transformer_in",)),
    ]
    n, ds = 1, 1
    for level in range(len(mult)):
        for j in range(cfg.num_res_blocks):
            d = f"down_blocks.{level}"
            plan.append((f"input_blocks.{n}.0", "res", (f"{d}.resnets.{j}", f"{d}.temp_convs.{j}")))
            if ds in cfg.attention_resolutions:
                plan.append((f"input_blocks.{n}.1", "spatial", (f"{d}.attentions.{j}",)))
                plan.append((f"input_blocks.{n}.2", "temporal", (f"{d}.temp_attentions.{j}",)))
            n += 1
        if level != len(mult) - 1:
            plan.append(
                (f"input_blocks.{n}.0.op", "conv", (f"down_blocks.{level}.downsamplers.0.conv",))
            )
            n += 1
            ds *= 2
    plan += [
        ("middle_block.0", "res", ("mid_block.resnets.0", "mid_block.temp_convs.0")),
        ("middle_block.1", "spatial", ("mid_block.attentions.0",)),
        ("middle_block.2", "temporal", ("mid_block.temp_attentions.0",)),
        ("middle_block.3", "res", ("mid_block.resnets.1", "mid_block.temp_convs.1")),
    ]
    n = 0
    for level in reversed(range(len(mult))):
        u = f"up_blocks.{len(mult) - 1 - level}"
        for i in range(cfg.num_res_blocks + 1):
            plan.append(
                (f"output_blocks.{n}.0", "res", (f"{u}.resnets.{i}", f"{u}.temp_convs.{i}"))
            )
            k = 1
            if ds in cfg.attention_resolutions:
                plan.append((f"output_blocks.{n}.1", "spatial", (f"{u}.attentions.{i}",)))
                plan.append((f"output_blocks.{n}.2", "temporal", (f"{u}.temp_attentions.{i}",)))
                k = 3
            if level and i == cfg.num_res_blocks:
                plan.append((f"output_blocks.{n}.{k}.conv", "conv", (f"{u}.upsamplers.0.conv",)))
                ds //= 2
            n += 1
    plan += [("out.0", "conv", ("conv_norm_out",)), ("out.2", "conv", ("conv_out",))]
    return plan


_RES_RENAME = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def vc2_unet_layout(cfg: VC2Config = VC2Config()) -> Layout:
    """Keys and shapes of lvdm's ``UNetModel`` (``model.diffusion_model.*`` without prefix)."""
    mc = cfg.model_channels
    temb = 4 * mc
    hc = cfg.num_head_channels
    out = _conv("input_blocks.0.0", mc, cfg.in_channels)
    out |= _lin("time_embed.0", temb, mc) | _lin("time_embed.2", temb, temb)
    out |= _lin("fps_embedding.0", temb, mc) | _lin("fps_embedding.2", temb, temb)
    out |= _vc2_transformer("init_attn.0", mc, 8 * hc, None)  # n_heads=8, d_head=64
    chans, ch, n, ds = [mc], mc, 1, 1
    for level, m in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out |= _vc2_resblock(f"input_blocks.{n}.0", ch, m * mc, temb)
            ch = m * mc
            if ds in cfg.attention_resolutions:
                out |= _vc2_transformer(f"input_blocks.{n}.1", ch, ch, cfg.context_dim)
                out |= _vc2_transformer(f"input_blocks.{n}.2", ch, ch, None)
            chans.append(ch)
            n += 1
        if level != len(cfg.channel_mult) - 1:
            out |= _conv(f"input_blocks.{n}.0.op", ch, ch)
            chans.append(ch)
            n += 1
            ds *= 2
    out |= _vc2_resblock("middle_block.0", ch, ch, temb)
    out |= _vc2_transformer("middle_block.1", ch, ch, cfg.context_dim)
    out |= _vc2_transformer("middle_block.2", ch, ch, None)
    out |= _vc2_resblock("middle_block.3", ch, ch, temb)
    n = 0
    for level, m in list(enumerate(cfg.channel_mult))[::-1]:
        for i in range(cfg.num_res_blocks + 1):
            ich = chans.pop()
            out |= _vc2_resblock(f"output_blocks.{n}.0", ch + ich, m * mc, temb)
            ch = m * mc
            k = 1
            if ds in cfg.attention_resolutions:
                out |= _vc2_transformer(f"output_blocks.{n}.1", ch, ch, cfg.context_dim)
                out |= _vc2_transformer(f"output_blocks.{n}.2", ch, ch, None)
                k = 3
            if level and i == cfg.num_res_blocks:
                out |= _conv(f"output_blocks.{n}.{k}.conv", ch, ch)
                ds //= 2
            n += 1
    return out | _norm("out.0", ch) | _conv("out.2", cfg.out_channels, mc)


def vc2_vae_layout(cfg: VC2Config = VC2Config()) -> Layout:
    """Keys and shapes of lvdm's ``AutoencoderKL`` (``first_stage_model.*`` without prefix;
    ``ae_modules.Encoder`` / ``Decoder`` of the ldm code base, ``attn_resolutions: []``)."""
    ch, mult, nres, z = cfg.vae_ch, cfg.vae_ch_mult, cfg.vae_num_res_blocks, cfg.z_channels

    def block(p, cin, cout):
        out = _norm(f"{p}.norm1", cin) | _conv(f"{p}.conv1", cout, cin)
        out |= _norm(f"{p}.norm2", cout) | _conv(f"{p}.conv2", cout, cout)
        return out | (_conv(f"{p}.nin_shortcut", cout, cin, 1) if cin != cout else {})

    def mid(p, c):
        out = block(f"{p}.block_1", c, c) | _norm(f"{p}.attn_1.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            out |= _conv(f"{p}.attn_1.{name}", c, c, 1)
        return out | block(f"{p}.block_2", c, c)

    out = _conv("encoder.conv_in", ch, 3)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nres):
            out |= block(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mult) - 1:
            out |= _conv(f"encoder.down.{i}.downsample.conv", cin, cin)
    out |= mid("encoder.mid", cin) | _norm("encoder.norm_out", cin)
    out |= _conv("encoder.conv_out", 2 * z, cin)
    cin = ch * mult[-1]
    out |= _conv("decoder.conv_in", cin, z) | mid("decoder.mid", cin)
    for i in reversed(range(len(mult))):
        for j in range(nres + 1):
            out |= block(f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i != 0:
            out |= _conv(f"decoder.up.{i}.upsample.conv", cin, cin)
    out |= _norm("decoder.norm_out", cin) | _conv("decoder.conv_out", 3, cin)
    return out | _conv("quant_conv", 2 * z, 2 * z, 1) | _conv("post_quant_conv", z, z, 1)


def vc2_text_layout(cfg: VC2Config = VC2Config()) -> Layout:
    """Keys and shapes of open_clip's text tower (``cond_stage_model.model.*`` without prefix;
    ``del model.visual``; the causal ``attn_mask`` buffer is not persistent)."""
    w = cfg.text_width
    out: Layout = {
        "token_embedding.weight": (cfg.vocab_size, w),
        "positional_embedding": (cfg.context_length, w),
        "text_projection": (w, cfg.text_embed_dim),
        "logit_scale": (),
    }
    for i in range(cfg.text_layers):
        p = f"transformer.resblocks.{i}"
        out |= _norm(f"{p}.ln_1", w) | _norm(f"{p}.ln_2", w)
        out[f"{p}.attn.in_proj_weight"] = (3 * w, w)
        out[f"{p}.attn.in_proj_bias"] = (3 * w,)
        out |= _lin(f"{p}.attn.out_proj", w, w)
        out |= _lin(f"{p}.mlp.c_fc", 4 * w, w) | _lin(f"{p}.mlp.c_proj", w, 4 * w)
    return out | _norm("ln_final", w)


#: lvdm ``DDPM.register_schedule`` / ``LatentDiffusion`` buffers (all of length ``timesteps``
#: except ``scale_arr``, 1400 long with the authors' unfixed ``fix_scale_bug``)
VC2_SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def vc2_layout(cfg: VC2Config = VC2Config()) -> Layout:
    """The whole ``LatentDiffusion`` state dict of a VideoCrafter2 ``model.ckpt``."""
    out = {f"model.diffusion_model.{k}": v for k, v in vc2_unet_layout(cfg).items()}
    out |= {f"first_stage_model.{k}": v for k, v in vc2_vae_layout(cfg).items()}
    out |= {f"cond_stage_model.model.{k}": v for k, v in vc2_text_layout(cfg).items()}
    out |= {k: (cfg.timesteps,) for k in VC2_SCHEDULE_KEYS}
    out["scale_arr"] = (cfg.timesteps + 400,)
    out["scale_factor"] = ()
    return out


def vc2_unet_key_map(cfg: VC2Config = VC2Config()) -> dict[str, str]:
    """Original UNet key -> :class:`~attnlab.videocrafter.VideoCrafter2UNet` key."""
    layout = vc2_unet_layout(cfg)
    mapping: dict[str, str] = {}
    for prefix, kind, target in _vc2_plan(cfg):
        for key in [k for k in layout if k.startswith(prefix + ".")]:
            rest = key[len(prefix) + 1 :]
            if kind == "res":
                if rest.startswith("temopral_conv."):
                    mapping[key] = f"{target[1]}.{rest.removeprefix('temopral_conv.')}"
                    continue
                head, _, leaf = rest.rpartition(".")
                mapping[key] = f"{target[0]}.{_RES_RENAME[head]}.{leaf}"
            else:
                mapping[key] = f"{target[0]}.{rest}"
    if set(mapping) != set(layout):
        raise AssertionError(f"unmapped UNet keys: {sorted(set(layout) - set(mapping))[:5]}")
    return mapping


def vc2_unet_config(cfg: VC2Config = VC2Config()) -> dict[str, Any]:
    """The :class:`~attnlab.videocrafter.VideoCrafter2UNet` config of an lvdm UNet config."""
    levels = len(cfg.channel_mult)
    attn = [2**i in cfg.attention_resolutions for i in range(levels)]
    return dict(
        sample_size=None,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in attn[::-1]),
        block_out_channels=tuple(m * cfg.model_channels for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_groups,
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.num_head_channels,
        fps_cond=True,
    )


def convert_openclip_text(state: dict[str, torch.Tensor], cfg: VC2Config):
    """open_clip text tower -> ``CLIPTextModel`` computing lvdm's ``FrozenOpenCLIPEmbedder``
    with ``layer="penultimate"``: all blocks but the last, then ``ln_final``. Returns the model
    and the original keys it does not use (the last block, ``text_projection``,
    ``logit_scale``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    w, last = cfg.text_width, cfg.text_layers - 1
    config = CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=w,
        intermediate_size=4 * w,
        num_hidden_layers=last,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.context_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=cfg.text_embed_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    new: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
    }
    dropped = ["text_projection", "logit_scale"]
    rename = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    pattern = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state.items():
        if key.startswith("transformer.resblocks."):
            i = int(key.split(".")[2])
            if i == last:
                dropped.append(key)
                continue
            p = f"text_model.encoder.layers.{i}"
            if key.endswith("attn.in_proj_weight") or key.endswith("attn.in_proj_bias"):
                leaf = key.rsplit("_", 1)[-1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    new[f"{p}.self_attn.{name}.{leaf}"] = part
                continue
            m = pattern.match(key)
            if m is None or m.group(2) not in rename:
                raise CheckpointLayoutError(f"unknown OpenCLIP key {key}")
            new[f"{p}.{rename[m.group(2)]}.{m.group(3)}"] = value
    model = CLIPTextModel(config)
    # transformers 5 keeps the module path without "text_model." in the state dict
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        new = {k.removeprefix("text_model."): v for k, v in new.items()}
    model.load_state_dict(new, strict=True)
    return model.float(), dropped


def openclip_tokenizer():
    """open_clip's tokenizer as a ``CLIPTokenizer``: its BPE vocabulary, 77 tokens, padding with
    id 0 (``"!"``), as ``open_clip.tokenize`` pads (the SD 2 convention)."""
    from attnlab.models.tiny import clip_tokenizer

    tok = clip_tokenizer()
    tok.pad_token = "!"
    return tok


def convert_videocrafter2(
    checkpoint: str | Path,
    out: str | Path,
    *,
    config: VC2Config = VC2Config(),
    dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
) -> ConversionReport:
    """A VideoCrafter2 ``model.ckpt`` (lvdm) -> a :class:`~attnlab.videocrafter.VideoCrafter2Pipeline`
    folder (UNet with fps embedding, KL-VAE, OpenCLIP text encoder as ``CLIPTextModel``,
    tokenizer, VideoCrafter2 DDIM scheduler)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from attnlab.models.videocrafter import (
        VideoCrafter2Pipeline,
        VideoCrafter2Scheduler,
        VideoCrafter2UNet,
        latent_scale,
    )

    state = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    check_layout(state, vc2_layout(config), f"VideoCrafter2 ({checkpoint})")
    report = ConversionReport(str(checkpoint))

    # schedule buffers: check them against the scheduler written instead
    scheduler = VideoCrafter2Scheduler(
        num_train_timesteps=config.timesteps,
        beta_start=config.linear_start,
        beta_end=config.linear_end,
        scale_b=config.scale_b,
    )
    betas = state["betas"].double()
    if not torch.allclose(betas, scheduler.betas.double(), rtol=1e-4, atol=1e-7):
        raise CheckpointLayoutError("betas differ from the scaled-linear 0.00085..0.012 schedule")
    scale = torch.as_tensor(
        latent_scale(torch.arange(config.timesteps).numpy(), 1.0, config.scale_b, 400)
    )
    if not torch.allclose(state["scale_arr"][: config.timesteps].float(), scale, atol=1e-5):
        raise CheckpointLayoutError(
            f"scale_arr differs from lvdm's use_scale (1 -> {config.scale_b})"
        )
    if abs(float(state["scale_factor"]) - config.scale_factor) > 1e-6:
        report.notes.append(
            f"latent scale factor {float(state['scale_factor'])} (config {config.scale_factor})"
        )
    schedule_keys = [*VC2_SCHEDULE_KEYS, "scale_arr", "scale_factor"]

    unet_state = {
        k.removeprefix("model.diffusion_model."): v
        for k, v in state.items()
        if k.startswith("model.diffusion_model.")
    }
    mapping = vc2_unet_key_map(config)
    with torch.device("meta"):
        unet = VideoCrafter2UNet.from_config(vc2_unet_config(config))
    unet.load_state_dict({mapping[k]: v for k, v in unet_state.items()}, strict=True, assign=True)
    unet = unet.to(dtype or torch.float32)

    vae_state = {k: v for k, v in state.items() if k.startswith("first_stage_model.")}
    vae_config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_ch_mult),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_ch_mult),
        block_out_channels=tuple(config.vae_ch * m for m in config.vae_ch_mult),
        layers_per_block=config.vae_num_res_blocks,
        latent_channels=config.z_channels,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=float(state["scale_factor"]),
    )
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    vae_new = convert_ldm_vae_checkpoint(vae_state, vae.config)
    vae.load_state_dict(vae_new, strict=True, assign=True)
    vae = vae.to(dtype or torch.float32)

    text_state = {
        k.removeprefix("cond_stage_model.model."): v
        for k, v in state.items()
        if k.startswith("cond_stage_model.model.")
    }
    text, text_dropped = convert_openclip_text(text_state, config)
    if dtype is not None:
        text = text.to(dtype)

    report.components = {
        "unet": len(unet_state),
        "vae": len(vae_state),
        "text_encoder": len(text_state) - len(text_dropped),
        "schedule (checked, scheduler written)": len(schedule_keys),
    }
    report.dropped = [f"cond_stage_model.model.{k}" for k in text_dropped]
    report.consumed = len(state)
    pipe = VideoCrafter2Pipeline(
        vae=vae, text_encoder=text, tokenizer=openclip_tokenizer(), unet=unet, scheduler=scheduler
    )
    pipe.save_pretrained(out)
    return report
