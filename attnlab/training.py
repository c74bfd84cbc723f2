"""Training data and loop of the model organisms (see :mod:`attnlab.organisms`).

Data: 16-frame windows of the real sample clips (resampled towards 8 fps, random 64 x 64 crops
and flips, captioned with their manifest description) mixed half and half with procedural clips
whose captions describe the motion or gradual change ("a red circle moving to the right on a
black background", "a square turning from yellow to blue on a gray background"), so prompts and
synopsis prompting mean something. The ``cup`` clip is held out for the real-video analyses.

Objective: epsilon prediction under ModelScope's noise schedule, captions dropped 10% of the
time (the empty prompt, as the pipeline's classifier-free guidance uses), AdamW, EMA weights.
All variants see the same batches, timesteps and noise for a seed; only the PE differs.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .organisms import (
    ORGANISMS,
    TRAIN_FRAMES,
    WEIGHTS,
    OrganismSpec,
    OrganismUNet,
    PatchCodec,
    build_pipeline,
)

TRAIN_CLIPS = (
    "carphone",
    "bikes_shot0",
    "bikes_shot1",
    "bikes_shot2",
    "bikes_shot3",
    "bikes_shot4",
    "box",
    "vtest",
    "tree",
)
HELD_OUT = ("cup",)
TARGET_FPS = 8.0

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.02, 0.02, 0.02),
    "gray": (0.45, 0.45, 0.45),
    "dark blue": (0.05, 0.05, 0.3),
}
SHAPES = ("circle", "square")
MOTIONS = ("right", "left", "up", "down", "grow", "shrink", "recolor")


# prompts for the real clips (what is seen in them; see `attnlab datasets list`)
CAPTIONS: dict[str, str] = {
    "carphone": "a man talking in a car",
    "bikes_shot0": "a street seen from above, a red car passes",
    "bikes_shot1": "a man in a suit by parked cars, the camera pans",
    "bikes_shot2": "a cyclist waiting behind a car at a bus stop",
    "bikes_shot3": "a street seen through a green railing, cars passing",
    "bikes_shot4": "a pedestrian walking past parked bicycles",
    "box": "a hand turning a box over a table",
    "vtest": "pedestrians crossing a square, static camera",
    "tree": "a tree seen through a window",
    "cup": "a black cup turned in a hand",
}


def clip_frames(name: str, size: int, fps: float = TARGET_FPS) -> tuple[torch.Tensor, str]:
    """All frames of sample ``name`` at about ``fps`` (never fewer than 16 if the clip has them),
    short side resized to ``size * 9 / 8`` (room for random crops): uint8 ``[T, 3, H, W]``."""
    from .datasets import read_sample

    video = read_sample(name)
    stride = max(1, min(round(video.fps / fps), len(video) // TRAIN_FRAMES))
    frames = torch.from_numpy(video.frames[::stride]).permute(0, 3, 1, 2).float()
    short = round(size * 9 / 8)
    h, w = frames.shape[-2:]
    scale = short / min(h, w)
    frames = F.interpolate(
        frames, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True
    )
    return frames.round().clamp(0, 255).to(torch.uint8), CAPTIONS[name]


def procedural_clip(
    rng: np.random.Generator, frames: int = TRAIN_FRAMES, size: int = 64
) -> tuple[torch.Tensor, str]:
    """A captioned synthetic clip ``[frames, 3, size, size]`` in [-1, 1]: one soft-edged shape
    that moves, grows, shrinks or changes colour linearly over the clip."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    names = list(COLORS)
    color = names[rng.integers(len(names))]
    color2 = names[(names.index(color) + 1 + rng.integers(len(names) - 1)) % len(names)]
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    u = torch.linspace(0, 1, frames)[:, None, None]  # time in [0, 1]
    cy, cx = (rng.uniform(0.3, 0.7, 2) * size).tolist()
    r0 = float(rng.uniform(0.1, 0.16) * size)
    travel = float(rng.uniform(0.35, 0.6) * size)
    radius = torch.full_like(u, r0)
    x0, y0 = torch.full_like(u, cx), torch.full_like(u, cy)
    if motion in ("right", "left"):
        x0 = size / 2 + (u - 0.5) * travel * (1 if motion == "right" else -1)
    elif motion in ("up", "down"):
        y0 = size / 2 + (u - 0.5) * travel * (1 if motion == "down" else -1)
    elif motion in ("grow", "shrink"):
        lo, hi = 0.06 * size, 0.28 * size
        radius = lo + (hi - lo) * (u if motion == "grow" else 1 - u)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    if shape == "circle":
        dist = ((xx - x0) ** 2 + (yy - y0) ** 2).sqrt() - radius
    else:
        dist = torch.maximum((xx - x0).abs(), (yy - y0).abs()) - radius
    alpha = torch.sigmoid(-dist / 0.7)[:, None]  # [F, 1, H, W], soft edge
    c1, c2 = torch.tensor(COLORS[color]), torch.tensor(COLORS[color2])
    fg = (c1 + (c2 - c1) * u[..., None]) if motion == "recolor" else c1.expand(frames, 1, 1, 3)
    fg = fg.reshape(frames, 3, 1, 1)
    back = torch.tensor(BACKGROUNDS[bg]).reshape(1, 3, 1, 1)
    video = back * (1 - alpha) + fg * alpha
    if motion == "recolor":
        caption = f"a {shape} turning from {color} to {color2} on a {bg} background"
    elif motion in ("grow", "shrink"):
        caption = f"a {color} {shape} {'growing' if motion == 'grow' else 'shrinking'} on a {bg} background"
    else:
        where = {"right": "to the right", "left": "to the left", "up": "up", "down": "down"}[motion]
        caption = f"a {color} {shape} moving {where} on a {bg} background"
    return video * 2 - 1, caption


