"""Table 2 of the paper: baseline / + VSP / + VSP & TAR over a prompt list, scored as the paper does.

Each prompt with key states ("subprompts") is generated three times with the same seed: plain,
with Video Synopsis Prompting (``attnlab.Synopsis``), and with VSP and TAR (``attnlab.TAR()``,
the paper's default). Every run is recorded into analyses/data/<model>/table2.zarr with its video,
then scored with ``attnlab.evaluate``: dynamics (VBench dynamic degree with Farneback flow, the
continuous flow magnitude, flickering, motion smoothness proxy), consistency (ST-LPIPS, offline),
the attention-side measures, and CLIP-VL when a local open_clip checkpoint is given
(``--clip-checkpoint`` or $ATTNLAB_CLIP_CHECKPOINT). The paper's MTScore needs InternVideo2
weights that no registry ships; it is not computed (see docs/evaluation.md).

On the embedded default (organism-rope, CPU, minutes):
    python analyses/table2_vsp_tar.py --frames 16 --steps 10
On a real checkpoint on a GPU:
    python analyses/table2_vsp_tar.py --model adamdad/videocrafterv2_diffusers --device cuda \\
        --height 320 --width 512 --frames 48 --clip-checkpoint /path/to/open_clip_folder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

CONDITIONS = ("baseline", "vsp", "vsp-tar")
HEADERS = {"baseline": "Baseline", "vsp": "+ VSP", "vsp-tar": "+ VSP & TAR"}
COLUMNS = (
    ("clip_vl", "CLIP-VL"),
    ("dynamic_degree", "dynamic degree"),
    ("flow_magnitude_mean", "flow (px)"),
    ("temporal_flickering", "flickering"),
    ("motion_smoothness", "smoothness"),
    ("consistency", "consistency"),
    ("attention_band_concentration", "attn band k=1"),
)


def main(argv: list[str] | None = None) -> int:
    from attnlab.core.store import save_video
    from attnlab.edits import TAR
    from attnlab.edits.synopsis import Synopsis
    from attnlab.lab.evaluation import CLIP_CHECKPOINT_ENV, evaluate
    from attnlab.lab.experiments import Context, _done, generate_recorded
    from attnlab.models import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or embedded name")
    p.add_argument("--prompts", default=str(Path(__file__).parent / "sweeps" / "prompts.json"))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--data", default="analyses/data")
    p.add_argument("--figures", default="figures")
    p.add_argument("--clip-checkpoint", default=None, help="open_clip folder or weights file")
    p.add_argument("--clip-model", default=None, help="architecture of a single weights file")
    a = p.parse_args(argv)

    ctx = Context(
        model=a.model, data=Path(a.data), figures=Path(a.figures), frames=(a.frames, a.frames),
        steps=a.steps, height=a.height, width=a.width, device=a.device, seed=a.seed,
    )  # fmt: skip
    prompts = [q for q in json.loads(Path(a.prompts).read_text()) if q.get("subprompts")]
    if not prompts:
        raise SystemExit(f"{a.prompts} has no prompt with 'subprompts' (key states for VSP)")
    store = ctx.store("table2")
    for i, q in enumerate(prompts):
        edits = {
            "baseline": [],
            "vsp": [Synopsis(q["subprompts"])],
            "vsp-tar": [Synopsis(q["subprompts"]), TAR()],
        }
        for cond in CONDITIONS:
            name = f"p{i}-{cond}"
            if name in _done(store):
                print(f"  {name}: stored, skipped")
                continue
            video, _ = generate_recorded(
                ctx.pipe(), ctx.settings(a.frames, prompt=q["prompt"]), edits[cond],
                store=store, name=name,
            )  # fmt: skip
            save_video(store, name, video)
            print(f"  {name}: {q['prompt']!r} ({cond})")

    metrics = ["dynamic_degree", "temporal_flickering", "motion_smoothness", "consistency"]
    metrics.append("attention")
    clip = a.clip_checkpoint or os.environ.get(CLIP_CHECKPOINT_ENV)
    if clip:
        metrics.append("clip_vl")
    ev = evaluate(
        store, metrics=metrics, clip_checkpoint=clip, clip_model=a.clip_model,
        device=a.device or "cpu",
    )  # fmt: skip
    rows = {}
    for cond in CONDITIONS:
        ids = [f"p{i}-{cond}" for i in range(len(prompts))]
        rows[cond] = {
            var: float(np.mean(ev[var].sel(run=ids).values)) for var, _ in COLUMNS if var in ev
        }
    lines = [
        f"Table 2 (attnlab): {ctx.model}, {len(prompts)} prompts, {a.frames} frames, "
        f"{a.steps} steps, seed {a.seed}; mean over prompts",
        "",
        "| | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for cond in CONDITIONS:
        cells = [
            f"{rows[cond][v]:.3f}" if v in rows[cond] else "n/a (no CLIP weights)"
            for v, _ in COLUMNS
        ]
        lines.append(f"| {HEADERS[cond]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    out = ctx.figure("table2.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    ctx.figure("table2.json").write_text(json.dumps(rows, indent=1))
    print(f"written: {out}, {ctx.figure('table2.json')}; results stored in {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
