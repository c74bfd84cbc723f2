"""The page: Bokeh plots with their JavaScript inline, the data, and a small template.

- :func:`render`: the HTML of a :class:`~attnlab.lab.report.content.Content`
- :func:`page_data`: the JSON the page's script reads (maps as base64 float32)

Plots are Bokeh models (an image glyph per map with a colour bar and a hover tool showing
the value under the cursor, a line plot of the band profile); the controls are plain HTML
inputs whose script (``report.js``) puts the chosen map of the embedded data into the
plots' data sources. Nothing is fetched: BokehJS, the data, the video frames (data URIs),
the style and the script are all inside the one file.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.lab.report.content import METRICS, Content, RunContent

ASSETS = Path(__file__).parent


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _edit_text(spec: Any) -> str:
    """One edit spec in a few words: ``tar 64D1``, ``replace identity @0,1``."""
    if not isinstance(spec, dict):
        return str(spec)
    kind = str(spec.get("kind", "edit"))
    main = next(
        (spec[k] for k in ("sigma", "matrix", "mode", "video", "prompts") if spec.get(k)), ""
    )
    levels = spec.get("levels")
    where = f" @{','.join(map(str, levels))}" if levels else ""
    text = f"{kind} {main if not isinstance(main, (list, dict)) else json.dumps(main)}".strip()
    return text + where


def edits_text(attrs: dict[str, Any]) -> str:
    edits = attrs.get("edits") or []
    if isinstance(edits, str):
        try:
            edits = json.loads(edits)
        except ValueError:
            return edits
    return "; ".join(_edit_text(e) for e in edits) or "none"


def _run_data(run: RunContent) -> dict[str, Any]:
    finite = run.maps[np.isfinite(run.maps)]
    video = None
    if run.video is not None:
        v = run.video
        video = {
            "src": f"data:{v['mime']};base64," + base64.b64encode(v["data"]).decode("ascii"),
            "width": v["width"],
            "height": v["height"],
            "frames": v["frames"],
            "fps": v["fps"],
            "origin": v["origin"],
        }
    attrs = run.attrs
    return {
        "key": run.key,
        "source": run.source,
        "run_id": run.run_id,
        "kind": str(attrs.get("source", "")),
        "model": str(attrs.get("model", "")),
        "prompt": str(attrs.get("prompt", "")),
        "seed": attrs.get("seed"),
        "edits": edits_text(attrs),
        "frames": run.frames,
        "shape": list(run.maps.shape[:5]),
        "steps": run.steps,
        "total_steps": run.total_steps,
        "layers": run.layers,
        "total_layers": run.total_layers,
        "halves": run.halves,
        "heads": run.heads,
        "samples": run.samples,
        "vmax": float(finite.max()) if finite.size else 1.0,
        "maps": _b64(run.maps),
        "profiles": _b64(run.profiles),
        "metrics": _b64(run.metrics),
        "summary": run.summary,
        "evaluation": run.evaluation,
        "video": video,
        "video_note": run.video_note,
        "notes": run.notes,
        "provenance": attrs,
        "recorded": run.recorded,
        "layer_names": run.layer_names,
        "layer_levels": run.layer_levels,
        "windows": run.windows,
        "latent": run.latent,
    }


def page_data(
    content: Content, compare: tuple[str, str] | None, links: list[tuple[str, str]]
) -> dict[str, Any]:
    runs = [_run_data(r) for r in content.runs]
    return {
        "runs": runs,
        "compare": list(compare) if compare else None,
        "metrics": list(METRICS),
        "sources": [s.label for s in content.sources],
        "left_out": content.left_out,
        "reduced": content.reduced,
        "links": [{"label": a, "href": b} for a, b in links],
    }


def _palettes() -> tuple[list[str], list[str]]:
    import seaborn as sns

    # the figures' colour map (attnlab.lab.plots.style.MAP_CMAP) and a diverging one
    return sns.color_palette("rocket", 256).as_hex(), sns.color_palette("vlag", 256).as_hex()


def _map_figure(title: str, mapper: Any, source: Any, name: str, ranges: tuple | None = None):
    from bokeh.models import HoverTool, Range1d
    from bokeh.models import Image as ImageGlyph
    from bokeh.models.annotations import ColorBar
    from bokeh.plotting import figure

    x_range, y_range = ranges or (Range1d(start=-0.5, end=0.5), Range1d(start=0.5, end=-0.5))
    fig = figure(
        title=title,
        width=390,
        height=360,
        x_range=x_range,
        y_range=y_range,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
        x_axis_label="key frame",
        y_axis_label="query frame",
        name=name,
        match_aspect=True,
    )
    fig.toolbar.logo = None
    glyph = fig.add_glyph(
        source,
        ImageGlyph(image="image", x="x", y="y", dw="dw", dh="dh", color_mapper=mapper),
    )
    fig.add_tools(
        HoverTool(
            renderers=[glyph],
            tooltips=[
                ("query frame", "$y{0}"),
                ("key frame", "$x{0}"),
                ("value", "@image{0.00000}"),
            ],
        )
    )
    fig.add_layout(ColorBar(color_mapper=mapper, width=10, padding=4), "right")
    fig.grid.visible = False
    fig.axis.minor_tick_line_color = None
    return fig


def bokeh_parts() -> tuple[str, dict[str, str], str]:
    """The plots' script, their divs by name, and BokehJS itself (inline)."""
    from bokeh.document import Document
    from bokeh.embed import components
    from bokeh.events import DocumentReady
    from bokeh.models import (
        ColumnDataSource,
        CustomJS,
        DataRange1d,
        LinearColorMapper,
        Range1d,
    )
    from bokeh.models.annotations import Span
    from bokeh.plotting import figure
    from bokeh.resources import Resources

    seq, div = _palettes()

    def empty() -> Any:
        return ColumnDataSource(
            {"image": [np.zeros((1, 1))], "x": [-0.5], "y": [-0.5], "dw": [1], "dh": [1]}
        )

    run_mapper = LinearColorMapper(palette=seq, low=0, high=1, nan_color="#d0d0d0")
    run_src = empty()
    run_fig = _map_figure("", run_mapper, run_src, "run-map")
    row_src = ColumnDataSource({"x": [0.0], "y": [0.0], "w": [1.0], "alpha": [0.0]})
    run_fig.rect(
        x="x", y="y", width="w", height=1, source=row_src, fill_alpha=0,
        line_color="#35b7ff", line_width=2, line_alpha="alpha",
    )  # fmt: skip

    prof_src = ColumnDataSource({"x": [0], "y": [0.0]})
    prof_ref = ColumnDataSource({"x": [0], "y": [0.0]})
    prof = figure(
        width=390,
        height=250,
        tools="pan,wheel_zoom,reset,save",
        toolbar_location="above",
        x_axis_label="frame offset |i − j|",
        y_axis_label="mean attention",
        y_range=DataRange1d(start=0),  # from 0: how far from uniform (1/N, dotted) it is
        title="band profile",
        name="band-profile",
    )
    prof.toolbar.logo = None
    prof.line(
        "x", "y", source=prof_ref, color="#999999", line_dash="dashed", legend_label="run mean"
    )
    prof.line("x", "y", source=prof_src, color="#c6304a", line_width=2, legend_label="this map")
    prof.scatter("x", "y", source=prof_src, color="#c6304a", size=4)
    uniform = Span(location=0, dimension="width", line_color="#35b7ff", line_dash="dotted")
    prof.add_layout(uniform)
    legend = prof.legend[0]
    legend.orientation = "horizontal"
    legend.label_text_font_size = "9pt"
    legend.border_line_alpha = 0
    prof.add_layout(legend, "below")

    cmp_mapper = LinearColorMapper(palette=seq, low=0, high=1, nan_color="#d0d0d0")
    diff_mapper = LinearColorMapper(palette=div, low=-1, high=1, nan_color="#d0d0d0")
    ranges = (Range1d(start=-0.5, end=0.5), Range1d(start=0.5, end=-0.5))
    a_src, b_src, d_src = empty(), empty(), empty()
    a_fig = _map_figure("A", cmp_mapper, a_src, "compare-a", ranges)
    b_fig = _map_figure("B", cmp_mapper, b_src, "compare-b", ranges)
    d_fig = _map_figure("A − B", diff_mapper, d_src, "compare-diff", ranges)

    models = {
        "run_src": run_src, "run_mapper": run_mapper, "run_fig": run_fig, "row_src": row_src,
        "prof_src": prof_src, "prof_ref": prof_ref, "prof_fig": prof, "uniform": uniform,
        "a_src": a_src, "b_src": b_src, "d_src": d_src, "cmp_mapper": cmp_mapper,
        "diff_mapper": diff_mapper, "a_fig": a_fig, "b_fig": b_fig, "d_fig": d_fig,
    }  # fmt: skip
    doc = Document()
    roots = {"run": run_fig, "profile": prof, "a": a_fig, "b": b_fig, "diff": d_fig}
    for root in roots.values():
        doc.add_root(root)
    doc.js_on_event(
        DocumentReady,
        CustomJS(
            args=models,
            code="window.attnlabBokeh = {run_src, run_mapper, run_fig, row_src, prof_src, "
            "prof_ref, prof_fig, uniform, a_src, b_src, d_src, cmp_mapper, diff_mapper, a_fig, "
            "b_fig, d_fig}; if (window.attnlabStart) { window.attnlabStart(); }",
        ),
    )
    script, divs = components(roots)
    js = Resources(mode="inline", components=["bokeh"]).js_raw
    bokeh_js = "\n".join(f"<script>{code}</script>" for code in js)
    return script, divs, bokeh_js


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element."""
    text = json.dumps(data, default=str, allow_nan=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _clean(obj: Any) -> Any:
    """JSON-safe values: non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def render(
    content: Content,
    *,
    title: str,
    compare: tuple[str, str] | None = None,
    links: list[tuple[str, str]] | None = None,
    stores: list[str] | None = None,
) -> str:
    """The whole page as one HTML string."""
    import jinja2

    from attnlab import __version__

    script, divs, bokeh_js = bokeh_parts()
    data = _clean(page_data(content, compare, links or []))
    template = jinja2.Template((ASSETS / "template.html").read_text(), autoescape=True)
    runs = content.runs
    return template.render(
        title=title,
        version=__version__,
        created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        stores=stores or [s.label for s in content.sources],
        n_runs=len(runs),
        left_out=content.left_out,
        reduced=content.reduced,
        incomplete=content.incomplete,
        limited=content.limited,
        links=links or [],
        css=(ASSETS / "report.css").read_text(),
        js=(ASSETS / "report.js").read_text().replace("</", "<\\/"),
        bokeh_js=bokeh_js,
        bokeh_script=script,
        divs=divs,
        data=_script_json(data),
        escape=html.escape,
    )
