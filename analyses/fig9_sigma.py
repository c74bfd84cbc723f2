"""Fig. 9: TAR sigma ablation over the paper's presets.

Runs the experiment into analyses/data/<model>/sigma.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/fig9_sigma.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("sigma", sys.argv[1:]))
