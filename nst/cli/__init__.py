"""The commands: ``nst`` (the Hydra app), ``nst-report``, ``nst-review``, ``make fidelity``."""
