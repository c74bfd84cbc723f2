"""Fig. 3: temporal attention of real vs synthetic videos at two lengths, with and without TAR.

Runs the experiment into analyses/data/<model>/maps.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/fig3_attention_maps.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("maps", sys.argv[1:]))
