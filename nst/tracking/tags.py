"""Every name nst records in MLflow by: the tags (and tag prefixes) it writes or reads, in one place.

Stores already hold these tags, and reports, resume and ``nst-review`` find runs by them,
so a value here never changes; a new tag is added here, not spelled where it is written.
"""

from __future__ import annotations

import html
import re

# --- what a run is and where it belongs ---
TAG_ROLE = "nst.role"  # "run" | "sweep" | nst-review's home run (nst.compare.review.ROLE)
TAG_SWEEP = "nst.sweep_id"  # the multirun's id, on its parent and on each child
TAG_SWEEP_NAME = "nst.sweep"  # the sweep's readable name (its parent's run name), on its parent and each child
TAG_STUDY = "nst.study"  # on a search's parent: its Optuna study, which several commands may have added to
TAG_JOB = "nst.job_num"  # the job's number within its multirun
TAG_HASH = "nst.config_hash"  # the run's fingerprint (resume finds a FINISHED twin by it)
TAG_OVERRIDES = "nst.overrides"  # the command line's overrides (JSON list; on a sweep's parent, Python's repr)
TAG_FAILURE = "nst.failure"  # why a run ended FAILED or KILLED
TAG_OUTPUT_DIR = "nst.output_dir"  # the run's folder (nst-report --relog finds its run by it)
TAG_IMAGE_STEPS = "nst.image_steps"  # {"every": N, "terminal": T}: the run's step grid (nst.tracking.steps)
TAG_STUCK_LAYERS = "nst.stuck_layers"  # style layers whose term stopped moving: {layer: evaluation}
TAG_RELOGGED = "nst.relogged"  # ISO time (UTC) at which nst-report --relog completed the run
TAG_HYDRA_CHOICE = "hydra.choice."  # + config group: the option Hydra chose for it

# --- a sweep's parent ---
TAG_SWEPT = "nst.swept"  # {swept key: log-spaced?}, in the order given
TAG_SWEEP_SETTING = "nst.sweep_setting"  # {key: value} of what it does not vary (JSON): compared with later sweeps
TAG_SWEEP_DIFFERS = "nst.sweep_differs"  # how it differs from an earlier sweep of the same keys, added to its names
TAG_SWEEP_DIR = "nst.sweep_dir"  # Hydra's sweep folder
TAG_SWEEPER_PARAMS = "nst.sweeper_params"  # hydra.sweeper.params, as Python's repr
TAG_REUSED = "nst.reused."  # + job number: a FINISHED run reused by resume

# --- where and by what a run is made, and its owner (nst.tracking.ownership) ---
TAG_GIT_COMMIT = "nst.git_commit"
TAG_TORCH_VERSION = "nst.torch_version"
TAG_HOST = "nst.host"
TAG_PID = "nst.pid"
TAG_OWNER = "nst.owner"  # host:pid:process start time (clock ticks since boot)
TAG_HEARTBEAT = "nst.heartbeat"  # ISO time (UTC) of the owner's latest sign of life

# --- human review (nst.compare.review) ---
TAG_REVIEW_KEY = "nst.review_key"  # on a review's home run: which runs it judges
TAG_JUDGEMENTS = "nst.human_judgements"  # on a review's home run: how many judgements it holds
HUMAN_METRICS = "human."  # + score, rank, ...: the metrics nst-review logs on each judged run

# --- MLflow's own ---
TAG_DESCRIPTION = "mlflow.note.content"  # the description MLflow shows on a run's page
PARENT_TAG = "mlflow.parentRunId"
# An experiment tag marking it as model training, so MLflow 3's UI opens it on the runs table, not its
# GenAI pages (MLflow 3.17 reads the view from the address instead: nst.tracking.store.WORKFLOW).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


# MLflow renders a run's description as Markdown (raw HTML included): what a user named (a file, a filter)
# goes into one through ``literal``, so it is shown as written and never becomes markup. An underscore
# inside a word (starry_night) cannot start emphasis, so it is left as it is.
_MARKUP = re.compile(r"[\\`*\[\]]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_ESCAPED = re.compile(r"\\([\\`*\[\]_])")


def literal(text: str) -> str:
    """``text`` as Markdown that renders to exactly ``text``: HTML's special characters as entities, Markdown's
    markup characters escaped."""
    return _MARKUP.sub(lambda match: "\\" + match[0], html.escape(str(text), quote=False))


def unliteral(markdown: str) -> str:
    """The text ``literal`` was given (a description shown on nst's own pages, which escape it themselves)."""
    return html.unescape(_ESCAPED.sub(r"\1", markdown))
