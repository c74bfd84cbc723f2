"""LaVie's base UNet (Vchitect/LaVie) to a diffusers ``TextToVideoSDPipeline`` folder.

- :data:`LAVIE_UNET_CONFIG`: SD 1.4's UNet config as LaVie reads it
- :func:`lavie_layout`: the original checkpoint's keys and shapes, from LaVie's
  ``base/models/{unet,unet_blocks,attention,resnet}.py``
- :func:`lavie_unet_config`, :func:`lavie_scheduler`: the UNet config and the sampling schedule
  (DDPM, linear betas 1e-4..0.02, as ``base/configs/sample.yaml``)
- :func:`convert_lavie`: ``lavie_base.pt`` + SD 1.4's VAE, text encoder, tokenizer -> a folder
"""

from __future__ import annotations

import json
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


#: the settings of SD 1.4's ``scheduler/scheduler_config.json`` (CompVis/stable-diffusion-v1-4,
#: a ``PNDMScheduler``) that ``DDPMScheduler`` reads; the others (``set_alpha_to_one``,
#: ``skip_prk_steps``) are PNDM's and ``DDPMScheduler.from_config`` ignores them
SD14_DDPM_SETTINGS: dict[str, Any] = dict(
    num_train_timesteps=1000,
    clip_sample=False,
    steps_offset=1,
    trained_betas=None,
)


def lavie_scheduler(sd_folder: str | Path | None = None):
    """LaVie's sampler (``base/configs/sample.yaml``: DDPM, linear betas 1e-4..0.02) on SD's
    scheduler settings, as its ``sample.py`` builds it
    (``DDPMScheduler.from_pretrained(sd_path, subfolder="scheduler", beta_start=..., ...)``).

    Without ``scheduler/scheduler_config.json`` in ``sd_folder``, SD 1.4's settings
    (:data:`SD14_DDPM_SETTINGS`) stand in for it: the same scheduler as from SD 1.4's folder.
    ``steps_offset`` is 0: LaVie pins diffusers 0.16, whose ``DDPMScheduler`` has none (it
    samples at ``arange(N) * (1000 // N)``, 980 .. 0 at 50 steps), while today's reads SD 1.4's
    ``steps_offset=1`` and would sample one training step later at every step (981 .. 1).
    """
    from diffusers import DDPMScheduler

    overrides = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", steps_offset=0)
    path = Path(sd_folder).expanduser() / "scheduler" if sd_folder is not None else None
    if path is not None and (path / "scheduler_config.json").is_file():
        config = json.loads((path / "scheduler_config.json").read_text())
        return DDPMScheduler.from_config(config, **overrides)
    return DDPMScheduler(**{**SD14_DDPM_SETTINGS, **overrides})


def convert_lavie(
    checkpoint: str | Path,
    sd_folder: str | Path,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
) -> ConversionReport:
    """``lavie_base.pt`` + a Stable Diffusion 1.4 diffusers folder -> a diffusers folder
    (``TextToVideoSDPipeline`` with :class:`~attnlab.models.lavie.LaVieUNet`)."""
    from diffusers import AutoencoderKL, TextToVideoSDPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from attnlab.models.lavie import LaVieRoPE, LaVieUNet
    from attnlab.models.loading import dtype_kwargs
    from attnlab.util.quiet import quiet_library_logs

    sd = Path(sd_folder).expanduser()
    for sub in ("vae", "text_encoder", "tokenizer"):
        if not (sd / sub).is_dir():
            raise FileNotFoundError(
                f"{sd} has no {sub}/ folder: pass a Stable Diffusion 1.4 diffusers folder "
                "(CompVis/stable-diffusion-v1-4 with vae/, text_encoder/, tokenizer/)"
            )
    # the 16 ``rotary_emb.freqs`` keys are one shared tensor in LaVie's file (one
    # RotaryEmbedding(32) handed to every temporal layer): load_checkpoint copies them apart
    state = load_checkpoint(checkpoint, trust_pickle=trust_pickle)
    config = lavie_unet_config(sd)
    check_family(state, "lavie", f"LaVie UNet ({checkpoint})")
    check_layout(state, lavie_layout(config), f"LaVie UNet ({checkpoint})")
    reference = LaVieRoPE().freqs
    for key, value in state.items():
        if key.endswith("rotary_emb.freqs") and not same_values(value, reference, rtol=1e-5):
            raise CheckpointLayoutError(
                f"{key}: rotary frequencies differ from RotaryEmbedding(32)'s 10000^(-2i/32)"
            )
    # only the known-harmless notices: "kept in float32: []" of .to(), the deprecation notice
    # of TextToVideoSDPipeline's constructor
    with quiet_library_logs():
        with torch.device("meta"):
            unet = LaVieUNet.from_config(config)
        unet.load_state_dict(state, strict=True, assign=True)
        unet = unet.to(dtype or torch.float32)
        report = ConversionReport(str(checkpoint), consumed=len(state))
        report.components["unet"] = len(state)
        pipe = TextToVideoSDPipeline(
            vae=AutoencoderKL.from_pretrained(sd / "vae", **dtype_kwargs(dtype)),
            text_encoder=CLIPTextModel.from_pretrained(
                sd / "text_encoder", **dtype_kwargs(dtype, "transformers")
            ),
            tokenizer=CLIPTokenizer.from_pretrained(sd / "tokenizer"),
            unet=unet,
            scheduler=lavie_scheduler(sd),
        )
        pipe.save_pretrained(out)
    report.notes.append(f"VAE, text encoder and tokenizer from {sd}")
    if not (sd / "scheduler" / "scheduler_config.json").is_file():
        report.notes.append(f"{sd} has no scheduler/: SD 1.4's scheduler settings used")
    return report
