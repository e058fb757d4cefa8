"""Every matplotlib figure nst draws: a run's loss curve, and a sweep's final losses against its swept value.

A sweep's plot is drawn by one function and rendered either as a PNG (``losses_vs_<key>.png``)
or as SVG whose points link to their jobs (report.html), so the file and the page cannot
disagree. matplotlib takes about a second to import: it is loaded, on its Agg backend (no
display), only when a figure is drawn.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from nst.figures import labels

# text stays text in the SVG (the page's fonts, searchable); ids are the same from one run to the next
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "nst", "font.size": 9}
LINK = "#job-{job}"  # an SVG point's link: the page's figure of that job
LOSSES = (("final_content", "content"), ("final_style", "style"))


def _pyplot():
    """pyplot on the Agg backend, imported on first use."""
    import matplotlib  # matplotlib takes a second to import: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    return plt


def _png(figure) -> Image.Image:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _pyplot().close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def loss_curve(history: list[dict]) -> Image.Image:
    """Total, content and style loss against the evaluation number (log scale)."""
    figure, axis = _pyplot().subplots(figsize=(6, 4), dpi=100)
    steps = [r["evaluation"] for r in history]
    for key in ("total", "content", "style", "tv"):
        values = [r.get(key, 0.0) for r in history]
        if any(v > 0 for v in values):
            axis.plot(steps, values, label=key)
    axis.set_yscale("log")
    axis.set_xlabel("function evaluation")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    return _png(figure)


@dataclass(frozen=True)
class LossPlot:
    """A sweep's final content and style losses (a panel each) against its first swept value ``key``: a point
    per finished job, a line per value of the second swept key ``series``. ``png`` and ``svg`` render it.

    The x axis is the swept number (``log_x`` when its values are log-spaced), else a category per value;
    a panel's y axis is logarithmic when all its losses are positive.
    """

    rows: tuple[Mapping, ...]  # the finished jobs with finite losses
    key: str
    series: str | None
    numeric: bool
    log_x: bool

    def png(self) -> Image.Image:
        """The plot as a picture (``losses_vs_<key>.png``)."""
        with _pyplot().rc_context(STYLE):
            return _png(self._draw())

    def svg(self) -> str:
        """The plot as an inline ``<svg>`` element: each point a link to ``#job-<job>`` (class ``point``,
        ``data-job``) with a tooltip naming the job's values; no outside reference."""
        plt = _pyplot()
        with plt.rc_context(STYLE):
            figure = self._draw()
            figure.tight_layout()
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
            plt.close(figure)
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg"):]  # no XML declaration or doctype inside a page
        tips = {int(row["job"]): self._tip(row) for row in self.rows}
        return re.sub(r'<a xlink:href="#job-(\d+)"(?: target="_blank")?>',
                      lambda m: f'<a xlink:href="#job-{m[1]}" href="#job-{m[1]}" class="point" data-job="{m[1]}">'
                                f'<title>{html.escape(tips.get(int(m[1]), ""))}</title>', svg)

    def _x(self, row: Mapping, categories: list[str]) -> float:
        return labels.finite_number(row.get(self.key)) if self.numeric else categories.index(str(row.get(self.key)))

    def _axis_name(self) -> str:
        """``β (loss.style_weight)``; ``pair``, not ``pair (pair)``."""
        bare = self.key.lstrip("+~")
        return bare if labels.name(self.key) == bare else f"{labels.name(self.key)} ({bare})"

    def _tip(self, row: Mapping) -> str:
        losses = ", ".join(f"final {name} loss {labels.finite_number(row[column]):.4g}" for column, name in LOSSES)
        return (f"{row.get('label') or 'job'}: {self.key}={labels.short(row.get(self.key))}, {losses}"
                f" (job {int(row['job'])})")

    def _draw(self):
        """The figure (within ``STYLE``'s rc_context): two panels, content and style loss."""
        figure, axes = _pyplot().subplots(1, 2, figsize=(9, 3.4), dpi=100)
        categories = [] if self.numeric else labels.sorted_unique(str(row.get(self.key)) for row in self.rows)
        groups: dict[str, list[Mapping]] = {}
        for row in self.rows:
            groups.setdefault("" if self.series is None else str(row.get(self.series)), []).append(row)
        for axis, (column, name) in zip(axes, LOSSES, strict=True):
            for group in labels.sorted_unique(groups):
                members = sorted(groups[group], key=lambda row: self._x(row, categories))
                xs = [self._x(row, categories) for row in members]
                ys = [labels.finite_number(row[column]) for row in members]
                legend = f"{labels.name(self.series)}={labels.short(group)}" if self.series else None
                (line,) = axis.plot(xs, ys, alpha=0.5, label=legend)
                points = axis.scatter(xs, ys, s=36, color=line.get_color(), zorder=3)
                points.set_urls([LINK.format(job=int(row["job"])) for row in members])
            if all(labels.finite_number(row[column]) > 0 for row in self.rows):
                axis.set_yscale("log")
            if self.log_x:
                axis.set_xscale("log")
            if not self.numeric:
                axis.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
            axis.set_xlabel(self._axis_name())
            axis.set_title(f"final {name} loss")
            axis.grid(alpha=0.3)
            if self.series:
                axis.legend(fontsize=8)
        return figure


def final_losses(rows: Iterable[Mapping], keys: Sequence[str]) -> LossPlot | None:
    """The final-loss plot of a sweep's summary rows (``job``, ``status``, ``label``, the swept values,
    ``final_content``, ``final_style``) that swept ``keys``; None when nothing was swept or no job
    finished with finite losses."""
    done = tuple(row for row in rows if row.get("status") == "FINISHED"
                 and all(labels.finite_number(row.get(column)) is not None for column, _ in LOSSES))
    if not keys or not done:
        return None
    key = keys[0]
    values = [row.get(key) for row in done]
    numeric = all(labels.finite_number(value) is not None for value in values)
    return LossPlot(done, key, keys[1] if len(keys) > 1 else None, numeric, numeric and labels.log_spaced(values))
