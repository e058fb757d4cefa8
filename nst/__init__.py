"""nst: neural style transfer experiments (Gatys et al. 2016) run with Hydra and recorded in MLflow.

The layout, top to bottom, is in the README ("How the code is laid out") and is enforced by the
import-linter contracts in pyproject.toml (``make lint``).
"""
