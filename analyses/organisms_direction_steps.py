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

``--trajectory``: instead, one 25-step run per noise draw, scoring the model's prediction of the
clean video (the scheduler's ``pred_original_sample``, decoded) at every step: at which
timestep a direction is lost.

    python analyses/organisms_direction_steps.py --model organism-sinusoidal --trajectory
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


CAPTIONS = [s.format(w) for s in SCENES for w in WORDS]


def _noise(pipe, seed: int) -> torch.Tensor:
    """One draw per scene, repeated for its four words: ``[scenes x words, C, 16, h, w]``."""
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(SCENES), channels, 16, size, size, generator=gen)
    return noise.repeat_interleave(len(WORDS), 0)


def _tally(videos_by_seed: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per direction word: videos moving the captioned way (``ok`` of ``n``) and mean travel."""
    ok: dict[str, list[bool]] = {w: [] for w in WORDS}
    travel: dict[str, list[float]] = {w: [] for w in WORDS}
    for videos in videos_by_seed:
        for video, caption in zip(videos, CAPTIONS):
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


def measure(pipe, steps: int, seeds: int) -> dict[str, dict[str, float]]:
    """The sampled videos after ``steps`` DDIM steps, tallied per direction word."""
    runs = [
        np.asarray(
            pipe(
                CAPTIONS, num_inference_steps=steps, latents=_noise(pipe, s), output_type="np"
            ).frames
        )
        for s in range(seeds)
    ]
    return _tally(runs)


def trajectory(pipe, seeds: int, steps: int = 25) -> dict[str, dict[str, dict[str, float]]]:
    """Per timestep of a ``steps``-step run: the decoded clean-video prediction, tallied."""
    by_t: dict[int, list[np.ndarray]] = {}
    step = pipe.scheduler.step
    x0s: list[tuple[int, torch.Tensor]] = []

    def keep(model_output, timestep, sample, *args, **kwargs):
        out = step(model_output, timestep, sample, *args, **kwargs)
        x0s.append((int(timestep), out.pred_original_sample.detach().clone()))
        return out

    pipe.scheduler.step = keep
    try:
        for seed in range(seeds):
            x0s.clear()
            pipe(CAPTIONS, num_inference_steps=steps, latents=_noise(pipe, seed), output_type="np")
            for t, x0 in x0s:
                # the scheduler steps frames as a batch: [videos x frames, C, h, w]
                lat = x0.reshape(len(CAPTIONS), 16, *x0.shape[1:]).permute(0, 2, 1, 3, 4)
                video = pipe.video_processor.postprocess_video(
                    video=pipe.decode_latents(lat), output_type="np"
                )
                by_t.setdefault(t, []).append(np.asarray(video))
    finally:
        del pipe.scheduler.step  # (the class's method again)
    return {str(t): _tally(by_t[t]) for t in sorted(by_t, reverse=True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", help="default: the three organisms")
    p.add_argument("--seeds", type=int, default=2, help="noise draws per scene")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10, 25])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--trajectory",
        action="store_true",
        help="score the clean-video prediction at every step of one 25-step run instead",
    )
    p.add_argument(
        "--out", help="default: analyses/data/organisms_direction_steps[_trajectory].json"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    name = "organisms_direction_steps" + ("_trajectory" if a.trajectory else "")
    out = Path(a.out or f"analyses/data/{name}.json")
    results = {}
    print(f"| model | {'timestep' if a.trajectory else 'DDIM steps'} | right | left | up | down |")
    print("|---|---|---|---|---|---|")
    for model in a.model or list(ORGANISMS):
        pipe = load_pipeline(model, progress=False)
        if a.trajectory:
            results[model] = trajectory(pipe, a.seeds)
        else:
            results[model] = {str(steps): measure(pipe, steps, a.seeds) for steps in a.steps}
        for key, r in results[model].items():
            cells = " | ".join(f"{v['ok']}/{v['n']} ({v['travel_px']:+.1f} px)" for v in r.values())
            print(f"| {model} | {key} | {cells} |", flush=True)
    record = {
        "command": "python analyses/organisms_direction_steps.py " + " ".join(argv or sys.argv[1:]),
        "scenes": list(SCENES),
        "seeds": a.seeds,
        "guidance": "the pipeline's default",
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
