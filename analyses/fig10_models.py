"""Fig. 10: models with different frame positional encodings at the default and double length.

Runs the experiment into analyses/data/<model>/models.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/fig10_models.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("models", sys.argv[1:]))
