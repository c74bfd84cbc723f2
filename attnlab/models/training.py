"""Training of the model organisms (see :mod:`attnlab.models.organisms`) on the procedural world.

Recipe (measured on this CPU, see ``docs/organisms.md``): 32 x 32 clips of :mod:`attnlab.data.world`
through a 4 x 4 PCA codec refitted on world frames (8 x 8 x 16 latents); v-prediction
(Salimans & Ho 2022) with min-SNR-5 loss weighting by default (Hang et al. 2023: weight
``min(SNR, 5) / (SNR + 1)`` for v-prediction; the committed organisms use the plain v-loss, the
zero-terminal-SNR schedule and reference-clip targets, :class:`TrainConfig`); AdamW, lr 1e-3
with linear warm-up, gradient norm clipped at 1, an EMA of the weights (what is saved);
captions replaced by the empty prompt 10% of the time (what classifier-free guidance uses). Two
phases:

1. a shared *image* phase: batches of single frames (``num_frames=1``), so the spatial layers
   learn to draw objects and colours first (as ModelScope and AnimateDiff start from an image
   model). It is trained once, with no frame PE, and is the initial state of all three variants;
2. a *video* phase per variant (none / sinusoidal / rope) with the same data, seed and schedule.

Video batches are made of *time-reversed pairs*: a clip and the same clip played backwards,
whose caption is the opposite one ("to the right" <-> "to the left", "growing" <-> "shrinking",
"from red to blue" <-> "from blue to red"), with the same noise and timestep. The two inputs
differ only in frame order and the caption differs only in the motion word, so the gradient of
the pair isolates what the motion words must do. 70% of clips move (large displacements:
0.4-0.64 of the frame in 16 frames).

Both phases are resumable: a checkpoint (weights, EMA, optimiser, random states, losses, probe
log) is written atomically every few minutes, and an interrupted run continues bit for bit
where the checkpoint left off. The *caption-flip probe* (:func:`flip_probe`) is logged while
training: the v-loss of fixed noised moving clips under their true caption, under the caption
with the direction word swapped, and under the empty caption.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnlab.data.world import (
    DIRECTIONS,
    MOTIONS,
    flip_direction,
    grammar,
    render,
    sample_scene,
    scene_for_caption,
)
from attnlab.models.organisms import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    ORGANISMS,
    TRAIN_FRAMES,
    WEIGHTS,
    OrganismMotionUNet,
    OrganismSpec,
    OrganismUNet,
    PatchCodec,
    build_pipeline,
    frame_pe_of,
    organism_scheduler,
    reshape_weights,
    temporal_parameter_names,
    zero_new_temporal,
)

# share of each motion in training clips: the four directions get 70% together
MOTION_WEIGHTS = (0.175, 0.175, 0.175, 0.175, 0.1, 0.1, 0.1)
PROBE_TIMESTEPS = (300, 500, 700)


def reverse_caption(caption: str) -> str:
    """The caption of the clip played backwards: direction, growth or colour order swapped."""
    if " moving " in caption:
        return flip_direction(caption)
    if " growing " in caption:
        return caption.replace(" growing ", " shrinking ")
    if " shrinking " in caption:
        return caption.replace(" shrinking ", " growing ")
    head, rest = caption.split(" turning from ", 1)
    c1, rest = rest.split(" to ", 1)
    c2, tail = rest.split(" on ", 1)
    return f"{head} turning from {c2} to {c1} on {tail}"


def world_batch(
    rng: np.random.Generator,
    n: int,
    frames: int = TRAIN_FRAMES,
    size: int = 32,
    pairs: bool = True,
    motions: tuple[str, ...] = MOTIONS,
    motion_weights: tuple[float, ...] | None = MOTION_WEIGHTS,
) -> tuple[torch.Tensor, list[str]]:
    """``n`` world clips ``[n, F, 3, size, size]`` in [-1, 1] and their captions; with ``pairs``
    elements ``2k`` and ``2k + 1`` are a clip and its time reversal (opposite caption).
    ``motions`` (weighted by ``motion_weights``, None: equally) restricts the clips, e.g. to
    :data:`~attnlab.data.world.DIRECTIONS` for a direction-only curriculum."""
    bad = [m for m in motions if m not in MOTIONS]
    if bad or not motions:
        raise ValueError(f"motions={motions!r}; allowed: a non-empty subset of {MOTIONS}")
    if motion_weights is not None and len(motion_weights) != len(motions):
        raise ValueError(f"{len(motion_weights)} motion_weights for {len(motions)} motions")
    videos, captions = [], []
    while len(videos) < n:
        clip = render(sample_scene(rng, motions, motion_weights), frames, size)
        videos.append(clip.video)
        captions.append(clip.caption)
        if pairs and len(videos) < n:
            videos.append(clip.video.flip(0))
            captions.append(reverse_caption(clip.caption))
    return torch.stack(videos), captions


def image_batch(rng: np.random.Generator, n: int, size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """``n`` single frames ``[n, 1, 3, size, size]``: a random frame of a random 16-frame clip."""
    videos, captions = [], []
    for _ in range(n):
        scene = sample_scene(rng, MOTIONS, MOTION_WEIGHTS)
        clip = render(scene, TRAIN_FRAMES, size, only=int(rng.integers(TRAIN_FRAMES)))
        videos.append(clip.video)
        captions.append(clip.caption)
    return torch.stack(videos), captions


def codec_frames(size: int = 32, clips: int = 256, seed: int = 12345) -> torch.Tensor:
    """World frames to fit the codec on (every 4th frame of ``clips`` clips)."""
    rng = np.random.default_rng(seed)
    return torch.cat([world_batch(rng, 1, size=size, pairs=False)[0][0, ::4] for _ in range(clips)])


def fit_codec(spec: OrganismSpec, frames: torch.Tensor | None = None) -> PatchCodec:
    codec = PatchCodec(patch=spec.patch, latent_channels=spec.latent_channels)
    return codec.fit(codec_frames(spec.size) if frames is None else frames)


def codec_error(codec: PatchCodec, frames: torch.Tensor) -> float:
    """PSNR (dB) of encode -> decode on frames in [-1, 1] (peak-to-peak 2)."""
    with torch.no_grad():
        rec = codec.decode(codec.encode(frames).latent_dist.mode()).sample
    mse = F.mse_loss(rec.clamp(-1, 1), frames).item()
    return 10 * math.log10(4.0 / mse)


TRAINABLE = ("all", "temporal")


@dataclass
class TrainConfig:
    """Everything a training phase depends on (recorded next to the weights)."""

    frame_pe: str = "none"
    phase: str = "video"  # "image" or "video"
    steps: int = 1000
    batch: int = 4  # clips per video step (two time-reversed pairs)
    image_batch: int = 128  # single frames per image step
    lr: float = 1e-3
    warmup: int = 150
    ema: float = 0.995
    min_snr: float | None = 5.0  # None: the plain v-loss (no min-SNR weighting)
    uncond_prob: float = 0.1
    pairs: bool = True
    seed: int = 0
    spec: OrganismSpec = field(default_factory=OrganismSpec)
    motions: tuple[str, ...] = MOTIONS  # video clips' motions (DIRECTIONS: direction curriculum)
    motion_weights: tuple[float, ...] | None = MOTION_WEIGHTS  # None: equally likely
    probe_timesteps: tuple[int, ...] = PROBE_TIMESTEPS
    zero_terminal_snr: bool = False  # organism_scheduler(zero_terminal_snr=True)
    t_min: int = 0  # training timesteps drawn from t_min..t_max (> 0: the noisy end only)
    # None: the schedule's last timestep (999); lower: the low-noise end, where the denoiser
    # must flatten a background (with noisy_share and noisy_min 0: a share on the whole range)
    t_max: int | None = None
    # share of the clips (pairs) whose timestep is drawn from noisy_min..999 instead: more
    # training where the input no longer shows the trajectory and only the caption can tell it
    noisy_share: float = 0.0
    noisy_min: int = 800
    # > 0: the v target uses the posterior-weighted mean of the clip and this many fresh clips of
    # the same caption instead of the clip alone (stable target field, Xu et al. 2023;
    # reference_target): the same optimum, far less variance where the input is nearly pure
    # noise, so the caption-dependent mean there (e.g. where a "moving right" object is at each
    # frame) becomes learnable; 0: the plain target (and no extra random draws)
    reference_clips: int = 0
    # > 0: share of the pairs whose input is not a noised clip but the EMA model's own sampler
    # state: 1..self_depth trailing DDIM steps (of DEFAULT_STEPS, at DEFAULT_GUIDANCE) from the
    # pair's pure noise under its caption, with the posterior mean of the caption's reference
    # clips given that state as target (sampler_target). Trains the states sampling actually
    # visits (against exposure bias); needs zero_terminal_snr and reference_clips
    self_inputs: float = 0.0
    self_depth: int = 4
    # share of the loss weighted as decoded pixels weigh the latent channels (channel_weights)
    pixel_weight: float = 0.0
    # "all" parameters, or the "temporal" layers only (temporal_parameter_names: attention and
    # any temporal convolutions; AnimateDiff's recipe of motion modules on a frozen image model)
    trainable: str = "all"
    # > 0: during training each temporal convolution is skipped (its residual alone: the
    # identity) with this probability, drawn afresh per layer and step, so that the temporal
    # attention must carry what a skipped convolution would have (at inference none is skipped)
    temporal_conv_dropout: float = 0.0
    # > 0: each temporal convolution writes only its first this many channels (the rest of its
    # last Conv3d's output rows are zeroed and kept at zero): enough to pass the frame order on,
    # too few to carry the appearance, which the temporal attention must then move between frames
    temporal_conv_channels: int = 0


def checkpoint_config(path: str | Path) -> TrainConfig:
    """The options a training checkpoint was last trained with (its last stage) as a
    :class:`TrainConfig`: what a :class:`Trainer` resumes or exports it with so that no new
    stage is recorded (fields the checkpoint predates take their defaults)."""
    state = torch.load(path, weights_only=False, map_location="cpu")
    kw = {**asdict(TrainConfig()), **state["config"]}
    kw = {f.name: kw[f.name] for f in fields(TrainConfig)}
    if isinstance(kw["spec"], dict):
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in kw["spec"].items()}
        kw["spec"] = OrganismSpec(**spec)
    for k in ("motions", "motion_weights", "probe_timesteps"):
        kw[k] = None if kw[k] is None else tuple(kw[k])
    return TrainConfig(**kw)


class TextCache:
    """Prompt embeddings exactly as the pipeline computes them (``encode_prompt``), cached."""

    def __init__(self, pipe, cache: dict[str, torch.Tensor] | None = None):
        self.pipe = pipe
        self.cache: dict[str, torch.Tensor] = {} if cache is None else cache

    def __call__(self, texts: list[str]) -> torch.Tensor:
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            with torch.no_grad():
                emb = self.pipe.encode_prompt(todo, "cpu", 1, False)[0]
            self.cache.update(zip(todo, emb))
        return torch.stack([self.cache[t] for t in texts])


def reference_target(
    lat: torch.Tensor, refs: torch.Tensor, alpha: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Stable-target-field estimate of E[x0 | x_t] (Xu et al., ICLR 2023): the mean of the clip
    ``lat`` ``[B, ...]`` and its references ``refs`` ``[B, K, ...]`` (clips of the same caption)
    weighted by their likelihood of having produced x_t = sqrt(a) lat + sqrt(1-a) noise,
    p(x_t | z) ~ exp(-|x_t - sqrt(a) z|^2 / (2 (1 - a))). ``alpha`` ``[B]``. At a = 0 (pure
    noise) the weights are equal (the references' mean); where the input still shows the
    clip, the clip itself (its weight -> 1)."""
    b = lat.shape[0]
    a = alpha.double().view(b, 1)
    z = lat.double().flatten(1)
    d = z[:, None] - refs.double().flatten(2)  # clip minus each reference  [B, K, D]
    eps = noise.double().flatten(1)
    # log p(x_t | ref) - log p(x_t | clip), with x_t - sqrt(a) ref = sqrt(a) d + sqrt(1-a) eps
    rel = -(a * (d**2).sum(-1) + 2 * (a * (1 - a)).sqrt() * (d * eps[:, None]).sum(-1))
    rel = rel / (2 * (1 - a)).clamp_min(1e-12)
    w = torch.softmax(torch.cat([torch.zeros(b, 1, dtype=rel.dtype), rel], 1), 1)  # clip first
    est = w[:, :1] * z + (w[:, 1:, None] * (z[:, None] - d)).sum(1)
    return est.view_as(lat).to(lat.dtype)


