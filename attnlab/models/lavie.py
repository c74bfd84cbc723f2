"""LaVie's base text-to-video UNet (Vchitect/LaVie, ``base/models``) as a diffusers model.

LaVie inflates Stable Diffusion 1.4's UNet to video: every 2D layer runs per frame, except the
ResNet GroupNorms (and the final one), which normalise over all frames of a sample jointly
(they see ``[B, C, F, H, W]``), and every spatial transformer block gains a temporal
self-attention ``attn_temp`` (with its LayerNorm ``norm_temp``) between the text
cross-attention and the feed-forward. That temporal attention computes, per head (LaVie
``TemporalAttention._attention``)::

    logits = RoPE(q) RoPE(k)^T / sqrt(d) + bias[h, i, j]      softmax over key frames j

* RoPE: ``rotary_embedding_torch.RotaryEmbedding(32)``, one module shared by all layers:
  frequencies ``10000^(-2i/32)``, i < 16, applied to the first 32 channels of each head with
  *interleaved* pairs (channels 2i and 2i+1 rotate together; ``rotate_half`` there maps
  ``(x0, x1) -> (-x1, x0)``); the remaining channels pass unchanged;
* bias: a learned T5-style relative position bias per layer (``RelativePositionBias``,
  32 buckets, ``max_distance=32``): 16 buckets per direction (key before / after the query),
  distances 0..7 exact, then ``8 + floor(8 log(n/8) / log 4)`` capped at 15, so every distance
  of 27 frames or more shares the direction's last bucket (the cap binds from n = 27, before
  ``max_distance``); any frame count runs;
* the output projection is zero-initialised (``nn.init.zeros_``) in the original.

Both position terms live on the :class:`LaVieTemporalAttention` module as ``attnlab_rope`` and
``attnlab_logit_bias``, the two hooks attnlab's explicit attention path applies, so recorded
maps and edits see exactly the logits the model computes. Module and parameter names follow
the original, so LaVie's ``lavie_base.pt`` state dict loads with only the rotary-frequency
copies folded (see :mod:`attnlab.models.convert`). ``LaViePipeline``: diffusers'
``TextToVideoSDPipeline`` with LaVie's 320 x 512 as its default size (built on first use).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn

ROPE_DIM = 32  # LaVie: RotaryEmbedding(32)
REL_BUCKETS = 32  # RelativePositionBias(num_buckets=32, ...)
REL_MAX_DISTANCE = 32  # ... max_distance=32)
#: LaVie's video size (``base/configs/sample.yaml``: ``image_size: [320, 512]``)
DEFAULT_HEIGHT, DEFAULT_WIDTH = 320, 512
#: LaVie's classifier-free guidance scale (``base/configs/sample.yaml``: ``guidance_scale: 7.5``)
DEFAULT_GUIDANCE = 7.5


# --- the temporal attention's two position terms --------------------------------------------


class LaVieRoPE(nn.Module):
    """Rotary embedding over frames in the ``rotary_embedding_torch`` convention LaVie uses.

    ``freqs[i] = 1 / 10000^(2i / dim)`` (a buffer, as the original keeps it as a parameter
    without gradient); angle of frame ``t`` on channel pair i: ``t * freqs[i]``, repeated for
    the two channels of the pair (interleaved); only the first ``dim`` channels rotate.
    Called as ``rope(q, k)`` on ``[..., frames, head_dim]``.
    """

    def __init__(self, dim: int = ROPE_DIM, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs)

    def angles(self, frames: int, device: torch.device) -> torch.Tensor:
        """``[frames, dim]``: ``t * freqs`` with each frequency repeated for its channel pair."""
        t = torch.arange(frames, device=device, dtype=torch.float32)
        return (t[:, None] * self.freqs.float()[None]).repeat_interleave(2, dim=-1)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        ang = self.angles(x.shape[-2], x.device).to(x.dtype)
        d = ang.shape[-1]
        if d > x.shape[-1]:
            raise ValueError(f"RoPE over {d} channels needs a head dim >= {d}, got {x.shape[-1]}")
        head, tail = x[..., :d], x[..., d:]
        pairs = head.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat((head * ang.cos() + rotated * ang.sin(), tail), dim=-1)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(query), self.rotate(key)


def relative_position_bucket(
    relative_position: torch.Tensor,
    num_buckets: int = REL_BUCKETS,
    max_distance: int = REL_MAX_DISTANCE,
) -> torch.Tensor:
    """T5's bucketing of ``key - query`` positions as LaVie's ``RelativePositionBias`` does it.

    Half the buckets for keys after the query (offset ``num_buckets // 2``), half for keys at or
    before it; within a half, distances below ``num_buckets // 4`` get their own bucket, larger
    ones ``max_exact + floor(log(n / max_exact) / log(max_distance / max_exact) *
    (half - max_exact))`` (float32, as the original), capped at the half's last bucket.
    """
    n = -relative_position
    half = num_buckets // 2
    ret = (n < 0).long() * half
    n = n.abs()
    max_exact = half // 2
    is_small = n < max_exact
    # clamp only inside the log: those entries are taken from `n` by the where below
    large = (
        max_exact
        + (
            torch.log(n.clamp(min=1).float() / max_exact)
            / math.log(max_distance / max_exact)
            * (half - max_exact)
        ).long()
    )
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return ret + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias of ``key - query`` frame offsets (``relative_attention_bias``:
    an ``nn.Embedding(num_buckets, heads)``); ``bias(frames, device)`` -> ``[heads, F, F]``."""

    def __init__(
        self, heads: int, num_buckets: int = REL_BUCKETS, max_distance: int = REL_MAX_DISTANCE
    ):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, frames: int, device: torch.device | None = None) -> torch.Tensor:
        pos = torch.arange(frames, dtype=torch.long, device=device)
        rel = pos[None, :] - pos[:, None]  # [query i, key j] = j - i
        return relative_position_bucket(rel, self.num_buckets, self.max_distance)

    def forward(self, frames: int, device: torch.device | None = None) -> torch.Tensor:
        values = self.relative_attention_bias(self.buckets(frames, device))  # [F, F, heads]
        return values.permute(2, 0, 1)


