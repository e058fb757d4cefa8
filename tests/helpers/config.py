"""Configs composed with Hydra's compose API from ``conf/``, as the ``nst`` app composes them."""

from __future__ import annotations

import copy
import functools

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.helpers.overrides import PAIR


def config_dir() -> str:
    """``conf/``, as the app finds it (importing ``nst.cli.nst_app`` registers ``${nst_root:}``)."""
    from nst.cli.nst_app import CONFIG_DIR

    return CONFIG_DIR


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config ``nst overrides...`` would run (with Hydra's own keys when ``hydra``): composed once per
    session for each set of overrides, a copy for each caller (a test may change its own)."""
    return copy.deepcopy(_composed(overrides, hydra))


@functools.cache
def _composed(overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def make(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config of ``nst content=tubingen style=starry_night overrides...``."""
    return compose_config(*PAIR, *overrides, hydra=hydra)


def prepare(cfg: DictConfig):
    """The job's checked inputs (``RunSpec`` parsed, images loaded), as the driver prepares them."""
    from nst.engine.inputs import load_inputs
    from nst.jobs.config import parse

    return load_inputs(parse(cfg))
