"""Fig. S.1/S.2: inter-frame similarity of real, synthetic and TAR videos, by interval.

Runs the experiment into analyses/data/<model>/similarity.zarr (skipping runs already stored), then
draws its figures into figures/<model>/. Same experiment on a real checkpoint on a GPU:
    python analyses/figS1_similarity.py --model <hub id or folder> --device cuda --height 320 --width 512
"""

import sys

from attnlab.tools.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("similarity", sys.argv[1:]))
