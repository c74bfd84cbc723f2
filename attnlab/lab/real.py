"""Temporal attention of noised real videos (paper Sec. 3.2, Fig. 3): the "real" side.

A clip is resampled to the model's frame count (the paper: 16 frames at 8 fps), resized and
center-cropped to the model's size, scaled to [-1, 1], encoded with the pipeline's VAE (one
frame at a time), noised with the model's forward process (``alphas_cumprod``) to each requested
timestep, and passed through the denoiser while recording, with the same recorders and store
schema as synthetic runs (``source="real"``, video id, frame indices).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from attnlab.core.api import record
from attnlab.core.control import Controller
from attnlab.core.denoisers import denoiser_of
from attnlab.core.sites import family_of

REAL_FAMILIES = ("unet3d", "organism", "motion", "videocrafter2", "lavie")


def _whole(value: Any) -> bool:
    """An integer timestep: an int (not a bool), or a float or tensor holding a whole number."""
    if isinstance(value, bool):
        return False
    if torch.is_tensor(value):
        value = value.item() if value.numel() == 1 else None
    return isinstance(value, numbers.Integral) or (
        isinstance(value, float) and math.isfinite(value) and value == int(value)
    )


def load_clip(
    video: Any,
    *,
    frames: int | None = 16,
    fps: float | None = 8.0,
    start: int = 0,
    davis_root: str | os.PathLike | None = None,
    if_short: str = "error",
):
    """A :class:`attnlab.data.video.Video` from a path, a DAVIS sequence name, a sample name, a
    world clip (``"world:<seed>"`` or ``"world:<caption>"``, rendered at ``frames`` frames,
    64 x 64, from frame ``start``; ``fps`` does not apply) or a Video."""
    from attnlab.data.video import Video, read_davis, read_video
    from attnlab.data.world import is_world_spec, world_video

    if isinstance(video, Video):
        as_is = (
            (frames is None or len(video) == frames)
            and not start
            and (fps is None or math.isclose(fps, video.fps))
        )  # (else its frames are sampled: fps and start apply to a Video as to a file)
        return video if as_is else video.select(frames, fps=fps, start=start, if_short=if_short)
    ref = str(video)
    if is_world_spec(ref):
        if frames is None:  # a world clip has no length of its own: world_video's default
            clip = world_video(ref)
            return clip if not start else clip.select(len(clip) - start, fps=None, start=start)
        clip = world_video(ref, frames=start + frames)
        return clip if not start else clip.select(frames, fps=None, start=start)
    if davis_root is not None and not Path(ref).exists():
        return read_davis(davis_root, ref, frames=frames, fps=fps, start=start, if_short=if_short)
    if not Path(ref).exists():
        from attnlab.data.datasets import list_samples, read_sample

        names = {s.name for s in list_samples()}
        if ref in names:
            return read_sample(ref, frames=frames, fps=fps, start=start, if_short=if_short)
        raise FileNotFoundError(
            f"video {ref!r} not found: not a file or frame folder, not a sample clip "
            f"({', '.join(sorted(names))}), not a world clip ('world:<seed>' or "
            "'world:<caption>'), and no --davis-root given for a DAVIS sequence"
        )
    return read_video(ref, frames=frames, fps=fps, start=start, if_short=if_short)


@torch.no_grad()
def encode_video(
    pipe: Any, pixels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """VAE latents ``[1, C, F, h, w]`` of pixels ``[F, 3, H, W]`` in [-1, 1], one frame at a time."""
    vae = pipe.vae
    device, dtype = vae.device, vae.dtype
    lats = []
    for frame in pixels:
        dist = vae.encode(frame[None].to(device=device, dtype=dtype)).latent_dist
        lats.append(dist.sample(generator=generator))
    lat = torch.cat(lats) * vae.config.scaling_factor  # [F, C, h, w]
    return lat.permute(1, 0, 2, 3)[None]


def record_real(
    pipe: Any,
    video: Any,
    *,
    timesteps: Sequence[int] = (200, 400, 600),
    prompt: str = "",
    frames: int = 16,
    fps: float | None = 8.0,
    start: int = 0,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    guidance: float = 1.0,
    continue_denoising: bool = False,
    num_inference_steps: int = 25,
    store: str | os.PathLike | None = None,
    davis_root: str | os.PathLike | None = None,
    progress: bool = True,
    **record_kwargs: Any,
):
    """Record the temporal attention of a real clip noised to each of ``timesteps``.

    One run (``source="real"``) with one step per timestep, noisiest first, all from the same
    seeded noise. With ``continue_denoising=True`` each timestep starts its own run that
    continues sampling (``num_inference_steps`` over the full schedule, those <= t) so the
    maps along a real trajectory can be compared with a synthetic one. ``guidance > 1``
    batches ``[uncond, cond]`` as pipelines do. Returns the :class:`~attnlab.core.recording.Recorder`.

    Without ``continue_denoising`` each timestep ``t`` is one bare denoiser call on
    ``sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (:func:`forward_noise`, ``alphas_cumprod`` of the
    training schedule, whatever the pipeline's sampler); with it, each run starts at the first
    sampler timestep ``<= t`` (``scheduler.add_noise``) and samples on with a fresh copy of the
    pipeline's scheduler. The VAE posterior sample and ``eps`` come from one CPU generator
    seeded with ``seed``.

    Args:
        pipe (diffusers pipeline): a text-to-video pipeline with ``vae``, ``scheduler`` and
            ``encode_prompt``, whose denoiser is of a family in ``REAL_FAMILIES`` (``unet3d``,
            ``organism``, ``motion``, ``videocrafter2``, ``lavie``).
        video: a video file or frame folder, a sample clip name (``attnlab datasets list``),
            a DAVIS sequence name (with ``davis_root``), ``"world:<seed>"`` /
            ``"world:<caption>"``, or a :class:`attnlab.data.video.Video`.
        timesteps (``Sequence[int]``, default ``(200, 400, 600)``): discrete timesteps in
            ``[0, T - 1]`` (``T``: ``scheduler.config.num_train_timesteps``); duplicates are
            dropped, order does not matter (recorded noisiest first).
        prompt (``str``, default ``""``): text condition of the denoiser.
        frames (``int``, default 16): frames taken from the clip (= the run's latent frames).
        fps (``float | None``, default 8.0): rate at which frames are taken (the paper: 16
            frames at 8 fps); None: consecutive source frames.
        start (``int``, default 0): first source frame.
        height (``int | None``, default None): video height in pixels; None: the denoiser's
            ``sample_size`` times the VAE scale factor.
        width (``int | None``, default None): video width in pixels, as ``height``.
        seed (``int``, default 0): seed of the VAE sample and the noise.
        guidance (``float``, default 1.0): classifier-free guidance scale; ``> 1`` records both
            halves (``cfg`` = ``uncond``, ``cond``), else ``cond`` only.
        continue_denoising (``bool``, default False): one run per timestep, sampled onwards
            (see above), instead of one run with one step per timestep.
        num_inference_steps (``int``, default 25): sampler steps over the full schedule, with
            ``continue_denoising`` only.
        store (``str | os.PathLike | None``, default None): zarr store to stream the runs into.
        davis_root (``str | os.PathLike | None``, default None): DAVIS root folder, for
            ``video`` given as a DAVIS sequence name.
        progress (``bool``, default True): show a progress bar.
        **record_kwargs: passed to :func:`attnlab.record`: ``levels``, ``blocks``, ``names``,
            ``steps``, ``cfg``, ``reduce``, ``grid``, ``logits``, ``name`` (id of the first run
            only), ``meta``.

    Returns:
        :class:`~attnlab.core.recording.Recorder`: its ``to_xarray()`` (or
        :func:`attnlab.load` of ``store``) has ``probs`` with dims ``(run, step, layer, cfg,
        sample, query_frame, key_frame)`` (plus ``head`` or ``y, x`` by ``reduce``): one
        ``run`` with ``step`` = one per distinct timestep, noisiest first (``timestep``
        coordinate), or with ``continue_denoising`` one ``run`` per timestep with its sampler
        steps (NaN-padded to the longest); ``sample`` of size 1; ``query_frame`` /
        ``key_frame`` of size ``frames``. Runs have ``source="real"``, ``video`` (the clip id),
        ``seed``, ``prompt`` and, in ``provenance``, ``frame_indices``, ``source_fps`` and
        ``timesteps`` (or ``requested_timestep`` / ``start_timestep``).

    Raises:
        NotImplementedError: a denoiser family outside ``REAL_FAMILIES`` (image-conditioned
            models).
        UnsupportedModelError: a denoiser attnlab cannot map.
        ValueError: timesteps empty, not whole numbers or outside ``[0, T - 1]``; no
            ``height``/``width`` for a denoiser without a square ``sample_size``; with
            ``continue_denoising``, a timestep below every sampler step.
        FileNotFoundError: ``video`` is no file, frame folder, sample clip, world clip or (with
            ``davis_root``) DAVIS sequence.
        VideoError: a clip too short for ``frames`` at ``fps``.
        SelectionError, StoreError: as :func:`attnlab.record`.

    Example::

        rec = attnlab.record_real(pipe, "carphone", frames=16, fps=8,
                                  timesteps=[200, 400, 600], levels=[0], store="real.zarr")
        ds = rec.to_xarray()
        ds.timestep.values              # [[600., 400., 200.]]
        ds.probs.sizes                  # run 1, step 3, ..., query_frame 16, key_frame 16
        both = attnlab.load(["real.zarr", "synthetic.zarr"])   # compare along both.source

        rec = attnlab.record_real(pipe, "world:0", frames=16, timesteps=[600, 300],
                                  continue_denoising=True, num_inference_steps=25)
    """
    model = denoiser_of(pipe)
    fam = family_of(model)
    if fam.name not in REAL_FAMILIES:
        raise NotImplementedError(
            f"record_real supports {', '.join(REAL_FAMILIES)} denoisers (text-to-video UNets); "
            f"{type(model).__name__} needs image conditioning that attnlab does not build"
        )
    horizon = int(pipe.scheduler.config.num_train_timesteps)
    given = list(timesteps)
    if not all(_whole(t) for t in given):  # (200.9 was taken as 200, True as 1)
        raise ValueError(f"timesteps must be whole numbers (discrete timesteps); got {given}")
    ts = sorted({int(t) for t in given}, reverse=True)
    if not ts or ts[-1] < 0 or ts[0] >= horizon:
        raise ValueError(
            f"timesteps must be in [0, {horizon - 1}] (the scheduler's training horizon); got {list(timesteps)}"
        )
    from attnlab.data.video import to_model_input
    from attnlab.util.provenance import model_name

    scale = getattr(pipe, "vae_scale_factor", 8)
    size = getattr(model.config, "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if (height is None or width is None) and size is None:
        raise ValueError(
            f"the model's config ({type(model).__name__}) has no sample_size to derive the video "
            "size from: pass height= and width= (attnlab record-real: --height and --width)"
        )
    clip = load_clip(video, frames=frames, fps=fps, start=start, davis_root=davis_root)
    height = height or int(size) * scale
    width = width or int(size) * scale
    pixels = to_model_input(clip, height, width)
    device = model.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = encode_video(pipe, pixels, generator)
    noise = torch.randn(latents.shape, generator=generator).to(device=device, dtype=latents.dtype)
    cfg = guidance > 1.0
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, device, 1, cfg)
    text = torch.cat([uncond, cond]) if cfg else cond
    if fam.name == "motion":  # as AnimateDiffPipeline does: one text row per frame
        text = text.repeat_interleave(frames, dim=0)
    meta = {
        "model": model_name(pipe),
        "model_path": str(getattr(pipe, "name_or_path", "") or ""),
        "pipeline": type(pipe).__name__,
        "prompt": prompt,
        "video": clip.id,
        "video_path": str(getattr(clip, "path", "") or ""),
        "frame_indices": [int(i) for i in clip.indices],
        "source_fps": float(clip.source_fps),
        "fps": float(clip.fps),
        "frames": frames,
        "height": height,
        "width": width,
        "seed": seed,
        "guidance_scale": guidance,
        "noise": "sqrt(a_t) x0 + sqrt(1 - a_t) eps (alphas_cumprod), one seeded eps for every timestep",
    }
    controller = Controller.of(pipe)
    with record(pipe, store=store, **record_kwargs) as rec:
        if not continue_denoising:
            with controller.run(
                cfg=cfg, source="real", meta={**meta, "timesteps": ts}, timesteps=ts
            ):
                for t in tqdm(ts, desc=f"real {clip.id}", disable=not progress):
                    _predict(
                        pipe,
                        forward_noise(pipe.scheduler, latents, noise, t),
                        t,
                        text,
                        cfg,
                        guidance,
                    )
        else:
            schedule = _schedule(pipe.scheduler, num_inference_steps, device)
            for t0 in tqdm(ts, desc=f"real {clip.id}", disable=not progress):
                begin = next((i for i, t in enumerate(schedule) if t <= t0), None)
                if begin is None:
                    raise ValueError(
                        f"no sampler step at or below timestep {t0} with {num_inference_steps} steps"
                    )
                run_ts = schedule[begin:]
                # start exactly on the schedule: noise to its first timestep at or below t0
                run_meta = {**meta, "requested_timestep": t0, "start_timestep": run_ts[0]}
                # a fresh scheduler per run: multistep schedulers keep state between steps
                sched = _fresh_scheduler(pipe.scheduler)
                sched.set_timesteps(num_inference_steps, device=device)
                if hasattr(sched, "set_begin_index"):
                    sched.set_begin_index(begin)
                with controller.run(cfg=cfg, source="real", meta=run_meta, timesteps=run_ts):
                    x = sched.add_noise(latents, noise, sched.timesteps[begin : begin + 1])
                    for t in sched.timesteps[begin:]:
                        eps = _predict(
                            pipe, sched.scale_model_input(x, t), int(t), text, cfg, guidance
                        )
                        x = sched.step(eps, t, x).prev_sample
    return rec


def _fresh_scheduler(scheduler):
    """An independent copy (without attnlab's instance-level ``set_timesteps`` wrapper)."""
    sched = copy.deepcopy(scheduler)
    vars(sched).pop("set_timesteps", None)
    return sched


def _schedule(scheduler, steps: int, device) -> list[int]:
    sched = _fresh_scheduler(scheduler)
    sched.set_timesteps(steps, device=device)
    return [int(t) for t in sched.timesteps]


def forward_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """The model's forward process at discrete timestep t: sqrt(a_t) x0 + sqrt(1 - a_t) eps.

    Uses the training schedule (``alphas_cumprod``) directly, so it is the denoiser's input at t
    whatever sampler the pipeline is configured with (DDIM, Euler, DPM-Solver...).
    """
    a = scheduler.alphas_cumprod.to(device=latents.device, dtype=torch.float64)[t]
    if hasattr(scheduler, "latent_scale_at"):  # VideoCrafter2: sqrt(a_t) s(t) x0 + ... (lvdm)
        latents = latents * scheduler.latent_scale_at(t)
    return (a.sqrt() * latents.double() + (1 - a).sqrt() * noise.double()).to(latents.dtype)


def _predict(pipe, x: torch.Tensor, t: int, text, cfg: bool, guidance: float) -> torch.Tensor:
    """One denoiser call at timestep ``t`` (classifier-free guidance when ``cfg``)."""
    model = denoiser_of(pipe)
    tt = torch.tensor([t], device=x.device)
    x_in = torch.cat([x, x]) if cfg else x
    with torch.no_grad():
        out = model(x_in, tt, encoder_hidden_states=text).sample
    if cfg:
        uncond, cond = out.chunk(2)
        out = uncond + guidance * (cond - uncond)
    return out