class LaVieTemporalAttnProcessor:
    """LaVie's temporal attention: ``softmax(RoPE(q) RoPE(k)^T / sqrt d + bias) v`` (fused SDPA
    with the bias as additive mask; the original's max subtraction before its hand-written
    softmax does not change the result)."""

    def __call__(
        self,
        attn: LaVieTemporalAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("LaVie's temporal attention is self-attention over frames")
        rows, frames, _ = hidden_states.shape
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = k.shape[-1] // heads
        q, k, v = (t.view(rows, frames, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = attn.attnlab_rope(q, k)
        bias = attn.attnlab_logit_bias(frames, q.device).to(q.dtype)
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, frames, rows)
            bias = bias + mask.view(rows, heads, -1, frames)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(rows, frames, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


class LaVieTemporalAttention(Attention):
    """diffusers ``Attention`` plus LaVie's ``rotary_emb`` and ``time_rel_pos_bias``.

    ``attnlab_rope`` and ``attnlab_logit_bias`` name them for attnlab's explicit path.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, rope_dim: int = ROPE_DIM):
        super().__init__(
            query_dim=dim,
            heads=heads,
            dim_head=dim_head,
            bias=False,
            processor=LaVieTemporalAttnProcessor(),
        )
        self.time_rel_pos_bias = RelativePositionBias(heads)
        self.rotary_emb = LaVieRoPE(rope_dim)
        nn.init.zeros_(self.to_out[0].weight)

    @property
    def attnlab_rope(self) -> LaVieRoPE:
        return self.rotary_emb

    @property
    def attnlab_logit_bias(self) -> RelativePositionBias:
        return self.time_rel_pos_bias


# --- building blocks (names as in LaVie's resnet.py / attention.py / unet_blocks.py) --------


def _frames_fold(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` -> ``[B*F, C, H, W]``."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _frames_unfold(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B*F, C, H, W]`` -> ``[B, C, F, H, W]``."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class InflatedConv(nn.Conv2d):
    """A 2D convolution applied to every frame of ``[B, C, F, H, W]`` (LaVie ``InflatedConv3d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _frames_unfold(super().forward(_frames_fold(x)), x.shape[2])


class ResnetBlock(nn.Module):
    """LaVie ``ResnetBlock3D``: GroupNorms over all frames of a sample, per-frame 3x3 convs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = InflatedConv(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = InflatedConv(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            InflatedConv(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = InflatedConv(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = InflatedConv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=(x.shape[2], *size), mode="nearest")
        return self.conv(x)


class LaVieTransformerBlock(nn.Module):
    """Spatial self-attention, text cross-attention, temporal attention, feed-forward, each
    pre-normed with a residual (LaVie ``BasicTransformerBlock``, inference branch)."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim_head, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            query_dim=dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=dim_head,
            bias=False,
        )
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = LaVieTemporalAttention(dim, heads, dim_head)
        self.norm_temp = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: ``[B*F, h*w, C]``; ``context``: ``[B*F, L, D]``."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=context) + x
        bf, d, c = x.shape
        # "(b f) d c -> (b d) f c": rows b*(h*w) + position, as attnlab's temporal sites expect
        t = x.view(bf // frames, frames, d, c).transpose(1, 2).reshape(-1, frames, c)
        t = self.attn_temp(self.norm_temp(t)) + t
        x = t.view(bf // frames, d, frames, c).transpose(1, 2).reshape(bf, d, c)
        return self.ff(self.norm3(x)) + x


class LaVieTransformer3D(nn.Module):
    """LaVie ``Transformer3DModel``: per-frame GroupNorm and projections around the blocks."""

    def __init__(
        self,
        heads: int,
        dim_head: int,
        in_channels: int,
        cross_attention_dim: int,
        groups: int,
        use_linear_projection: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner)
            self.proj_out = nn.Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [LaVieTransformerBlock(inner, heads, dim_head, cross_attention_dim)]
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        x = _frames_fold(x)
        bf, _, h, w = x.shape
        if context.shape[0] * frames == bf:  # one text embedding per sample: repeat over frames
            context = context.repeat_interleave(frames, dim=0)
        elif context.shape[0] != bf:
            raise ValueError(
                f"text context batch {context.shape[0]}: expected {bf // frames} (one per video) "
                f"or {bf} (one per frame)"
            )
        residual = x
        x = self.norm(x)
        if not self.use_linear_projection:
            x = self.proj_in(x)
        inner = x.shape[1]
        x = x.permute(0, 2, 3, 1).reshape(bf, h * w, inner)
        if self.use_linear_projection:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, frames)
        if self.use_linear_projection:
            x = self.proj_out(x)
        x = x.reshape(bf, h, w, -1).permute(0, 3, 1, 2)
        if not self.use_linear_projection:
            x = self.proj_out(x)
        return _frames_unfold(x + residual, frames)


class _Level(nn.Module):
    """One down or up level: ``resnets`` (+ ``attentions``) (+ ``downsamplers``/``upsamplers``)."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None


class DownLevel(_Level):
    def __init__(self, resnets, attentions, downsample: nn.Module | None):
        super().__init__(resnets, attentions)
        self.downsamplers = nn.ModuleList([downsample]) if downsample is not None else None

    def forward(self, x, temb, context):
        states = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            states += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states += (x,)
        return x, states


class UpLevel(_Level):
    def __init__(self, resnets, attentions, upsample: nn.Module | None):
        super().__init__(resnets, attentions)
        self.upsamplers = nn.ModuleList([upsample]) if upsample is not None else None

    def forward(self, x, skips, temb, context, size=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidLevel(nn.Module):
    def __init__(self, resnets, attentions):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


@dataclass
class LaVieUNetOutput(BaseOutput):
    sample: torch.Tensor


class LaVieUNet(ModelMixin, ConfigMixin):
    """LaVie's base UNet (``UNet3DConditionModel.from_pretrained_2d`` on SD 1.4's UNet config).

    ``forward(sample [B, C, F, H, W], timestep, encoder_hidden_states)``: the text context is
    ``[B, L, D]`` (repeated over frames, as the original) or ``[B*F, L, D]`` (one per frame).
    The config keys are SD's ``UNet2DConditionModel`` ones that LaVie reads; as there, the
    spatial *and* temporal attention have ``attention_head_dim`` heads (SD's misnomer) of
    ``channels / attention_head_dim`` channels.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        attention_head_dim: int | tuple[int, ...] = 8,
        use_linear_projection: bool = False,
        rope_dim: int = ROPE_DIM,
    ):
        super().__init__()
        if act_fn != "silu":
            raise ValueError(f"act_fn={act_fn!r}: LaVie uses silu")
        levels = len(block_out_channels)
        for name, types in (("down", down_block_types), ("up", up_block_types)):
            if len(types) != levels:
                raise ValueError(f"{name}_block_types needs {levels} entries, got {len(types)}")
        heads = (
            (attention_head_dim,) * levels
            if isinstance(attention_head_dim, int)
            else tuple(attention_head_dim)
        )
        temb = block_out_channels[0] * 4
        groups, eps = norm_num_groups, norm_eps

        def res(i, o, scale=1.0):
            return ResnetBlock(i, o, temb, groups, eps, scale)

        def xf(ch, n):
            return LaVieTransformer3D(
                n, ch // n, ch, cross_attention_dim, groups, use_linear_projection
            )

        self.conv_in = InflatedConv(in_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb)

        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            attn = kind == "CrossAttnDownBlock3D"
            if not attn and kind != "DownBlock3D":
                raise ValueError(f"unknown down block {kind!r}")
            resnets = [res(in_ch if j == 0 else out_ch, out_ch) for j in range(layers_per_block)]
            attns = [xf(out_ch, heads[i]) for _ in range(layers_per_block)] if attn else None
            down = Downsample(out_ch, downsample_padding) if i < levels - 1 else None
            self.down_blocks.append(DownLevel(resnets, attns, down))

        mid = block_out_channels[-1]
        self.mid_block = MidLevel(
            [res(mid, mid, mid_block_scale_factor), res(mid, mid, mid_block_scale_factor)],
            [xf(mid, heads[-1])],
        )

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(block_out_channels))
        rev_heads = list(reversed(heads))
        out_ch = rev[0]
        for i, kind in enumerate(up_block_types):
            prev, out_ch = out_ch, rev[i]
            skip_in = rev[min(i + 1, levels - 1)]
            attn = kind == "CrossAttnUpBlock3D"
            if not attn and kind != "UpBlock3D":
                raise ValueError(f"unknown up block {kind!r}")
            n = layers_per_block + 1
            resnets = [
                res((prev if j == 0 else out_ch) + (skip_in if j == n - 1 else out_ch), out_ch)
                for j in range(n)
            ]
            attns = [xf(out_ch, rev_heads[i]) for _ in range(n)] if attn else None
            up = Upsample(out_ch) if i < levels - 1 else None
            self.up_blocks.append(UpLevel(resnets, attns, up))

        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv(block_out_channels[0], out_channels, 3, padding=1)
        if rope_dim != ROPE_DIM:
            for m in self.modules():
                if isinstance(m, LaVieTemporalAttention):
                    m.rotary_emb = LaVieRoPE(rope_dim)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> LaVieUNetOutput | tuple[torch.Tensor]:
        """Noise prediction ``[B, C, F, H, W]``. Extra keyword arguments that pipelines pass
        (``cross_attention_kwargs``, ``attention_mask`` ...) are accepted and ignored, as
        LaVie's own forward does not use them."""
        if sample.ndim != 5:
            raise ValueError(
                f"LaVieUNet expects [B, C, F, H, W] latents, got {tuple(sample.shape)}"
            )
        b = sample.shape[0]
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=sample.device)
        elif t.ndim == 0:
            t = t[None].to(sample.device)
        t = t.expand(b)
        emb = self.time_embedding(self.time_proj(t).to(dtype=self.dtype))
        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % up_factor for s in sample.shape[-2:])

        x = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, states = block(x, emb, encoder_hidden_states)
            skips += states
        x = self.mid_block(x, emb, encoder_hidden_states)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[-2:] if forward_size and i < len(self.up_blocks) - 1 else None
            x = block(x, res, emb, encoder_hidden_states, size)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        if not return_dict:
            return (x,)
        return LaVieUNetOutput(sample=x)


