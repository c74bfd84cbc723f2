"""VideoCrafter2 (an lvdm ``LatentDiffusion`` checkpoint) to a diffusers folder of
:class:`~attnlab.models.videocrafter.VideoCrafter2Pipeline`.

- :class:`VC2Config`: the parts of ``configs/inference_t2v_512_v2.0.yaml`` a conversion needs
- :func:`vc2_unet_layout`, :func:`vc2_vae_layout`, :func:`vc2_text_layout`, :func:`vc2_layout`:
  the checkpoint's keys and shapes, from lvdm's ``modules/networks/openaimodel3d.py``,
  ``modules/attention.py``, ``modules/networks/ae_modules.py``, ``models/ddpm3d.py`` and
  open_clip's text tower
- :func:`vc2_unet_key_map`, :func:`convert_vc2_unet`, :func:`vc2_unet_config`: lvdm UNet keys
  to diffusers' (``init_attn``'s kernel-1 ``Conv1d`` weights as ``Linear`` ones) and its config
- :func:`convert_openclip_text`, :func:`openclip_tokenizer`: the OpenCLIP ViT-H/14 text tower as
  a ``CLIPTextModel`` and open_clip's tokenizer as a ``CLIPTokenizer``
- :func:`convert_videocrafter2`: ``model.ckpt`` -> a folder (UNet, KL-VAE, text encoder,
  tokenizer, VideoCrafter2 DDIM scheduler)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnlab.models.convert.layout import (
    CheckpointLayoutError,
    ConversionReport,
    Layout,
    _conv,
    _lin,
    _norm,
    check_family,
    check_layout,
    load_checkpoint,
    same_values,
)


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
    # the latent scale factor: lvdm keeps it as a plain attribute (scale_by_std: false), so a
    # model.ckpt has no scale_factor key and this value is the one used; a checkpoint's own
    # scale_factor buffer (scale_by_std: true) takes precedence, noted in the report
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


def _conv1d(p: str, o: int, i: int) -> Layout:
    return {f"{p}.weight": (o, i, 1), f"{p}.bias": (o,)}


def _vc2_transformer(p: str, c: int, inner: int, cross: int | None, linear: bool = True) -> Layout:
    """lvdm ``SpatialTransformer`` (``cross`` = context dim) or ``TemporalTransformer``
    (``cross`` None: ``only_self_att``), depth 1; ``linear``: ``use_linear`` projections
    (``nn.Linear``), else ``nn.Conv1d(kernel_size=1)`` ones (``TemporalTransformer``'s default,
    which ``init_attn`` keeps: it is built without ``use_linear``)."""
    proj = _lin if linear else _conv1d
    b = f"{p}.transformer_blocks.0"
    out = _norm(f"{p}.norm", c) | proj(f"{p}.proj_in", inner, c)
    for name, kv in (("attn1", inner), ("attn2", cross or inner)):
        out |= _lin(f"{b}.{name}.to_q", inner, inner, bias=False)
        out |= _lin(f"{b}.{name}.to_k", inner, kv, bias=False)
        out |= _lin(f"{b}.{name}.to_v", inner, kv, bias=False)
        out |= _lin(f"{b}.{name}.to_out.0", inner, inner)
    for name in ("norm1", "norm2", "norm3"):
        out |= _norm(f"{b}.{name}", inner)
    out |= _lin(f"{b}.ff.net.0.proj", 8 * inner, inner) | _lin(f"{b}.ff.net.2", inner, 4 * inner)
    return out | proj(f"{p}.proj_out", c, inner)


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
    # n_heads=8, d_head=64; built without use_linear: Conv1d(kernel_size=1) projections
    out |= _vc2_transformer("init_attn.0", mc, 8 * hc, None, linear=False)
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


#: keys a ``model.ckpt`` may hold or lack: ``scale_factor`` is a buffer only with
#: ``scale_by_std: true``; VideoCrafter2's config has ``scale_by_std: false``, so lvdm keeps it
#: as a plain attribute (``VC2Config.scale_factor``, 0.18215) and the file has no such key
VC2_OPTIONAL: Layout = {"scale_factor": ()}

#: lvdm UNet keys stored as ``nn.Conv1d(kernel_size=1)`` weights ``(out, in, 1)`` that
#: diffusers' ``transformer_in`` holds as ``nn.Linear`` weights ``(out, in)``
VC2_CONV1D_KEYS = ("init_attn.0.proj_in.weight", "init_attn.0.proj_out.weight")


def vc2_layout(cfg: VC2Config = VC2Config()) -> Layout:
    """The whole ``LatentDiffusion`` state dict of a VideoCrafter2 ``model.ckpt`` (the keys
    every such file has; :data:`VC2_OPTIONAL`: those it may have)."""
    out = {f"model.diffusion_model.{k}": v for k, v in vc2_unet_layout(cfg).items()}
    out |= {f"first_stage_model.{k}": v for k, v in vc2_vae_layout(cfg).items()}
    out |= {f"cond_stage_model.model.{k}": v for k, v in vc2_text_layout(cfg).items()}
    out |= {k: (cfg.timesteps,) for k in VC2_SCHEDULE_KEYS}
    out["scale_arr"] = (cfg.timesteps + 400,)
    return out


def vc2_unet_key_map(cfg: VC2Config = VC2Config()) -> dict[str, str]:
    """Original UNet key -> :class:`~attnlab.models.videocrafter.VideoCrafter2UNet` key."""
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


def convert_vc2_unet(
    state: dict[str, torch.Tensor], cfg: VC2Config = VC2Config()
) -> dict[str, torch.Tensor]:
    """An lvdm UNet state dict (keys without ``model.diffusion_model.``) as the state dict of
    :class:`~attnlab.models.videocrafter.VideoCrafter2UNet`: keys renamed
    (:func:`vc2_unet_key_map`), ``init_attn``'s kernel-1 ``Conv1d`` weights
    (:data:`VC2_CONV1D_KEYS`) as the ``Linear`` weights they equal (the kernel axis dropped)."""
    mapping = vc2_unet_key_map(cfg)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in VC2_CONV1D_KEYS:
            value = value.squeeze(-1)
        out[mapping[key]] = value
    return out


def vc2_unet_config(cfg: VC2Config = VC2Config()) -> dict[str, Any]:
    """The :class:`~attnlab.models.videocrafter.VideoCrafter2UNet` config of an lvdm UNet config."""
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
    """A VideoCrafter2 ``model.ckpt`` (lvdm) -> a
    :class:`~attnlab.models.videocrafter.VideoCrafter2Pipeline` folder (UNet with fps embedding,
    KL-VAE, OpenCLIP text encoder as ``CLIPTextModel``, tokenizer, VideoCrafter2 DDIM
    scheduler)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from attnlab.models.videocrafter import (
        VideoCrafter2Pipeline,
        VideoCrafter2Scheduler,
        VideoCrafter2UNet,
        latent_scale,
    )
    from attnlab.util.quiet import quiet_library_logs

    state = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    check_family(state, "videocrafter2", f"VideoCrafter2 ({checkpoint})")
    check_layout(state, vc2_layout(config), f"VideoCrafter2 ({checkpoint})", VC2_OPTIONAL)
    report = ConversionReport(str(checkpoint))

    # schedule buffers: check them against the scheduler written instead
    scheduler = VideoCrafter2Scheduler(
        num_train_timesteps=config.timesteps,
        beta_start=config.linear_start,
        beta_end=config.linear_end,
        scale_b=config.scale_b,
    )
    if not same_values(state["betas"], scheduler.betas, rtol=1e-4, atol=1e-7):
        raise CheckpointLayoutError("betas differ from the scaled-linear 0.00085..0.012 schedule")
    scale = torch.as_tensor(
        latent_scale(torch.arange(config.timesteps).numpy(), 1.0, config.scale_b, 400)
    )
    if not same_values(state["scale_arr"][: config.timesteps], scale, rtol=1e-5, atol=1e-5):
        raise CheckpointLayoutError(
            f"scale_arr differs from lvdm's use_scale (1 -> {config.scale_b})"
        )
    if "scale_factor" in state:  # a buffer only with scale_by_std: true
        scale_factor = float(state["scale_factor"])
        if abs(scale_factor - config.scale_factor) > 1e-6:
            report.notes.append(
                f"latent scale factor {scale_factor} from the checkpoint "
                f"(config {config.scale_factor})"
            )
    else:  # scale_by_std: false (VideoCrafter2): an attribute set from the config
        scale_factor = config.scale_factor
        report.notes.append(
            f"no scale_factor key (lvdm's scale_by_std: false): latent scale factor "
            f"{scale_factor} from the config"
        )
    schedule_keys = [*VC2_SCHEDULE_KEYS, "scale_arr"] + (
        ["scale_factor"] if "scale_factor" in state else []
    )

    unet_state = {
        k.removeprefix("model.diffusion_model."): v
        for k, v in state.items()
        if k.startswith("model.diffusion_model.")
    }
    with torch.device("meta"):
        unet = VideoCrafter2UNet.from_config(vc2_unet_config(config))
    unet.load_state_dict(convert_vc2_unet(unet_state, config), strict=True, assign=True)
    with quiet_library_logs():  # "kept in float32: []" (the cast changes nothing there)
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
        scaling_factor=scale_factor,
    )
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    vae_new = convert_ldm_vae_checkpoint(vae_state, vae.config)
    vae.load_state_dict(vae_new, strict=True, assign=True)
    with quiet_library_logs():
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
    with quiet_library_logs():  # the deprecation notice of TextToVideoSDPipeline's constructor
        pipe = VideoCrafter2Pipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=openclip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
        )
        pipe.save_pretrained(out)
    return report
