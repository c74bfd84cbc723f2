"""Print, for every supported denoiser family, its temporal-attention sites at the paper's
resolution (320 x 512 video, latent 40 x 64), from each model's published default
architecture built on the meta device (no weights, no downloads). Feeds docs/models.md:

    python analyses/models_table.py
"""

from __future__ import annotations

import torch

import attnlab


def models() -> dict[str, torch.nn.Module]:
    import diffusers

    from attnlab.models.lavie import LaVieUNet
    from attnlab.models.videocrafter import VideoCrafter2UNet

    with torch.device("meta"):
        unet2d = diffusers.UNet2DConditionModel()  # SD 1.5 layout, as AnimateDiff's base
        return {
            "ModelScope (UNet3DConditionModel, default config)": diffusers.UNet3DConditionModel(),
            "VideoCrafter2 (VideoCrafter2UNet)": VideoCrafter2UNet(),
            "LaVie (LaVieUNet)": LaVieUNet(),
            "AnimateDiff (UNetMotionModel, SD1.5 + MotionAdapter)": diffusers.UNetMotionModel.from_unet2d(
                unet2d, diffusers.MotionAdapter(), load_weights=False
            ),
            "SVD (UNetSpatioTemporalConditionModel)": diffusers.UNetSpatioTemporalConditionModel(),
            "I2VGen-XL (I2VGenXLUNet)": diffusers.I2VGenXLUNet(),
            "Latte (LatteTransformer3DModel, patch 2)": diffusers.LatteTransformer3DModel(
                in_channels=4, out_channels=8, patch_size=2, sample_size=64
            ),
        }


def main() -> None:
    for label, model in models().items():
        table = attnlab.sites(model, latent=(40, 64))
        levels = {}
        for s in table:
            levels.setdefault(s.level, [0, s.h, s.w, set()])
            levels[s.level][0] += 1
            levels[s.level][3].add(f"{s.heads}x{s.head_dim}")
        pe = table[0].pe + (f" (max {table.max_frames})" if table.max_frames else "")
        print(f"{label}: family {table.family.name}, {len(table)} temporal layers, PE {pe}")
        for level, (n, h, w, heads) in sorted(levels.items()):
            print(f"  level {level}: {h}x{w}, {n} layers, heads x dim {', '.join(sorted(heads))}")


if __name__ == "__main__":
    main()