def sampler_target(x_t: torch.Tensor, refs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] when x0 is one of the reference clips ``refs`` ``[B, K, ...]`` (equally likely
    a priori) and x_t ``[B, ...]`` any input, e.g. a sampler state rather than a noised clip:
    weights p(x_t | z) ~ exp(-|x_t - sqrt(a) z|^2 / (2 (1 - a))) over the references. ``alpha``
    ``[B]``, below 1. At a = 0 the references' mean; as a grows, the references the input
    already shows."""
    b = x_t.shape[0]
    a = alpha.double().view(b, 1, 1)
    z = refs.double().flatten(2)
    d2 = ((x_t.double().flatten(1)[:, None] - a.sqrt() * z) ** 2).sum(-1, keepdim=True)
    w = torch.softmax(-d2 / (2 * (1 - a)), 1)
    return (w * z).sum(1).view_as(x_t).to(x_t.dtype)


def v_loss(
    unet: OrganismUNet | OrganismMotionUNet,
    alphas: torch.Tensor,
    lat: torch.Tensor,
    emb: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    min_snr: float | None,
    x0: torch.Tensor | None = None,
    channel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample v-prediction loss; ``lat`` ``[B, C, F, h, w]``. v = sqrt(a) eps - sqrt(1-a) x0
    (Salimans & Ho 2022, eq. in Sec. 4); weight min(SNR, gamma) / (SNR + 1) (Hang et al. 2023).
    ``x0``: an estimate of E[lat | x_t] to regress on instead of ``lat`` (:func:`reference_target`);
    the v target is then the one consistent with it, (sqrt(a) x_t - x0) / sqrt(1 - a).
    ``channel_weights`` ``[C]`` (mean 1): the squared error of each latent channel weighted so
    (:func:`channel_weights`); None: every channel alike."""
    a = alphas[t].view(-1, 1, 1, 1, 1)
    noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * lat
    if x0 is not None:  # the same, with the estimate in place of the clip
        target = target + (lat - x0) / (1 - a).sqrt()
    pred = unet(noisy, t, emb).sample
    err = (pred - target) ** 2
    if channel_weights is not None:
        err = err * channel_weights.view(1, -1, 1, 1, 1)
    per = err.mean((1, 2, 3, 4))
    if min_snr is None:
        return per
    snr = alphas[t] / (1 - alphas[t])
    return per * snr.clamp(max=min_snr) / (snr + 1)


