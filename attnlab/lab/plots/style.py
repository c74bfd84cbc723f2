"""The look of every attnlab figure and how it is written to disk.

* :data:`RC`, :data:`MAP_CMAP`, :data:`SIM_CMAP`: rcParams and colormaps of every figure
* :func:`style`: context with the attnlab look (seaborn "ticks" + "paper" + :data:`RC`)
* :func:`save_figure`: save a figure once per format, reproducibly (no metadata dates)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import seaborn as sns
from matplotlib.figure import Figure

#: colormap of attention maps and of the prior (sequential, dark = low)
MAP_CMAP = "rocket"

#: colormap of inter-frame similarity matrices
SIM_CMAP = "mako"

#: rcParams of every attnlab figure (on top of seaborn's "ticks" style and "paper" context)
RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "image.cmap": MAP_CMAP,
    "image.interpolation": "nearest",
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}

_FORMATS = {"png", "pdf", "svg", "jpg", "jpeg", "eps", "tif", "tiff", "webp"}


@contextlib.contextmanager
def style(**overrides: Any) -> Iterator[None]:
    """Context with the attnlab look: seaborn "ticks" + "paper" context + :data:`RC`."""
    rc = {**sns.axes_style("ticks"), **sns.plotting_context("paper"), **RC, **overrides}
    with mpl.rc_context(rc):
        yield


def save_figure(
    fig: Figure,
    path: str | Path,
    formats: Sequence[str] | None = None,
    *,
    dpi: int | None = None,
) -> list[Path]:
    """Save ``fig`` once per format and return the written paths.

    ``path`` is a name without extension (saved as ``formats``, default png and pdf) or with a
    known image extension (saved in that format only, unless ``formats`` is given).  Parent
    folders are created; metadata dates are left out so files are reproducible.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix in _FORMATS:
        stem = path.with_suffix("")
        formats = (suffix,) if formats is None else formats
    else:
        stem = path
        formats = ("png", "pdf") if formats is None else formats
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for fmt in formats:
            fmt = fmt.lower().lstrip(".")
            out = stem.parent / f"{stem.name}.{fmt}"
            meta: dict[str, Any] | None = None
            if fmt == "pdf":
                meta = {"CreationDate": None, "ModDate": None}
            elif fmt == "png":
                meta = {"Software": None}
            fig.savefig(out, format=fmt, dpi=dpi, metadata=meta, bbox_inches="tight")
            written.append(out)
    return written
