"""Where a run's progress images sit on the MLflow UI's step slider: one grid that every member of a sweep shares.

The recorder logs each image at the grid's steps (``StepGrid.steps``, then the result at
``StepGrid.after``); a run's grid is a tag (``nst.image_steps``), so a sweep's end
(``align_steps``) and ``nst-report --relog`` can continue it.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from nst.images.files import load_image
from nst.tracking.tags import TAG_IMAGE_STEPS

PROGRESS = "progress"  # the key of the progress images, the MLflow UI's image chart and step slider


@dataclass(frozen=True)
class StepGrid:
    """The slider's steps 0, ``every``, 2 x ``every``, ..., ``terminal``: the starting image at 0, an image
    on the grid below ``terminal``, and the result at every step from its run's last image to ``terminal``.

    Every run of a sweep then shows an image at the same steps, and its result at the same last step.
    """

    every: int
    terminal: int

    @classmethod
    def planned(cls, every: int, evaluations: int) -> StepGrid:
        """The grid of a schedule of at most ``evaluations``: ``terminal`` is that rounded up to the grid."""
        return cls(every, every * math.ceil(evaluations / every))

    def steps(self, evaluation: int) -> list[int]:
        """The steps that show ``evaluation``'s image: 0 for the starting image, a multiple of ``every``."""
        found = [0] if evaluation == 1 else []
        if evaluation % self.every == 0 and evaluation < self.terminal:
            found.append(evaluation)
        return found

    def after(self, step: int | None) -> list[int]:
        """The grid's steps after ``step`` (None: all of them), ``terminal`` included: where the result goes."""
        return list(range(0 if step is None else step + self.every, self.terminal + 1, self.every))

    def tag(self) -> str:
        return json.dumps({"every": self.every, "terminal": self.terminal})

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> StepGrid | None:
        """A run's grid from its tag; None for a run recorded before the grid existed."""
        try:
            found = json.loads(tags[TAG_IMAGE_STEPS])
            return cls(int(found["every"]), int(found["terminal"]))
        except (KeyError, TypeError, ValueError):
            return None


def align_steps(client, runs: list) -> None:
    """Every FINISHED member of a sweep shows its result up to the sweep's last step.

    Members whose schedules differ (an epochs sweep) have different terminal steps; the
    shorter ones get their result repeated at the steps up to the longest one's.
    """
    grids = {run.info.run_id: StepGrid.of(run.data.tags) for run in runs}
    terminal = max((grid.terminal for grid in grids.values() if grid is not None), default=0)
    for run in runs:
        grid = grids[run.info.run_id]
        if run.info.status != "FINISHED" or grid is None or grid.terminal >= terminal:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            picture = load_image(client.download_artifacts(run.info.run_id, "result/result.png", scratch))
        steps = StepGrid(grid.every, terminal).after(grid.terminal)
        for step in steps:
            client.log_image(run.info.run_id, picture, key=PROGRESS, step=step, synchronous=True)
        client.set_tag(run.info.run_id, TAG_IMAGE_STEPS, StepGrid(grid.every, terminal).tag())
