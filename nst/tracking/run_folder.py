"""What a run leaves in its folder while it optimises, whatever the tracking: the engine's disk-side callback.

``RunFolder.on_evaluation`` sees every function evaluation (as the MLflow recorder
does) and, in the run's folder and on the terminal:

- every ``frame_every`` evaluations adds a frame to ``optimisation.mp4``
  (encoded meanwhile by ``nst.figures.video.Video``'s thread; ``finish`` adds the
  result and closes it, before the recorder logs the folder to MLflow);
- every ``save_every`` evaluations writes ``progress/<evaluation>.png``;
- every ``print_every`` evaluations prints one line of per-layer losses (as
  jcjohnson/neural-style's ``-print_iter``).

The job driver (``nst.jobs``) hands it to the engine with the recorder's callbacks.
No MLflow, no Hydra here.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nst.engine.inputs import Inputs
from nst.engine.run_files import writing
from nst.figures.video import Video
from nst.images.files import save_png, tensor_to_pil

PROGRESS_DIR = "progress"
VIDEO_STEM = "optimisation"


def loss_line(record: dict) -> str:
    """One evaluation's losses on one line: total, content per content layer, style per style layer, tv."""
    def number(value) -> str:
        return f"{value:.4g}" if isinstance(value, int | float) and math.isfinite(value) else str(value)

    content = " ".join(f"{k.split('/', 1)[1]}={number(v)}" for k, v in record.items() if k.startswith("content/"))
    style = " ".join(f"{k.split('/', 1)[1]}={number(v)}" for k, v in record.items() if k.startswith("style/"))
    return (f"nst: evaluation {int(record['evaluation'])}: total {number(record['total'])} | "
            f"content {number(record['content'])} ({content}) | style {number(record['style'])} ({style}) | "
            f"tv {number(record['tv'])}")


class RunFolder:
    """The run's own files beyond the engine's (video, numbered progress images) and its printed lines."""

    def __init__(self, output_dir: Path, size: tuple[int, int], frame_every: int = 10, video: bool = True,
                 print_every: int = 0, save_every: int = 0):
        self.output_dir = Path(output_dir)
        self.frame_every, self.print_every, self.save_every = frame_every, print_every, save_every
        self.video = Video(self.output_dir / VIDEO_STEM, size) if video else None  # size: the result's (w, h)

    @classmethod
    def of(cls, output_dir: Path, inputs: Inputs) -> RunFolder:
        member = inputs.spec.member
        return cls(output_dir, (inputs.content.shape[-1], inputs.content.shape[-2]), member.frame_every,
                   member.video, member.print_every, member.save_every)

    @property
    def callbacks(self) -> list:
        return [self.on_evaluation]

    def on_evaluation(self, record: dict, image: torch.Tensor) -> None:
        step = int(record["evaluation"])
        if self.video is not None and (step == 1 or step % self.frame_every == 0):
            self.video.add(tensor_to_pil(image))
        if self.save_every and step % self.save_every == 0:
            with writing(self.output_dir):
                save_png(image, self.progress_png(step))
        if self.print_every and step % self.print_every == 0:
            tqdm.write(loss_line(record))  # above the progress bar, not through it

    def progress_png(self, step: int) -> Path:
        folder = self.output_dir / PROGRESS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{step:04d}.png"

    def finish(self, final: torch.Tensor | None = None, step: int | None = None) -> Path | None:
        """The video closed, with the final image (at evaluation ``step``) as its last frame unless it is a
        frame already; None when there are fewer than two frames or no video is wanted."""
        if self.video is None:
            return None
        if final is not None and step is not None and not (self.video.count and step % self.frame_every == 0):
            self.video.add(tensor_to_pil(final))
        with writing(self.output_dir):
            return self.video.close()
