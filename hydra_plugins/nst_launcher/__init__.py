"""Hydra registers launchers and sweepers only from the ``hydra_plugins`` package, by the module that
defines them; nst's are written in ``nst.jobs`` and declared here."""

from omegaconf import open_dict

from nst.jobs.launcher import BatchedLauncher as _BatchedLauncher
from nst.jobs.launcher import ray_environment
from nst.jobs.search import ParetoSweeper as _ParetoSweeper

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _PluginRayLauncher
except ImportError:  # hydra-ray-launcher not installed: no hydra/launcher=ray
    _PluginRayLauncher = None

try:
    from nst.jobs.slurm import SlurmLauncher as _SlurmLauncher
except ImportError:  # hydra-submitit-launcher not installed (nst's cluster extra): no hydra/launcher=slurm
    _SlurmLauncher = None


class BatchedLauncher(_BatchedLauncher):
    """``hydra/launcher=batched``: see ``nst.launcher``."""


if _PluginRayLauncher is not None:

    class RayLauncher(_PluginRayLauncher):
        """``hydra/launcher=ray``: hydra-ray-launcher, with the driver's nst variables and absolute
        output folder passed to every Ray worker (``runtime_env.env_vars``)."""

        def launch(self, job_overrides, initial_job_idx):
            with open_dict(self.ray_cfg):
                runtime = self.ray_cfg.init.get("runtime_env") or {}
                self.ray_cfg.init.runtime_env = runtime
                env_vars = dict(self.ray_cfg.init.runtime_env.get("env_vars") or {})
                env_vars.update(ray_environment(self.config))
                self.ray_cfg.init.runtime_env.env_vars = env_vars
            return super().launch(job_overrides, initial_job_idx)


if _SlurmLauncher is not None:

    class SlurmLauncher(_SlurmLauncher):
        """``hydra/launcher=slurm``: see ``nst.jobs.slurm``."""


class ParetoSweeper(_ParetoSweeper):
    """``hydra/sweeper=pareto`` (``sweep=pareto``): see ``nst.jobs.search``."""
