"""Where along the sampler an organism's direction is set, and where it is lost.

    python analyses/organisms_direction_steps.py [--model organism-sinusoidal] [--seeds 2]

The same scene under each of the four direction words from the same noise per scene (4 scenes,
so only the word differs within a scene), sampled with 1, 3, 10 and 25 trailing DDIM steps from
pure noise at the pipeline's default guidance. With one step the output is the model's
prediction of the clean video from pure noise (the caption's mean clip, as trained at t = 999);
more steps add the lower-noise steps. Scored by attnlab.evaluator: per direction word, how many
videos move the captioned way and the mean travel along the captioned direction (px over 16
frames; the evaluator asks for 4.8). Writes analyses/data/organisms_direction_steps.json and
prints a markdown table.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from attnlab.data.evaluator import evaluate
from attnlab.models import load_pipeline
from attnlab.models.organisms import ORGANISMS

SCENES = (
    "a red circle {} on a black background",
    "a yellow square {} on a dark blue background",
    "a green circle {} on a black background",
    "a white square {} on a dark blue background",
)
WORDS = ("moving to the right", "moving to the left", "moving up", "moving down")


def measure(pipe, steps: int, seeds: int) -> dict[str, dict[str, float]]:
    """Per direction word: videos moving the captioned way (``ok`` of ``n``) and mean travel."""
    captions = [s.format(w) for s in SCENES for w in WORDS]
    ok: dict[str, list[bool]] = {w: [] for w in WORDS}
    travel: dict[str, list[float]] = {w: [] for w in WORDS}
    h, w = pipe.unet.config.sample_size, pipe.unet.config.sample_size
    channels = pipe.unet.config.in_channels
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(SCENES), channels, 16, h, w, generator=gen)
        out = pipe(
            captions,
            num_inference_steps=steps,
            latents=noise.repeat_interleave(len(WORDS), 0),
            output_type="np",
        )
        for video, caption in zip(np.asarray(out.frames), captions):
            score = evaluate(video, caption)
            word = next(x for x in WORDS if x in caption)
            ok[word].append(bool(score.direction_ok))
            travel[word].append(score.displacement)
    return {
        word.split()[-1]: {
            "ok": sum(ok[word]),
            "n": len(ok[word]),
            "travel_px": round(float(np.mean(travel[word])), 2),
        }
        for word in WORDS
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", help="default: the three organisms")
    p.add_argument("--seeds", type=int, default=2, help="noise draws per scene")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10, 25])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="analyses/data/organisms_direction_steps.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = {}
    print("| model | DDIM steps | right | left | up | down |")
    print("|---|---|---|---|---|---|")
    for model in a.model or list(ORGANISMS):
        pipe = load_pipeline(model, progress=False)
        results[model] = {}
        for steps in a.steps:
            r = measure(pipe, steps, a.seeds)
            results[model][str(steps)] = r
            cells = " | ".join(f"{v['ok']}/{v['n']} ({v['travel_px']:+.1f} px)" for v in r.values())
            print(f"| {model} | {steps} | {cells} |", flush=True)
    record = {
        "command": "python analyses/organisms_direction_steps.py " + " ".join(argv or sys.argv[1:]),
        "scenes": list(SCENES),
        "seeds": a.seeds,
        "guidance": "the pipeline's default",
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
