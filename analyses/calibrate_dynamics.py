"""Calibrate the dynamic degree's optical flow on motion of known speed (docs/evaluation.md).

1. Synthetic translations: a smooth texture (sum of sinusoids, evaluated at shifted coordinates,
   so sub-pixel motion is exact) moving at known speed, at the organisms' 64 x 64, VBench's
   reference short side 256, and the paper's 320 x 512.
2. Real texture: windows cut from a real frame (a sample clip from a package registry) at integer
   offsets, i.e. a real image translated by a known whole number of pixels per frame.
3. Real clips as they are (no ground truth): the flow magnitude and VBench's verdict.

For each: the top-5 % mean flow magnitude (VBench's per-pair score) of Farneback flow, its
relative error, and VBench's threshold 6 * short side / 256.

    python analyses/calibrate_dynamics.py            # about a minute on one CPU core
"""

from __future__ import annotations

import math
import sys

import numpy as np


def texture(h: int, w: int, shift: tuple[float, float], seed: int = 0, k: int = 24) -> np.ndarray:
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(k):
            lam, th, ph = rs.uniform(6, 48), rs.uniform(0, np.pi), rs.uniform(0, 2 * np.pi)
            kx, ky = math.cos(th) * 2 * math.pi / lam, math.sin(th) * 2 * math.pi / lam
            img[..., c] += np.cos(kx * (xx - shift[0]) + ky * (yy - shift[1]) + ph)
    return np.clip(127.5 + 50 * img / math.sqrt(k / 2), 0, 255).round().astype(np.uint8)


def main() -> int:
    import torch

    from attnlab.lab.evaluation import dynamic_degree, flow_magnitude, optical_flow

    torch.set_num_threads(1)
    print("## Synthetic translations (diagonal motion, 4 frames, 3 pairs)\n")
    print("| size (H x W) | threshold (px) | true speed (px/frame) | top-5 % flow (px) | error |")
    print("|---|---|---|---|---|")
    for h, w in ((64, 64), (256, 256), (320, 512)):
        for speed in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
            v = (speed / math.sqrt(2), speed / math.sqrt(2))
            video = np.stack([texture(h, w, (v[0] * t, v[1] * t)) for t in range(4)])
            ds = dynamic_degree(video)
            m = float(ds.flow_magnitude.mean())
            err = f"{(m - speed) / speed:+.1%}" if speed else f"{m:.3f} px"
            print(
                f"| {h} x {w} | {float(ds.dynamic_threshold):.2f} | {speed:g} | {m:.2f} | {err} |"
            )

    from attnlab.data.datasets import fetch_samples, read_sample

    fetch_samples(["carphone", "bikes"])
    clip = read_sample("carphone", frames=None, fps=None)
    frame = clip.frames[0]  # 144 x 176, a real image
    print("\n## Real texture: windows of a real frame (carphone, frame 0) at integer offsets\n")
    print(
        "| window | threshold (px) | true speed (px/frame, x) | top-5 % flow (px) | error | "
        "median flow (px) | top-5 % without a 16 px border (px) |"
    )
    print("|---|---|---|---|---|---|---|")
    size = 96
    for speed in (1, 2, 4, 8, 12):
        n = 4 if speed * 3 + size <= frame.shape[1] else 2
        video = np.stack([frame[24 : 24 + size, speed * t : speed * t + size] for t in range(n)])
        ds = dynamic_degree(video)
        m = float(ds.flow_magnitude.mean())
        flow = optical_flow(video)
        med = float(np.median(np.hypot(flow[..., 0], flow[..., 1])))
        inner = float(flow_magnitude(flow[:, 16:-16, 16:-16]).mean())
        print(
            f"| {size} x {size} | {float(ds.dynamic_threshold):.2f} | {speed} | {m:.2f} | "
            f"{(m - speed) / speed:+.1%} | {med:.2f} | {inner:.2f} |"
        )

    print("\n## Real clips at 8 fps, 16 frames (no ground truth)\n")
    print(
        "| clip | size | threshold (px) | flow per pair: min / median / max (px) | pairs above | dynamic |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("carphone", "bikes_shot2", "bikes_shot3"):
        clip = read_sample(name, frames=16, fps=8.0, if_short="spread")
        ds = dynamic_degree(clip)
        f = ds.flow_magnitude.values
        print(
            f"| {name} | {clip.height} x {clip.width} | {float(ds.dynamic_threshold):.2f} | "
            f"{f.min():.2f} / {np.median(f):.2f} / {f.max():.2f} | {int(ds.dynamic_pairs)} of "
            f"{len(f)} (need {int(ds.dynamic_count)}) | {int(ds.dynamic_degree)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