def channel_weights(codec: PatchCodec, pixel: float) -> torch.Tensor | None:
    """Loss weights of the codec's latent channels: ``(1 - pixel)`` of them alike, ``pixel`` of
    them as the decoded pixels weigh them (the codec is linear with orthonormal components, so a
    latent error e_c costs scale_c^2 e_c^2 in pixel MSE; the whitened channels otherwise count
    alike, and the leading ones, which carry a background's flat colour, are then almost free:
    the first of the organisms' 16 channels has 80 % of the pixel weight but 1/16 of the loss).
    Mean 1. ``pixel`` = 0: None (the plain loss)."""
    if not 0.0 <= pixel <= 1.0:
        raise ValueError(f"pixel_weight={pixel}; allowed: 0 (latent loss) .. 1 (pixel loss)")
    if pixel == 0.0:
        return None
    s2 = codec.scales.detach().double() ** 2
    w = (1 - pixel) + pixel * s2 / s2.mean()
    return w.float()


@torch.no_grad()
def flip_probe(
    unet: OrganismUNet | OrganismMotionUNet,
    codec: PatchCodec,
    text: TextCache,
    alphas: torch.Tensor,
    clips: int = 8,
    seed: int = 999,
    timesteps: tuple[int, ...] = PROBE_TIMESTEPS,
) -> dict[str, Any]:
    """Caption-flip probe: unweighted v-loss of ``clips`` fixed moving world clips noised at
    each of ``timesteps`` with fixed noise, under the true caption, the direction-swapped
    caption and the empty caption. ``gap`` = (swapped - true) / (empty - true): the share of
    what the caption tells the model that is the direction word (0: ignored; NaN where the
    empty caption does at least as well as the true one). The three losses
    and ``gap`` are means over ``timesteps``; ``by_t`` has them per timestep (the direction word
    can only matter where the noisy input does not already show the trajectory: at high noise)."""
    rng = np.random.default_rng(seed)
    vids, caps = [], []
    for _ in range(clips):
        clip = render(sample_scene(rng, DIRECTIONS), TRAIN_FRAMES, codec.config.patch * 8)
        vids.append(clip.video)
        caps.append(clip.caption)
    lat = codec.encode(torch.cat(vids)).latent_dist.mode()
    lat = lat.unflatten(0, (clips, TRAIN_FRAMES)).transpose(1, 2)
    gen = torch.Generator().manual_seed(seed)
    per: dict[str, list[float]] = {}
    was = unet.training
    unet.eval()
    for name, cs in (
        ("true", caps),
        ("swapped", [flip_direction(c) for c in caps]),
        ("empty", [""] * clips),
    ):
        gen.manual_seed(seed)
        per[name] = []
        for t in timesteps:
            noise = torch.randn(lat.shape, generator=gen)
            tt = torch.full((clips,), t)
            per[name].append(v_loss(unet, alphas, lat, text(cs), tt, noise, None).mean().item())
    unet.train(was)

    def gap(true: float, swapped: float, empty: float) -> float:
        # undefined (NaN) where the caption as a whole does not lower the loss
        return (swapped - true) / (empty - true) if empty > true else float("nan")

    out: dict[str, Any] = {k: float(np.mean(v)) for k, v in per.items()}
    out["gap"] = gap(out["true"], out["swapped"], out["empty"])
    out["by_t"] = {
        int(t): {
            "true": per["true"][i],
            "swapped": per["swapped"][i],
            "empty": per["empty"][i],
            "gap": gap(per["true"][i], per["swapped"][i], per["empty"][i]),
        }
        for i, t in enumerate(timesteps)
    }
    return out


