"""A multi-objective search's Pareto page (``pareto.html``) as one self-contained HTML string.

Everything is inline (the plots as SVG drawn here, images as base64 data URIs, CSS and a little
vanilla JS), so the page works offline and inside MLflow's artifact viewer. Pure rendering: the
trials, the front and the images come from ``nst.compare.pareto``.

The page shows every COMPLETE trial on a scatter plot of the two objectives (the front filled, large
and joined by its staircase; the dominated trials hollow and grey), a side panel with the result and
settings of the trial clicked, hovered or focused (Enter), Optuna's importances, the hypervolume
after each trial and every trial in order.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from nst.compare.sweep_page import data_uri
from nst.figures import labels

WIDTH, HEIGHT = 560, 400  # the scatter plot's drawing
LINE_WIDTH, LINE_HEIGHT = 560, 220  # the hypervolume plot's
MARGIN = {"left": 70, "right": 20, "top": 20, "bottom": 56}
TICKS = 5
PARAMS_PREFIX = "params."
COMPLETE = "COMPLETE"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> str:
    """A value as the page shows it: a number as the seed writes weights (``1e4``, else 4
    significant digits), '–' for a missing one, text as it is."""
    found = labels.finite_number(value)
    if found is not None:
        return labels.compact(found)
    return "–" if value is None or isinstance(value, float) else str(value)


def key_of(column: str) -> str:
    """A params column's searched key (``params.loss.style_weight`` -> ``loss.style_weight``)."""
    return column.removeprefix(PARAMS_PREFIX)


def _plotted(row: Mapping, objectives: Sequence[str]) -> bool:
    """Whether a trial is on the scatter plot: COMPLETE, with a finite value of every objective."""
    values = [labels.finite_number(row.get(name)) for name in objectives]
    return row.get("state") == COMPLETE and all(value is not None for value in values)


def axes(objectives: Mapping[str, str]) -> tuple[str, str] | None:
    """The scatter plot's (x, y) objectives: the minimized one across and the maximized one up when
    there is one of each, else the first two in order; None with fewer than two objectives."""
    names = list(objectives)
    if len(names) < 2:
        return None
    lower = [n for n in names if objectives[n] == "minimize"]
    higher = [n for n in names if objectives[n] == "maximize"]
    if len(names) == 2 and len(lower) == 1 and len(higher) == 1:
        return lower[0], higher[0]
    return names[0], names[1]


class Scale:
    """A linear map from data values to pixels, padded by 5 % of the range (a unit when there is
    none); ``from_zero`` starts it at 0 unpadded (a measure that cannot be negative), ``whole``
    gives it whole-number ticks (trial numbers)."""

    def __init__(self, values: Sequence[float], start: float, end: float, from_zero: bool = False,
                 whole: bool = False):
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (high - low) * 0.05 or (abs(low) * 0.05 or 1.0)
        self.low, self.high = (0.0 if from_zero else low - pad), high + pad
        self.start, self.end, self.whole = start, end, whole

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = TICKS) -> list[float]:
        if self.whole:
            first, last = math.ceil(self.low), math.floor(self.high)
            step = max(1, math.ceil((last - first) / (count - 1)))
            return [float(value) for value in range(first, last + 1, step)]
        step = (self.high - self.low) / (count - 1)
        return [self.low + i * step for i in range(count)]


def _axis_title(name: str, direction: str, meanings: Mapping[str, str], across: bool) -> str:
    """An axis's title: the metric, what a better value means and which way better lies."""
    higher = direction == "maximize"
    meaning = meanings.get(name) or "better"
    arrow = ("→" if higher else "←") if across else ("↑" if higher else "↓")
    return f"{name} ({arrow} {meaning})"