@dataclass
class OrganismData:
    """Real windows and procedural clips, sampled reproducibly from a numpy Generator."""

    size: int = 64
    clips: Sequence[str] = TRAIN_CLIPS
    real_fraction: float = 0.5
    frames: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    captions: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in self.clips:
            frames, caption = clip_frames(name, self.size)
            if len(frames) >= TRAIN_FRAMES:
                self.frames[name], self.captions[name] = frames, caption

    def describe(self) -> dict[str, Any]:
        return {
            name: {"frames_at_about_8fps": len(f), "caption": self.captions[name]}
            for name, f in self.frames.items()
        }

    def real_window(self, rng: np.random.Generator) -> tuple[torch.Tensor, str]:
        names = list(self.frames)
        name = names[rng.integers(len(names))]
        clip = self.frames[name]
        t0 = int(rng.integers(len(clip) - TRAIN_FRAMES + 1))
        h, w = clip.shape[-2:]
        y = int(rng.integers(h - self.size + 1))
        x = int(rng.integers(w - self.size + 1))
        win = clip[t0 : t0 + TRAIN_FRAMES, :, y : y + self.size, x : x + self.size].float()
        if rng.random() < 0.5:
            win = win.flip(-1)
        return win / 127.5 - 1, self.captions[name]

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[str]]:
        """``n`` clips ``[n, F, 3, size, size]`` in [-1, 1] and their captions."""
        items = [
            self.real_window(rng)
            if rng.random() < self.real_fraction
            else procedural_clip(rng, size=self.size)
            for _ in range(n)
        ]
        return torch.stack([v for v, _ in items]), [c for _, c in items]

    def codec_frames(self, per_clip: int = 32) -> torch.Tensor:
        """Frames to fit the codec on: evenly spaced real frames plus procedural ones."""
        out = []
        for clip in self.frames.values():
            idx = torch.linspace(0, len(clip) - 1, min(per_clip, len(clip))).long()
            out.append(clip[idx, :, : self.size, : self.size].float() / 127.5 - 1)
        rng = np.random.default_rng(0)
        out += [procedural_clip(rng, size=self.size)[0][::4] for _ in range(32)]
        return torch.cat(out)


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded next to the weights)."""

    frame_pe: str = "none"
    steps: int = 1500
    batch: int = 2
    lr: float = 3e-4
    warmup: int = 50
    ema: float = 0.999
    uncond_prob: float = 0.1
    seed: int = 0
    threads: int | None = None
    spec: OrganismSpec = field(default_factory=OrganismSpec)


def fit_codec(data: OrganismData, spec: OrganismSpec) -> PatchCodec:
    codec = PatchCodec(patch=spec.patch, latent_channels=spec.latent_channels)
    return codec.fit(data.codec_frames())


def train(
    cfg: TrainConfig,
    data: OrganismData,
    codec: PatchCodec,
    *,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
) -> tuple[OrganismUNet, dict[str, Any]]:
    """Train one organism; returns its EMA UNet and a record of the run (losses, wall time)."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    unet = OrganismUNet(**cfg.spec.unet_config(cfg.frame_pe))
    ema = copy.deepcopy(unet).requires_grad_(False)
    pipe = build_pipeline(unet, codec)
    alphas = pipe.scheduler.alphas_cumprod
    embed_cache: dict[str, torch.Tensor] = {}

    def embed(text: str) -> torch.Tensor:
        # exactly the pipeline's own prompt encoding, so training and sampling agree
        if text not in embed_cache:
            with torch.no_grad():
                embed_cache[text] = pipe.encode_prompt(text, "cpu", 1, False)[0][0]
        return embed_cache[text]

    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), disable=not progress, desc=f"organism-{cfg.frame_pe}")
    for step in bar:
        pixels, captions = data.batch(rng, cfg.batch)
        b, f = pixels.shape[:2]
        with torch.no_grad():
            lat = codec.encode(pixels.flatten(0, 1)).latent_dist.mode()
            lat = lat.unflatten(0, (b, f)).transpose(1, 2) * codec.config.scaling_factor
        drop = torch.rand(b, generator=gen) < cfg.uncond_prob
        emb = torch.stack([embed("" if d else c) for d, c in zip(drop.tolist(), captions)])
        t = torch.randint(0, len(alphas), (b,), generator=gen)
        noise = torch.randn(lat.shape, generator=gen)
        a = alphas[t].view(b, 1, 1, 1, 1)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        loss = F.mse_loss(unet(noisy, t, emb).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
    wall = time.perf_counter() - t0
    record = {
        "config": {**asdict(cfg), "spec": asdict(cfg.spec)},
        "wall_s": round(wall, 1),
        "s_per_step": round(wall / max(cfg.steps, 1), 3),
        "final_loss_last100": float(np.mean(losses[-100:])),
        "first_loss_first100": float(np.mean(losses[:100])),
        "loss_every_50": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
        "parameters": sum(p.numel() for p in unet.parameters()),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "data": data.describe(),
        "held_out": list(HELD_OUT),
        "real_fraction": data.real_fraction,
    }
    if log:
        log(
            f"organism-{cfg.frame_pe}: {cfg.steps} steps in {wall / 60:.1f} min, "
            f"loss {record['first_loss_first100']:.4f} -> {record['final_loss_last100']:.4f}"
        )
    return ema, record


def save_organism(unet: OrganismUNet, record: dict[str, Any], root: Path = WEIGHTS) -> Path:
    """Write the EMA UNet (safetensors) and its training record under ``root/<name>``."""
    name = f"organism-{unet.config.frame_pe}"
    if name not in ORGANISMS:
        raise ValueError(f"not an organism: {name}")
    out = Path(root) / name
    unet.save_pretrained(out / "unet")
    (out / "training.json").write_text(json.dumps(record, indent=1, default=str))
    return out


def codec_error(codec: PatchCodec, frames: torch.Tensor) -> float:
    """PSNR (dB) of encode -> decode on frames in [-1, 1]."""
    with torch.no_grad():
        rec = codec.decode(codec.encode(frames).latent_dist.mode()).sample
    mse = F.mse_loss(rec.clamp(-1, 1), frames).item()
    return 10 * math.log10(4.0 / mse)


__all__ = [
    "HELD_OUT",
    "TRAIN_CLIPS",
    "OrganismData",
    "TrainConfig",
    "fit_codec",
    "procedural_clip",
    "save_organism",
    "train",
]
