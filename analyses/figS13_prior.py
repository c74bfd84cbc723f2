"""Fig. S.13: the Gaussian prior dA for several sigma.

Runs the experiment into analyses/data/<model>/prior.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/figS13_prior.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("prior", sys.argv[1:]))
