"""Train the model organisms (attnlab.models.organisms) on the procedural world (attnlab.data.world).

Resumable; checkpoints live outside git (default ~/.cache/attnlab-train/<run>/). The committed
weights were made with (one torch thread per process, at most two processes at a time):

    python analyses/train_organisms.py --codec                   # fit the shared PCA codec
    python analyses/train_organisms.py --image --image-steps N   # shared image phase
    python analyses/train_organisms.py --worker --video-steps M  # run twice, side by side
    python analyses/train_organisms.py --export                  # EMA weights -> the package

A ``--worker`` repeatedly takes the variant (none / sinusoidal / rope) with the fewest video
steps that no other worker holds (a file lock), trains it ``--chunk`` steps from its checkpoint,
saves, and releases it; so two workers share three variants evenly, and each variant's run is
the same as an uninterrupted one (its random states are in its checkpoint). A file
``<run>/target_steps`` overrides ``--video-steps`` while workers run; a file ``<run>/STOP`` makes
them checkpoint and exit. Stopping a process loses
at most a few minutes; rerunning the same command resumes.

Controlled fine-tunes (the direction-binding experiments of docs/notes/2026-12-organisms-direction.md) start
one variant from the committed weights (fresh optimiser) into their own run folder and save the
EMA weights outside the package, with the record of the weights it started from inside its
``training.json``; the committed organisms' fifth stage is such a fine-tune of each variant
(docs/organisms.md, *Training*):

    python analyses/train_organisms.py --finetune --variant rope --run RUN --video-steps 300 \
        [--min-snr 0] [--temporal-text] [--motions directions] --save DIR

The loss and schedule options (``--min-snr``, ``--zero-terminal-snr``, ``--t-min``,
``--noisy-share``, ``--noisy-min``, ``--probe-t``) apply to every phase, ``--reference-clips``,
``--self-inputs`` and ``--self-depth`` (sampler states as inputs: the EMA model's own first DDIM
steps from pure noise, with the references' posterior mean as target), ``--ema``, ``--lr`` and
``--warmup`` to the video phases; their defaults are the committed recipe. ``--batch``,
``--motions`` and ``--temporal-text`` apply to ``--finetune`` only (refused elsewhere). A run
resumed with other options records where each set began (``stages`` in its checkpoint and in
``training.json``). ``--export`` takes the options (and the scheduler it ships) from each
checkpoint's last stage and refuses given ones that disagree with it.
"""

import argparse
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from attnlab.data.world import DIRECTIONS, MOTIONS
from attnlab.models.organisms import (
    FRAME_PES,
    SHAPES,
    WEIGHTS,
    OrganismSpec,
    PatchCodec,
    build_pipeline,
    load_organism_unet,
    organism_scheduler,
    spec_of,
    text_encoder_and_tokenizer,
)
from attnlab.models.training import (
    TRAINABLE,
    TrainConfig,
    Trainer,
    checkpoint_config,
    codec_error,
    codec_frames,
    fit_codec,
    save_organism,
)

DEFAULT_RUN = Path.home() / ".cache" / "attnlab-train" / "world32"


def _log(path: Path):
    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


def _target(run: Path, default: int) -> int:
    f = run / "target_steps"
    return int(f.read_text().strip()) if f.exists() else default


