"""The algorithm: a checked run spec in, an optimised image and its records out.

Losses, L-BFGS, the optimisation loop, backbones and their weights, feature
calibration, colour control, the coarse-to-fine schedule, devices, CUDA graphs,
the run spec, and one run (or a batch of them). Knows nothing of Hydra,
OmegaConf or MLflow: whoever records a run passes callbacks.
"""
