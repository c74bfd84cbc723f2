"""Time per 48-frame video per metric of ``attnlab.evaluate`` (docs/performance.md).

One process, one torch thread, each metric timed once per size after a warm-up call on a
3-frame clip (model loading is excluded from the timed call). Reported: CPU time of the process
(robust to other jobs on a shared machine) and wall time. The video is a
smooth texture translating by (2, 1) px per frame; Farneback's run time depends little on content.

    python analyses/bench_evaluation.py [--clip]     # --clip: random ViT-B-32 in open_clip's layout
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from attnlab.lab import evaluation as E

    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--clip", action="store_true", help="also time CLIP-VL (random ViT-B-32)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from calibrate_dynamics import texture

    scorer = None
    if a.clip:
        import open_clip
        from safetensors.torch import save_file

        tmp = Path(tempfile.mkdtemp()) / "vitb32"
        tmp.mkdir()
        cfg = open_clip.get_model_config("ViT-B-32")
        (tmp / "open_clip_config.json").write_text(__import__("json").dumps({"model_cfg": cfg}))
        model = open_clip.create_model("ViT-B-32")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "open_clip_model.safetensors"))  # fmt: skip
        t0 = time.perf_counter()
        scorer = E.ClipScorer(tmp)
        scorer.load()
        print(f"CLIP ViT-B-32 load: {time.perf_counter() - t0:.2f} s")

    jobs = {
        "dynamic_degree (Farneback)": lambda v: E.dynamic_degree(v),
        "temporal_flickering": lambda v: E.temporal_flickering(v),
        "motion_smoothness (Farneback)": lambda v: E.motion_smoothness(v),
        "consistency (pixel)": lambda v: E.consistency(v, "pixel", cache=False),
        "consistency (stlpips)": lambda v: E.consistency(v, "stlpips", cache=False),
    }
    if scorer is not None:
        jobs["clip_vl (ViT-B-32)"] = lambda v: E.clip_vl(v, "a texture", scorer)
    sizes = ((64, 64), (320, 512))
    print(f"\n| metric (CPU s / wall s) | {' | '.join(f'{h} x {w}' for h, w in sizes)} |")
    print("|---" * (len(sizes) + 1) + "|")
    videos = {}
    for h, w in sizes:
        videos[(h, w)] = np.stack([texture(h, w, (2.0 * t, 1.0 * t)) for t in range(a.frames)])
    for name, fn in jobs.items():
        cells = []
        for size in sizes:
            fn(videos[size][:3])  # warm-up: loads models, fills caches of code paths
            t0, c0 = time.perf_counter(), time.process_time()
            fn(videos[size])
            cells.append(f"{time.process_time() - c0:.2f} / {time.perf_counter() - t0:.2f}")
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
