"""The two pages of ``nst-review``, as HTML strings: the blind comparison and the ranking.

Pure rendering (no Flask, no MLflow): ``nst.compare.review_app`` serves what these return.

The comparison page shows the content and style images, then two results side by side with
nothing that tells them apart: the server draws the sides at random and sends run ids only,
which the page uses to fetch the images; the settings come back in the answer to the
judgement, so they are read after deciding. Keys: ← left, → right, = tie, s skip; + and −
zoom both results together around the centre (the mouse wheel around the pointer), dragging
pans both, 0 resets (a new pair starts unzoomed). The reviewer's name is asked once and kept in the browser
(``localStorage``); every judgement carries it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from nst.compare.static import asset
from nst.figures import labels

CSS = asset("review.css")
COMPARE_JS = asset("review_compare.js")


def _text(value) -> str:
    return html.escape(str(value))


def compare(title: str, runs: int, judgements: int, skipped: int = 0, ranking_url: str = "ranking") -> str:
    """The comparison page (its pairs come from ``api/pair``, its answers go to ``api/judgements``); skips are
    shown apart from the judgements."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>nst-review · {_text(title)}</title><style>{CSS}</style></head>
<body data-count="{judgements}" data-skipped="{skipped}">
<header><h1>{_text(title)}</h1>
<nav><span id="count">{judgements} judgements{f" · {skipped} skipped" if skipped else ""}</span> · {runs} runs · <span id="who"></span>
<a id="rename" href="#">change name</a> · <a href="{_text(ranking_url)}">ranking</a></nav></header>
<form id="name-form" hidden><label for="reviewer">Your name (kept with each judgement):</label>
<input id="reviewer" name="reviewer" maxlength="64" autocomplete="name" required><button type="submit">start</button></form>
<section id="inputs"><figure><img id="content" alt="content image"><figcaption>content</figcaption></figure>
<figure><img id="style" alt="style image"><figcaption>style</figcaption></figure>
<p class="question">Which result is the better style transfer of this content in this style?</p></section>
<section id="pair">
<figure class="pane" id="left"><div class="frame"><img alt="left result" draggable="false"></div>
<button type="button" data-answer="left">&larr; left is better</button></figure>
<div class="middle"><button type="button" data-answer="tie">= tie</button>
<button type="button" data-answer="skip">s skip</button></div>
<figure class="pane" id="right"><div class="frame"><img alt="right result" draggable="false"></div>
<button type="button" data-answer="right">right is better &rarr;</button></figure></section>
<p id="status" role="status" aria-live="polite"></p>
<p class="hint">Keys: &larr; left, &rarr; right, = tie, s skip · + / &minus; zoom both, drag to pan, 0 resets ·
the settings of the two results are shown once you have judged them.</p>
<script>{COMPARE_JS}</script>
</body></html>
"""


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}g}" if isinstance(value, float) else str(value)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else _text(value)


def ranking(title: str, rows: Sequence[Mapping], settings: Mapping[str, Mapping[str, str]],
            measures: Sequence[Mapping], agreement: Sequence[Mapping], judgements: int, stable: int | None,
            measure_names: Sequence[str], mlflow_url: str | None = None) -> str:
    """The ranking page: ``rows`` the ranking table's records best first (rank, run_id, label, score, low,
    high, wins, losses, ties, comparisons, measures), ``settings`` each run's settings, ``measures`` the
    rank correlations, ``agreement`` the reviewer pairs, ``stable`` when the top three last changed."""
    body = "".join(_ranking_row(row, settings.get(row["run_id"], {}), measure_names) for row in rows)
    head = "".join(f"<th>{_text(name)}</th>" for name in measure_names)
    stable_line = ("No judgement yet." if stable is None else
                   f"{judgements} judgements; the top three have been the same, in the same order, since "
                   f"judgement {stable}.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>ranking · {_text(title)}</title><style>{CSS}</style></head>
<body><header><h1>Human ranking · {_text(title)}</h1>
<nav><a href="./">compare more</a>{f' · <a href="{_text(mlflow_url)}">in MLflow</a>' if mlflow_url else ''}</nav></header>
<p id="stable">{_text(stable_line)}</p>
<table id="ranking"><thead><tr><th>rank</th><th>result</th><th>run</th><th>score</th><th>95 % interval</th>
<th>wins</th><th>losses</th><th>ties</th><th>comparisons</th>{head}</tr></thead><tbody>{body}</tbody></table>
<p class="note">Score: the log strength of a Bradley–Terry model with ties fitted on every judgement
(0 = average; a difference of 1 means the better run is preferred about 2.7 times as often as the other,
ties aside). Runs whose intervals overlap are not told apart by the judgements so far.</p>
{_agreement(agreement)}
{_measures(measures)}
</body></html>
"""


