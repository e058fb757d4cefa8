"""Hydra registers launchers only from the ``hydra_plugins`` package, by the module that defines
them; nst's batched launcher is written in ``nst.launcher`` and declared here."""

from nst.launcher import BatchedLauncher as _BatchedLauncher


class BatchedLauncher(_BatchedLauncher):
    """``hydra/launcher=batched``: see ``nst.launcher``."""
