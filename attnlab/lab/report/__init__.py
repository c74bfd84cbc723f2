"""An interactive, self-contained HTML report of attnlab stores (``attnlab report``).

One file that opens offline in any browser and inline in Jupyter: per run its video (frame
slider, play), the frame maps of every recorded step and layer (and level and layer means,
guidance half, head) on an absolute colour scale with the value under the cursor, the band
profile, the metrics of the shown map and of the run, its stored video evaluation and its
provenance; and two runs side by side with their difference.

- :mod:`.content`  reading the stores: :func:`~.content.collect`, the size budget
  (:func:`~.content.detail_ladder`, :func:`~.content.fit`), :class:`~.content.ReportError`
- :mod:`.labels`   what the page says in words: step labels, a FreeNoise run's rows of each
  video frame, why a run has no video
- :mod:`.page`     the page: Bokeh plots (BokehJS inline), the data, ``template.html``,
  ``report.js``, ``report.css``

Example::

    page = attnlab.report("run.zarr", "run.html")   # writes run.html; `page` shows in Jupyter
    attnlab.report(["maps.zarr", "probes.zarr"], compare=("synthetic-f16", "tar-f16"))
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.lab.report.content import (
    Content,
    Detail,
    ReportError,
    collect,
    detail_ladder,
    open_sources,
    resolve_run,
)

__all__ = [
    "DEFAULT_MAX_MB",
    "Detail",
    "Report",
    "ReportError",
    "detail_ladder",
    "minimum_mb",
    "report",
]

#: size limit of a report in MB (10^6 bytes) unless told otherwise; with more data the largest
#: runs give up detail first (:func:`~attnlab.lab.report.content.fit`): the unconditional half,
#: steps, single heads, single layers, in the order of
#: :func:`~attnlab.lab.report.content.detail_ladder`, and the page says so
DEFAULT_MAX_MB = 6.0


@dataclass
class Report:
    """A rendered report: its HTML, where it was written (if it was) and what it left out.

    In Jupyter it shows itself inline (``_repr_html_``: the page in an ``iframe``)."""

    html: str
    path: Path | None
    content: Content

    @property
    def size(self) -> int:
        """Size of the page in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    @property
    def left_out(self) -> list[str]:
        """What the page does not show: what the size limit left out (``content.limited``)
        and variables it does not draw (logits, text mass); empty: everything is in the page."""
        return list(self.content.left_out)

    @property
    def runs(self) -> list[str]:
        """The page keys of the runs in the report."""
        return [r.key for r in self.content.runs]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` atomically (a temporary file renamed into place)."""
        self.path = write_atomically(Path(path), self.html)
        return self.path

    def __repr__(self) -> str:  # not the page's megabytes (a REPL, print, logging)
        where = f"{str(self.path)!r}" if self.path is not None else "not saved"
        return (
            f"Report({where}, {self.size / 1e6:.1f} MB, {len(self.runs)} runs, "
            f"{len(self.left_out)} left out)"
        )

    def _repr_html_(self) -> str:
        return (
            '<iframe style="width:100%;height:1200px;border:0" title="attnlab report" '
            f'srcdoc="{html.escape(self.html, quote=True)}"></iframe>'
        )


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder: a failure
    leaves no partial file (and an existing ``path`` untouched)."""
    path = path.expanduser()
    if path.is_dir():
        raise ReportError(
            f"{path} is a folder: give the report's file name, e.g. {path}/report.html"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report(
    store_or_dataset: Any,
    path: str | os.PathLike | None = None,
    *,
    runs: Sequence[str] | None = None,
    compare: Sequence[str] | None = None,
    max_mb: float = DEFAULT_MAX_MB,
    title: str | None = None,
    links: Sequence[tuple[str, str]] | None = None,
) -> Report:
    """An interactive, self-contained HTML report of attnlab store(s).

    Args:
        store_or_dataset: an attnlab store (path), a Dataset from :func:`attnlab.load`, or a
            list of them (one section of runs per store; a run named ``label/run_id`` where
            several stores hold its id).
        path (``str | os.PathLike | None``, default None): write the page here (atomically);
            None: only return it.
        runs (``Sequence[str] | None``, default None): run ids to include (default all
            complete runs).
        compare (``(run_a, run_b) | None``, default None): the pair the comparison opens with
            (default the first two runs).
        max_mb (``float``, default :data:`DEFAULT_MAX_MB`): size limit in MB, finite and at
            least :func:`minimum_mb` (the page's fixed part, about 1.4 MB); with more data
            the largest runs hold less detail (``cond`` only, fewer steps, head means, level
            means; :func:`~attnlab.lab.report.content.fit`; then no videos) and the page says
            what it left out; the page never exceeds it.
        title (``str | None``): the page's title (default names the stores).
        links (``Sequence[(label, relative path)] | None``): files beside the page to link
            (the demo links its figures).

    Returns:
        :class:`Report` (``.html``, ``.path``, ``.size``, ``.left_out``, ``.runs``,
        ``.save(path)``; shows inline in Jupyter).

    Raises:
        StoreError: a store that does not exist, is not an attnlab store or holds no
            complete run; run ids it does not hold.
        ReportError: no store given, a bad ``compare`` pair, a ``max_mb`` that is not a finite
            number or is below :func:`minimum_mb` or too small for the runs even at their
            least detail, a Dataset that is not
            :func:`attnlab.load`'s, an output path that is a folder.
    """
    import xarray as xr

    if not (
        isinstance(max_mb, (int, float))
        and not isinstance(max_mb, bool)
        and math.isfinite(max_mb)
        and max_mb > 0
    ):
        raise ReportError(f"max_mb must be a finite positive number of megabytes, got {max_mb!r}")
    fixed = _fixed_bytes()
    if max_mb < minimum_mb():
        raise ReportError(
            f"max_mb {max_mb:g} is below the page's fixed part: BokehJS, the page's script and "
            f"style take {fixed / 1e6:.2f} MB before any run; give at least "
            f"{minimum_mb():.2f} (MB)"
        )
    stores = (
        list(store_or_dataset)
        if isinstance(store_or_dataset, (list, tuple))
        else [store_or_dataset]
    )
    for s in stores:
        if not isinstance(s, (str, os.PathLike, xr.Dataset)):
            raise ReportError(
                f"cannot report {type(s).__name__}: give an attnlab store path or a Dataset "
                "from attnlab.load"
            )
    if compare is not None and len(compare) != 2:
        raise ReportError(f"compare takes two runs (A and B), got {list(compare)}")
    sources = open_sources(stores, runs)
    pair = None
    if compare is not None:
        pair = (resolve_run(str(compare[0]), sources), resolve_run(str(compare[1]), sources))
    from attnlab.lab.report.page import render

    names = [s.label for s in sources]
    limit = int(max_mb * 1e6)
    budget = limit - fixed
    videos, smallest = True, None
    strips: dict[str, Any] = {}  # each video decoded once, whatever the budgets tried
    while True:
        # the budget is an estimate of the page's bytes: render, and while the page is over
        # the limit take the overshoot off the budget; when that no longer shrinks it, leave
        # out the videos; if it still does not fit, say what these runs need
        content = collect(sources, budget, videos=videos, strips=strips, max_mb=max_mb)
        page = render(
            content,
            title=title or f"attnlab report: {', '.join(names)}",
            compare=pair,
            links=list(links or []),
            stores=[str(s.path) if s.path is not None else s.label for s in sources],
        )
        size = len(page.encode("utf-8"))
        if size <= limit:
            break
        if smallest is None or size < smallest:
            smallest = size
            budget -= size - limit
        elif videos:
            videos, smallest, budget = False, None, limit - fixed
        else:
            raise ReportError(
                f"the {len(content.runs)} runs do not fit in max_mb {max_mb:g}: with the least "
                f"detail (each level's mean over steps, no videos) the page takes "
                f"{math.ceil(size / 1e4) / 100:.2f} MB; give a larger max_mb or fewer runs"
            )
    page = page.replace("__PAGE_SIZE__", f"{size / 1e6:.1f} MB", 1)
    out = Report(page, None, content)
    if path is not None:
        out.save(path)
    return out


def minimum_mb() -> float:
    """The smallest ``max_mb`` a report takes: the page's fixed part (BokehJS, template, style
    and script), rounded up to 0.01 MB; its runs and videos come on top of it."""
    return math.ceil(_fixed_bytes() / 1e4) / 100


def _fixed_bytes() -> int:
    """Bytes of a page without runs: BokehJS, the template, style and script."""
    from bokeh.resources import Resources

    js = sum(len(c) for c in Resources(mode="inline", components=["bokeh"]).js_raw)
    here = Path(__file__).parent
    return (
        js
        + sum(len((here / f).read_text()) for f in ("template.html", "report.js", "report.css"))
        + 60_000
    )
