"""The ``nst`` command: a Hydra app over ``conf/``.

    nst content=tubingen style=starry_night                 # one run
    nst content=tubingen style=starry_night experiment=seed_presentation
    nst content=photo.jpg style=art.png loss.style_weight=1e3 optimizer=adam

User errors (bad values, missing files, weights that cannot be obtained) print
one line and exit with status 2; the run directory keeps what was written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nst.errors import NSTError

log = logging.getLogger("nst")

# The configs live in the repository's top-level conf/ (nst is installed editable by `make install`).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one style transfer; returns the final total loss (Hydra sweepers read it)."""
    from nst.run import run  # imported here so `nst --help` stays fast

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        outcome = run(cfg, output_dir)
    except NSTError as exc:
        log.error("%s", exc)
        print(f"nst: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    return outcome.result.final.get("total")


if __name__ == "__main__":
    main()
