"""Figures of the VSTAR paper, drawn from stored data (xarray objects), never from a live model.

Every figure function takes xarray data (or plain arrays / mappings of them), draws inside
:func:`style`, and returns a :class:`matplotlib.figure.Figure` that is *not* registered with
pyplot (no global state, nothing to close; notebooks still display it).  Save it with
:func:`save_figure`.

Input conventions (names from :mod:`attnlab.core.dims`):

* **probs**: attention maps with dims (a subset of, in order) ``run, step, layer, cfg, sample,
  head, query_frame, key_frame[, y, x]`` and the run/layer/step coordinates of the vocabulary.
  Runs with fewer frames than others are NaN-padded; each run is cropped to its ``frames``
  coordinate (or, without one, to its non-NaN rows/columns) before drawing.
* **map**: a 2-D ``(query_frame, key_frame)`` DataArray, a 2-D numpy array, or probs (reduced
  with :func:`reduce_maps`; all runs must then share one frame count).
* **similarity matrix**: a 2-D ``(frame, frame2)`` DataArray or numpy array.
* **video**: anything :func:`attnlab.data.video.to_unit_frames` reads: a ``(frame, height,
  width, 3)`` or ``(frame, channel, height, width)`` array or tensor (uint8, or float in
  [0, 1] or [-1, 1]), or a DataArray with dims ``frame, height, width[, channel]``.

Modules: :mod:`.style` (look, saving), :mod:`.labels` (text from coordinates), :mod:`.maps`
(inputs as arrays, :func:`reduce_maps`), :mod:`.draw` (panels, facets, colour bars, frame
strips), and the figures: :mod:`.attention` (recorded maps), :mod:`.edits` (probes, transfer,
TAR prior), :mod:`.similarity` (inter-frame similarity), :mod:`.metrics` (video metrics).
"""

from attnlab.lab.plots.attention import (
    fig_attention_maps,
    fig_band_profile,
    fig_cross_model,
    fig_video_with_maps,
    frame_strip_figure,
)
from attnlab.lab.plots.draw import SCALES as SCALES
from attnlab.lab.plots.draw import UNIFORM_COLOR as UNIFORM_COLOR
from attnlab.lab.plots.draw import uniform_band as uniform_band
from attnlab.lab.plots.edits import fig_prior, fig_probe_grid, fig_sigma_ablation, fig_transfer
from attnlab.lab.plots.labels import CONDITION as CONDITION
from attnlab.lab.plots.labels import condition_labels, level_label, sigma_label
from attnlab.lab.plots.maps import MapLike as MapLike
from attnlab.lab.plots.maps import VideoLike as VideoLike
from attnlab.lab.plots.maps import reduce_maps
from attnlab.lab.plots.metrics import fig_metric_bars, fig_metric_curves
from attnlab.lab.plots.similarity import fig_similarity, fig_similarity_by_interval, interval_table
from attnlab.lab.plots.style import MAP_CMAP, RC, SIM_CMAP, save_figure, style

__all__ = [
    "MAP_CMAP",
    "RC",
    "SIM_CMAP",
    "condition_labels",
    "fig_attention_maps",
    "fig_band_profile",
    "fig_cross_model",
    "fig_metric_bars",
    "fig_metric_curves",
    "fig_prior",
    "fig_probe_grid",
    "fig_sigma_ablation",
    "fig_similarity",
    "fig_similarity_by_interval",
    "fig_transfer",
    "fig_video_with_maps",
    "frame_strip_figure",
    "interval_table",
    "level_label",
    "reduce_maps",
    "save_figure",
    "sigma_label",
    "style",
]
