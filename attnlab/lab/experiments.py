"""Experiment runners shared by the CLI, ``attnlab demo`` and the scripts in ``analyses/``.

Each runs a pipeline under edits while recording into a store, and returns what the figures
need (videos, run ids). Figures are drawn afterwards from the stored data only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from attnlab.core.api import edit, record
from attnlab.edits import Edit, Replace
from attnlab.models.loading import generate


@dataclass
class GenerationSettings:
    """Everything that defines one generation apart from the edits."""

    prompt: str = "a polar bear playing drums in Times Square"
    frames: int = 16
    steps: int = 25
    seed: int = 0
    height: int | None = None
    width: int | None = None
    guidance: float = 7.5
    negative_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        return dict(
            frames=self.frames,
            steps=self.steps,
            seed=self.seed,
            height=self.height,
            width=self.width,
            guidance=self.guidance,
            negative_prompt=self.negative_prompt,
            **self.extra,
        )


def generate_recorded(
    pipe: Any,
    settings: GenerationSettings,
    edits: Sequence[Edit] = (),
    *,
    store: str | os.PathLike | None = None,
    record_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Generate one video under ``edits``; record it into ``store`` if given. Returns (video, run id)."""
    import contextlib

    with contextlib.ExitStack() as stack:
        rec = None
        if store is not None:
            rec = stack.enter_context(record(pipe, store=store, name=name, **(record_kwargs or {})))
        if edits:
            stack.enter_context(edit(pipe, *edits))
        video = generate(pipe, settings.prompt, **settings.kwargs())
    run_id = rec.runs[-1].id if rec is not None and rec.runs else None
    return video, run_id


def level_set_label(levels: Sequence[int]) -> str:
    return "+".join(str(v) for v in levels)


def parse_level_sets(tokens: Sequence[str]) -> list[list[int]]:
    """``["0", "1", "0,1"]`` -> ``[[0], [1], [0, 1]]``."""
    out = []
    for t in tokens:
        try:
            out.append(sorted({int(v) for v in str(t).replace("+", ",").split(",") if v}))
        except ValueError:
            raise ValueError(f"bad level set {t!r}: expected e.g. '0' or '0,1'") from None
    return out


def run_probes(
    pipe: Any,
    settings: GenerationSettings,
    *,
    kinds: Sequence[str] = ("identity", "ones"),
    level_sets: Sequence[Sequence[int]] = ((0,), (1,), (2,), (3,), (0, 1)),
    store: str | os.PathLike | None = None,
    videos_dir: str | os.PathLike | None = None,
    record_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Paper Fig. 4: one video per (probe kind, level set), plus the unedited baseline.

    Returns ``{"baseline": video, "videos": {(kind, label): video}, "runs": {key: run id}}``.
    """
    jobs: list[tuple[str, str, list[Edit]]] = [("baseline", "", [])]
    jobs += [
        (k, level_set_label(ls), [Replace(k, levels=list(ls))]) for k in kinds for ls in level_sets
    ]
    videos: dict[tuple[str, str], torch.Tensor] = {}
    runs: dict[tuple[str, str], str | None] = {}
    baseline = None
    for kind, label, edits in tqdm(jobs, desc="probes", unit="video"):
        video, run_id = generate_recorded(
            pipe, settings, edits, store=store, record_kwargs=record_kwargs
        )
        if videos_dir is not None:
            from attnlab.data.video import write_video

            name = "baseline" if kind == "baseline" else f"{kind}_levels{label}"
            write_video(video, Path(videos_dir) / f"{name}.gif", fps=8)
        if kind == "baseline":
            baseline = video
        else:
            videos[(kind, label)] = video
        runs[(kind, label)] = run_id
    return {"baseline": baseline, "videos": videos, "runs": runs}