# --- the pipeline ------------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    # LaViePipeline is built on first use: its base class and component types (diffusers'
    # pipelines, transformers' CLIP) take seconds to import, which LaVieUNet's users need not pay
    if name == "LaViePipeline":
        return _lavie_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _lavie_pipeline() -> type:
    from diffusers import AutoencoderKL, SchedulerMixin, TextToVideoSDPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from attnlab.models.t2v import init_text_to_video

    class LaViePipeline(TextToVideoSDPipeline):
        """diffusers' ``TextToVideoSDPipeline`` around a :class:`LaVieUNet`, with LaVie's video
        size (320 x 512, ``base/configs/sample.yaml``) and guidance (7.5, 50 steps; diffusers'
        pipeline would take 9.0) as its defaults: the SD-1.4 UNet config's
        ``sample_size`` (64 latents) would make it 512 x 512. ``height`` / ``width`` None mean
        320 / 512. The sampling loop is diffusers' own, unchanged.

        Converted folders name ``TextToVideoSDPipeline`` (so that diffusers loads them too);
        :func:`attnlab.models.load_pipeline` loads every folder whose UNet is a
        :class:`LaVieUNet` as this class, and the component types declared here spare the
        "Expected types for unet" warning."""

        def __init__(
            self,
            vae: AutoencoderKL,
            text_encoder: CLIPTextModel,
            tokenizer: CLIPTokenizer,
            unet: LaVieUNet,
            scheduler: SchedulerMixin,
        ):
            init_text_to_video(
                self, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                scheduler=scheduler,
            )  # fmt: skip

        def __call__(
            self,
            prompt: str | list[str] | None = None,
            height: int | None = DEFAULT_HEIGHT,
            width: int | None = DEFAULT_WIDTH,
            num_inference_steps: int = 50,
            guidance_scale: float = DEFAULT_GUIDANCE,
            **kwargs: Any,
        ):
            return super().__call__(
                prompt=prompt,
                height=DEFAULT_HEIGHT if height is None else height,
                width=DEFAULT_WIDTH if width is None else width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                **kwargs,
            )

    LaViePipeline.__qualname__ = "LaViePipeline"  # found here by name (pickle, diffusers)
    # real classes, not the strings of `from __future__ import annotations` (diffusers checks
    # the loaded components against these and warns if it cannot resolve them)
    LaViePipeline.__init__.__annotations__ = {
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "tokenizer": CLIPTokenizer,
        "unet": LaVieUNet,
        "scheduler": SchedulerMixin,
    }
    return LaViePipeline