def _conv_dropout_hooks(unet: torch.nn.Module) -> dict[str, list[bool]]:
    """Forward hooks on each temporal convolution of ``unet`` (diffusers'
    ``TemporalConvLayer``) that, while the layer's flag is set, return the layer's input (the
    identity its residual gives when the convolutions add nothing). Returns the flags by module
    name; they start cleared. Training only: the hooks live on the trained module, never on the
    EMA copy that is saved."""
    from diffusers.models.resnet import TemporalConvLayer

    flags: dict[str, list[bool]] = {}
    for name, module in unet.named_modules():
        if isinstance(module, TemporalConvLayer):
            flag = flags[name] = [False]

            def hook(_m, args, out, flag=flag):
                return args[0] if flag[0] else out

            module.register_forward_hook(hook)
    if not flags:
        raise ValueError("temporal_conv_dropout: this UNet has no temporal convolution")
    return flags


def _narrow_temporal_convs(unet: torch.nn.Module, channels: int) -> int:
    """Zero every output row but the first ``channels`` of the last convolution of each temporal
    convolution of ``unet`` (diffusers' ``TemporalConvLayer``: its output is its input plus that
    convolution's) and keep them zero under training (their gradients are masked; AdamW leaves a
    zero weight with zero gradient at zero). Returns how many layers were narrowed."""
    from diffusers.models.resnet import TemporalConvLayer

    n = 0
    for module in unet.modules():
        if isinstance(module, TemporalConvLayer):
            conv = module.conv4[-1]
            if not 0 < channels <= conv.out_channels:
                raise ValueError(
                    f"temporal_conv_channels={channels}; allowed: 1..{conv.out_channels}"
                )
            mask = torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
            mask[:channels] = 1
            with torch.no_grad():
                conv.weight.mul_(mask.view(-1, 1, 1, 1, 1))
                conv.bias.mul_(mask)
            rows = mask.view(-1, 1, 1, 1, 1)
            conv.weight.register_hook(lambda g, m=rows: g * m)
            conv.bias.register_hook(lambda g, m=mask: g * m)
            n += 1
    if not n:
        raise ValueError("temporal_conv_channels: this UNet has no temporal convolution")
    return n


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One resumable training phase of one UNet (image phase, or a variant's video phase)."""

    def __init__(
        self,
        cfg: TrainConfig,
        codec: PatchCodec,
        ckpt: Path,
        init: dict[str, torch.Tensor] | None = None,
        text=None,
        text_cache: dict[str, torch.Tensor] | None = None,
    ):
        self.cfg, self.codec, self.ckpt = cfg, codec, Path(ckpt)
        torch.manual_seed(cfg.seed)
        self.unet = cfg.spec.build_unet(cfg.frame_pe)
        if init is not None:
            # a ModelScope-shaped organism's weights onto this shape (reshape_weights): the
            # temporal convolutions it lacks are dropped; fresh motion modules start as the
            # identity, a new zero-initialised caption path is zero already
            state, missing = reshape_weights(init, self.unet)
            fresh = ("attnlab_temporal_text.proj.weight", "attnlab_temporal_text.proj.bias")
            new_motion = [k for k in missing if ".motion_modules." in k]
            bad = [k for k in missing if not k.endswith(fresh) and k not in new_motion]
            if bad:
                raise ValueError(f"initial weights do not fit: {bad[:5]}")
            self.unet.load_state_dict(state, strict=False)
            zero_new_temporal(self.unet, new_motion)
        if cfg.trainable not in TRAINABLE:
            raise ValueError(f"trainable={cfg.trainable!r}; allowed: {', '.join(TRAINABLE)}")
        if cfg.trainable == "temporal":  # AnimateDiff's recipe: a frozen image model
            names = set(temporal_parameter_names(self.unet))
            for n, prm in self.unet.named_parameters():
                prm.requires_grad_(n in names)
        if cfg.temporal_conv_channels:
            _narrow_temporal_convs(self.unet, cfg.temporal_conv_channels)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self._conv_skip = _conv_dropout_hooks(self.unet) if cfg.temporal_conv_dropout else {}
        self.pipe = build_pipeline(
            self.unet, codec, text, organism_scheduler(cfg.zero_terminal_snr)
        )
        self.text = TextCache(self.pipe, text_cache)
        self.channel_weights = channel_weights(codec, cfg.pixel_weight)
        self.alphas = self.pipe.scheduler.alphas_cumprod.float()
        last = len(self.alphas) - 1
        self.t_max = last if cfg.t_max is None else cfg.t_max
        if not 0 <= cfg.t_min <= self.t_max <= last:
            raise ValueError(
                f"t_min={cfg.t_min}, t_max={cfg.t_max}; allowed: 0 <= t_min <= t_max <= {last}"
            )
        if not 0.0 <= cfg.temporal_conv_dropout < 1.0:
            raise ValueError(f"temporal_conv_dropout={cfg.temporal_conv_dropout}; allowed: [0, 1)")
        if not 0 <= cfg.noisy_min < len(self.alphas) or not 0.0 <= cfg.noisy_share <= 1.0:
            raise ValueError(
                f"noisy_min={cfg.noisy_min}, noisy_share={cfg.noisy_share}; allowed: "
                f"noisy_min in 0..{len(self.alphas) - 1}, noisy_share in [0, 1]"
            )
        if cfg.reference_clips < 0:
            raise ValueError(f"reference_clips={cfg.reference_clips}; allowed: 0 (off) or more")
        if cfg.self_inputs and not (
            0.0 < cfg.self_inputs <= 1.0
            and cfg.zero_terminal_snr
            and cfg.reference_clips > 0
            and 1 <= cfg.self_depth < DEFAULT_STEPS
        ):
            raise ValueError(
                f"self_inputs={cfg.self_inputs} (self_depth={cfg.self_depth}, zero_terminal_snr="
                f"{cfg.zero_terminal_snr}, reference_clips={cfg.reference_clips}); allowed: "
                f"self_inputs in (0, 1] with zero_terminal_snr, reference_clips > 0 and "
                f"self_depth in 1..{DEFAULT_STEPS - 1}"
            )
        # the sampling schedule of the sampler states (DDIM's step keeps no state between calls)
        self.sampler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        self.sampler.set_timesteps(DEFAULT_STEPS)
        trained = [prm for prm in self.unet.parameters() if prm.requires_grad]
        self.opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=0.0)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.wall = 0.0
        self.losses: list[float] = []
        self.probes: list[dict[str, float]] = []
        self.stages: list[dict[str, Any]] = [{"from_step": 0, "config": asdict(cfg)}]
        if self.ckpt.exists():
            self._load()

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(
            {
                "config": asdict(self.cfg),
                "unet": self.unet.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "rng": self.rng.bit_generator.state,
                "gen": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": self.step,
                "wall": self.wall,
                "losses": self.losses,
                "probes": self.probes,
                "stages": self.stages,
            },
            self.ckpt,
        )

    def _load(self) -> None:
        state = torch.load(self.ckpt, weights_only=False)
        if state["config"]["frame_pe"] != self.cfg.frame_pe:
            raise ValueError(f"checkpoint {self.ckpt} is for another variant")
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.wall = state["step"], state["wall"]
        self.losses, self.probes = state["losses"], state["probes"]
        # a run resumed with other options (a curriculum) records where each stage began
        saved = {**asdict(TrainConfig()), **state["config"]}
        self.stages = state.get("stages", [{"from_step": 0, "config": saved}])
        now, was = asdict(self.cfg), self.stage_configs()[-1]
        changed = {k: v for k, v in now.items() if k != "steps" and was.get(k) != v}
        if changed:
            self.stages.append({"from_step": self.step, "changed": changed})

    def stage_configs(self) -> list[dict[str, Any]]:
        """The options in force in each stage: the first stage's, with each change applied."""
        configs = [dict(self.stages[0]["config"])]
        for stage in self.stages[1:]:
            configs.append({**configs[-1], **stage["changed"]})
        return configs

    # -- training ----------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, list[str]]:
        size = self.cfg.spec.size
        if self.cfg.phase == "image":
            return image_batch(self.rng, self.cfg.image_batch, size)
        cfg = self.cfg
        return world_batch(
            self.rng, cfg.batch, TRAIN_FRAMES, size, cfg.pairs, cfg.motions, cfg.motion_weights
        )

    def _references(self, captions: list[str], frames: int) -> torch.Tensor:
        """``cfg.reference_clips`` fresh latent clips per caption ``[B, K, C, F, h, w]``: clips of
        that caption (:func:`scene_for_caption`), or of the training mix for the empty one."""
        cfg, size = self.cfg, self.cfg.spec.size
        vids = []
        for c in captions:
            for _ in range(cfg.reference_clips):
                if c:
                    scene = scene_for_caption(c, seed=int(self.rng.integers(2**31)))
                else:
                    scene = sample_scene(self.rng, cfg.motions, cfg.motion_weights)
                vids.append(render(scene, frames, size).video)
        with torch.no_grad():
            z = self.codec.encode(torch.cat(vids)).latent_dist.mode()
        z = z.unflatten(0, (len(captions), cfg.reference_clips, frames))
        return z.transpose(2, 3)

    @torch.no_grad()
    def _sampler_inputs(self, lat, noise, t, x0, emb, refs):
        """Replace a ``cfg.self_inputs`` share of the pairs by sampler states (see
        :class:`TrainConfig`): the EMA model's trailing DDIM steps at the pipeline's guidance
        from the pair's noise (pure noise at t = 999), 1..``self_depth`` of them; the target is
        :func:`sampler_target`, written as the clip and noise that give that state exactly."""
        cfg, b = self.cfg, lat.shape[0]
        sel = torch.rand(b, generator=self.gen) < cfg.self_inputs
        depth = torch.randint(1, cfg.self_depth + 1, (b,), generator=self.gen)
        if cfg.pairs:  # a pair shares its noise, and so its start and depth
            sel[1::2], depth[1::2] = sel[0::2][: b // 2], depth[0::2][: b // 2]
        idx = sel.nonzero().flatten()
        if len(idx) == 0:
            return lat, noise, t, x0
        sched = self.sampler
        x, cond = noise[idx] * sched.init_noise_sigma, emb[idx]
        both = torch.cat([self.text([""] * len(idx)), cond])
        states = []
        for step in sched.timesteps[: int(depth[idx].max())]:
            u, c = self.ema(torch.cat([x, x]), step, both).sample.chunk(2)
            x = sched.step(u + DEFAULT_GUIDANCE * (c - u), step, x).prev_sample
            states.append(x)
        x_t = torch.stack([states[int(d) - 1][i] for i, d in enumerate(depth[idx])])
        t_s = sched.timesteps[depth[idx]].long()
        a = self.alphas[t_s].view(-1, 1, 1, 1, 1)
        target = sampler_target(x_t, refs[idx], self.alphas[t_s])
        lat, noise, t, x0 = lat.clone(), noise.clone(), t.clone(), x0.clone()
        lat[idx], x0[idx], t[idx] = target, target, t_s
        noise[idx] = (x_t - a.sqrt() * target) / (1 - a).sqrt()
        return lat, noise, t, x0

    def train_step(self) -> float:
        cfg = self.cfg
        pixels, captions = self._batch()
        b, f = pixels.shape[:2]
        with torch.no_grad():
            lat = self.codec.encode(pixels.flatten(0, 1)).latent_dist.mode()
            lat = lat.unflatten(0, (b, f)).transpose(1, 2)
        drop = torch.rand(b, generator=self.gen) < cfg.uncond_prob
        used = ["" if d else c for d, c in zip(drop.tolist(), captions)]
        t = torch.randint(cfg.t_min, self.t_max + 1, (b,), generator=self.gen)
        if cfg.noisy_share > 0:  # (no extra draws otherwise: earlier runs resume unchanged)
            noisy = torch.rand(b, generator=self.gen) < cfg.noisy_share
            high = torch.randint(cfg.noisy_min, len(self.alphas), (b,), generator=self.gen)
            t = torch.where(noisy, high, t)
        noise = torch.randn(lat.shape, generator=self.gen)
        if cfg.phase == "video" and cfg.pairs:  # a pair shares its noise and timestep
            t[1::2] = t[0::2][: len(t[1::2])]
            noise[1::2] = noise[0::2][: len(noise[1::2])]
            # and is dropped to the empty caption together
            for i in range(1, b, 2):
                if drop[i - 1]:
                    used[i] = ""
        emb = self.text(used)
        x0 = None
        if cfg.reference_clips > 0 and cfg.phase == "video":
            refs = self._references(used, f)
            x0 = reference_target(lat, refs, self.alphas[t], noise)
            if cfg.self_inputs > 0:
                lat, noise, t, x0 = self._sampler_inputs(lat, noise, t, x0, emb, refs)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup)
        if self._conv_skip:  # (no draws otherwise: earlier runs resume unchanged)
            skip = torch.rand(len(self._conv_skip), generator=self.gen) < cfg.temporal_conv_dropout
            for flag, s in zip(self._conv_skip.values(), skip.tolist()):
                flag[0] = s
        loss = v_loss(
            self.unet, self.alphas, lat, emb, t, noise, cfg.min_snr, x0, self.channel_weights
        ).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for flag in self._conv_skip.values():
            flag[0] = False
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        decay = min(cfg.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.unet.parameters()):
                pe.lerp_(p, 1 - decay)
        self.step += 1
        self.losses.append(loss.item())
        return self.losses[-1]

    def run(
        self,
        until: int,
        *,
        ckpt_every_s: float = 180.0,
        probe_every: int = 0,
        deadline: float | None = None,
        stop_file: Path | None = None,
        log: Callable[[str], None] | None = print,
    ) -> None:
        """Train until step ``until`` (or wall-clock ``deadline``, or until ``stop_file``
        exists), checkpointing every ``ckpt_every_s`` seconds and at the end; probe every
        ``probe_every`` steps (0: never)."""
        last = time.perf_counter()
        while self.step < until and (deadline is None or time.time() < deadline):
            if stop_file is not None and Path(stop_file).exists():
                break
            t0 = time.perf_counter()
            self.train_step()
            self.wall += time.perf_counter() - t0
            if probe_every and self.step % probe_every == 0:
                p = flip_probe(
                    self.ema, self.codec, self.text, self.alphas, timesteps=self.cfg.probe_timesteps
                )
                p = {"step": self.step, **p}
                self.probes.append(p)
                if log:
                    log(
                        f"[{self.cfg.phase} {self.cfg.frame_pe}] step {self.step} probe(EMA): "
                        f"true {p['true']:.4f} swapped {p['swapped']:.4f} empty {p['empty']:.4f} "
                        f"gap {p['gap']:.3f} by t "
                        + " ".join(f"{t}:{d['gap']:.3f}" for t, d in p["by_t"].items())
                    )
            if log and self.step % 25 == 0:
                log(
                    f"[{self.cfg.phase} {self.cfg.frame_pe}] step {self.step} loss "
                    f"{np.mean(self.losses[-25:]):.4f} ({self.wall / max(self.step, 1):.2f} s/step)"
                )
            if time.perf_counter() - last > ckpt_every_s:
                self.save()
                last = time.perf_counter()
        self.save()

    def record(self) -> dict[str, Any]:
        losses = self.losses
        return {
            "config": {**asdict(self.cfg), "spec": asdict(self.cfg.spec)},
            "steps": self.step,
            "wall_s": round(self.wall, 1),
            "s_per_step": round(self.wall / max(self.step, 1), 3),
            "loss_first100": float(np.mean(losses[:100])) if losses else None,
            "loss_last100": float(np.mean(losses[-100:])) if losses else None,
            "loss_every_50": [
                float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)
            ],
            "flip_probe": self.probes,
            # the options in force from each step on (more than one: resumed with other options)
            "stages": [
                {"from_step": st["from_step"], "changed": st["changed"]} for st in self.stages[1:]
            ],
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
        }


