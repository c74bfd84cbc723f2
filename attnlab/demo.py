"""``attnlab demo``: a short version of the whole story on the embedded default, offline."""

from __future__ import annotations

import time
from pathlib import Path

from . import dims as D


def run_demo(out: Path, model: str | None = None, quick: bool = False) -> dict[str, Path]:
    """Record synthetic temporal attention of the default model and report where it went."""
    from . import load, record, sites
    from .models import DEFAULT_MODEL, default_device, generate, load_pipeline

    model = model or DEFAULT_MODEL
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pipe = load_pipeline(model, device=default_device())
    table = sites(pipe, height=64, width=48)
    print(table)
    store = out / "attention.zarr"
    frame_counts = (8, 16) if quick else (16, 48)
    steps = 2 if quick else 4
    with record(pipe, store=store) as rec:
        for frames in frame_counts:
            print(f"synthetic run: {frames} frames, {steps} steps")
            generate(
                pipe, "a polar bear playing drums", frames=frames, steps=steps, height=64, width=48
            )
    ds = load(store, runs=[r.id for r in rec.runs])
    print(
        f"\nstore {store}: {ds.sizes[D.RUN]} runs, variables {list(ds.data_vars)}, dims {dict(ds.sizes)}"
    )
    print(f"done in {time.time() - t0:.1f} s; outputs in {out}")
    return {"store": store}
