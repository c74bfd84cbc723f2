"""Fused position sums vs full tensor then mean, one level-0 layer, more rounds (issue 18).

``python analyses/perf/layer_fused.py OUT.json [REPEATS]``, at 48 and 128 frames.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from attnlab.core.processor import TemporalAttnProcessor
from attnlab.core.protocol import Plan
from attnlab.tools.bench import micro

torch.set_num_threads(1)
out_path = Path(sys.argv[1])
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 7


def layer_fns(frames: int, rows: int) -> dict:
    torch.manual_seed(0)
    attn = micro._layer(320, 5, "cpu", torch.float32)
    x = torch.randn(rows, frames, 320)
    site, ctx = micro._one_layer_site(frames, rows, 5, 64)
    default = AttnProcessor2_0()

    def call(plan):
        proc = TemporalAttnProcessor(micro._OneLayer(plan, ctx), site, default)

        def fn():
            with torch.no_grad():
                return proc(attn, x)

        return fn

    def fast():
        with torch.no_grad():
            return default(attn, x)

    return {
        "fast": fast,
        "nothing kept": call(Plan()),
        "full tensor then mean (before)": call(Plan(observe=[micro._MeanObserver()])),
        "fused sums (now)": call(Plan(observe=[micro._SumsObserver()])),
    }


out = []
for frames, rows in ((48, 5120), (128, 1920)):
    res = micro._bench(layer_fns(frames, rows), repeats, "cpu")
    ref = res["fast"]["median"]
    print(frames, {k: round(v["median"] / ref, 3) for k, v in res.items()}, flush=True)
    out.append({"frames": frames, "rows": rows, "paths": res})
    out_path.write_text(json.dumps(out, indent=1))
