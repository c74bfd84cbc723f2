"""The organisms' demo figure for docs/organisms.md, and the level-0 band concentration of the
maps recorded while generating it (attnlab.metrics.band_concentration, k = 1).

    python analyses/organisms_strips.py [--out docs/figures/organisms/organisms_strips]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from attnlab.data.evaluator import summarize
from attnlab.data.metrics import band_concentration
from attnlab.lab.organism_demo import demo_figure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="docs/figures/organisms/organisms_strips")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    paths, results = demo_figure(Path(a.out))
    print(paths)
    n = results[0]["map"].shape[0]
    print(f"uniform band concentration k=1 at {n} frames: {(3 * n - 2) / n**2:.3f}")
    for r in results:
        bc = float(band_concentration(np.asarray(r["map"]), k=1))
        s = summarize(r["scores"])
        print(
            f"{r['model']}: level-0 band concentration {bc:.3f}, diagonal "
            f"{np.diag(r['map']).mean():.3f}; found {s['found_frames']:.2f}, colour "
            f"{s['color_acc']:.2f}, direction {s['direction_acc']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
