"""A sweep's report as one self-contained HTML page (``report.html``).

Everything is inline: images as base64 data URIs, CSS, a little vanilla JS and
the loss plot as SVG, so the page works offline and inside MLflow's artifact
viewer (a sandboxed iframe: scripts only, no same-origin storage, and links are
followed by script rather than by URL). Gathering the images from the store is
``nst.compare.sweep_report``' job; this module only lays them out.

The page shows every job's final image large, in grid.png's order and labelled
with its swept values; a step slider that moves every run's progress images
together; a side-by-side (or flicker) comparison of any two images; the final
losses against the swept value; and the summary table, sortable.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

from nst.figures import labels, plots

# the largest size a result is shown at (its own resolution below that)
SHOW_MAX = 384
# a tiny result (a test's 32 px) is scaled up to this, pixelated
SHOW_MIN = 128
# slider positions at most: the progress steps are thinned out evenly beyond this
MAX_POSITIONS = 20
# progress frames in the page at most (jobs x positions): a large sweep gets fewer positions
FRAME_BUDGET = 120
FRAME_QUALITY = 90
INPUT_KEYS = ("content", "style", "pair")
TABLE_COLUMNS = ("job", "status", "label", "final_total", "final_content", "final_style", "evaluations",
                 "converged", "elapsed_s", "failure")
HUMAN_COLUMNS = ("human_rank", "human_score")  # once the sweep was judged with nst-review
# axes whose values are shown as they are (a run's label, a comparison's column heading), not as key=value
PLAIN_AXES = ("label", "sweep")


@dataclass
class JobImages:
    """One job's pictures as encoded bytes (PNG, JPEG or WebP): its final image, its inputs, its progress."""

    result: bytes | None = None
    content: bytes | None = None
    style: bytes | None = None
    progress: dict[int, bytes] = field(default_factory=dict)  # step -> image


def varies_inputs(keys: Sequence[str]) -> bool:
    """Whether the sweep changes the images themselves (content, style or pair): one row per job."""
    return any(key.lstrip("+~").split(".")[-1] in INPUT_KEYS for key in keys)


def positions(steps: Sequence[int], most: int = MAX_POSITIONS) -> list[int]:
    """The slider's steps: all of them, or ``most`` spread evenly (first and last kept)."""
    most = max(2, most)
    unique = sorted(set(steps))
    if len(unique) <= most:
        return unique
    return sorted({unique[round(i * (len(unique) - 1) / (most - 1))] for i in range(most)})