def _frame(x: Scale, y: Scale, x_title: str, y_title: str, width: int, height: int) -> list[str]:
    """The axes of a plot: lines, ticks with their values and the two titles."""
    left, right = MARGIN["left"], width - MARGIN["right"]
    top, bottom = MARGIN["top"], height - MARGIN["bottom"]
    parts = [f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>']
    for value in x.ticks():
        px = x(value)
        parts.append(f'<line class="tick" x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" '
                     f'y2="{bottom + 5}"/><text class="tick" x="{px:.1f}" y="{bottom + 18}" '
                     f'text-anchor="middle">{value:.3g}</text>')
    for value in y.ticks():
        py = y(value)
        parts.append(f'<line class="tick" x1="{left - 5}" y1="{py:.1f}" x2="{left}" y2="{py:.1f}"/>'
                     f'<text class="tick" x="{left - 8}" y="{py + 4:.1f}" '
                     f'text-anchor="end">{value:.3g}</text>')
    parts.append(f'<text class="title" x="{(left + right) / 2:.1f}" y="{height - 12}" '
                 f'text-anchor="middle">{_e(x_title)}</text>')
    parts.append(f'<text class="title" transform="translate(16 {(top + bottom) / 2:.1f}) '
                 f'rotate(-90)" text-anchor="middle">{_e(y_title)}</text>')
    return parts


def staircase(points: Sequence[tuple[float, float]], x_better: str) -> list[tuple[float, float]]:
    """The corners of the front's attainment line: the front's points from the best x to the worst,
    each joined to the next across first (at its own y) and then along y, so the line bounds the
    region the front dominates."""
    ordered = sorted(points, key=lambda p: p[0], reverse=x_better == "maximize")
    corners: list[tuple[float, float]] = []
    for x, y in ordered:
        if corners:
            corners.append((x, corners[-1][1]))
        corners.append((x, y))
    return corners


def _point(row: Mapping, px: float, py: float, x_name: str, y_name: str) -> str:
    """A trial's circle: filled and larger on the front, hollow otherwise; focusable, titled."""
    trial, front = int(row["trial"]), bool(row.get("front"))
    summary = (f"trial {trial}{' (on the front)' if front else ''}: "
               f"{x_name} {_number(row.get(x_name))}, {y_name} {_number(row.get(y_name))}")
    kind, radius = ("front", 7) if front else ("dominated", 4.5)
    return (f'<circle class="point {kind}" data-trial="{trial}" data-front="{int(front)}" '
            f'cx="{px:.1f}" cy="{py:.1f}" r="{radius}" tabindex="0" role="button" '
            f'aria-label="{_e(summary)}"><title>{_e(summary)}</title></circle>')


def _diamond(px: float, py: float, label: str | None = None) -> str:
    title = f"<title>{_e(label)}</title>" if label is not None else ""
    return (f'<rect class="extra" x="{px - 4.5:.1f}" y="{py - 4.5:.1f}" width="9" height="9" '
            f'transform="rotate(45 {px:.1f} {py:.1f})">{title}</rect>')


def _legend(width: int, extra_label: str | None) -> str:
    x = width - MARGIN["right"] - 150
    rows = ["on the front", "dominated"] + ([extra_label] if extra_label is not None else [])
    parts = []
    for i, text in enumerate(rows):
        y = MARGIN["top"] + 8 + 18 * i
        marker = (f'<circle class="point front" cx="{x}" cy="{y}" r="6"/>',
                  f'<circle class="point dominated" cx="{x}" cy="{y}" r="4.5"/>',
                  _diamond(x, y))[i]
        parts.append(f'{marker}<text class="legend" x="{x + 12}" y="{y + 4}">{_e(text)}</text>')
    return f'<g class="legend">{"".join(parts)}</g>'


def _placed(points: Sequence[Mapping]) -> list[Mapping]:
    """The extra points with a finite x and y (the others cannot be drawn)."""
    return [p for p in points if all(labels.finite_number(p.get(axis)) is not None for axis in ("x", "y"))]


def extra_legend(points: Sequence[Mapping]) -> str:
    """The legend's entry for the extra points: their label when they share one, else the first word
    their labels share (``grid`` for ``grid β=1`` and ``grid β=100``), else ``other runs``."""
    names = {str(p.get("label", "")) for p in points}
    if len(names) == 1:
        return names.pop()
    first = {name.split(" ", 1)[0] for name in names}
    return first.pop() if len(first) == 1 and "" not in first else "other runs"


def scatter_svg(rows: Sequence[Mapping], objectives: Mapping[str, str],
                meanings: Mapping[str, str], extra: Sequence[Mapping] = ()) -> str | None:
    """The scatter plot of the COMPLETE trials (``rows`` carry ``front``) and the ``extra`` points
    (each with ``label``, ``x``, ``y``), as inline SVG; None when there is nothing to plot on two
    axes."""
    chosen = axes(objectives)
    plotted = [row for row in rows if _plotted(row, list(objectives))]
    if chosen is None or not plotted:
        return None
    x_name, y_name = chosen
    others = _placed(extra)
    x = Scale([float(row[x_name]) for row in plotted] + [float(p["x"]) for p in others],
              MARGIN["left"], WIDTH - MARGIN["right"])
    y = Scale([float(row[y_name]) for row in plotted] + [float(p["y"]) for p in others],
              HEIGHT - MARGIN["bottom"], MARGIN["top"])
    parts = _frame(x, y, _axis_title(x_name, objectives[x_name], meanings, True),
                   _axis_title(y_name, objectives[y_name], meanings, False), WIDTH, HEIGHT)
    front = [(float(row[x_name]), float(row[y_name])) for row in plotted if row.get("front")]
    corners = staircase(front, objectives[x_name])
    if len(corners) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(cx):.1f},{y(cy):.1f}"
                        for i, (cx, cy) in enumerate(corners))
        parts.append(f'<path class="staircase" d="{path}"/>')
    parts += [_diamond(x(float(p["x"])), y(float(p["y"])), str(p.get("label", "")))
              for p in others]
    for row in sorted(plotted, key=lambda r: bool(r.get("front"))):  # the front drawn on top
        parts.append(_point(row, x(float(row[x_name])), y(float(row[y_name])), x_name, y_name))
    parts.append(_legend(WIDTH, extra_legend(others) if others else None))
    label = f"{y_name} against {x_name}, one point per complete trial"
    return (f'<svg id="scatter" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{_e(label)}">{"".join(parts)}</svg>')


