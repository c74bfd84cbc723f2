"""The organisms' demo figure for docs/organisms.md, and the level-0 band concentration of the
maps recorded while generating it (attnlab.data.metrics.band_concentration, k = 1).

    python analyses/organisms_strips.py [--out docs/figures/organisms/organisms_strips] [--dependence]

Other models (committed names or saved pipeline folders, ``LABEL=FOLDER`` to name a row) and
the four direction captions instead of the demo's:

    python analyses/organisms_strips.py --model organism-sinusoidal --model zt=/tmp/zt/pipeline \
        --directions --out /tmp/directions
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from attnlab.data.evaluator import summarize
from attnlab.data.metrics import band_concentration
from attnlab.lab.organisms import DEMO_CAPTIONS, demo_figure, dependence_figure

DIRECTION_CAPTIONS = (
    "a red circle moving to the right on a black background",
    "a red circle moving to the left on a black background",
    "a yellow square moving down on a dark blue background",
    "a yellow square moving up on a dark blue background",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="docs/figures/organisms/organisms_strips")
    p.add_argument("--model", action="append", help="name, folder or LABEL=FOLDER (repeatable)")
    p.add_argument("--directions", action="store_true", help="four direction captions")
    p.add_argument(
        "--dependence",
        action="store_true",
        help="also the probes-at-every-level figure (<out dir>/organisms_dependence.png)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    kw = {}
    labels: dict[str, str] = {}
    if a.model:
        for m in a.model:
            label, _, ref = m.rpartition("=")
            labels[ref] = label or ref
        kw["models"] = tuple(labels)
    kw["captions"] = DIRECTION_CAPTIONS if a.directions else DEMO_CAPTIONS
    paths, results = demo_figure(Path(a.out), labels=labels, **kw)
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
    if a.dependence:
        dep_kw = {"models": kw["models"]} if "models" in kw else {}
        paths, probed = dependence_figure(Path(a.out).parent / "organisms_dependence", **dep_kw)
        print(paths)
        for r in probed:
            ok = sum(bool(s.direction_ok) for s in r["scores"])
            speed = np.mean([s.speed for s in r["scores"]])
            print(
                f"{r['model']} {r['probe']}: direction {ok}/{len(r['scores'])}, speed {speed:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