def _ranking_row(row: Mapping, settings: Mapping[str, str], measure_names: Sequence[str]) -> str:
    shown = "<br>".join(f"{_text(labels.name(key))} = {_text(value)}" for key, value in settings.items())
    interval = f"{_number(row['low'], 2)} … {_number(row['high'], 2)}"
    extra = "".join(f'<td class="num">{_cell(row.get(name))}</td>' for name in measure_names)
    return (f'<tr data-run="{_text(row["run_id"])}"><td class="num">{row["rank"]}</td>'
            f'<td><img class="thumb" src="image/{_text(row["run_id"])}/thumb" alt="{_text(row["label"])}"></td>'
            f'<td><b class="label">{_text(row["label"])}</b><div class="settings">{shown}</div>'
            f'<code>{_text(row["run_id"])}</code></td>'
            f'<td class="num score">{_number(row["score"])}</td><td class="num">{interval}</td>'
            f'<td class="num">{row["wins"]}</td><td class="num">{row["losses"]}</td><td class="num">{row["ties"]}</td>'
            f'<td class="num">{row["comparisons"]}</td>{extra}</tr>')


def _agreement(rows: Sequence[Mapping]) -> str:
    if not rows:
        return ('<section id="agreement"><h2>Agreement between reviewers</h2>'
                '<p class="note">One reviewer so far.</p></section>')
    body = "".join(f"<tr><td>{_text(r['reviewer_a'])}</td><td>{_text(r['reviewer_b'])}</td>"
                   f"<td class='num'>{r['pairs']}</td><td class='num'>{_cell(r['share'])}</td>"
                   f"<td class='num'>{_cell(r['kappa'])}</td><td class='num'>{_cell(r['tau'])}</td></tr>"
                   for r in rows)
    return ('<section id="agreement"><h2>Agreement between reviewers</h2><table><thead><tr><th>reviewer</th>'
            '<th>reviewer</th><th>pairs both judged</th><th>same verdict</th><th>Cohen\'s κ</th>'
            f'<th>Kendall τ of their rankings</th></tr></thead><tbody>{body}</tbody></table></section>')


def _measures(rows: Sequence[Mapping]) -> str:
    body = "".join(f"<tr><td><code>{_text(r['measure'])}</code></td><td>{_text(r['meaning'])}</td>"
                   f"<td class='num rho'>{_number(r['rho'], 2)}</td><td class='num'>{r['runs']}</td></tr>"
                   for r in rows)
    return f"""<section id="measures"><h2>Automatic measures against the human ranking</h2>
<table><thead><tr><th>measure</th><th>what it measures</th><th>Spearman ρ with the human score</th><th>runs</th></tr>
</thead><tbody>{body}</tbody></table>
<p class="note">ρ near +1: the measure is higher for the runs people preferred; near −1: lower; near 0: it does
not tell what people preferred. Each measures one side of the trade-off only (content kept, or the style's
colours taken): neither says whether a result is a good picture, and the unchanged photograph has the best
similarity to the content of all.</p></section>"""