def hypervolume_svg(trials: Sequence[int], volumes: Sequence[float]) -> str | None:
    """The hypervolume after each trial against the trial's number, as inline SVG; None when no
    trial has added any."""
    if not volumes or not any(v > 0 for v in volumes):
        return None
    x = Scale([float(t) for t in trials], MARGIN["left"], LINE_WIDTH - MARGIN["right"],
              whole=True)
    y = Scale([0.0, *volumes], LINE_HEIGHT - MARGIN["bottom"], MARGIN["top"], from_zero=True)
    parts = _frame(x, y, "trial", "hypervolume so far", LINE_WIDTH, LINE_HEIGHT)
    pairs = list(zip(trials, volumes, strict=True))
    line = " ".join(f"{x(float(t)):.1f},{y(v):.1f}" for t, v in pairs)
    parts.append(f'<polyline class="volume" points="{line}"/>')
    parts += [f'<circle class="volume" cx="{x(float(t)):.1f}" cy="{y(v):.1f}" r="2.5">'
              f'<title>after trial {int(t)}: {v:.4g}</title></circle>' for t, v in pairs]
    return (f'<svg id="hypervolume" viewBox="0 0 {LINE_WIDTH} {LINE_HEIGHT}" width="{LINE_WIDTH}" '
            f'height="{LINE_HEIGHT}" role="img" aria-label="hypervolume after each trial">'
            f'{"".join(parts)}</svg>')


def _settings(row: Mapping, params: Sequence[str], objectives: Sequence[str]) -> str:
    items = [("trial", str(int(row["trial"])))] + [(key_of(c), _number(row.get(c))) for c in params]
    items += [(name, _number(row.get(name))) for name in objectives]
    items += [("on the front", "yes" if row.get("front") else "no"),
              ("MLflow run", row.get("run_id") or "–")]
    return "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)


def _detail(row: Mapping, params: Sequence[str], objectives: Sequence[str],
            image: bytes | None) -> str:
    """A trial's side panel (hidden until its point is chosen): its result and its settings."""
    trial = int(row["trial"])
    picture = (f'<img src="{data_uri(image)}" alt="{_e(f"result of trial {trial}")}">' if image
               else '<p class="none">no result image</p>')
    return (f'<div class="detail" id="detail-{trial}" hidden><h3>trial {trial}</h3>{picture}'
            f'<dl>{_settings(row, params, objectives)}</dl></div>')