def _options(config: dict) -> str:
    """The command-line options that give a phase's recorded ``config`` (those not at default)."""
    default = asdict(TrainConfig())
    opts, config = "", {**default, **config}  # (older records lack newer fields)
    if config["min_snr"] != default["min_snr"]:
        opts += f" --min-snr {config['min_snr'] or 0:g}"
    if config["zero_terminal_snr"]:
        opts += " --zero-terminal-snr"
    if config["t_min"]:
        opts += f" --t-min {config['t_min']}"
    if config.get("t_max") is not None:
        opts += f" --t-max {config['t_max']}"
    if config["noisy_share"]:
        opts += f" --noisy-share {config['noisy_share']:g} --noisy-min {config['noisy_min']}"
    if config["phase"] == "video" and config["reference_clips"]:
        opts += f" --reference-clips {config['reference_clips']}"
    if config.get("pixel_weight"):
        opts += f" --pixel-weight {config['pixel_weight']:g}"
    if config["phase"] == "video" and config["self_inputs"]:
        opts += f" --self-inputs {config['self_inputs']:g} --self-depth {config['self_depth']}"
    if config["phase"] == "video":
        for key in ("ema", "lr", "warmup"):
            if config[key] != default[key]:
                opts += f" --{key} {config[key]:g}"
    return opts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--codec", action="store_true", help="fit and save the shared codec")
    p.add_argument("--image", action="store_true", help="run the shared image phase")
    p.add_argument("--worker", action="store_true", help="train video phases (shared queue)")
    p.add_argument("--export", action="store_true", help="write EMA weights into the package")
    p.add_argument("--variant", choices=FRAME_PES, action="append", help="restrict to these")
    p.add_argument("--image-steps", type=int, default=200)
    p.add_argument("--video-steps", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=100, help="video steps per turn of a worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--run", default=str(DEFAULT_RUN), help="checkpoint folder (outside git)")
    p.add_argument("--out", default=str(WEIGHTS), help="weights folder")
    p.add_argument(
        "--finetune", action="store_true", help="fine-tune one --variant from its committed weights"
    )
    p.add_argument(
        "--min-snr", type=float, default=TrainConfig.min_snr, help="min-SNR gamma; 0: plain v-loss"
    )
    p.add_argument(
        "--temporal-text", action="store_true", help="give the temporal blocks the caption"
    )
    p.add_argument("--motions", choices=("all", "directions"), default="all")
    p.add_argument(
        "--zero-terminal-snr",
        action="store_true",
        help="rescaled schedule whose last step is pure noise, trailing sampling (Lin et al.)",
    )
    p.add_argument("--t-min", type=int, default=0, help="train on timesteps t-min..t-max only")
    p.add_argument(
        "--t-max",
        type=int,
        default=TrainConfig.t_max,
        help="the largest training timestep (default 999); with --noisy-share S --noisy-min 0 "
        "a share S of the pairs still covers the whole range",
    )
    p.add_argument(
        "--noisy-share",
        type=float,
        default=0.0,
        help="share of clips with timesteps drawn from --noisy-min..999 (the rest: t-min..999)",
    )
    p.add_argument("--noisy-min", type=int, default=800)
    p.add_argument(
        "--reference-clips",
        type=int,
        default=0,
        help="video phases: regress on the posterior-weighted mean of the clip and this many "
        "fresh clips of its caption (stable target field; 0: the clip alone)",
    )
    p.add_argument(
        "--lr", type=float, default=TrainConfig.lr, help="video phases: peak learning rate"
    )
    p.add_argument(
        "--ema", type=float, default=TrainConfig.ema, help="video phases: EMA decay of the weights"
    )
    p.add_argument(
        "--warmup", type=int, default=TrainConfig.warmup, help="video phases: warm-up steps"
    )
    p.add_argument(
        "--self-inputs",
        type=float,
        default=TrainConfig.self_inputs,
        help="video phases: share of pairs whose input is the EMA model's own sampler state "
        "(1..--self-depth DDIM steps from pure noise), target: the references' posterior mean",
    )
    p.add_argument("--self-depth", type=int, default=TrainConfig.self_depth)
    p.add_argument(
        "--pixel-weight",
        type=float,
        default=TrainConfig.pixel_weight,
        help="share of the loss weighted as decoded pixels weigh the latent channels",
    )
    p.add_argument(
        "--init",
        help="with --finetune: start from this saved organism folder (its unet/ and "
        "training.json) instead of the committed weights",
    )
    p.add_argument("--batch", type=int, default=TrainConfig.batch, help="clips per video step")
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument(
        "--probe-t", type=int, nargs="+", default=[300, 500, 700], help="probe timesteps"
    )
    p.add_argument("--save", help="with --finetune: write the EMA organism here (not the package)")
    p.add_argument(
        "--shape",
        choices=SHAPES,
        help="with --finetune: the family layout to reshape the committed weights into "
        "(default: their own)",
    )
    p.add_argument(
        "--temporal-conv-levels",
        type=int,
        nargs="*",
        help="with --finetune --shape modelscope: keep temporal convolutions at these levels only",
    )
    p.add_argument(
        "--train",
        choices=TRAINABLE,
        default="all",
        help="with --finetune: train all parameters or the temporal layers only (AnimateDiff)",
    )
    p.add_argument(
        "--temporal-conv-dropout",
        type=float,
        default=TrainConfig.temporal_conv_dropout,
        help="with --finetune: skip each temporal convolution with this probability per step",
    )
    p.add_argument(
        "--temporal-conv-channels",
        type=int,
        default=TrainConfig.temporal_conv_channels,
        help="with --finetune: each temporal convolution writes only its first this many "
        "channels (0: all)",
    )
    a = p.parse_args(argv)
    if not a.finetune:
        only = {"--batch": "batch", "--motions": "motions", "--temporal-text": "temporal_text"}
        only |= {"--shape": "shape", "--train": "train", "--init": "init"}
        only["--temporal-conv-levels"] = "temporal_conv_levels"
        only["--temporal-conv-dropout"] = "temporal_conv_dropout"
        only["--temporal-conv-channels"] = "temporal_conv_channels"
        if given := [k for k, dest in only.items() if getattr(a, dest) != p.get_default(dest)]:
            p.error(
                f"{', '.join(given)}: only with --finetune (its own run), not in a run's phases"
            )
    torch.set_num_threads(a.threads)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    log = _log(run / "train.log")
    spec = OrganismSpec()
    codec_dir = Path(a.out) / "codec"
    variants = a.variant or list(FRAME_PES)
    if a.codec:
        codec = fit_codec(spec)
        codec.save_pretrained(codec_dir)
        held = codec_frames(spec.size, clips=64, seed=777)  # frames it was not fitted on
        rec = {
            "psnr_db_on_fit_frames": codec_error(codec, codec_frames(spec.size)),
            "psnr_db_on_other_world_frames": codec_error(codec, held),
            "fit": "attnlab.models.training.codec_frames(32): every 4th frame of 256 world clips",
        }
        (codec_dir / "fit.json").write_text(json.dumps(rec, indent=1))
        log(f"codec: {spec.latent_channels} of {3 * spec.patch**2} components, {rec}")
    codec = PatchCodec.from_pretrained(codec_dir)
    # loss weighting and noise schedule (--image, --worker, --export; defaults: the committed recipe)
    schedule = dict(
        min_snr=a.min_snr or None,
        zero_terminal_snr=a.zero_terminal_snr,
        t_min=a.t_min,
        t_max=a.t_max,
        noisy_share=a.noisy_share,
        noisy_min=a.noisy_min,
        probe_timesteps=tuple(a.probe_t),
        reference_clips=a.reference_clips,
        ema=a.ema,
        self_inputs=a.self_inputs,
        self_depth=a.self_depth,
        pixel_weight=a.pixel_weight,
    )
    video_opt = dict(lr=a.lr, warmup=a.warmup)  # (the image phase keeps its own)
    image_ckpt = run / "image" / "ckpt.pt"
    if a.image:
        cfg = TrainConfig(
            frame_pe="none",
            phase="image",
            steps=a.image_steps,
            warmup=40,
            seed=a.seed,
            spec=spec,
            **{**schedule, "reference_clips": 0, "ema": 0.995, "self_inputs": 0.0},  # (video)
        )
        tr = Trainer(cfg, codec, image_ckpt)
        log(f"image phase from step {tr.step} to {a.image_steps}")
        tr.run(a.image_steps, log=log)
        (run / "image" / "record.json").write_text(json.dumps(tr.record(), indent=1, default=str))
    if a.worker:
        init = torch.load(image_ckpt, weights_only=False)["ema"]
        text, text_cache = text_encoder_and_tokenizer(), {}
        while True:
            target = _target(run, a.video_steps)
            steps = {}
            for pe in variants:
                ck = run / pe / "ckpt.pt"
                steps[pe] = torch.load(ck, weights_only=False)["step"] if ck.exists() else 0
            todo = sorted((s, pe) for pe, s in steps.items() if s < target)
            if not todo:
                log(f"worker {os.getpid()}: all variants at {target} steps")
                break
            if (run / "STOP").exists():
                log(f"worker {os.getpid()}: STOP file, leaving")
                break
            took = False
            for _, pe in todo:
                (run / pe).mkdir(parents=True, exist_ok=True)
                lock = open(run / pe / "lock", "w")  # noqa: SIM115 (held across the chunk)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    lock.close()
                    continue
                try:
                    cfg = TrainConfig(
                        frame_pe=pe, phase="video", seed=a.seed, spec=spec, **schedule, **video_opt
                    )
                    cfg.steps = target
                    tr = Trainer(
                        cfg,
                        codec,
                        run / pe / "ckpt.pt",
                        init=init,
                        text=text,
                        text_cache=text_cache,
                    )
                    until = min(target, tr.step + a.chunk)
                    log(f"worker {os.getpid()}: {pe} steps {tr.step} -> {until}")
                    tr.run(until, probe_every=50, stop_file=run / "STOP", log=log)
                    (run / pe / "record.json").write_text(
                        json.dumps(tr.record(), indent=1, default=str)
                    )
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
                    lock.close()
                took = True
                break
            if not took:
                time.sleep(20)
    if a.finetune:
        if not a.variant or len(a.variant) != 1:
            p.error("--finetune needs exactly one --variant")
        pe = a.variant[0]
        name = f"organism-{pe}"
        origin = Path(a.init) if a.init else WEIGHTS / name
        committed = load_organism_unet(origin / "unet")
        init = committed.state_dict()
        ft_spec = replace(spec_of(committed), temporal_text=a.temporal_text)
        if a.shape is not None:
            ft_spec = replace(ft_spec, shape=a.shape)
        if a.temporal_conv_levels is not None:
            if ft_spec.shape != "modelscope":
                p.error("--temporal-conv-levels: only with the modelscope shape")
            ft_spec = replace(ft_spec, temporal_conv_levels=tuple(a.temporal_conv_levels))
        cfg = TrainConfig(
            frame_pe=pe,
            phase="video",
            steps=a.video_steps,
            batch=a.batch,
            seed=a.seed,
            spec=ft_spec,
            motions=DIRECTIONS if a.motions == "directions" else MOTIONS,
            motion_weights=None if a.motions == "directions" else TrainConfig.motion_weights,
            trainable=a.train,
            temporal_conv_dropout=a.temporal_conv_dropout,
            temporal_conv_channels=a.temporal_conv_channels,
            **schedule,
            **video_opt,
        )
        tr = Trainer(cfg, codec, run / "ckpt.pt", init=init, text=text_encoder_and_tokenizer())
        log(f"finetune {name} from {origin}: steps {tr.step} -> {a.video_steps}")
        tr.run(a.video_steps, probe_every=a.probe_every, stop_file=run / "STOP", log=log)
        rec = tr.record()
        rec["init"] = (
            f"{a.init} (saved by an earlier --finetune), fresh optimiser"
            if a.init
            else f"committed {name} (attnlab/organism_weights), fresh optimiser"
        )
        # how the weights it started from were made (and so, for the package, the whole lineage)
        rec["init_record"] = before = json.loads((origin / "training.json").read_text())
        if "image_phase" in before:
            rec["image_phase"] = before["image_phase"]
            rec["wall_s_total_incl_image_phase"] = round(
                rec["wall_s"] + before["wall_s_total_incl_image_phase"], 1
            )
        rec["video_steps_total"] = before.get("video_steps_total", before["steps"]) + tr.step
        if "data" in before:
            rec["data"] = before["data"]
            if cfg.self_inputs:
                rec["data"] += (
                    f"; {cfg.self_inputs:g} of the pairs: the EMA model's own sampler state after "
                    f"1..{cfg.self_depth} DDIM steps from the pair's pure noise under its caption, "
                    "target the posterior mean of its reference clips given that state"
                )
        rec["command"] = "python analyses/train_organisms.py " + " ".join(argv or sys.argv[1:])
        (run / "record.json").write_text(json.dumps(rec, indent=1, default=str))
        if a.save:
            sched = organism_scheduler(a.zero_terminal_snr)
            out = save_organism(tr.ema, rec, Path(a.save), scheduler=sched)
            # and a complete diffusers folder for analyses/organisms_eval.py --model
            text = (tr.pipe.text_encoder, tr.pipe.tokenizer)
            build_pipeline(tr.ema, codec, text, sched).save_pretrained(out / "pipeline")
            log(f"saved: {out} (UNet, training.json) and {out / 'pipeline'}")
    if a.export:
        # each checkpoint's last stage, not the command line, says what its weights were trained
        # with (so the record gains no spurious stage and the scheduler is the trained one);
        # options given here (those not at the recipe's default) must agree with it
        given = {
            k: v
            for k, v in {**schedule, **video_opt, "seed": a.seed}.items()
            if v != getattr(TrainConfig, k)
        }
        flag = {"probe_timesteps": "--probe-t"}
        configs = {pe: checkpoint_config(run / pe / "ckpt.pt") for pe in variants}
        for pe, cfg in configs.items():
            if differ := [
                f"{flag.get(k, '--' + k.replace('_', '-'))} {0 if v is None else v} "
                f"(checkpoint: {getattr(cfg, k)})"
                for k, v in given.items()
                if getattr(cfg, k) != v
            ]:
                p.error(
                    f"--export takes the options of each checkpoint's last stage; {pe} was "
                    f"trained otherwise: {', '.join(differ)}; leave these out"
                )
        image_rec = json.loads((run / "image" / "record.json").read_text())
        for pe, cfg in configs.items():
            tr = Trainer(cfg, codec, run / pe / "ckpt.pt")
            tr.cfg.steps = tr.step
            rec = tr.record()
            rec["image_phase"] = image_rec
            rec["wall_s_total_incl_image_phase"] = round(rec["wall_s"] + image_rec["wall_s"], 1)
            rec["data"] = (
                "attnlab.data.world clips (no natural clips): 32 x 32, 16 frames, motions weighted "
                "right/left/up/down 0.175 each, grow/shrink/recolor 0.1 each, time-reversed "
                "pairs with opposite captions; image phase: single random frames"
            )
            if rec["config"]["reference_clips"]:
                rec["data"] += (
                    f"; video targets: posterior-weighted mean of each clip and "
                    f"{rec['config']['reference_clips']} fresh clips of its caption "
                    "(stable target field)"
                )
            video = _options(rec["config"])
            rec["command"] = (
                "python analyses/train_organisms.py --codec; "
                f"--image --image-steps {image_rec['steps']}{_options(image_rec['config'])}; "
                f"--worker --video-steps {tr.step}{video} (two workers side by side); "
                f"--export{video}"
            )
            stage_configs = tr.stage_configs()  # (the options above are the last stage's)
            for was, stage in zip(stage_configs, tr.stages[1:]):
                before = ", ".join(f"{k}={was.get(k)}" for k in stage["changed"])
                rec["command"] += f"; before video step {stage['from_step']}: {before}"
            sched = organism_scheduler(cfg.zero_terminal_snr)
            out = save_organism(tr.ema, rec, Path(a.out), scheduler=sched)
            log(f"export {pe}: {out} at step {tr.step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
