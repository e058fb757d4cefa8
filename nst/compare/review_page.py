"""The two pages of ``nst-review``, as HTML strings: the blind comparison and the ranking.

Pure rendering (no Flask, no MLflow): ``nst.review_app`` serves what these return.

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

from nst.figures import labels


def _text(value) -> str:
    return html.escape(str(value))


def compare(title: str, runs: int, judgements: int, ranking_url: str = "ranking") -> str:
    """The comparison page (its pairs come from ``api/pair``, its answers go to ``api/judgements``)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>nst-review · {_text(title)}</title><style>{CSS}</style></head>
<body data-count="{judgements}">
<header><h1>{_text(title)}</h1>
<nav><span id="count">{judgements} judgements</span> · {runs} runs · <span id="who"></span>
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


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
header{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap;gap:8px}
h1{font-size:18px;margin:0}h2{font-size:16px;margin:24px 0 8px}nav{color:#555}
#name-form{margin:12px 0;padding:10px;background:#fff4e0;border:1px solid #f90;border-radius:6px}
#name-form[hidden]{display:none}
#inputs{display:flex;gap:12px;align-items:flex-end;margin:12px 0}#inputs figure{margin:0;text-align:center;color:#555}
#inputs img{max-height:120px;max-width:200px;display:block}.question{font-weight:600;margin:0 0 0 12px}
#pair{display:flex;gap:16px;align-items:flex-start}
.pane{margin:0;display:flex;flex-direction:column;align-items:center;gap:6px;flex:1 1 0;min-width:0}
.frame{overflow:hidden;width:100%;max-width:520px;aspect-ratio:4/3;background:#f2f2f2;cursor:grab;border-radius:4px}
.frame img{width:100%;height:100%;object-fit:contain;transform-origin:0 0;user-select:none;display:block}
.middle{display:flex;flex-direction:column;gap:8px;align-self:center}
button{font:inherit;padding:4px 14px;cursor:pointer}button:disabled{opacity:.5}
#status{min-height:1.4em;color:#333}.hint,.note{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:middle}
th{background:#f4f4f4}td.num{text-align:right;white-space:nowrap}.thumb{display:block;max-width:160px;max-height:120px}
.settings{color:#555;font-size:12px}code{font-size:11px;color:#888}
"""

COMPARE_JS = r"""
(function(){
var pair=null,busy=false,z={s:1,x:0,y:0},drag=null;
var imgs=[document.querySelector('#left img'),document.querySelector('#right img')];
var status=document.getElementById('status'),form=document.getElementById('name-form');
function name(){return localStorage.getItem('nst-reviewer')||'';}
function showName(){document.getElementById('who').textContent=name()?'reviewer: '+name():'';
 form.hidden=!!name();if(!name())document.getElementById('reviewer').focus();}
form.addEventListener('submit',function(e){e.preventDefault();var v=document.getElementById('reviewer').value.trim();
 if(v){localStorage.setItem('nst-reviewer',v);showName();}});
document.getElementById('rename').addEventListener('click',function(e){e.preventDefault();
 localStorage.removeItem('nst-reviewer');showName();});
function apply(){imgs.forEach(function(i){i.style.transform='translate('+z.x+'px,'+z.y+'px) scale('+z.s+')';});}
function zoom(f,px,py){var s=Math.min(8,Math.max(1,z.s*f));z.x=px-(px-z.x)*s/z.s;z.y=py-(py-z.y)*s/z.s;z.s=s;
 if(s===1){z.x=0;z.y=0;}apply();}
function centre(){var r=imgs[0].parentNode.getBoundingClientRect();return [r.width/2,r.height/2];}
document.querySelectorAll('.frame').forEach(function(f){
 f.addEventListener('wheel',function(e){e.preventDefault();var r=f.getBoundingClientRect();
  zoom(e.deltaY<0?1.25:0.8,e.clientX-r.left,e.clientY-r.top);},{passive:false});
 f.addEventListener('mousedown',function(e){drag={x:e.clientX-z.x,y:e.clientY-z.y};});});
window.addEventListener('mousemove',function(e){if(drag){z.x=e.clientX-drag.x;z.y=e.clientY-drag.y;apply();}});
window.addEventListener('mouseup',function(){drag=null;});
function setBusy(b){busy=b;document.querySelectorAll('button[data-answer]').forEach(function(x){x.disabled=b;});}
function next(){setBusy(true);return fetch('api/pair').then(function(r){return r.json();}).then(function(p){
 pair=p;imgs[0].src='image/'+p.left+'/result';imgs[1].src='image/'+p.right+'/result';
 document.getElementById('content').src='image/'+p.left+'/content';document.getElementById('style').src='image/'+p.left+'/style';
 document.body.dataset.pair=p.id;z={s:1,x:0,y:0};apply();setBusy(false);});}
function judge(answer){
 if(!pair||busy)return;if(!name()){showName();status.textContent='Enter your name first.';return;}
 setBusy(true);
 var body={id:pair.id,left:pair.left,right:pair.right,answer:answer,reviewer:name()};
 fetch('api/judgements',{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body)})
 .then(function(r){return r.json().then(function(d){return [r.ok,d];});}).then(function(res){
  var d=res[1];if(!res[0]){status.textContent='Not recorded: '+d.error;
   if(d.kept)return next();setBusy(false);return;}
  document.body.dataset.count=d.count;document.getElementById('count').textContent=d.count+' judgements';
  var said={left:'you preferred its left one',right:'you preferred its right one',tie:'a tie',skip:'skipped'}[answer];
  status.textContent='Previous pair (judgement '+d.count+' kept, '+said+'): its left was '+d.left+', its right '+d.right+'. A new pair is shown above.';
  return next();
 }).catch(function(e){status.textContent='Not recorded: '+e;setBusy(false);});}
document.querySelectorAll('button[data-answer]').forEach(function(b){
 b.addEventListener('click',function(){judge(b.dataset.answer);});});
document.addEventListener('keydown',function(e){
 if(e.target.tagName==='INPUT'||e.ctrlKey||e.metaKey||e.altKey)return;
 var a={ArrowLeft:'left',ArrowRight:'right','=':'tie',s:'skip',S:'skip'}[e.key];
 if(a){e.preventDefault();judge(a);return;}
 var c=centre();if(e.key==='+')zoom(1.25,c[0],c[1]);else if(e.key==='-')zoom(0.8,c[0],c[1]);
 else if(e.key==='0'){z={s:1,x:0,y:0};apply();}});
showName();next();
})();
"""
