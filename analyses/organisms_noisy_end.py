"""Is the caption-dependent prediction from pure noise learnable, and what stops it?

A diagnostic for the direction-binding experiments of docs/organisms-direction.md. It
fine-tunes the weights of a zero-terminal-SNR run (``--init``, a ``train_organisms.py`` checkpoint) on the
pure-noise end only (t = 999, alpha_bar = 0: the input is pure noise and the v target is -x0),
on moving clips, with one of two targets:

- ``clip``: the training clip itself (the standard v target, -x0);
- ``mean``: the mean latent of ``--clips`` clips of the same caption (a fixed set per caption,
  ``attnlab.world.scene_for_caption``): at alpha_bar = 0 the best prediction under either target
  is the same (the per-caption mean clip), but this one has almost no variance.

Every 100 steps the caption-flip probe (``attnlab.training.flip_probe`` at t = 999) reports the
v-loss of its 8 clips under the true, the direction-swapped and the empty caption; the floors
to compare with come from ``analyses/organisms_t999_floor.py`` (0.565 knowing the direction,
0.697 knowing all but the direction). Session 6 ran it from run A's weights (sinusoidal,
2,104 video steps) with one thread per arm, the two arms side by side:

    python analyses/organisms_noisy_end.py --target mean --out R1 --steps 400
    python analyses/organisms_noisy_end.py --target clip --out R2 --steps 400

``train_organisms.py --reference-clips K`` is the general form of the ``mean`` target for every
timestep (a posterior-weighted mean of the clip and K fresh clips of its caption).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnlab.data.world import DIRECTIONS, render, scene_for_caption
from attnlab.models.organisms import WEIGHTS, PatchCodec, text_encoder_and_tokenizer
from attnlab.models.training import TrainConfig, Trainer, flip_probe

RUN_A = Path.home() / ".cache" / "attnlab-train" / "zt32" / "sinusoidal" / "ckpt.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", choices=("clip", "mean"), required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", required=True, help="checkpoint and log folder")
    ap.add_argument("--init", default=str(RUN_A), help="a zero-terminal-SNR run's checkpoint")
    ap.add_argument("--variant", default="sinusoidal", help="its frame PE")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clips", type=int, default=64, help="clips per caption of the mean target")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    codec = PatchCodec.from_pretrained(WEIGHTS / "codec")
    init = torch.load(a.init, weights_only=False)["ema"]
    cfg = TrainConfig(
        frame_pe=a.variant,
        lr=a.lr,
        warmup=30,
        min_snr=None,
        zero_terminal_snr=True,
        motions=DIRECTIONS,
        motion_weights=None,
        probe_timesteps=(999,),
    )
    tr = Trainer(cfg, codec, out / "ckpt.pt", init=init, text=text_encoder_and_tokenizer())

    def encode(videos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return codec.encode(videos).latent_dist.mode()

    means: dict[str, torch.Tensor] = {}

    def mean_latent(caption: str) -> torch.Tensor:  # [C, F, h, w]
        if caption not in means:
            vids = [
                render(scene_for_caption(caption, seed=10**6 + s), 16, 32) for s in range(a.clips)
            ]
            z = encode(torch.cat([v.video for v in vids])).unflatten(0, (a.clips, 16))
            means[caption] = z.mean(0).transpose(0, 1)
        return means[caption]

    log = open(out / "log.txt", "a")  # noqa: SIM115

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    t0 = time.time()
    while tr.step < a.steps:
        pixels, captions = tr._batch()
        b, f = pixels.shape[:2]
        lat = encode(pixels.flatten(0, 1)).unflatten(0, (b, f)).transpose(1, 2)
        drop = torch.rand(b, generator=tr.gen) < cfg.uncond_prob
        drop[1::2] = drop[0::2]  # a time-reversed pair is dropped together
        used = ["" if d else c for d, c in zip(drop.tolist(), captions)]
        emb = tr.text(used)
        t = torch.randint(999, 1000, (b,), generator=tr.gen)  # (999; drawn as the runs did)
        noise = torch.randn(lat.shape, generator=tr.gen)
        noise[1::2] = noise[0::2]
        x0 = lat
        if a.target == "mean":  # (the empty caption keeps its clip)
            x0 = torch.stack([mean_latent(c) if c else lat[i] for i, c in enumerate(used)])
        for g in tr.opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (tr.step + 1) / cfg.warmup)
        loss = ((tr.unet(noise, t, emb).sample + x0) ** 2).mean()  # v = -x0 at alpha_bar = 0
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.unet.parameters(), 1.0)
        tr.opt.step()
        with torch.no_grad():
            for pe, p in zip(tr.ema.parameters(), tr.unet.parameters()):
                pe.lerp_(p, 1 - 0.98)  # a short EMA: the run is short
        tr.step += 1
        tr.losses.append(loss.item())
        if tr.step % 25 == 0:
            per = (time.time() - t0) / tr.step
            say(f"step {tr.step} loss {np.mean(tr.losses[-25:]):.4f} ({per:.2f} s/step)")
        if tr.step % 100 == 0:
            p = flip_probe(tr.ema, codec, tr.text, tr.alphas, timesteps=(999,))
            say(
                f"probe step {tr.step} at t=999: true {p['true']:.4f} swapped "
                f"{p['swapped']:.4f} empty {p['empty']:.4f} gap {p['gap']:.3f}"
            )
            tr.probes.append({"step": tr.step, **p})
            tr.save()
    tr.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
