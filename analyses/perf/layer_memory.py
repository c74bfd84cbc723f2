"""Peak resident memory of one level-0 temporal layer call (issue 18).

``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536 python analyses/perf/layer_memory.py
FRAMES ROWS VARIANT``, one process per variant (as ``attnlab bench``'s memory child: the
kernel's high-water mark is reset before the call). Variants: ``fast`` (the default fused
processor), ``before`` (explicit path, full probability tensor, then mean), ``fused`` (position
sums in the blocked loop), ``peer`` (diffusers' classic ``AttnProcessor`` with a hook on
``get_attention_scores`` keeping the mean map: the attention-map-diffusers / DAAM way).
"""

import json
import re
import sys
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from attnlab.core.processor import TemporalAttnProcessor
from attnlab.core.protocol import Plan
from attnlab.tools.bench import harness, micro, unet

torch.set_num_threads(1)
frames, rows, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
attn = micro._layer(320, 5, "cpu", torch.float32)
x = torch.randn(rows, frames, 320)
site, ctx = micro._one_layer_site(frames, rows, 5, 64)
plans = {
    "before": Plan(observe=[micro._MeanObserver()]),
    "fused": Plan(observe=[micro._SumsObserver()]),
}
if variant == "fast":
    proc = AttnProcessor2_0()
elif variant == "peer":
    kept = []
    original = attn.get_attention_scores

    def get_attention_scores(q, k, mask=None):
        probs = original(q, k, mask)
        kept.append(unet._classic_maps(probs, 2, frames))
        return probs

    attn.get_attention_scores = get_attention_scores
    proc = AttnProcessor()
else:
    proc = TemporalAttnProcessor(micro._OneLayer(plans[variant], ctx), site, AttnProcessor2_0())


def status() -> dict:
    text = Path("/proc/self/status").read_text()
    return {
        k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) / 1024
        for k in ("VmRSS", "VmHWM")
    }


with torch.no_grad():
    proc(attn, x)  # warm-up
    harness.malloc_trim()
    Path("/proc/self/clear_refs").write_text("5")
    before = status()["VmRSS"]
    proc(attn, x)
    peak = status()["VmHWM"]
print(json.dumps({"frames": frames, "rows": rows, "variant": variant, "delta_mib": peak - before}))
