"""The context managers of the public API: ``record``, ``edit`` and ``hooks``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from attnlab.core.control import Controller
from attnlab.core.protocol import CallContext, Client, Observer
from attnlab.core.recording import Recorder
from attnlab.core.selection import Layers, Steps
from attnlab.core.sites import Site


@contextlib.contextmanager
def record(
    pipe: Any,
    *,
    levels: int | list[int] | None = None,
    blocks: str | list[str] | None = None,
    names: str | list[str] | None = None,
    steps: Any = None,
    cfg: str = "both",
    reduce: str = "mean",
    grid: tuple[int, int] = (4, 4),
    logits: bool = False,
    store: str | os.PathLike | None = None,
    name: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Iterator[Recorder]:
    """Record temporal attention of every run of ``pipe`` (pipeline or denoiser) in the block.

    Layers are chosen by ``levels`` (0 = full latent resolution), ``blocks`` ("in", "down",
    "mid", "up") and ``names`` (regexes on module paths); ``steps`` by sampler-step index
    (int, list, range or slice; None = all); ``cfg`` by batch half ("both", "cond", "uncond").
    ``reduce`` is "mean" (over space and heads), "head" or "spatial" (a ``grid`` of positions).
    ``logits=True`` also records ``q k^T / sqrt(d)`` before any edit. With ``store=path`` each
    step is streamed to that zarr store and not kept in memory.

    Every pipeline call inside the block is one run (one entry along ``run``); bare denoiser
    calls (``record(pipe.unet)``) inside the block form one run, one step per call, unless
    ``attnlab.Controller.of(pipe).run(...)`` delimits runs. All selections (``levels``,
    ``blocks``, ``names``) must hold at once.

    Args:
        pipe (diffusers pipeline or ``torch.nn.Module``): a video pipeline (with ``.unet`` or
            ``.transformer``; every denoiser component, e.g. ``.transformer_2``, is recorded)
            or the denoiser module itself.
        levels (``int | list[int] | None``, default None): resolution levels to record
            (0 = full latent resolution; ``attnlab.sites(pipe).levels`` lists them). None: all.
        blocks (``str | list[str] | None``, default None): blocks among ``"in"``, ``"down"``,
            ``"mid"``, ``"up"``, ``"transformer"``. None: all.
        names (``str | list[str] | None``, default None): regular expressions searched in the
            module paths (e.g. ``"up_blocks"``, ``"attn1$"``); a layer matches if any does.
            None: all.
        steps (default None): sampler-step indices, 0 = the first (noisiest) denoiser call: an
            int, a list or ``range`` of ints, a ``slice`` (negative indices count from the end
            of the run), or None / ``"all"`` for every step.
        cfg (``str``, default ``"both"``): ``"both"``, ``"cond"`` or ``"uncond"``; runs without
            classifier-free guidance have only ``"cond"``.
        reduce (``str``, default ``"mean"``): ``"mean"`` (over spatial positions and heads),
            ``"head"`` (over positions, per head; NaN-padded to the largest head count) or
            ``"spatial"`` (over heads, at a ``grid`` of positions).
        grid (``tuple[int, int]``, default ``(4, 4)``): ``(y, x)`` positions kept by
            ``reduce="spatial"`` (ignored otherwise); position ``i`` of ``g`` is feature row
            ``floor((i + 0.5) * h / g)``.
        logits (``bool``, default False): also record the ``logits`` variable.
        store (``str | os.PathLike | None``, default None): zarr v3 store to stream every step
            into (created if absent; an existing store must have the same reduction, grid and
            variables). None: keep the maps in memory.
        name (``str | None``, default None): run id of the first run recorded in the block
            (later runs get generated ids, UTC time plus random hex).
        meta (``dict | None``, default None): extra provenance attributes written into every
            run; they override the run's provenance of the same name (``prompt``, ``model``,
            ...), not what the recorder sets (``denoiser``, ``family``, ``pe``, ``edits``,
            ``recorder``, versions).

    Returns:
        A context manager whose ``as`` target is the :class:`~attnlab.core.recording.Recorder`.
        After the block, ``rec.to_xarray()`` gives an :class:`xarray.Dataset` with ``probs``
        (and ``logits``), float32, dims ``(run, step, layer, cfg, sample, query_frame,
        key_frame)``; ``reduce="head"`` adds ``head`` before ``query_frame``,
        ``reduce="spatial"`` adds ``y, x`` after ``key_frame`` (``grid`` sizes). ``cfg`` has
        the recorded halves in batch order (``uncond``, ``cond``); ``sample`` has
        ``num_videos_per_prompt`` x prompts entries; ``query_frame``/``key_frame`` the run's
        latent frame count ``F`` (rows of ``probs`` sum to 1). ``ran`` (bool, ``(run, step,
        layer, cfg)``) marks the cells whose attention ran and was recorded (False: a gap, NaN
        maps); ``expert`` ``(run, step)`` names the denoiser of each step (Wan 2.2 A14B:
        ``"transformer"`` / ``"transformer_2"``: every denoiser of the pipeline is recorded).
        Coordinates and attributes: ``docs/store-schema.md``.

    Raises:
        SelectionError: on entering the block, for an unknown ``reduce``, a bad ``grid``, a
            ``cfg`` not in ``("both", "cond", "uncond")``, or ``levels``/``blocks``/``names``
            that match no temporal layer of the model; at a run's start, for ``cfg="uncond"``
            on a run without guidance or a step index outside the run.
        StoreError: ``store`` is not an attnlab store, has another layout or schema, or already
            holds a complete run named ``name``.
        UnsupportedModelError: the model has no temporal attention attnlab knows of.
        UnsupportedConfigurationError: a configuration attnlab would record incompletely or
            wrongly (``docs/reliability.md``), e.g. a pipeline whose denoisers have different
            site tables.

    Example::

        with attnlab.record(pipe, levels=[0], cfg="cond", logits=True) as rec:
            pipe("a polar bear playing drums", num_frames=16, num_inference_steps=25,
                 generator=torch.Generator().manual_seed(0))
        ds = rec.to_xarray()
        ds.probs.dims    # ('run', 'step', 'layer', 'cfg', 'sample', 'query_frame', 'key_frame')
        mean_map = ds.probs.mean(["step", "layer", "sample"]).sel(cfg="cond").isel(run=0)  # 16 x 16

        with attnlab.record(pipe, levels=[0, 1], reduce="head", store="run.zarr", name="bear"):
            pipe("a polar bear playing drums", num_frames=16)
        ds = attnlab.load("run.zarr")   # probs: (run, step, layer, cfg, sample, head, query_frame, key_frame)
    """
    recorder = Recorder(
        layers=Layers.make(levels, blocks, names),
        steps=Steps.make(steps),
        cfg=cfg,
        reduce=reduce,
        grid=grid,
        logits=logits,
        store=store,
        name=name,
        meta=meta,
    )
    with Controller.of(pipe).attached(recorder):
        yield recorder


@contextlib.contextmanager
def edit(pipe: Any, *edits: Client) -> Iterator[tuple[Client, ...]]:
    """Apply edits to every run of ``pipe`` inside the block; restore the model on exit.

    Order: bias edits (e.g. TAR, Transfer) act on logits before the softmax, in the order
    given; replacement edits (e.g. Replace) act on probabilities after it, in the order given
    (a later replacement sees the earlier one's output).

    Every edit's spec is written into the runs recorded meanwhile (``edits`` coordinate after
    :func:`attnlab.load`; ``attnlab.edits.from_json`` rebuilds them). Each edit keeps its own
    targeting (``levels``, ``blocks``, ``names``, ``steps``, ``t_min``, ``t_max``, ``cfg``).

    Args:
        pipe (diffusers pipeline or ``torch.nn.Module``): a video pipeline (with ``.unet`` or
            ``.transformer``) or the denoiser module itself.
        *edits (:class:`~attnlab.edits.base.Edit`): one or more edits, e.g. ``TAR("64D1")``,
            ``Transfer(...)``, ``Replace("identity")``, ``Synopsis([...])``. An instance can be
            active in one block at a time.

    Returns:
        A context manager whose ``as`` target is the tuple of ``edits``, in the order given.
        The model is edited only inside the block and restored on exit (also after an
        exception).

    Raises:
        ValueError: on entering the block, when no edit is given, or when an edit instance is
            already active in another attnlab block.
        TypeError: on entering the block, for an argument that is not an attnlab edit.
        EditError: from an edit that does not fit the model (e.g. ``Synopsis`` with text key
            states on a bare denoiser) or, during a run, the run (e.g. a ``Replace`` matrix
            whose N is not the frame count).
        SelectionError: an edit's layer selection matches no temporal layer of the model.

    Example::

        from attnlab import TAR, Replace
        with attnlab.edit(pipe, TAR("64D1")):                 # the paper's default TAR
            video = pipe("a polar bear playing drums", num_frames=48).frames
        with attnlab.edit(pipe, TAR("64D1"), Replace("identity", levels=[1])) as (tar, probe):
            with attnlab.record(pipe, levels=[0, 1]) as rec:  # records the edited maps
                pipe("a polar bear playing drums", num_frames=16)
        rec.to_xarray().edits.values   # JSON list of both specs, one string per run
    """
    if not edits:
        raise ValueError("attnlab.edit needs at least one edit (e.g. attnlab.TAR())")
    controller = Controller.of(pipe)
    with contextlib.ExitStack() as stack:
        for e in edits:
            if not isinstance(e, Client):
                raise TypeError(f"not an attnlab edit: {e!r}")
            stack.enter_context(controller.attached(e))
        yield edits


class _Explicit(Observer):
    """Routes every temporal layer through the whole-tensor explicit path, so the hook points
    fire whatever the grad mode and whoever intercepts them (torch hooks, nnsight)."""

    hook_points = True

    def wants(self, site: Site, ctx: CallContext) -> bool:
        return True


@contextlib.contextmanager
def hooks(pipe: Any) -> Iterator[Controller]:
    """Attach ``hook_logits``/``hook_probs`` to every temporal layer and keep them firing.

    Inside the block, torch hooks or an nnsight trace (create ``NNsight(pipe.unet)`` inside
    it) can read and set ``<layer>.hook_logits`` and ``<layer>.hook_probs``.

    Both hook points are identity modules on ``[B*h*w, heads, F, F]`` tensors (``B``: the
    denoiser's batch, both CFG halves; ``h x w``: the layer's feature size; ``F``: latent
    frames): ``hook_logits`` sees ``q k^T / sqrt(d)`` (plus the model's own position terms)
    before the bias edits, ``hook_probs`` the probabilities after the replacement edits. What
    a hook returns replaces the tensor. Every temporal layer takes the whole-tensor explicit
    path inside the block, with autograd on or under ``torch.no_grad()``; outputs equal the
    default path's up to float rounding.

    Joint (full-3D) layers have ``<layer>.hook_frame_probs`` instead: the layer call's
    frame-level map ``[B, heads, F, F]`` (per sample and head, each query frame's attention mass
    per key frame, after every edit); a map set there (returned by a hook or assigned under
    nnsight) replaces the frame marginal of the rows it changes as ``Replace`` with that target
    does (``docs/attention-3d.md``).

    Args:
        pipe (diffusers pipeline or ``torch.nn.Module``): a video pipeline (with ``.unet`` or
            ``.transformer``) or the denoiser module itself.

    Returns:
        A context manager whose ``as`` target is the model's
        :class:`~attnlab.core.control.Controller` (``attnlab.Controller.of(pipe)``).

    Raises:
        UnsupportedModelError: the model has no temporal attention attnlab knows of.

    Example::

        name = attnlab.sites(pipe).names[0]
        attn = dict(pipe.unet.named_modules())[name]
        seen = {}
        with attnlab.hooks(pipe):
            h = attn.hook_probs.register_forward_hook(
                lambda module, args, out: seen.setdefault("probs", out.detach()))
            pipe("a polar bear playing drums", num_frames=16, num_inference_steps=2)
            h.remove()
        seen["probs"].shape    # [B*h*w, heads, 16, 16] of the first call

        from nnsight import NNsight
        with attnlab.hooks(pipe):
            model = NNsight(pipe.unet)                 # create it inside the block
            with model.trace(latents, t, encoder_hidden_states=text):
                attn = model.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
                probs = attn.hook_probs.output.save()
    """
    controller = Controller.of(pipe)
    with controller.attached(_Explicit()):
        yield controller
