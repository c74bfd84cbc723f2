"""The best v-loss any organism can reach at the pure-noise end of the zero-terminal-SNR schedule.

There (t = 999, alpha_bar = 0) the input is pure noise and the v target is -x0, so the best
prediction of a clip is the mean latent of all clips the prediction can tell apart. For the
caption-flip probe's 8 moving clips (attnlab.training.flip_probe, seed 999) this computes the
v-loss of predicting

- the mean of clips of the clip's own caption (knows colour, shape, background, direction),
- the mean over the caption's four directions (knows everything but the direction),
- the mean of clips of the direction-swapped caption,
- the mean of all world clips (knows nothing: the empty caption),

each mean over ``--clips`` clips (random geometry, ``attnlab.world.scene_for_caption``) through
the committed PCA codec. Compare the probe's ``by_t[999]`` losses of a zero-terminal-SNR run
with these floors.

    python analyses/organisms_t999_floor.py [--clips 200]
"""

import argparse
import sys

import numpy as np
import torch

from attnlab.data.world import (
    DIRECTION_WORDS,
    DIRECTIONS,
    flip_direction,
    parse_caption,
    render,
    sample_scene,
    scene_for_caption,
    world_clip,
)
from attnlab.models.organisms import WEIGHTS, PatchCodec
from attnlab.models.training import TRAIN_FRAMES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clips", type=int, default=200, help="clips per mean")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    codec = PatchCodec.from_pretrained(WEIGHTS / "codec")
    size = codec.config.patch * 8

    @torch.no_grad()
    def latents(videos: list[torch.Tensor]) -> torch.Tensor:
        z = codec.encode(torch.cat(videos)).latent_dist.mode()
        return z.unflatten(0, (len(videos), TRAIN_FRAMES))

    def mean_of(caption: str) -> torch.Tensor:
        clips = [scene_for_caption(caption, seed=s) for s in range(a.clips)]
        return latents([render(c, TRAIN_FRAMES, size).video for c in clips]).mean(0)

    rng = np.random.default_rng(999)  # the flip probe's clips
    probe = [render(sample_scene(rng, DIRECTIONS), TRAIN_FRAMES, size) for _ in range(8)]
    x = latents([c.video for c in probe])
    blind = latents([world_clip(50_000 + s, TRAIN_FRAMES, size).video for s in range(a.clips)])
    blind = blind.mean(0)
    rows: dict[str, list[float]] = {"true": [], "no direction": [], "swapped": [], "empty": []}
    for i, clip in enumerate(probe):
        cap = clip.caption
        word = DIRECTION_WORDS[parse_caption(cap)["motion"]]
        by_dir = [
            mean_of(cap.replace(f"moving {word}", f"moving {w}")) for w in DIRECTION_WORDS.values()
        ]
        for name, m in (
            ("true", mean_of(cap)),
            ("no direction", torch.stack(by_dir).mean(0)),
            ("swapped", mean_of(flip_direction(cap))),
            ("empty", blind),
        ):
            rows[name].append(float(((x[i] - m) ** 2).mean()))
    print(f"best v-loss at t = 999 (zero terminal SNR), 8 probe clips, means of {a.clips} clips:")
    for name, v in rows.items():
        print(f"  {name:<13} {np.mean(v):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