IMPORTANCE_MEANING = (
    "Importance (Optuna's fANOVA) is the share of an objective's variance over the trials so far "
    "that a parameter explains: where the search found that parameter to matter, not a cause.")


def importances_table(importances: Mapping[str, Mapping[str, float]], params: Sequence[str],
                      objectives: Sequence[str]) -> str:
    """Optuna's importances as a table, searched key by objective, in percent, with what they
    mean."""
    note = f'<p class="note">{_e(IMPORTANCE_MEANING)}</p>'
    if not any(importances.values()):
        return (f'{note}<p class="note">Optuna could not compute importances (it needs at least '
                f'two complete trials).</p>')
    keys = list(dict.fromkeys([*(key_of(c) for c in params),
                               *(k for found in importances.values() for k in found)]))
    head = "".join(f"<th>{_e(name)}</th>" for name in objectives)
    body = []
    for key in keys:
        shares = [labels.finite_number(importances.get(name, {}).get(key)) for name in objectives]
        cells = "".join(f'<td class="num">{"–" if share is None else f"{100 * share:.0f} %"}</td>'
                        for share in shares)
        body.append(f"<tr><th>{_e(key)}</th>{cells}</tr>")
    return (f'{note}<table id="importances"><thead><tr><th>parameter</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def trials_table(rows: Sequence[Mapping], params: Sequence[str], objectives: Sequence[str]) -> str:
    """Every trial in order: number, state, searched values, objectives, whether it is on the
    front; a plotted trial's row shows its panel when clicked."""
    columns = ["trial", "state", *(key_of(p) for p in params), *objectives, "front"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        trial = int(row["trial"])
        cells = [str(trial), row.get("state", ""), *(_number(row.get(p)) for p in params),
                 *(_number(row.get(o)) for o in objectives), "yes" if row.get("front") else ""]
        link = f' data-trial="{trial}" tabindex="0"' if _plotted(row, objectives) else ""
        body.append(f'<tr{link}>{"".join(f"<td>{_e(c)}</td>" for c in cells)}</tr>')
    return (f'<table id="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _not_plotted(rows: Sequence[Mapping], objectives: Sequence[str]) -> str:
    left = [row for row in rows if not _plotted(row, objectives)]
    if not left:
        return ""
    items = ", ".join(f"trial {int(row['trial'])} ({row.get('state', '')})" for row in left)
    return f'<p class="note" id="not-plotted">Not plotted (no complete values): {_e(items)}.</p>'


def _about(space: Mapping[str, str], sampler: str, seed, count: int, front: int) -> str:
    """The line under the title (trials on the front, sampler, seed) and the searched space."""
    how = ", ".join(part for part in (f"sampler {sampler}" if sampler else "",
                                      f"seed {seed}" if seed is not None else "") if part)
    line = f'<p class="description">{front} of {count} trials on the front'
    line += f" · {_e(how)}.</p>" if how else ".</p>"
    searched = "".join(f"<li><code>{_e(key)}</code>: {_e(where)}</li>"
                       for key, where in space.items())
    return line + (f'<ul class="space">{searched}</ul>' if searched else "")


def _volume_note(names: Sequence[str], reference: Sequence[float] | None) -> str:
    bound = ", ".join(f"{name} {value:.4g}"
                      for name, value in zip(names, reference or (), strict=False))
    return ("The area of the objective space that the complete trials so far beat, bounded by the "
            f"reference point ({bound}: each objective's worst value moved 10 % of its range "
            "further out); it grows whenever a trial finds a better trade-off.")


def render(title: str, rows: Sequence[Mapping], params: Sequence[str],
           objectives: Mapping[str, str], meanings: Mapping[str, str] | None = None,
           importances: Mapping[str, Mapping[str, float]] | None = None,
           hypervolumes: Sequence[float] = (), reference: Sequence[float] | None = None,
           images: Mapping[int, bytes] | None = None, space: Mapping[str, str] | None = None,
           sampler: str = "", seed=None, extra: Sequence[Mapping] = ()) -> str:
    """The page: ``rows`` every trial in order (trial, state, run_id, ``params.<key>``..., one
    value per objective, ``front``), ``objectives`` each metric's direction, ``meanings`` what a
    better value of an objective means, ``hypervolumes`` the hypervolume after each trial against
    ``reference``, ``images`` each trial's result (PNG bytes) by trial number, ``extra`` other
    runs to place on the scatter plot (``label``, ``x``, ``y``)."""
    images, names = images or {}, list(objectives)
    scatter = scatter_svg(rows, objectives, meanings or {}, extra)
    plotted = [row for row in rows if _plotted(row, names)]
    details = "".join(_detail(row, params, names, images.get(int(row["trial"])))
                      for row in plotted)
    volume = hypervolume_svg([int(row["trial"]) for row in rows], hypervolumes)
    progress = (f'{volume}<p class="note">{_e(_volume_note(names, reference))}</p>' if volume
                else '<p class="note">No hypervolume yet.</p>')
    front = sum(1 for row in plotted if row.get("front"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
{_about(space or {}, sampler, seed, len(rows), front)}
<section id="front"><h2>The trials</h2><div class="layout">
<div class="plot">{scatter or '<p class="note">No complete trial to plot yet.</p>'}
<p class="note">Each circle is a complete trial: filled and joined by the front's line when no
other trial beats it on both objectives, hollow when one does. Click, hover or focus a point to
see its result.</p>
{_not_plotted(rows, names)}</div>
<aside id="panel" aria-live="polite"><p id="detail-empty" class="note">Click a point to see its
result and settings.</p>{details}</aside></div></section>
<section id="importance"><h2>What mattered</h2>
{importances_table(importances or {}, params, names)}</section>
<section id="order"><h2>Trials in order</h2>
{progress}
{trials_table(rows, params, names)}</section>
<script>{JS}</script>
</body></html>
"""


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
h3{font-size:15px;margin:0 0 6px}
.description,.note{color:#555}.space{margin:4px 0;color:#555}
.layout{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}.plot{flex:0 1 600px}
svg{max-width:100%;height:auto;font-size:11px}svg .axis,svg .tick{stroke:#888}
svg text{fill:#333;stroke:none}svg text.title{font-size:12px;font-weight:600}
.point{cursor:pointer}.point.front{fill:#d9480f;stroke:#7a2600;stroke-width:1.5}
.point.dominated{fill:#fff;stroke:#999;stroke-width:1.5}
.point.selected,.point:focus{outline:none;stroke:#1a73e8;stroke-width:3}
.staircase{fill:none;stroke:#d9480f;stroke-width:1.5;stroke-dasharray:4 3}
.extra{fill:#1a73e8;stroke:#0b3d91}
polyline.volume{fill:none;stroke:#2b8a3e;stroke-width:2}circle.volume{fill:#2b8a3e}
#panel{flex:0 0 320px;border:1px solid #ddd;border-radius:6px;padding:10px;
position:sticky;top:8px}
#panel img{width:300px;max-width:100%;display:block;margin-bottom:8px;background:#eee}
#panel dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0;font-size:13px}
#panel dt{color:#555}#panel dd{margin:0;word-break:break-all}
.none{color:#888;background:#f2f2f2;padding:24px;text-align:center}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px}
thead th{background:#f4f4f4}td.num{text-align:right}
#trials tr[data-trial]{cursor:pointer}#trials tr.selected{background:#fff4e0}
"""

JS = r"""
(function(){
var shown=null;
function show(t){var d=document.getElementById('detail-'+t);if(!d)return;
 if(shown)shown.hidden=true;document.getElementById('detail-empty').hidden=true;
 d.hidden=false;shown=d;
 [].forEach.call(document.querySelectorAll('.selected'),function(e){
  e.classList.remove('selected');});
 [].forEach.call(document.querySelectorAll('[data-trial="'+t+'"]'),function(e){
  e.classList.add('selected');});}
function target(e){return e.target.closest?e.target.closest('[data-trial]'):null;}
function chosen(e){var p=target(e);if(p)show(p.getAttribute('data-trial'));}
document.addEventListener('click',chosen);
document.addEventListener('focusin',chosen);
document.addEventListener('mouseover',function(e){var p=target(e);
 if(p&&p.classList.contains('point'))show(p.getAttribute('data-trial'));});
document.addEventListener('keydown',function(e){
 if(e.key==='Enter'||e.key===' '){if(target(e))e.preventDefault();chosen(e);}});
})();
"""
