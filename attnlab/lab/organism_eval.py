"""Sampling the organisms over the world's grammar and scoring them with the evaluator.

Used by ``analyses/organisms_eval.py`` (the table in docs/organisms.md), by ``attnlab demo`` and
by the behavioural tests. Everything is seeded: the captions of a measurement are those of
:func:`attnlab.world.world_clip` for seeds ``EVAL_SEED + i`` (all seven motions equally likely),
and each batch of prompts is sampled with one generator seeded with ``seed + batch index``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from attnlab.data.evaluator import VideoScore, evaluate, summarize
from attnlab.data.world import DIRECTIONS, world_clip

EVAL_SEED = 10_000  # captions of measurements: world clips never drawn in training order


def eval_captions(n: int, offset: int = EVAL_SEED) -> list[str]:
    """``n`` captions over the whole grammar (the captions of world clips ``offset + i``)."""
    return [world_clip(offset + i, frames=1).caption for i in range(n)]


def moving_seeds(n: int, offset: int = EVAL_SEED) -> list[int]:
    """World-clip seeds ``offset + i`` of the first ``n`` moving captions (right / left / up /
    down) of the sequence :func:`eval_captions` draws from."""
    out, i = [], 0
    while len(out) < n:
        if world_clip(offset + i, frames=1).scene.motion in DIRECTIONS:
            out.append(offset + i)
        i += 1
    return out


def moving_captions(n: int, offset: int = EVAL_SEED) -> list[str]:
    """The captions of :func:`moving_seeds`."""
    return [world_clip(s, frames=1).caption for s in moving_seeds(n, offset)]


@torch.no_grad()
def sample(
    pipe: Any,
    captions: list[str],
    *,
    frames: int = 16,
    seed: int = 0,
    batch: int = 8,
    **kwargs: Any,
) -> np.ndarray:
    """Videos ``[N, F, H, W, 3]`` in [0, 1] from the pipeline's own defaults (guidance, steps,
    size) unless ``kwargs`` override them; batch ``b`` uses a generator seeded ``seed + b``."""
    out = []
    for b, i in enumerate(range(0, len(captions), batch)):
        gen = torch.Generator().manual_seed(seed + b)
        res = pipe(
            captions[i : i + batch], num_frames=frames, generator=gen, output_type="np", **kwargs
        )
        v = np.asarray(res.frames)  # [B, F, H, W, 3]
        out.append(v.reshape(-1, *v.shape[-4:]))
    return np.concatenate(out).clip(0, 1)


def score_videos(videos: np.ndarray, captions: list[str]) -> list[VideoScore]:
    return [evaluate(v, c) for v, c in zip(videos, captions)]


def measure(
    pipe: Any, n: int = 64, *, frames: int = 16, seed: int = 0, batch: int = 8, **kwargs: Any
) -> tuple[dict[str, Any], list[VideoScore], np.ndarray]:
    """Sample ``n`` grammar captions and summarise the evaluator's scores."""
    captions = eval_captions(n)
    videos = sample(pipe, captions, frames=frames, seed=seed, batch=batch, **kwargs)
    scores = score_videos(videos, captions)
    return summarize(scores), scores, videos


__all__ = [
    "EVAL_SEED",
    "eval_captions",
    "measure",
    "moving_captions",
    "moving_seeds",
    "sample",
    "score_videos",
]
