"""Fig. 4: replacement probes (identity / all-ones) per level set, with frame change per probe.

Runs the experiment into analyses/data/<model>/probes.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/fig4_probes.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("probes", sys.argv[1:]))
