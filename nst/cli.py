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

import logging
import signal
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nst import jobs, sweeps

# The configs live in the repository's top-level conf/ (nst is installed editable by `make install`);
# conf/sweep/<name>.yaml is the option `sweep=<name>`.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO_ROOT / "conf")
# ${nst_root:} in a config is the repository root (conf/experiment/masks.yaml's sample masks)
if not OmegaConf.has_resolver("nst_root"):
    OmegaConf.register_new_resolver("nst_root", lambda: str(REPO_ROOT))
# conf/hydra/launcher/ray.yaml replaces hydra-ray-launcher's own config of that name on purpose
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one style transfer; returns the final total loss (Hydra sweepers read it)."""
    return jobs.run_hydra_job(cfg)


def _terminate(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main() -> None:
    """Console entry point: Hydra's app, then a non-zero status if a sweep had failed jobs.

    SIGTERM is handled like Ctrl-C: the running MLflow run ends KILLED with its
    partial image, and an open sweep's parent is closed, so re-running resumes it.
    """
    signal.signal(signal.SIGTERM, _terminate)
    # a log file that cannot be written (the disk is full) must not print a traceback per record:
    # the error that matters is reported on stderr in one line
    logging.raiseExceptions = False
    try:
        hydra_main()
    except KeyboardInterrupt as exc:
        sweeps.abort_open_sweep("KILLED", f"interrupted ({exc or 'SIGINT'})")
        print("nst: interrupted; finished runs are kept, re-run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code not in (0, None):
            sweeps.abort_open_sweep("FAILED", f"the multirun stopped with status {exc.code}")
        raise
    if sweeps.failed_jobs or jobs.failed_jobs:
        sys.exit(1)


if __name__ == "__main__":
    main()
