"""Fig. 8: reference-dynamics transfer with a real clip's inter-frame similarity as the TAR prior.

Runs the experiment into analyses/data/<model>/transfer.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/fig8_transfer.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("transfer", sys.argv[1:]))
