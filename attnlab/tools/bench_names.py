"""The names ``attnlab bench``'s parser needs (configurations, variants, peers), without
torch: ``attnlab bench --help`` answers at once. :mod:`attnlab.tools.bench` (which imports
torch) exports the same objects; the benchmark itself lives there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: the benchmark's one-line description (the first line of :mod:`attnlab.tools.bench`'s doc)
DESCRIPTION = "Benchmarks: time and peak memory of recording and editing, as ratios in one run."


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration: model shape, video size, sampler and defaults."""

    name: str
    unet: dict[str, Any]
    text_hidden: int
    height: int
    width: int
    frames: tuple[int, ...]
    steps: int
    vae: str = "tiny"  # "tiny" (8 channels) or "sd" (the SD / VideoCrafter2 VAE shape)
    repeats: int = 3
    memory_repeats: int = 1
    micro_frames: tuple[int, ...] = ()
    micro_scaling: tuple[int, ...] = ()
    micro_repeats: int = 3
    guidance: float = 7.5


_MODELSCOPE = dict(
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    layers_per_block=2,
    attention_head_dim=64,
    norm_num_groups=32,
)

CONFIGS: dict[str, BenchConfig] = {
    # the test suite's tiny model: runs in CI in seconds, numbers meaningless
    "tiny": BenchConfig(
        "tiny",
        dict(
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=4,
        ),
        text_hidden=32,
        height=64,
        width=48,
        frames=(8,),
        steps=2,
        repeats=2,
    ),
    # ModelScope layer structure (2 layers per block, head dim 64, 34 temporal layers) at
    # 0.4x width and a 64x96 video: 12% of the UNet's FLOPs are temporal attention (VC2 at
    # 320x512: 10%), 18% of its CPU time
    "mid": BenchConfig(
        "mid",
        dict(_MODELSCOPE, block_out_channels=(128, 256, 512, 512), cross_attention_dim=64),
        text_hidden=64,
        height=64,
        width=96,
        frames=(16, 48),
        steps=4,
        repeats=3,
        micro_frames=(16, 48),
        micro_scaling=(16, 32, 48, 64, 128),
    ),
    # VideoCrafter2 / ModelScope full size; needs a GPU
    "vc2": BenchConfig(
        "vc2",
        dict(_MODELSCOPE, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024),
        text_hidden=1024,
        height=320,
        width=512,
        frames=(16, 48, 128),
        steps=25,
        vae="sd",
        repeats=5,
        memory_repeats=3,
        micro_frames=(16, 48, 128),
        micro_scaling=(16, 32, 48, 64, 128),
        micro_repeats=10,
    ),
}

VARIANTS = ("plain", "installed", "record", "tar", "identity", "ones")
#: how people get temporal attention maps without attnlab (same layers, steps and reduction as
#: ``record``), and attnlab's recorder keeping the maps in RAM instead of a store
PEERS = ("record-ram", "peer-ram", "peer-nnsight")
ALL_VARIANTS = VARIANTS + PEERS