def save_organism(
    unet: OrganismUNet | OrganismMotionUNet,
    record: dict[str, Any],
    root: Path = WEIGHTS,
    scheduler: Any = None,
) -> Path:
    """Write the EMA UNet (safetensors) and its training record under ``root/<name>``, and the
    noise ``scheduler`` it was trained with when given (``organism_path`` then samples with it;
    without one it uses the default :func:`organism_scheduler`)."""
    name = f"organism-{frame_pe_of(unet)}"
    if name not in ORGANISMS:
        raise ValueError(f"not an organism: {name}")
    out = Path(root) / name
    unet.save_pretrained(out / "unet")
    (out / "training.json").write_text(json.dumps(record, indent=1, default=str))
    if scheduler is not None:
        scheduler.save_pretrained(out / "scheduler")
    elif (out / "scheduler").exists():  # left by an earlier export: not these weights' schedule
        shutil.rmtree(out / "scheduler")
    return out


def all_captions() -> list[str]:
    """Every caption training can produce (the grammar) plus the empty prompt."""
    return ["", *grammar()]


__all__ = [
    "MOTION_WEIGHTS",
    "TrainConfig",
    "Trainer",
    "channel_weights",
    "checkpoint_config",
    "codec_error",
    "codec_frames",
    "fit_codec",
    "flip_probe",
    "image_batch",
    "reverse_caption",
    "save_organism",
    "v_loss",
    "world_batch",
]