def most_positions(jobs: int) -> int:
    """How many slider positions a sweep of ``jobs`` jobs gets: ``MAX_POSITIONS``, fewer beyond ``FRAME_BUDGET``."""
    return max(5, min(MAX_POSITIONS, FRAME_BUDGET // max(1, jobs)))


def frame_at(steps: Sequence[int], position: int) -> int | None:
    """The run's latest step at or before ``position`` (a run that stopped early keeps its last), else None."""
    earlier = [step for step in steps if step <= position]
    return max(earlier) if earlier else None


def encode_frame(picture: Image.Image, kind: str = "WEBP", quality: int = FRAME_QUALITY) -> bytes:
    """A progress frame, lossy and no larger than it is shown (``SHOW_MAX``): WebP keeps a report with
    hundreds of frames a few MB (sizes in docs/pages/decisions.md)."""
    picture = picture.convert("RGB")
    picture.thumbnail((SHOW_MAX, SHOW_MAX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format=kind, quality=quality)
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return "application/octet-stream"


def _size(data: bytes | None) -> tuple[int, int] | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as picture:
            return picture.size
    except OSError:
        return None


def _shown(size: tuple[int, int] | None, largest: int = SHOW_MAX) -> tuple[int, int]:
    """The size an image is shown at: its own up to ``largest``, tiny ones scaled up to ``SHOW_MIN``."""
    width, height = size or (256, 256)
    scale = min(1.0, largest / max(width, height))
    if max(width, height) * scale < SHOW_MIN:
        scale = SHOW_MIN / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    found = labels.finite_number(value)
    if found is not None and not isinstance(value, str | bool):
        return f"{found:.4g}"
    return str(value)


def _e(value) -> str:
    return html.escape(_text(value), quote=True)


def _caption(row: Mapping) -> str:
    status = row.get("status") or ""
    rank = labels.finite_number(row.get("human_rank"))
    return (str(row.get("label") or f"job {row['job']}") + ("" if status == "FINISHED" else f" [{status}]")
            + ("" if rank is None else f" · human #{int(rank)}"))


# --- the page's parts ------------------------------------------------------------------------


def _figure(row: Mapping, images: JobImages, with_inputs: bool) -> str:
    job = int(row["job"])
    caption = _caption(row)
    size = _shown(_size(images.result) or _size(next(iter(images.progress.values()), None)))
    style = f"width:{size[0]}px;height:{size[1]}px"
    if images.result:
        picture = (f'<img class="shot" src="{data_uri(images.result)}" style="{style}" '
                   f'alt="{html.escape(caption, quote=True)}" title="click two images to compare them">')
    else:
        picture = f'<div class="shot none" style="{style}">no image</div>'
    inputs = ""
    if with_inputs:
        small = []
        for name in ("content", "style"):
            data = getattr(images, name)
            shown = _shown(_size(data), SHOW_MAX // 2)
            small.append(f'<div class="input"><img src="{data_uri(data)}" style="width:{shown[0]}px" alt="{name}">'
                         f'<span>{name}</span></div>' if data else f'<div class="input none">no {name}</div>')
        inputs = f'<div class="inputs">{"".join(small)}</div>'
    details = f'<span class="details">{_e(row["details"])}</span>' if row.get("details") else ""
    link = (f' <a class="run-link" href="{_e(row["link"])}" target="_blank" rel="noopener">in MLflow</a>'
            if row.get("link") else "")  # a new tab: inside MLflow the page is in a frame
    return (f'<figure class="job" id="job-{job}" data-job="{job}" data-label="{html.escape(str(row.get("label")), quote=True)}"'
            f' data-status="{_e(row.get("status"))}">{inputs}<div class="frame">{picture}'
            f'<span class="stepmark"></span></div><figcaption>{html.escape(caption)}{link}{details}</figcaption></figure>')


def _heading(key: str, value) -> str:
    return _e(value) if key in PLAIN_AXES else f"{html.escape(labels.name(key))}={_e(value)}"


def _grid(rows: Sequence[Mapping], keys: Sequence[str], images: Mapping[int, JobImages],
          inputs_per_job: bool) -> str:
    """The jobs in grid.png's order: a row per job for image pairs, rows x columns for two keys."""
    figure = {int(row["job"]): _figure(row, images.get(int(row["job"]), JobImages()), inputs_per_job)
              for row in rows}
    if varies_inputs(keys):
        return f'<div class="pairs">{"".join(figure[int(row["job"])] for row in rows)}</div>'
    if len(keys) == 2:
        down, across = (_axis([row.get(key) for row in rows], key) for key in keys)
        cell = {(str(row.get(keys[0])), str(row.get(keys[1]))): int(row["job"]) for row in rows}
        head = "".join(f'<th>{_heading(keys[1], value)}</th>' for value in across)
        body = []
        for value in down:
            cells = "".join(f'<td>{figure.get(cell.get((str(value), str(other))), "")}</td>' for other in across)
            body.append(f'<tr><th>{_heading(keys[0], value)}</th>{cells}</tr>')
        return f'<table class="grid2d"><tr><th></th>{head}</tr>{"".join(body)}</table>'
    return f'<div class="flat">{"".join(figure[int(row["job"])] for row in rows)}</div>'


def _axis(values: list, key: str) -> list:
    """An axis's values in order: sorted (numbers as numbers), or as they come for a plain axis."""
    return list(dict.fromkeys(values)) if key in PLAIN_AXES else labels.sorted_unique(values)


def grid_order(rows: Sequence[Mapping], keys: Sequence[str]) -> list[int]:
    """The jobs in the order the page (and grid.png) shows them."""
    if len(keys) == 2 and not varies_inputs(keys):
        down, across = (_axis([row.get(key) for row in rows], key) for key in keys)
        cell = {(str(row.get(keys[0])), str(row.get(keys[1]))): int(row["job"]) for row in rows}
        return [cell[(str(a), str(b))] for a in down for b in across if (str(a), str(b)) in cell]
    return [int(row["job"]) for row in rows]


def _inputs(shared: JobImages | None) -> str:
    if shared is None or not (shared.content or shared.style):
        return ""
    parts = []
    for name in ("content", "style"):
        data = getattr(shared, name)
        if data:
            shown = _shown(_size(data), SHOW_MAX // 2)
            parts.append(f'<figure class="input"><img src="{data_uri(data)}" style="width:{shown[0]}px" '
                         f'alt="{name}"><figcaption>{name}</figcaption></figure>')
    return f'<section id="inputs">{"".join(parts)}</section>'


def frames_data(rows: Sequence[Mapping], images: Mapping[int, JobImages], steps: Sequence[int] | None = None) -> dict:
    """The slider's data: its steps, each distinct frame once (by content), and per job a frame index (or None) per
    step (``jobs``) and the step that frame was logged at (``at``)."""
    if steps is None:
        steps = positions([step for row in rows for step in images.get(int(row["job"]), JobImages()).progress],
                          most_positions(len(rows)))
    steps = sorted(steps)
    uris: list[str] = []
    index: dict[bytes, int] = {}  # by content: a run that stopped early repeats its result at every later step
    jobs, at = {}, {}
    for row in rows:
        job = int(row["job"])
        progress = images.get(job, JobImages()).progress
        frames, shown = [], []
        for position in steps:
            step = frame_at(list(progress), position)
            shown.append(step)
            if step is not None and progress[step] not in index:
                index[progress[step]] = len(uris)
                uris.append(data_uri(progress[step]))
            frames.append(None if step is None else index[progress[step]])
        jobs[str(job)], at[str(job)] = frames, shown
    return {"steps": steps, "images": uris, "jobs": jobs, "at": at}


def _slider(frames: dict) -> str:
    steps = frames["steps"]
    if not steps:
        return '<p class="note">No progress images were logged (frame_every): the slider is left out.</p>'
    last = len(steps)
    return (f'<div id="controls"><label for="step">step</label> <input type="range" id="step" min="0" '
            f'max="{last}" value="{last}" step="1"> <output id="step-value">final result</output>'
            f'<span class="hint">{len(steps)} logged steps ({steps[0]}..{steps[-1]}) and the final result; '
            f'a run with no image at a step shows its latest earlier one. Click two images to compare them.</span></div>')


def loss_plot_svg(rows: Sequence[Mapping], keys: Sequence[str]) -> tuple[str | None, str]:
    """Final content and style loss against the first swept value (``nst.figures.plots``), as inline SVG
    whose points link to their jobs; ``(None, why)`` when there is nothing to plot on a numeric axis."""
    if not keys:
        return None, "Nothing was swept."
    if varies_inputs(keys):
        return None, "The swept values are image pairs, not numbers: no loss plot (see the table)."
    key = keys[0]
    if any(labels.finite_number(row.get(key)) is None for row in rows):
        return None, f"The swept values of {key} are not numbers: no loss plot (see the table)."
    plot = plots.final_losses(rows, keys)
    if plot is None:
        return None, "No job finished with finite losses: nothing to plot."
    axis_kind = ("log" if plot.log_x else "linear") + " x"
    return plot.svg(), f"Each point is a job: hover for its values, click to see its image ({axis_kind}, log y where all losses are positive)."


def _table(rows: Sequence[Mapping], keys: Sequence[str]) -> str:
    judged = [c for c in HUMAN_COLUMNS if any(labels.finite_number(row.get(c)) is not None for row in rows)]
    columns = list(dict.fromkeys([*TABLE_COLUMNS[:3], *judged, *keys, *TABLE_COLUMNS[3:]]))
    head = "".join(f'<th data-col="{i}" title="click to sort">{html.escape(str(c))}</th>' for i, c in enumerate(columns))
    body = []
    for row in rows:
        job = int(row["job"])
        cells = []
        for column in columns:
            value = row.get(column)
            number = labels.finite_number(value)
            sort = f' data-sort="{number!r}"' if number is not None else ""
            text = _e(value)
            if column == "job":
                text = f'<a href="#job-{job}">{job}</a>'
            elif column == "label":
                text = f'<a href="#job-{job}">{text}</a>'
            elif column == "failure" and len(_text(value)) > 90:  # the whole reason on hover
                sort += f' title="{text}"'
                text = html.escape(_text(value)[:88]) + "…"
            cells.append(f"<td{sort}>{text}</td>")
        body.append(f'<tr data-job="{job}">{"".join(cells)}</tr>')
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render(rows: Sequence[Mapping], keys: Sequence[str], images: Mapping[int, JobImages], title: str,
           description: str = "", shared: JobImages | None = None, steps: Sequence[int] | None = None,
           inputs_per_job: bool | None = None) -> str:
    """The page: ``rows`` are the summary table's rows (job, status, label, swept values, final losses...;
    optionally ``details``, a line under the image, and ``link``, its run in MLflow) in table order,
    ``images`` each job's pictures by job number, ``shared`` the inputs all jobs share (unless
    ``inputs_per_job``: by default when the keys vary the images), ``steps`` the slider's positions (by
    default the progress images' steps, thinned out)."""
    inputs_per_job = varies_inputs(keys) if inputs_per_job is None else inputs_per_job
    frames = frames_data(rows, images, steps)
    svg, note = loss_plot_svg(rows, keys)
    plot = (f'<section id="plot"><h2>Final losses</h2>{svg}<p class="note">{html.escape(note)}</p></section>'
            if svg else f'<section id="plot"><h2>Final losses</h2><p class="note skip">{html.escape(note)}</p></section>')
    data = json.dumps(frames, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{f'<p class="description">{html.escape(description)}</p>' if description else ''}
{_inputs(None if inputs_per_job else shared)}
{_slider(frames)}
<section id="grid">{_grid(rows, keys, images, inputs_per_job) if rows else '<p class="note">No job was recorded.</p>'}</section>
{plot}
<section id="table"><h2>Summary</h2><p class="note">Click a header to sort; a row's job or label shows its image.</p>
{_table(rows, keys)}</section>
<div id="compare" hidden><div class="bar"><span>compare</span><button id="flicker" type="button">flicker</button>
<button id="compare-close" type="button">close</button></div><div class="panes">
<figure class="pane"><img alt=""><figcaption></figcaption></figure>
<figure class="pane"><img alt=""><figcaption></figcaption></figure></div></div>
<script type="application/json" id="frames">{data}</script>
<script>{JS}</script>
</body></html>
"""


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.description,.note,.hint{color:#555}.hint{margin-left:12px;font-size:12px}
#inputs{display:flex;gap:12px}#inputs figure{margin:0;text-align:center}
#controls{position:sticky;top:0;background:#fffe;padding:8px 0;z-index:2;border-bottom:1px solid #ddd}
#step{width:320px;vertical-align:middle}#step-value{font-weight:600;display:inline-block;min-width:7em}
.flat,.pairs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.pairs{flex-direction:column}
figure.job{margin:0;padding:6px;border:2px solid transparent;border-radius:6px;display:inline-flex;flex-direction:column;align-items:center}
.pairs figure.job{flex-direction:row;flex-wrap:wrap;gap:10px;align-items:flex-end}
figure.job figcaption{font-weight:600;text-align:center;max-width:384px}
figure.job .details{display:block;font-weight:400;font-size:12px;color:#555}.run-link{font-weight:400;font-size:12px}
figure.job[data-status=FAILED] figcaption,figure.job[data-status=KILLED] figcaption{color:#b00}
.inputs{display:flex;gap:8px}.input{display:flex;flex-direction:column;align-items:center;font-size:12px;color:#555}
.frame{position:relative}.shot{display:block;cursor:pointer;image-rendering:auto;background:#eee}
.stepmark{position:absolute;left:4px;top:4px;background:#000a;color:#fff;font-size:11px;padding:0 4px;border-radius:3px}
.stepmark:empty{display:none}
.none{display:flex;align-items:center;justify-content:center;color:#888;background:#f2f2f2}
figure.job.selected{border-color:#1a73e8}figure.job.hit{border-color:#f90;background:#fff4e0}
.grid2d{border-collapse:collapse}.grid2d th{font-weight:600;padding:4px;color:#444}.grid2d td{vertical-align:top}
#plot svg{max-width:100%;height:auto}#plot a.point{cursor:pointer}
#summary{border-collapse:collapse;font-size:13px}#summary th,#summary td{border:1px solid #ddd;padding:3px 8px}
#summary th{background:#f4f4f4;cursor:pointer;user-select:none}#summary th.asc::after{content:" \\25B2"}
#summary th.desc::after{content:" \\25BC"}#summary td[data-sort]{text-align:right}
#summary tr.hit{background:#fff4e0}#summary td a{white-space:nowrap}
#compare{position:fixed;inset:0;background:#000d;z-index:10;display:flex;flex-direction:column;align-items:center;padding:12px;overflow:auto}
#compare[hidden]{display:none}#compare .bar{color:#fff;display:flex;gap:12px;align-items:center;margin-bottom:10px}
#compare button{font:inherit;padding:3px 12px;cursor:pointer}#compare button.on{background:#1a73e8;color:#fff}
#compare .panes{display:flex;gap:16px;align-items:flex-start}
#compare .pane{margin:0;color:#fff;text-align:center}#compare .pane img{width:min(44vw,512px);image-rendering:auto;background:#333}
#compare.flicker .panes{display:grid}#compare.flicker .pane{grid-area:1/1}#compare.flicker .pane.off{visibility:hidden}
"""

JS = r"""
(function(){
var data=JSON.parse(document.getElementById('frames').textContent);
var slider=document.getElementById('step'),out=document.getElementById('step-value');
var figures=[].slice.call(document.querySelectorAll('figure.job'));
var finals={};
figures.forEach(function(f){var i=f.querySelector('img.shot');if(i)finals[f.dataset.job]=i.src;});
function shot(f){var i=f.querySelector('img.shot');if(!i){var d=f.querySelector('.shot.none');
 if(!d)return null;i=document.createElement('img');i.className='shot';i.setAttribute('style',d.getAttribute('style'));
 i.alt=f.dataset.label;d.replaceWith(i);i.dataset.blank='1';}return i;}
function showStep(){
 var p=+slider.value,last=data.steps.length;
 out.textContent=p>=last?'final result':'step '+data.steps[p];
 figures.forEach(function(f){
  var j=f.dataset.job,frames=data.jobs[j]||[],mark=f.querySelector('.stepmark');
  var img=p>=last?(finals[j]||null):(frames[p]==null?null:data.images[frames[p]]);
  var i=shot(f);if(!i)return;
  if(img){i.src=img;i.style.visibility='visible';}else{i.removeAttribute('src');i.style.visibility='hidden';}
  if(mark){var s='',at=(data.at[j]||[])[p];
   if(p<last){s=at==null?'no image yet':(at!==data.steps[p]?'showing step '+at:'');}
   mark.textContent=s;}
 });
 refresh();
}
if(slider){slider.addEventListener('input',showStep);}
function jump(id){var el=document.getElementById(id);if(!el)return;
 el.scrollIntoView({behavior:'smooth',block:'center'});el.classList.add('hit');
 setTimeout(function(){el.classList.remove('hit');},2000);}
document.addEventListener('click',function(e){
 var a=e.target.closest?e.target.closest('a'):null;
 if(a){var h=a.getAttribute('href')||a.getAttribute('xlink:href')||'';
  if(h.charAt(0)==='#'){e.preventDefault();jump(h.slice(1));return;}}
 var i=e.target.closest?e.target.closest('img.shot'):null;
 if(i&&i.src){pick(i.closest('figure.job'));}
});
var picked=[],box=document.getElementById('compare'),panes=box.querySelectorAll('.pane'),timer=null,shown=0;
function pick(f){var k=picked.indexOf(f);
 if(k>=0){picked.splice(k,1);f.classList.remove('selected');return;}
 picked.push(f);f.classList.add('selected');
 if(picked.length===2){box.hidden=false;refresh();}}
function refresh(){if(box.hidden)return;
 picked.forEach(function(f,n){var i=f.querySelector('img.shot');panes[n].querySelector('img').src=i&&i.src||'';
  var m=f.querySelector('.stepmark');panes[n].querySelector('figcaption').textContent=
   f.querySelector('figcaption').textContent+(slider?' \u2014 '+(m&&m.textContent||out.textContent):'');});}
function flicker(on){var b=document.getElementById('flicker');clearInterval(timer);timer=null;
 box.classList.toggle('flicker',on);b.classList.toggle('on',on);panes[0].classList.remove('off');panes[1].classList.remove('off');
 if(on){shown=0;panes[1].classList.add('off');timer=setInterval(function(){shown=1-shown;
  panes[shown].classList.remove('off');panes[1-shown].classList.add('off');},500);}}
document.getElementById('flicker').addEventListener('click',function(){flicker(!timer);});
function close(){flicker(false);box.hidden=true;picked.forEach(function(f){f.classList.remove('selected');});picked=[];}
document.getElementById('compare-close').addEventListener('click',close);
document.addEventListener('keydown',function(e){if(e.key==='Escape'&&!box.hidden)close();});
var table=document.getElementById('summary');
[].forEach.call(table.querySelectorAll('th'),function(th){th.addEventListener('click',function(){
 var c=+th.dataset.col,asc=!th.classList.contains('asc'),body=table.tBodies[0];
 [].forEach.call(table.querySelectorAll('th'),function(o){o.classList.remove('asc','desc');});
 th.classList.add(asc?'asc':'desc');
 var rows=[].slice.call(body.rows);rows.sort(function(a,b){var x=a.cells[c],y=b.cells[c],r;
  if(x.dataset.sort!=null&&y.dataset.sort!=null){r=parseFloat(x.dataset.sort)-parseFloat(y.dataset.sort);}
  else if(x.dataset.sort!=null){r=-1;}else if(y.dataset.sort!=null){r=1;}
  else{r=x.textContent.localeCompare(y.textContent);}return asc?r:-r;});
 rows.forEach(function(r){body.appendChild(r);});});});
})();
"""
