"""Where recording's time goes on one ModelScope level-0 temporal layer (issue 18).

``python analyses/perf/layer_stages.py OUT.json [REPEATS]``: ``attnlab.tools.bench.layer_paths`` at
16, 48 and 128 frames (one torch thread), which times the explicit path stage by stage
(nothing kept, + probability tensor, + logits copy, full tensor then mean, fused sums) against
the fused default processor, interleaved in rounds.
"""

import json
import sys
from pathlib import Path

import torch

from attnlab.core import blocking
from attnlab.tools import bench
from attnlab.tools.bench import harness

torch.set_num_threads(1)
out_path = Path(sys.argv[1])
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
out = {
    "machine": harness.machine("cpu"),
    "block_elements": blocking.block_elements("cpu"),
    "layers": [],
}
for frames, rows in ((16, 5120), (48, 5120), (128, 1920)):
    res = bench.layer_paths(frames, rows=rows, repeats=repeats)
    out["layers"].append(res)
    print(frames, {k: round(v["ratio"], 3) for k, v in res["paths"].items()}, flush=True)
    out_path.write_text(json.dumps(out, indent=1, default=str))
