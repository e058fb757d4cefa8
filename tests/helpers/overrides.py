"""The override lists the tests run nst with, each defined once and named for what it is.

All use the random backbone (no weights to fetch) and images of 32-64 px, so a run takes a
second or two on a CPU.
"""

from __future__ import annotations

# the sample pair most tests style
PAIR = ["content=tubingen", "style=starry_night"]

# one short epoch (2 L-BFGS iterations) at 32 px, no progress bar: for commands that are refused
# before any work, or whose numbers do not matter
QUICK = ["model=random", "image.size=32", "epochs=1", "optimizer.max_iter=2", "progress=false"]
# the same, not recorded in MLflow
QUICK_UNTRACKED = [*QUICK, "tracking=none"]

# a tracked run of the pair that finishes with a few evaluations (2 epochs of 3 L-BFGS iterations)
TRACKED_RUN = [*PAIR, "model=random", "image.size=32", "epochs=2", "optimizer.max_iter=3", "progress=false"]

# a sweep job of the pair: 2 epochs of 4 L-BFGS iterations (19 planned evaluations), a progress image
# every 3 evaluations (the step grid 0, 3, ..., 21)
SWEEP_JOB = [*PAIR, "model=random", "image.size=32", "epochs=2", "optimizer.max_iter=4", "progress=false",
             "frame_every=3"]

# a run whose folder the tests read (progress, print_every and save_every set by each test)
FOLDER_RUN = [*PAIR, "model=random", "image.size=32", "epochs=2", "optimizer.max_iter=4", "device=cpu"]

# the engine called directly (no MLflow): 48 px, one epoch of 4 L-BFGS iterations
ENGINE_48 = ["model=random", "tracking=none", "progress=false", "optimizer.max_iter=4", "image.size=48", "epochs=1"]
# coarse-to-fine schedules ending at 64 px (epochs set by each test)
SCALES_64 = ["model=random", "tracking=none", "progress=false", "optimizer.max_iter=3", "image.size=64"]
# bf16 at 32 px with a fixed step (bf16 noise defeats the line search)
BF16_32 = ["model=random", "tracking=none", "progress=false", "optimizer.max_iter=2", "image.size=32",
           "model.precision=bf16", "optimizer.line_search=null"]

# a run long enough (about 20 s on 2 cores) to be killed or locked mid-optimisation: every epoch runs, even once
# the loss has converged
LONG_RUN = [*PAIR, "model=random", "image.size=64", "epochs=40", "progress=false", "frame_every=5",
            "optimizer.convergence_tolerance=null"]
# a two-job sweep long enough to be signalled mid-run, with video frames every 5 evaluations
LONG_SWEEP = ["-m", *PAIR, "model=random", "image.size=48", "epochs=60", "optimizer.max_iter=5", "progress=false",
              "frame_every=5", "loss.style_weight=10,1000", "optimizer.convergence_tolerance=null"]

# Gatys et al.'s style layers
STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
