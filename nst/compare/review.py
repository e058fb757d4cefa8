"""A human review in the MLflow store: which runs are judged, where the judgements live, what they give.

``nst-review`` (``nst.compare.review_app``) is the web page; this module is everything it does to the
store, so ``nst-report --human`` reads the same judgements the same way.

Where judgements live. Each judgement is one artifact, ``judgements/<id>.json``, on the review's
*home* run: the sweep's parent when one sweep is reviewed, otherwise (several sweeps, a filter,
or only the runs on a Pareto front: ``nst-review --pareto``) a run of role ``review``
found again by the runs it covers (``nst.review_key``). One file per judgement is what makes
two reviewers at once safe: two writers never touch the same file, so nothing is lost, and a
judgement sent twice has the same id, so it lands on the same name and is never counted twice
(the app refuses it before writing: ``Replayed``). A restarted app reads the folder and goes on.

What they give (``publish``, after every judgement): each run's ``human.*`` metrics, which
MLflow's runs table can sort on — ``human.score`` (the Bradley–Terry–Davidson log strength of
``nst.compare.ranking``, centred), ``human.score_low``/``_high`` (95 %), ``human.rank``, ``human.wins``,
``human.losses``, ``human.ties``, ``human.comparisons`` — at step = the number of judgements, so
the metric's history in MLflow is the score as the review went on, and the latest value is the
fit on the most judgements even when two apps publish at once. The home run gets
``human/ranking.csv``, ``human/ranking.md``, ``human/judgements.jsonl`` and the tag
``nst.human_judgements``.

A judgement file that cannot be read (truncated, edited by hand, not UTF-8) is *damaged*: it is skipped
wherever judgements are read, named (``Kept.damaged``) and warned about once per process, so one bad file
never stops a review, nor the recording and publishing of the judgements after it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from filelock import FileLock
from PIL import Image

from nst.compare import ranking, sweep_report
from nst.compare.pareto import MAXIMIZE, OBJECTIVES, non_dominated
from nst.errors import TrackingError
from nst.figures import labels
from nst.images import measures
from nst.tracking import store, tags

JUDGEMENTS = "judgements"  # the folder of one <id>.json per judgement, on the home run
HUMAN = "human"  # ranking.csv, ranking.md, judgements.jsonl on the home run
ROLE = "review"
IMAGES = {"result": "result/result.png", "content": "inputs/content.png", "style": "inputs/style.png"}
MEASURE_NAMES = tuple(m.name for m in measures.EVERY)  # shown and correlated with the human ranking
IMAGE_MEASURES = tuple(m.name for m in measures.MEASURES)  # computable from a run's logged images
_ID = re.compile(r"^[0-9a-f]{32}$")
REVIEWER_MAX = 64

log = logging.getLogger(__name__)


class BadJudgement(ValueError):
    """A judgement the review refuses (the store is not touched): the reason is the message."""


class Replayed(BadJudgement):
    """A judgement whose id is already recorded."""


@dataclass(frozen=True)
class Candidate:
    """One run under review: its id, its label (the swept values) and the settings shown after a judgement."""

    run_id: str
    label: str
    settings: dict[str, str]
    metrics: dict[str, float]
    digest: str = ""  # of the result image's bytes, once ``prepare`` has read it


@dataclass(frozen=True)
class Review:
    """The runs judged together and the run that keeps their judgements."""

    home: str
    experiment_id: str
    title: str
    runs: tuple[Candidate, ...]
    ids: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(run.run_id for run in self.runs))

    def candidate(self, run_id: str) -> Candidate:
        return self.runs[self.ids.index(run_id)]

    def entry(self, run_id: str) -> str:
        """The run that stands for ``run_id`` in pairs and in the ranking: the first run whose result is the
        same bytes (itself, unless an earlier run's result is identical): two identical pictures can only
        tie, so they are shown and ranked as one."""
        digest = self.candidate(run_id).digest
        return next(run.run_id for run in self.runs if run.run_id == run_id or (digest and run.digest == digest))

    @property
    def entries(self) -> tuple[str, ...]:
        """One run per distinct result, in the runs' order."""
        return tuple(dict.fromkeys(self.entry(run_id) for run_id in self.ids))

    def members(self, entry: str) -> list[str]:
        """The runs ``entry`` stands for (itself first)."""
        return [run_id for run_id in self.ids if self.entry(run_id) == entry]

    def as_entries(self, judgements: Sequence[ranking.Judgement]) -> list[ranking.Judgement]:
        """``judgements`` between entries (one judged before identical results were grouped is left out)."""
        mapped = [replace(j, left=self.entry(j.left), right=self.entry(j.right)) for j in judgements]
        return [j for j in mapped if j.left != j.right]


# --- choosing the runs ------------------------------------------------------------------------


def _finished(pairs) -> list:
    return [run for _, run in pairs if run.info.status == "FINISHED"]


def select(client, experiment: str, sweeps: Sequence[str] = (), filter_string: str | None = None,
           create: bool = True, pareto: bool = False) -> Review:
    """The runs of ``sweeps`` (parent ids or ``latest``; the latest sweep when nothing is named) and
    of the runs of ``experiment`` matching the MLflow ``filter_string``, FINISHED ones only; with
    ``pareto``, only those on their content-style Pareto front (``front_runs``). Runs not of one
    sweep, and a front, keep their judgements on a run of role ``review``, created if ``create``."""
    sweeps = list(sweeps) or ([] if filter_string else ["latest"])
    parents, runs = [], []
    for sweep in sweeps:
        parent = store.named_sweep(client, experiment, sweep)
        parents.append(parent)
        for member in store.study_parents(client, parent) if pareto else [parent]:  # a search's whole study
            runs += _finished(store.sweep_runs(client, member))
    if filter_string:
        runs += [run for run in store.filtered_runs(client, experiment, filter_string)
                 if run.info.status == "FINISHED"]
    runs = list({run.info.run_id: run for run in runs}.values())
    chosen = front_runs(runs) if pareto else runs
    if len(chosen) < 2:
        what = " and ".join(filter(None, [f"sweep {', '.join(parents)}" if parents else "",
                                          f"filter {filter_string!r}" if filter_string else ""]))
        if pareto:
            what = f"the Pareto front ({_front_terms()}) of {len(runs)} runs of {what}"
        raise TrackingError(f"a review compares at least two FINISHED runs; {what} has "
                            f"{len(chosen)}")
    keys = sweep_report.swept_keys([(None, run) for run in chosen])
    candidates = tuple(Candidate(run.info.run_id, sweep_report.label(run, keys), _settings(run, keys),
                                 {k: v for k, v in run.data.metrics.items() if k in MEASURE_NAMES})
                       for run in chosen)
    experiment_id = chosen[0].info.experiment_id
    one_sweep = len(parents) == 1 and not filter_string
    if one_sweep:
        title = sweep_report.page_title(client, parents[0],
                                        sweep_report.sweep_table(client, parents[0]))[0]
    else:
        title = labels.SEPARATOR.join([f"{len(runs)} runs",
                                       sweep_report.title([(None, run) for run in runs])])
    if one_sweep and not pareto:
        return Review(parents[0], experiment_id, title, candidates)
    home = _review_run(client, experiment_id, [c.run_id for c in candidates], sweeps, filter_string,
                       create, front=pareto)
    return Review(home, experiment_id, f"Pareto front of {title}" if pareto else title, candidates)


def front_runs(runs: Sequence, objectives: dict[str, str] | None = None) -> list:
    """The runs no other of ``runs`` beats on every objective (by default
    ``nst.compare.pareto.OBJECTIVES``: higher auto.ssim_content, lower auto.gram_distance_style), in
    their order; a run without a finite value of every objective is left out, since it cannot be
    placed against the others."""
    objectives = objectives or OBJECTIVES
    placed = [run for run in runs
              if all(labels.finite_number(run.data.metrics.get(name)) is not None
                     for name in objectives)]
    points = [[run.data.metrics[name] for name in objectives] for run in placed]
    kept = non_dominated(points, list(objectives.values()))
    return [run for run, keep in zip(placed, kept, strict=True) if keep]


def _front_terms() -> str:
    """The default objectives and which way each is better, as the error of a small front says."""
    return ", ".join(f"{name} {'higher' if direction == MAXIMIZE else 'lower'}"
                     for name, direction in OBJECTIVES.items())


SETTINGS = ("content", "style", "loss.content_weight", "loss.style_weight", "image.size", "run.backbone")


def _settings(run, keys: list[str]) -> dict[str, str]:
    """The main settings shown beside a run's label (which has the swept values) on the ranking page."""
    swept = {key.lstrip("+~") for key in keys}
    return {key: labels.short(labels.lookup(run.data.params, key)) for key in SETTINGS
            if key in run.data.params and key not in swept}


def _review_run(client, experiment_id: str, run_ids: list[str], sweeps, filter_string,
                create: bool, front: bool = False) -> str:
    """The run keeping the judgements of this set of runs: found by the set's key, else created
    FINISHED (its description says when the runs are the Pareto front of those chosen)."""
    key = hashlib.sha1(" ".join(sorted(run_ids)).encode()).hexdigest()[:16]
    found = _review_runs(client, experiment_id, key)
    if found:
        return found[0]
    if not create:
        raise TrackingError(f"these {len(run_ids)} runs have not been reviewed: judge them with nst-review first")
    what = "; ".join(filter(None, [f"sweeps {', '.join(sweeps)}" if sweeps else "",
                                   f"filter {filter_string}" if filter_string else ""]))
    what = f"the Pareto front of {what}" if front else what
    run = client.create_run(experiment_id, run_name=f"human review · {len(run_ids)} runs", tags={
        tags.TAG_ROLE: ROLE, tags.TAG_REVIEW_KEY: key,
        tags.TAG_DESCRIPTION: tags.literal(f"Human judgements of {len(run_ids)} runs ({what}), made with nst-review.")})
    client.set_terminated(run.info.run_id, "FINISHED")  # it holds records; nothing runs in it
    # an app started at the same moment for the same runs (another reviewer's, on a shared tracking server) may
    # have created one too: every app keeps the oldest, so that their judgements land on one run
    home = _review_runs(client, experiment_id, key)[0]
    if home != run.info.run_id:
        client.delete_run(run.info.run_id)
    return home


def _review_runs(client, experiment_id: str, key: str) -> list[str]:
    """The ids of the review runs of the set of runs ``key``, oldest first (start time, then id)."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{tags.TAG_ROLE}` = '{ROLE}' and "
                                                               f"tags.`{tags.TAG_REVIEW_KEY}` = '{key}'", max_results=100)
    return [run.info.run_id for run in sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))]


# --- the judgements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    """What a home run keeps: its judgements, oldest first, and its damaged judgement files (their paths under
    the run's artifacts), which are skipped until someone mends or removes them."""

    judgements: list[ranking.Judgement]
    damaged: tuple[str, ...] = ()


def kept(client, home: str) -> Kept:
    """Every judgement kept on ``home`` and the damaged files skipped (each warned about once: ``_warn_once``).
    An unreadable file written in the last seconds is skipped without a word: another app may still be
    copying it, and it is read next time."""
    if not client.list_artifacts(home, JUDGEMENTS):  # no judgement yet (a store that fails raises)
        return Kept([])
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(client.download_artifacts(home, JUDGEMENTS, scratch))
        found, damaged = [], []
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(ranking.Judgement.from_json(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError, RecursionError) as exc:  # not UTF-8, not JSON, nested deep
                if not _still_writing(home, path):
                    damaged.append(f"{JUDGEMENTS}/{path.name}")
                    _warn_once(home, damaged[-1], exc)
    return Kept(sorted(found, key=lambda j: (j.time, j.id)), tuple(damaged))


def read(client, home: str) -> list[ranking.Judgement]:
    """Every judgement kept on ``home``, oldest first; damaged files skipped (``kept``)."""
    return kept(client, home).judgements


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(home: str, name: str, reason: Exception) -> None:
    """Log that ``home``'s judgement file ``name`` is damaged and skipped, the first time this process finds it."""
    with _warned_lock:
        if (home, name) in _warned:
            return
        _warned.add((home, name))
    log.warning("judgement file %s of run %s is damaged and skipped until it is mended or removed: %s",
                name, home, str(reason).splitlines()[0] if str(reason) else type(reason).__name__)


_unreadable_since: dict[tuple[str, str], float] = {}  # (home run, file name): when this process first found it so


def _still_writing(home: str, path: Path) -> bool:
    """Whether the unreadable judgement file ``path`` (downloaded) may still be being copied: its copy is from the
    last seconds, and so is the first time this process found it unreadable. The copy's time is the file's own
    for a local store, the download's for a tracking server (so it alone would never tell a damaged file)."""
    now = time.time()
    first = _unreadable_since.setdefault((home, path.name), now)
    return now - path.stat().st_mtime < 5 and now - first < 5


def recorded_ids(client, home: str) -> set[str]:
    """The ids of the judgements kept on ``home`` (from the file names: no file is read)."""
    try:
        items = client.list_artifacts(home, JUDGEMENTS)
    except Exception:  # noqa: BLE001 - no folder yet
        return set()
    return {item.path.rsplit("/", 1)[-1].removesuffix(".json") for item in items}


def parse(body: bytes):
    """A request body's JSON value; None when it is not JSON (``check`` says what a judgement is). A body nested
    too deep for the parser is refused (``BadJudgement``), not a server error."""
    try:
        return json.loads(body.decode("utf-8"))
    except RecursionError as exc:
        raise BadJudgement("a judgement is one flat JSON object; this body is nested thousands of levels deep") from exc
    except ValueError:  # not UTF-8, not JSON
        return None


def check(review: Review, client, payload) -> ranking.Judgement:
    """A judgement from a request's JSON, made now, or ``BadJudgement`` saying what is wrong."""
    fields = ("id", "left", "right", "answer", "reviewer")
    if not isinstance(payload, dict) or set(payload) != set(fields):
        raise BadJudgement(f"a judgement is a JSON object with exactly the fields {', '.join(fields)}")
    if not all(isinstance(payload[name], str) for name in fields):
        raise BadJudgement("every field of a judgement is a string")
    if not _ID.match(payload["id"]):
        raise BadJudgement(f"id must be 32 lowercase hex digits (a uuid4 hex), not {payload['id']!r}")
    for side in ("left", "right"):
        if payload[side] not in review.ids:
            raise BadJudgement(f"{side}: {_not_under_review(client, review, payload[side])}")
    if payload["answer"] not in ranking.ANSWERS:
        raise BadJudgement(f"answer must be one of {', '.join(ranking.ANSWERS)}, not {payload['answer']!r}")
    reviewer = payload["reviewer"].strip()
    if not reviewer or len(reviewer) > REVIEWER_MAX or not reviewer.isprintable():
        raise BadJudgement(f"reviewer must be a name of 1 to {REVIEWER_MAX} printable characters")
    try:
        return replace(ranking.Judgement.new(payload["left"], payload["right"], payload["answer"], reviewer),
                       id=payload["id"])
    except ValueError as exc:  # e.g. a run against itself
        raise BadJudgement(str(exc)) from None


def _not_under_review(client, review: Review, run_id: str) -> str:
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises for an unknown or malformed id
        return f"no run {run_id!r} in the store"
    if run.info.experiment_id != review.experiment_id:
        return (f"run {run_id} belongs to experiment {run.info.experiment_id}, not to this review's "
                f"({review.experiment_id})")
    return f"run {run_id} is not one of the {len(review.runs)} runs under review"


class JudgementLog:
    """Appends judgements to a review's home run and republishes the ranking, one writer at a time.

    The check for a replay and the write are one step under a lock file per home run (``filelock``, so
    across the apps of this machine too): otherwise two apps sent the same judgement at the same moment
    would both accept it.
    """

    def __init__(self, client, review: Review):
        self.client, self.review = client, review
        self._lock = FileLock(Path(tempfile.gettempdir()) / f"nst-review-{review.home}.lock")

    def add(self, judgement: ranking.Judgement) -> list[ranking.Judgement]:
        """Record ``judgement`` (``Replayed`` if its id is there already) and publish; all judgements after."""
        with self._lock:
            if judgement.id in recorded_ids(self.client, self.review.home):
                raise Replayed(f"judgement {judgement.id} is already recorded")
            self.client.log_text(self.review.home, judgement.to_json() + "\n",
                                 f"{JUDGEMENTS}/{judgement.id}.json")
            judgements = read(self.client, self.review.home)
            publish(self.client, self.review, judgements)
            # an app on another machine (a shared tracking server: the lock file is this machine's) may
            # have recorded one meanwhile and published before this publish ended: the home run's files
            # (judgements.jsonl, ranking.*, the count tag) would be left one behind; publish again
            while len(again := read(self.client, self.review.home)) != len(judgements):
                judgements = again
                publish(self.client, self.review, judgements)
        return judgements

    def all(self) -> list[ranking.Judgement]:
        """Every judgement recorded, oldest first (damaged files skipped)."""
        return read(self.client, self.review.home)

    def kept(self) -> Kept:
        """Every judgement recorded and the damaged judgement files skipped."""
        return kept(self.client, self.review.home)


# --- what the judgements give -----------------------------------------------------------------


def tally(judgements: Sequence[ranking.Judgement]) -> tuple[int, int]:
    """(judgements, skips): a skip is kept, but it is not a judgement."""
    skipped = sum(1 for judgement in judgements if judgement.answer == ranking.SKIP)
    return len(judgements) - skipped, skipped


def ranked(review: Review, judgements: Sequence[ranking.Judgement]) -> pd.DataFrame:
    """The ranking table, best first: rank, label, score, its 95 % interval, wins, losses, ties, comparisons,
    the automatic measures, run id."""
    table = ranking.fit(review.as_entries(judgements), runs=review.entries).table()
    table.insert(2, "label", [" = ".join(review.candidate(run).label for run in review.members(entry))
                              for entry in table["run_id"]])
    for name in MEASURE_NAMES:
        table[name] = [review.candidate(run).metrics.get(name) for run in table["run_id"]]
    table["same_result"] = [" ".join(review.members(entry)[1:]) for entry in table["run_id"]]
    return table


def publish(client, review: Review, judgements: Sequence[ranking.Judgement]) -> pd.DataFrame:
    """Each run's ``human.*`` metrics and the home run's ranking files (see the module's docstring)."""
    from mlflow.entities import Metric

    table = ranked(review, judgements)
    step, now = len(judgements), int(time.time() * 1000)
    for row in table.to_dict("records"):
        values = {"score": row["score"], "score_low": row["low"], "score_high": row["high"], "rank": row["rank"],
                  "wins": row["wins"], "losses": row["losses"], "ties": row["ties"],
                  "comparisons": row["comparisons"]}
        for run_id in review.members(row["run_id"]):  # identical results share their entry's ranking
            client.log_batch(run_id, metrics=[Metric(tags.HUMAN_METRICS + key, float(value), now, step)
                                              for key, value in values.items()])
    client.log_text(review.home, table.to_csv(index=False), f"{HUMAN}/ranking.csv")
    client.log_text(review.home, table.to_markdown(index=False, floatfmt=".3g") + "\n", f"{HUMAN}/ranking.md")
    client.log_text(review.home, "".join(j.to_json() + "\n" for j in judgements), f"{HUMAN}/judgements.jsonl")
    client.set_tag(review.home, tags.TAG_JUDGEMENTS, str(len(judgements)))
    return table


def stable_since(review: Review, judgements: Sequence[ranking.Judgement], top: int = 3) -> int | None:
    """The number of judgements after which the fitted top ``top`` (in order) never changed again; None
    before any decided judgement. Refits every prefix: milliseconds each for a sweep's few runs."""
    decided = [j for j in review.as_entries(judgements) if j.answer != ranking.SKIP]
    if not decided:
        return None
    final = ranking.fit(decided, runs=review.entries).order[:top]
    since = len(decided)
    for count in range(len(decided) - 1, 0, -1):
        if ranking.fit(decided[:count], runs=review.entries).order[:top] != final:
            break
        since = count
    return since


def correlations(review: Review, table: pd.DataFrame) -> pd.DataFrame:
    """Spearman's ρ of each automatic measure with the human scores, with what the measure means."""
    human = dict(zip(table["run_id"], table["score"], strict=True))
    rows = []
    for found in measures.EVERY:
        result = ranking.rank_correlation(human, {c.run_id: c.metrics.get(found.name) for c in review.runs})
        rows.append({"measure": found.name, "meaning": found.meaning, "closer_when": found.closer,
                     "rho": result.rho, "p": result.pvalue, "runs": result.n})
    return pd.DataFrame(rows)


def image_bytes(client, run_id: str, kind: str, folder: Path) -> bytes:
    """A run's result, content or style image (downloaded once into ``folder``)."""
    data = sweep_report.artifact_bytes(client, run_id, IMAGES[kind], folder / run_id)
    if data is None:
        raise TrackingError(f"run {run_id} has no {IMAGES[kind]} in the store")
    return data


def prepare(client, review: Review, folder: Path) -> Review:
    """``review`` with each run's result fingerprinted (two identical pictures are never paired: only a tie
    could be answered) and its automatic measures: runs recorded before nst logged them get them now, computed
    from their logged images and logged (step 0). The images stay in ``folder`` for the page."""
    from mlflow.entities import Metric

    runs = []
    for run in review.runs:
        result = image_bytes(client, run.run_id, "result", folder)
        found = dict(run.metrics)
        if not all(name in found for name in IMAGE_MEASURES):
            pictures = [Image.open(io.BytesIO(image_bytes(client, run.run_id, kind, folder)))
                        for kind in ("result", "content", "style")]
            found.update(measures.measure(*pictures))
            now = int(time.time() * 1000)
            client.log_batch(run.run_id, metrics=[Metric(name, found[name], now, 0) for name in IMAGE_MEASURES])
        runs.append(replace(run, metrics=found, digest=hashlib.sha1(result).hexdigest()))
    return replace(review, runs=tuple(runs))


def thumbnail(data: bytes, side: int = 160) -> bytes:
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def to_json(table: pd.DataFrame) -> list[dict]:
    """The table's rows as JSON-ready dicts (NaN as null)."""
    return json.loads(table.to_json(orient="records"))
