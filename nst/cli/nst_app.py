"""The ``nst`` command: a Hydra app over ``conf/``.

    nst content=tubingen style=starry_night                 # one run
    nst content=tubingen style=starry_night experiment=seed_presentation
    nst -m content=tubingen style=starry_night loss.style_weight=1,100,1e4   # a sweep
    nst sweep=ratio content=tubingen style=starry_night      # a sweep from conf/sweep/

A single run's user error (bad value, missing file, weights that cannot be
obtained) prints one line and exits with status 2. In a multirun a failing job
is recorded as FAILED and the other jobs go on; the command then exits with 1.
Running a job is ``nst.jobs``' business; this module is Hydra's entry point,
signals and the exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.plugins.completion_plugin import CompletionPlugin
from omegaconf import DictConfig, OmegaConf

from nst import interrupts, phases
from nst.cli import exits, failures
from nst.engine import reuse
from nst.errors import NSTError
from nst.images.samples import ASSETS
from nst.jobs import driver, schema, sweep_callback, workers
from nst.jobs.config import check_launch
from nst.tracking import database
from nst.tracking.store import default_output_dir, forget_connections

# The configs live in the repository's top-level conf/ (nst is installed editable by `make install`);
# conf/sweep/<name>.yaml is the option `sweep=<name>`.
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(schema.CONFIG_DIR)
# ${nst_root:} in a config is the repository root (conf/experiment/masks.yaml's sample masks)
if not OmegaConf.has_resolver("nst_root"):
    OmegaConf.register_new_resolver("nst_root", lambda: str(REPO_ROOT))
# Hydra's launchers beside conf/hydra/launcher/ (hydra-joblib-launcher is installed with nst)
BUILTIN_LAUNCHERS = {"basic": "Hydra's default: the jobs one after another in this process",
                     "joblib": "The jobs in parallel worker processes (hydra.launcher.n_jobs)"}


def _description(path: Path, width: int = 96) -> str:
    """A config file's opening comment (its package line aside): its first sentence, cut to ``width``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ").strip()
        if text and not text.startswith("@package"):
            lines.append(text)
    text = re.sub(r"^\S+=\S+: ", "", " ".join(lines))  # "hydra/launcher=batched: ..." names itself
    text = re.split(r"(?<!et al)(?<!Fig)(?<!sec)\. (?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    if len(text) > width:
        text = text[:width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text[:1].upper() + text[1:]


def help_section(what: str) -> str:
    """A section of ``nst --help`` (``${nst_help:<what>}`` in conf/hydra/default.yaml): a config group's
    options with their descriptions, the launchers, or the sample image names."""
    if what == "samples":
        return "\n".join(f"  {asset.name:<18} {asset.role}, {asset.licence}" for asset in ASSETS.values())
    if what == "launchers":
        options = {**BUILTIN_LAUNCHERS, **{p.stem: _description(p)
                                          for p in sorted((schema.CONFIG_DIR / "hydra" / "launcher").glob("*.yaml"))}}
    else:
        options = {p.stem: _description(p) for p in sorted((schema.CONFIG_DIR / what).glob("*.yaml"))}
    return "\n".join(f"  {name:<18} {text}" for name, text in options.items())


if not OmegaConf.has_resolver("nst_help"):
    OmegaConf.register_new_resolver("nst_help", help_section)
# keys whose values may be sample image names: completed by ``nst --shell-completion`` (Hydra's own
# completion offers keys, group options and files only)
SAMPLE_KEYS = ("content", "style")


def complete_samples(line: str) -> list[str]:
    """Sample names for the word being completed when it is ``content=<prefix>`` or ``style=<prefix>``
    (``style=[starry_night,the_`` completes the list's last item); [] for any other word."""
    words = line.split()
    if not words or line[-1].isspace():
        return []
    key, equals, value = words[-1].partition("=")
    if not equals or key.lstrip("+") not in SAMPLE_KEYS:
        return []
    head, comma, last = value.rpartition(",")
    if not comma and value.startswith("["):
        head, last = "[", value[1:]
    prefix = f"{key}={head}{comma}"
    return [prefix + name for name in ASSETS if name.startswith(last)]


def _with_samples(query):
    def query_with_samples(self, config_name, line: str) -> list[str]:
        return sorted(set(query(self, config_name, line)) | set(complete_samples(line)))

    query_with_samples.nst_samples = True
    return query_with_samples


if not getattr(CompletionPlugin._query, "nst_samples", False):  # Hydra's bash, zsh and fish completion
    CompletionPlugin._query = _with_samples(CompletionPlugin._query)
# conf/hydra/launcher/ray.yaml replaces hydra-ray-launcher's own config of that name on purpose
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one style transfer; returns the final total loss (Hydra sweepers read it)."""
    return driver.run_hydra_job(cfg)


def _hydra_args(argv: list[str]) -> argparse.Namespace | None:
    """The command line as Hydra will read it; None where Hydra would refuse it (it says why)."""
    if "--version" in argv:
        return None
    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, _unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        return None
    return args


def preflight(argv: list[str]) -> None:
    """Check the command line before Hydra composes anything; raises ``NSTError``.

    Hydra's own messages here are misleading: an unquoted space or bracket gives a
    lexer error, a mistyped key the advice to add it with ``+`` (after which the value
    is silently ignored), a worker count of 0 a joblib traceback once the sweep starts, an unknown
    group option or a single run's comma many lines (a multirun's parent run already created).
    """
    args = _hydra_args(argv)
    if args is None or args.shell_completion or args.experimental_rerun:
        return
    overrides = schema.parse_overrides(args.overrides, multirun=args.multirun)
    if not (args.config_dir or args.config_name or args.config_path):  # another conf/, another schema
        schema.check_override_keys(overrides)
        schema.check_override_values(overrides, multirun=args.multirun)
    for key, value in schema.values_of(overrides, ("tracking.", "hydra.launcher.", "frame_every", "video")):
        launch = OmegaConf.create()
        OmegaConf.update(launch, key, value, force_add=True)
        check_launch(launch)
    if not (args.help or args.hydra_help or args.cfg or args.info):
        _check_output_folder(overrides)


def _check_output_folder(overrides) -> None:
    """The output root must be writable before Hydra creates a run folder in it (Hydra's own failure
    there is a traceback: under /proc, on a read-only disk, below a file)."""
    roots = [str(value) for _, value in schema.values_of(overrides, ("paths.output_dir",))]
    for root in roots or [str(default_output_dir())]:
        database.make_folder(Path(root).expanduser(), "the output folder")


def main() -> None:
    """Console entry point: Hydra's app, then a non-zero status if a sweep had failed jobs.

    SIGTERM is handled like Ctrl-C: the running MLflow run ends KILLED with its
    partial image, and an open sweep's parent is closed, so re-running resumes it.
    """
    phases.command_started()
    forget_connections()
    reuse.forget()
    interrupts.take_over()
    workers.mark_launcher()
    # a pool's semaphore tracker (a process of its own) warns at exit about semaphores of a worker that was killed,
    # after nst's one line: a worker's death is said once, by nst
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                           "ignore:resource_tracker:UserWarning"]))
    # a log file that cannot be written (the disk is full) must not print a traceback per record:
    # the error that matters is reported on stderr in one line
    logging.raiseExceptions = False
    try:
        preflight(sys.argv[1:])
    except NSTError as exc:
        sys.exit(failures.report("nst", exc))
    traceback_wanted = failures.debugging() or os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what reaches it (else it prints a traceback itself)
    try:
        hydra_main()
        interrupts.check()  # a signal Python dropped (it came during a garbage-collection callback)
    except KeyboardInterrupt as exc:
        _abort_sweep("KILLED", f"interrupted ({exc or 'SIGINT'})")
        print("nst: interrupted; finished runs are kept, re-run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _abort_sweep("FAILED", f"the multirun stopped with status {exc.code}")
        raise
    except Exception as exc:
        if traceback_wanted:
            raise
        line, status = failures.describe(exc)
        _abort_sweep("FAILED", line)
        print(f"nst: error: {line}", file=sys.stderr)
        sys.exit(status)
    if driver.failed_jobs:
        sys.exit(1)


def _abort_sweep(status: str, reason: str) -> None:
    """End this process's open sweep, if any; a store that refuses is said in one line (the next command
    that opens it ends the sweep's runs, once this process is gone)."""
    try:
        sweep_callback.abort_open_sweep(status, reason)
    except Exception as exc:  # noqa: BLE001 - the error being reported matters more
        print(f"nst: warning: the sweep's parent run could not be ended: {failures.describe(exc)[0]}",
              file=sys.stderr)


console = exits.fast(main)  # the ``nst`` command

if __name__ == "__main__":
    console()
