"""Recorders: read temporal attention maps during runs, reduce them on the fly, keep or stream them.

Reductions (``reduce=``):

* ``"mean"``: mean over spatial positions and heads (the paper's figures) -> ``[F, F]`` per layer;
* ``"head"``: mean over spatial positions, per head -> ``[head, F, F]`` (NaN-padded to the
  largest head count among the recorded layers);
* ``"spatial"``: mean over heads at a ``grid`` of spatial positions -> ``[F, F, y, x]``; position
  ``i`` of ``g`` samples feature row ``floor((i + 0.5) * h / g)`` of the layer.

Maps are reduced on the model's device and copied to the host once per step. With
``store=...`` each step is appended to the zarr store and dropped from memory.

Every selected step of a run is written, with the denoiser that ran it (``expert``) and a
``ran`` mask ``(step, layer, cfg)``: whether each layer's attention ran in that step and CFG
half and was recorded. A cell that did not run is NaN in the maps and False in ``ran`` (a
marked gap), and a selected step in which no selected layer ran is still written, all False.
Temporal attention run on windows of frames (AnimateDiff's FreeNoise) is recorded per window,
along a ``window`` dimension after ``layer`` (the window's first frame).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from attnlab._version import __version__
from attnlab.core import dims as D
from attnlab.core.protocol import CallContext, Observer, RunInfo, Stage, split_batch
from attnlab.core.selection import Layers, SelectionError, Steps, cfg_halves, check_cfg
from attnlab.core.sites import Site
from attnlab.core.store import (
    WINDOW,
    RunWriter,
    abandon_claim,
    claim_run,
    concat_runs,
    new_run_id,
    prepare_store,
    write_run,
)

if TYPE_CHECKING:
    from attnlab.core.control import Controller

REDUCTIONS = ("mean", "head", "spatial")


@dataclass
class _Run:
    id: str
    info: RunInfo
    attrs: dict[str, Any]
    steps: set[int] | None = None
    halves: list[int] = field(default_factory=list)
    cfg_names: list[str] = field(default_factory=list)
    writer: RunWriter | None = None
    # the store's reservation of the run (claim_run), until its writer takes it over
    mark: dict[str, Any] | None = None
    chunks: list[xr.Dataset] = field(default_factory=list)
    complete: bool = False
    # the `expert` labels of the run (fixed up front: the store codes them per run)
    experts: list[str] = field(default_factory=list)
    # windowed temporal attention (AnimateDiff's FreeNoise): the first frame of each window and
    # the window length, fixed by the first recorded step (None: not windowed)
    windows: list[int] | None = None
    window_frames: int | None = None


class Recorder(Observer):
    """Records the selected layers/steps/CFG halves of every run while attached.

    Use through :func:`attnlab.record`. ``to_xarray()`` gives all recorded runs as one Dataset
    (``run`` dimension); ``save(path)`` writes them to a zarr store.

    Only completed runs are returned or saved (a run that raised is left out; streamed to a
    store, it stays there marked ``complete: false``). One recorder records any number of runs;
    an instance can be attached in one block at a time.

    Args:
        layers (:class:`~attnlab.core.selection.Layers`): which temporal layers
            (``Layers.make(levels, blocks, names)``), resolved against the model on attach.
        steps (:class:`~attnlab.core.selection.Steps`): which sampler steps
            (``Steps.make(steps)``).
        cfg (``str``, default ``"both"``): ``"both"``, ``"cond"`` or ``"uncond"``.
        reduce (``str``, default ``"mean"``): ``"mean"``, ``"head"`` or ``"spatial"`` (see
            the module docstring).
        grid (``tuple[int, int]``, default ``(4, 4)``): ``(y, x)`` positions of
            ``reduce="spatial"``.
        logits (``bool``, default False): also record ``logits``.
        store (``str | os.PathLike | None``, default None): zarr store to stream each step to.
        name (``str | None``, default None): run id of the first run (later runs: generated).
        meta (``dict | None``, default None): extra provenance attributes of every run.

    Attributes:
        layout (``dict``): ``{"reduction", "grid", "variables"}`` as written to the store root.
        sites (``list[Site]``): the recorded layers (set on attach), in the ``layer`` order.
        runs: every run seen (ids in ``r.id``, ``r.complete``).

    Raises:
        SelectionError: ``reduce`` not in ``("mean", "head", "spatial")``, a ``grid`` that is
            not two positive ints (with ``reduce="spatial"``) or ``cfg`` not in
            ``("both", "cond", "uncond")``.

    Example::

        with attnlab.record(pipe, levels=[0], steps=range(0, 14)) as rec:   # a Recorder
            pipe("a polar bear playing drums", num_frames=16, num_inference_steps=25)
            pipe("a peony blooming", num_frames=16, num_inference_steps=25)
        ds = rec.to_xarray()           # run: 2, step: 14, layer: level-0 layers, cfg: 2, ...
        [s.name for s in rec.sites]    # == list(ds.layer.values)
        ids = rec.save("run.zarr")     # the two run ids
    """

    stage = Stage.OBSERVE

    def __init__(
        self,
        *,
        layers: Layers,
        steps: Steps,
        cfg: str = "both",
        reduce: str = "mean",
        grid: tuple[int, int] = (4, 4),
        logits: bool = False,
        store: str | os.PathLike | None = None,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
    ):
        if reduce not in REDUCTIONS:
            raise SelectionError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
        if reduce == "spatial" and (len(grid) != 2 or min(grid) < 1):
            raise SelectionError(f"grid must be two positive ints (y, x); got {grid!r}")
        self.layers = layers
        self.steps = steps
        self.cfg = check_cfg(cfg)
        self.reduce = reduce
        self.grid = tuple(int(g) for g in grid)
        self.logits = bool(logits)
        self.store = Path(store) if store is not None else None
        self.name = name
        self.meta = dict(meta or {})
        self.runs: list[_Run] = []
        self._run: _Run | None = None
        # variable -> window (None: not windowed) -> [layer, cfg, ...] maps of the step
        self._buffer: dict[str, dict[int | None, torch.Tensor]] | None = None
        # the first recorded call of the step being buffered, and per window which of its
        # (layer, cfg) cells ran
        self._buffer_ctx: CallContext | None = None
        self._last_ctx: CallContext | None = None  # the run's latest denoiser call
        self._ran: dict[int | None, np.ndarray] | None = None
        self._window_frames: int | None = None

    # ---- settings written to the store root ---------------------------------------------
    @property
    def layout(self) -> dict[str, Any]:
        variables = [D.PROBS, D.LOGITS] if self.logits else [D.PROBS]
        if getattr(self, "_text_mass", False):  # joint attention with text in the sequence
            variables.append(D.TEXT_MASS)
        return {
            "reduction": self.reduce,
            "grid": list(self.grid) if self.reduce == "spatial" else None,
            "variables": variables,
        }

    # ---- client protocol ---------------------------------------------------------------
    def bind(self, controller: Controller) -> None:
        self.controller = controller
        self.sites: list[Site] = self.layers.resolve(controller.table)
        self.index = {s.name: i for i, s in enumerate(self.sites)}
        self.max_heads = max(s.heads for s in self.sites)
        table = controller.table
        self._text_mass = table.text != "cross"
        if self.store is not None:
            self._created_store = not Path(self.store).exists()
            prepare_store(self.store, self.layout)

    def release(self) -> None:
        """A store this recorder created and never wrote a run into is removed: a failure
        before the first step leaves no empty store skeleton behind."""
        if self.store is None or not getattr(self, "_created_store", False):
            return
        from attnlab.core.store import RUNS_GROUP

        runs = Path(self.store) / RUNS_GROUP
        # any run folder, whatever state it is in, keeps the store
        if Path(self.store).exists() and not (
            runs.is_dir() and any(child.is_dir() for child in runs.iterdir())
        ):
            shutil.rmtree(self.store, ignore_errors=True)

    def on_run_start(self, run: RunInfo) -> None:
        halves = ["uncond", "cond"] if run.cfg else ["cond"]
        chosen = cfg_halves(self.cfg, halves)
        if not chosen:
            raise SelectionError(
                f"cfg={self.cfg!r} but this run has no classifier-free guidance batch"
            )
        table = self.controller.table
        run_id = (self.name if len(self.runs) == 0 and self.name else None) or new_run_id()
        edits = [c.spec() for c in self.controller.clients if c.spec() is not None]
        attrs = {
            "run_id": run_id,
            "source": run.source,
            **run.meta,
            **self.meta,
            "denoiser": table.model_class,
            "family": table.family.name,
            "pe": self.sites[0].pe,
            "pe_max_len": self.sites[0].pe_max_len,
            "edits": edits,
            "experts": list(run.experts),
            "recorder": {
                "layers": self.layers.to_dict(),
                "steps": self.steps.to_json(),
                "cfg": self.cfg,
                **self.layout,
            },
            "attnlab_version": __version__,
            "torch_version": torch.__version__,
        }
        # before any work: refuse a complete run of that name, or one being written now
        mark = claim_run(self.store, run_id) if self.store is not None else None
        self._run = _Run(
            run_id,
            run,
            attrs,
            halves=chosen,
            cfg_names=[halves[i] for i in chosen],
            experts=list(run.experts),
            mark=mark,
        )
        self.runs.append(self._run)
        if run.timesteps is not None:
            self.on_steps_known(run)

    def on_steps_known(self, run: RunInfo) -> None:
        if self._run is not None:
            self._run.steps = self.steps.resolve(run.num_steps)
            self._run.attrs["num_steps"] = run.num_steps

    def on_call(self, ctx: CallContext) -> None:
        if self._buffer_ctx is None or self._buffer_ctx.step != ctx.step:
            self._flush()  # (the CFG halves of one step may come as separate calls)
        run = self._run
        self._last_ctx = ctx
        if run is not None and run.writer is None and "latent_height" not in run.attrs:
            # the size actually generated (a pipeline call without height/width uses the
            # model's default): latent size times the VAE's scale factor
            lh, lw = ctx.latent
            run.attrs["latent_height"], run.attrs["latent_width"] = lh, lw
            pipe = self.controller.pipe
            scale = getattr(pipe, "vae_scale_factor", None)
            if scale:
                for key, n in (("height", lh), ("width", lw)):
                    if run.attrs.get(key) is None:
                        run.attrs[key] = int(n * scale)
        if run is not None and run.steps is None and run.info.timesteps is None:
            run.steps = self.steps.resolve(None)
        if (
            self._buffer_ctx is None
            and run is not None
            and (run.steps is None or ctx.step in run.steps)
        ):
            # a selected step: written at its end even if none of its attention runs (a gap)
            self._buffer_ctx = ctx
            self._ran = {}

    def wants(self, site: Site, ctx: CallContext) -> bool:
        run = self._run
        return (
            run is not None
            and site.name in self.index
            and (run.steps is None or ctx.step in run.steps)
            and any(h in run.cfg_names for h in ctx.halves())
        )

    def observe(
        self,
        site: Site,
        ctx: CallContext,
        logits: torch.Tensor | None,
        probs: torch.Tensor,
        text_mass: torch.Tensor | None = None,
    ) -> None:
        """Reduce one layer call's maps ``[B*h*w, heads, F, F]`` into this step's buffer;
        ``text_mass`` (joint attention): ``[B*h*w, heads, F, 1]``."""
        self._start_buffer(ctx)
        self._put(D.PROBS, site, ctx, probs)
        if self.logits:
            if logits is None:
                raise RuntimeError(f"{site.name}: the recorder asked for logits but got none")
            self._put(D.LOGITS, site, ctx, logits)
        if text_mass is not None and self._text_mass:
            self._put(D.TEXT_MASS, site, ctx, text_mass)

    def sums_only(self, site: Site, ctx: CallContext) -> bool:
        """The ``mean`` and ``head`` reductions need only the maps summed over positions."""
        return self.reduce != "spatial"

    def observe_sums(
        self,
        site: Site,
        ctx: CallContext,
        logits: torch.Tensor | None,
        probs: torch.Tensor,
        positions: int,
    ) -> None:
        """Like :meth:`observe`, from ``[batch, heads, F, F]`` sums over ``positions`` rows each
        (accumulated inside the processor's blocked loop: no full probability tensor)."""
        self._start_buffer(ctx)
        self._put_position_mean(D.PROBS, site, ctx, probs / positions)
        if self.logits:
            assert logits is not None
            self._put_position_mean(D.LOGITS, site, ctx, logits / positions)

    def on_run_end(self, run: RunInfo, ok: bool) -> None:
        current = self._run
        if current is None or current.info is not run:
            return
        extra: dict[str, Any] = {}
        try:
            if ok:
                self._flush()
                extra.update(self._steps_never_run(current))
            else:
                self._buffer, self._buffer_ctx, self._ran = None, None, None
        except BaseException:
            ok = False  # the last step did not reach the store: the run is not complete
            raise
        finally:
            self._run, self._last_ctx = None, None
            current.complete = ok
            extra["frames"] = current.attrs.get("frames")  # (known once a step was written)
            if "num_steps" in current.attrs:  # (FreeInit's passes add steps after the first write)
                extra["num_steps"] = current.attrs["num_steps"]
            if current.writer is not None:
                current.writer.finish(ok, extra)
            elif current.mark is not None and self.store is not None:
                abandon_claim(self.store, current.id, current.mark)

    def _steps_never_run(self, run: _Run) -> dict[str, Any]:
        """A pipeline that ended its loop early without an error (a callback setting
        ``pipe._interrupt``): the selected steps after its last denoiser call are written as
        marked gaps (``ran`` False, NaN; their scheduled timestep, the last call's denoiser),
        and the run says how many steps ran (``steps_run``)."""
        last, timesteps = self._last_ctx, run.info.timesteps
        if last is None or timesteps is None or last.step + 1 >= len(timesteps):
            return {}
        selected = run.steps if run.steps is not None else range(len(timesteps))
        for step in [s for s in selected if last.step < s < len(timesteps)]:
            ctx = dataclasses.replace(last, step=step, timestep=float(timesteps[step]))
            ctx.expert = last.expert  # (not an init field: replace() leaves it at its default)
            self._buffer, self._buffer_ctx, self._ran = {}, ctx, {}
            self._flush()
        run.attrs["steps_run"] = last.step + 1
        return {"steps_run": last.step + 1}

    # ---- reduction -----------------------------------------------------------------------
    def _start_buffer(self, ctx: CallContext) -> None:
        if self._buffer is None:
            self._buffer = {}
        if self._buffer_ctx is None or self._buffer_ctx.step != ctx.step:
            # (a client calling observe outside on_call's bookkeeping: start the step here)
            assert self._run is not None
            self._buffer_ctx = ctx
            self._ran = {}

    def _slots(self, ctx: CallContext) -> tuple[int, list[int], list[int]]:
        """(halves in this call's batch, which of them are recorded, their recorded slots):
        a call carries both CFG halves, or one per call (separate-call CFG)."""
        assert self._run is not None
        names = ctx.halves()
        present = [i for i, h in enumerate(names) if h in self._run.cfg_names]
        return len(names), present, [self._run.cfg_names.index(names[i]) for i in present]

    def _put(self, var: str, site: Site, ctx: CallContext, x: torch.Tensor) -> None:
        assert self._buffer is not None and self._run is not None
        _, present, slots = self._slots(ctx)
        x = split_batch(x, ctx, site)[present]  # [halves, n, h*w, heads, F, F]
        x = x.detach().float()
        if self.reduce == "mean":
            r = x.mean(dim=(2, 3))
        elif self.reduce == "head":
            r = self._pad_heads(x.mean(dim=2))
        else:
            h, w = self.controller.table.level_size(site.level, ctx.latent)
            gy, gx = self.grid
            ys = torch.tensor([int((i + 0.5) * h / gy) for i in range(gy)], device=x.device)
            xs = torch.tensor([int((i + 0.5) * w / gx) for i in range(gx)], device=x.device)
            x = x.view(*x.shape[:2], h, w, *x.shape[3:]).mean(dim=4)  # [halves, n, h, w, F, F]
            r = x.index_select(2, ys).index_select(3, xs).permute(0, 1, 4, 5, 2, 3)
        if var == D.TEXT_MASS:  # [.., F, 1(, y, x)]: drop the key axis
            r = r.squeeze(-3 if self.reduce == "spatial" else -1)
        self._keep(var, site, ctx, r, slots)

    def _put_position_mean(self, var: str, site: Site, ctx: CallContext, x: torch.Tensor) -> None:
        """``x``: ``[batch, heads, F, F]``, already averaged over spatial positions."""
        assert self._buffer is not None and self._run is not None
        halves, present, slots = self._slots(ctx)
        x = x.detach().float().view(halves, ctx.batch // halves, *x.shape[1:])[present]
        r = x.mean(dim=2) if self.reduce == "mean" else self._pad_heads(x)
        self._keep(var, site, ctx, r, slots)

    def _pad_heads(self, r: torch.Tensor) -> torch.Tensor:
        """``[halves, n, heads, F, F]`` NaN-padded to the largest head count recorded."""
        if r.shape[2] < self.max_heads:
            pad = r.new_full(
                (*r.shape[:2], self.max_heads - r.shape[2], *r.shape[3:]), float("nan")
            )
            r = torch.cat([r, pad], dim=2)
        return r

    def _keep(
        self, var: str, site: Site, ctx: CallContext, r: torch.Tensor, slots: list[int]
    ) -> None:
        assert self._buffer is not None and self._run is not None
        window = ctx.window
        bufs = self._buffer.setdefault(var, {})
        buf = bufs.get(window)
        if buf is None:
            shape = (len(self.sites), len(self._run.cfg_names), *r.shape[1:])
            buf = bufs[window] = r.new_full(shape, float("nan"))
        buf[self.index[site.name], slots] = r
        if window is not None:
            self._window_frames = ctx.frames
        if var == D.PROBS and self._ran is not None:
            ran = self._ran.get(window)
            if ran is None:
                ran = self._ran[window] = np.zeros(
                    (len(self.sites), len(self._run.cfg_names)), dtype=bool
                )
            ran[self.index[site.name], slots] = True

    def _flush(self) -> None:
        """Move the finished step's maps to the host, then to the store or the in-memory list."""
        buffer, ctx, ran = self._buffer, self._buffer_ctx, self._ran
        self._buffer, self._buffer_ctx, self._ran = None, None, None
        run = self._run
        if run is None or ctx is None or ran is None:
            return
        arrays, cells = self._by_window(buffer or {}, ran, run, ctx.step)
        ds = self._step_dataset(arrays, cells, ctx, run)
        if self.store is not None:
            if run.writer is None:
                run.writer = RunWriter(
                    self.store, run.id, run.attrs, labels={D.EXPERT: run.experts}, mark=run.mark
                )
            run.writer.append(ds)
        else:
            run.chunks.append(ds)

    def _by_window(
        self,
        buffer: dict[str, dict[int | None, torch.Tensor]],
        ran: dict[int | None, np.ndarray],
        run: _Run,
        step: int,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One step's maps on the host (windowed runs: stacked along ``window`` after
        ``layer``) and its ``ran`` mask ``[layer, cfg]``: a windowed cell ran when every
        window of it ran."""
        empty = np.zeros((len(self.sites), len(run.cfg_names)), dtype=bool)
        seen = set(ran) | {w for maps in buffer.values() for w in maps}
        windows = sorted(w for w in seen if w is not None)
        if windows and None in seen:
            raise RuntimeError(
                f"step {step}: some recorded layers attended windows of frames (FreeNoise) and "
                "others all frames; record the windowed layers and the others in separate runs"
            )
        if windows and run.windows is None:
            if run.chunks or run.writer is not None:
                raise RuntimeError(
                    f"step {step}: the layers attended windows of frames (FreeNoise) from this "
                    "step on, not in the steps recorded before; attnlab records a run with one "
                    "window layout"
                )
            run.windows, run.window_frames = windows, self._window_frames
            run.attrs["windows"] = self._windowing(run)
        if run.windows is None:
            arrays = {v: maps[None].cpu().numpy() for v, maps in buffer.items()}
            return arrays, ran.get(None, empty)
        if windows and windows != run.windows:
            raise RuntimeError(
                f"step {step}: windows starting at frames {windows}, the run's earlier steps at "
                f"{run.windows}; attnlab records a run with one window layout"
            )
        every = np.stack([ran.get(w, empty) for w in run.windows])
        partial = every.any(0) & ~every.all(0)
        if partial.any():
            layer, half = (int(i[0]) for i in np.nonzero(partial))
            raise RuntimeError(
                f"step {step}: {self.sites[layer].name} ({run.cfg_names[half]}) ran its attention "
                "on some of its FreeNoise windows and not on others: attnlab records a layer "
                "call whose attention ran, or marks it as not run, never a part of it"
            )
        arrays = {}
        for v, maps in buffer.items():
            some = next(iter(maps.values()))
            nan = torch.full_like(some, float("nan"))
            stacked = torch.stack([maps.get(w, nan) for w in run.windows], dim=1)
            arrays[v] = stacked.cpu().numpy()
        return arrays, np.asarray(every.all(0))

    def _windowing(self, run: _Run) -> dict[str, Any]:
        """The ``windows`` attribute of a windowed run (FreeNoise's settings, as provenance)."""
        pipe = self.controller.pipe
        out: dict[str, Any] = {
            "method": "FreeNoise",
            "starts": list(run.windows or []),
            "frames": run.window_frames,
        }
        for key in ("context_length", "context_stride", "weighting_scheme", "noise_type"):
            value = getattr(pipe, f"_free_noise_{key}", None)
            if value is not None:
                out[key] = value
        return out

    def _map_dims(self, var: str, windowed: bool = False) -> list[str]:
        """The dims of one step's ``var`` (without ``step``)."""
        dims = [D.LAYER, WINDOW, D.CFG, D.SAMPLE] if windowed else [D.LAYER, D.CFG, D.SAMPLE]
        if self.reduce == "head":
            dims.append(D.HEAD)
        dims += [D.QUERY] if var == D.TEXT_MASS else [D.QUERY, D.KEY]
        if self.reduce == "spatial":
            dims += [D.Y, D.X]
        return dims

    def _step_dataset(
        self, arrays: dict[str, np.ndarray], ran: np.ndarray, ctx: CallContext, run: _Run
    ) -> xr.Dataset:
        run.attrs.setdefault("frames", ctx.frames)
        run.attrs.setdefault("latent", list(ctx.latent))
        n = ctx.batch // len(ctx.halves())
        windowed = run.windows is not None
        frames = int(run.window_frames or 0) if windowed else ctx.frames
        extent = {
            D.LAYER: len(self.sites),
            WINDOW: len(run.windows or ()),
            D.CFG: len(run.cfg_names),
            D.SAMPLE: n,
            D.HEAD: self.max_heads,
            D.QUERY: frames,
            D.KEY: frames,
            D.Y: self.grid[0],
            D.X: self.grid[1],
        }
        for v in self.layout["variables"]:
            if v not in arrays:  # no selected layer ran in this step: a marked gap, all NaN
                shape = tuple(extent[d] for d in self._map_dims(v, windowed))
                arrays[v] = np.full(shape, np.nan, dtype=np.float32)
        data_vars: dict[str, Any] = {
            v: ([D.STEP, *self._map_dims(v, windowed)], a[None]) for v, a in arrays.items()
        }
        data_vars[D.RAN] = ([D.STEP, D.LAYER, D.CFG], ran[None])
        sizes = [self.controller.table.level_size(s.level, ctx.latent) for s in self.sites]
        coords: dict[str, Any] = {
            D.STEP: [ctx.step],
            D.TIMESTEP: (D.STEP, [np.nan if ctx.timestep is None else ctx.timestep]),
            D.EXPERT: (D.STEP, [ctx.expert]),
            D.LAYER: [s.name for s in self.sites],
            D.LEVEL: (D.LAYER, [s.level for s in self.sites]),
            D.BLOCK: (D.LAYER, [s.block for s in self.sites]),
            D.LAYER_H: (D.LAYER, [hw[0] for hw in sizes]),
            D.LAYER_W: (D.LAYER, [hw[1] for hw in sizes]),
            D.HEADS: (D.LAYER, [s.heads for s in self.sites]),
            D.HEAD_DIM: (D.LAYER, [s.head_dim for s in self.sites]),
            D.CFG: run.cfg_names,
            D.SAMPLE: np.arange(n),
            D.QUERY: np.arange(frames),
            D.KEY: np.arange(frames),
        }
        if windowed:
            coords[WINDOW] = list(run.windows or ())
        if self.reduce == "head":
            coords[D.HEAD] = np.arange(self.max_heads)
        if self.reduce == "spatial":
            coords[D.Y] = np.arange(self.grid[0])
            coords[D.X] = np.arange(self.grid[1])
        return xr.Dataset(data_vars, coords)

    # ---- results -------------------------------------------------------------------------
    def run_datasets(self) -> list[tuple[str, xr.Dataset]]:
        """(run id, per-run Dataset with provenance attrs) of every completed run.

        Returns:
            ``list[tuple[str, xarray.Dataset]]``, in recording order: each Dataset as the run is
            stored (no ``run`` dimension): ``probs`` (and ``logits``) with dims ``(step, layer,
            cfg, sample, [head], query_frame, key_frame, [y, x])``, the provenance as
            attributes (read back lazily from the store for streamed runs).
        """
        from attnlab.core.store import open_run

        out = []
        for run in self.runs:
            if not run.complete:
                continue
            if run.writer is not None:
                ds = open_run(run.writer.path, run.id)
            elif run.chunks:
                ds = xr.concat(run.chunks, dim=D.STEP).assign_attrs(_clean_attrs(run.attrs))
            else:
                continue
            out.append((run.id, ds))
        return out

    def to_xarray(self) -> xr.Dataset:
        """Every completed run recorded so far as one Dataset (``run`` dimension).

        Returns:
            :class:`xarray.Dataset` laid out as :func:`attnlab.load` returns it: ``probs`` (and
            ``logits``), float32, dims ``(run, step, layer, cfg, sample, query_frame,
            key_frame)`` (reduction ``"head"``: ``head`` before ``query_frame``;
            ``"spatial"``: ``y, x`` after ``key_frame``), runs NaN-padded to the largest
            step, layer and frame sets, with the run-level coordinates (``timestep``,
            ``source``, ``prompt``, ``seed``, ``edits``, ``provenance``, ...).

        Raises:
            RuntimeError: no completed run recorded any of the selected layers and steps.

        Example::

            ds = rec.to_xarray()
            ds.probs.sel(cfg="cond").isel(run=0, step=0, layer=0, sample=0)  # F x F map
        """
        parts = self.run_datasets()
        if not parts:
            raise RuntimeError(
                "nothing recorded: no completed run touched the selected layers and steps"
            )
        ids, datasets = zip(*parts)
        return concat_runs(list(datasets), list(ids))

    def save(self, path: str | os.PathLike) -> list[str]:
        """Write the completed runs into the store at ``path`` (appending); returns their ids.

        Runs already streamed to ``path`` (``record(..., store=path)``) are not written again.

        Args:
            path (``str | os.PathLike``): a zarr v3 store, created if absent.

        Returns:
            ``list[str]``: the run ids, in recording order (read back with
            ``attnlab.load(path, runs=ids)``).

        Raises:
            StoreError: ``path`` is not an attnlab store, has another layout (reduction, grid,
                variables), or already holds a complete run of the same id.

        Example::

            ids = rec.save("run.zarr")
            ds = attnlab.load("run.zarr", runs=ids)
        """
        ids = []
        target = Path(path).resolve()
        for rid, ds in self.run_datasets():
            run = next(r for r in self.runs if r.id == rid)
            if run.writer is not None and run.writer.path.resolve() == target:
                ids.append(rid)  # streamed there already
                continue
            ds = ds.load()
            ids.append(write_run(path, ds.assign_attrs(_clean_attrs(ds.attrs)), self.layout, rid))
        return ids


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    from attnlab.core.store import WRITE_ATTRS

    attrs = {k: v for k, v in attrs.items() if k not in WRITE_ATTRS}
    return json.loads(json.dumps(attrs, default=str))
