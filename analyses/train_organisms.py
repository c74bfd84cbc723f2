"""Train the model organisms (attnlab.organisms) and write their weights into the package.

The committed weights were made with (one process per variant, run side by side, 1 thread each):
    python analyses/train_organisms.py --codec
    python analyses/train_organisms.py --variant none --steps 1500 --threads 1
    python analyses/train_organisms.py --variant sinusoidal --steps 1500 --threads 1
    python analyses/train_organisms.py --variant rope --steps 1500 --threads 1
Each writes attnlab/organism_weights/organism-<variant>/{unet/, training.json}; --codec fits the
shared PCA codec first (attnlab/organism_weights/codec/). Training runs on the CPU.
"""

import argparse
import json
import sys
from pathlib import Path

from attnlab.organisms import FRAME_PES, WEIGHTS, OrganismSpec, PatchCodec
from attnlab.training import OrganismData, TrainConfig, codec_error, fit_codec, save_organism, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--codec", action="store_true", help="fit and save the shared codec")
    p.add_argument("--variant", choices=FRAME_PES, action="append", help="frame PE to train")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(WEIGHTS), help="weights folder")
    a = p.parse_args(argv)
    if not a.codec and not a.variant:
        p.error("nothing to do: give --codec and/or --variant")
    spec = OrganismSpec()
    data = OrganismData(size=spec.size)
    codec_dir = Path(a.out) / "codec"
    if a.codec:
        codec = fit_codec(data, spec)
        codec.save_pretrained(codec_dir)
        psnr = codec_error(codec, data.codec_frames())
        (codec_dir / "fit.json").write_text(json.dumps({"psnr_db_on_fit_frames": psnr}, indent=1))
        print(
            f"codec: {spec.latent_channels} of {3 * spec.patch**2} components, PSNR {psnr:.1f} dB"
        )
    codec = PatchCodec.from_pretrained(codec_dir)
    for pe in a.variant or ():
        cfg = TrainConfig(
            frame_pe=pe,
            steps=a.steps,
            batch=a.batch,
            lr=a.lr,
            seed=a.seed,
            threads=a.threads,
            spec=spec,
        )
        unet, record = train(cfg, data, codec)
        record["command"] = "python analyses/train_organisms.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        print(save_organism(unet, record, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
