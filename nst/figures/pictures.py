"""Pictures of runs and sweeps: triptych, loss curve, video, grid tiles and plots.

Used while a run is recorded (``nst.recorder``) and when a sweep is summarised
or rebuilt from the store (``nst.reports``), so both draw the same images.
"""

from __future__ import annotations

import io
import logging
import math
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw, ImageFont

from nst.images.files import tensor_to_pil

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TILE = 192


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None (swept values arrive as strings)."""
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib, has Greek letters for alpha/beta), else Pillow's default."""
    try:
        import matplotlib  # matplotlib takes a second to import: only when a picture is drawn

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


CAPTION = 28  # px below each tile for its label
TITLE = 36  # px above the grid for its title line
GAP = 6


def tile(picture: Image.Image | None, caption: str, box: tuple[int, int] = (TILE, TILE)) -> Image.Image:
    """A tile: the picture fitted in a ``box`` (width, height) px, the caption below it."""
    width, height = box
    canvas = Image.new("RGB", (width, height + CAPTION), "white")
    if picture is not None:
        scale = min(width / picture.width, height / picture.height)
        fitted = picture if scale == 1 else picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    else:
        ImageDraw.Draw(canvas).text((width // 2, height // 2), "no image", fill="grey", anchor="mm", font=_font(14))
    _centred(canvas, caption, height + CAPTION // 2, 14)
    return canvas


def _centred(canvas: Image.Image, text: str, y: int, largest: int) -> None:
    """``text`` centred on ``canvas`` at height ``y``, its font shrunk until it fits the width."""
    draw = ImageDraw.Draw(canvas)
    size = largest
    while size > 8 and draw.textlength(text, font=_font(size)) > canvas.width - 4:
        size -= 1
    draw.text((canvas.width // 2, y), text, fill="black", anchor="mm", font=_font(size))


def comparison_grid(content: Image.Image | None, style: Image.Image | None,
                    tiles: list[tuple[str, Image.Image | None]],
                    rows: list[str] | None = None, columns: list[str] | None = None,
                    cell: dict[tuple[str, str], int] | None = None,
                    box: tuple[int, int] = (TILE, TILE), title: str | None = None) -> Image.Image:
    """Content, style, then one labelled tile per job (Figure 5), under a title line.

    With ``rows``/``columns``/``cell`` (two swept parameters) the jobs form a 2-D
    grid and content and style sit in an extra first column.
    """
    if rows and columns and cell:
        grid = [[None] * (len(columns) + 1) for _ in range(max(2, len(rows)))]
        grid[0][0], grid[1][0] = tile(content, "content", box), tile(style, "style", box)
        for (r, c), index in cell.items():
            grid[rows.index(r)][columns.index(c) + 1] = tile(tiles[index][1], tiles[index][0], box)
    else:
        flat = [tile(content, "content", box), tile(style, "style", box)] + [tile(p, t, box) for t, p in tiles]
        width = min(4, len(flat))
        grid = [flat[i:i + width] for i in range(0, len(flat), width)]
    return layout(grid, title)


def layout(grid: list[list[Image.Image | None]], title: str | None = None) -> Image.Image:
    """Tiles (all of one size) in rows, with a gap between them and the title line above."""
    first = next(t for row in grid for t in row if t is not None)
    width, height = first.size
    n_cols = max(len(r) for r in grid)
    top = TITLE if title else 0
    canvas = Image.new("RGB", (n_cols * (width + GAP) + GAP, top + len(grid) * (height + GAP) + GAP), "white")
    if title:
        _centred(canvas, title, GAP + TITLE // 2, 18)
    for y, row in enumerate(grid):
        for x, picture in enumerate(row):
            if picture is not None:
                canvas.paste(picture, (GAP + x * (width + GAP), top + GAP + y * (height + GAP)))
    return canvas


def loss_curve(history: list[dict]) -> Image.Image:
    """Total, content and style loss against the evaluation number (log scale)."""
    figure, axis = _figure()
    steps = [r["evaluation"] for r in history]
    for key in ("total", "content", "style", "tv"):
        values = [r.get(key, 0.0) for r in history]
        if any(v > 0 for v in values):
            axis.plot(steps, values, label=key)
    axis.set_yscale("log")
    axis.set_xlabel("function evaluation")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    return _to_image(figure)


def triptych(content: torch.Tensor, style: torch.Tensor, result: torch.Tensor, height: int = 256) -> Image.Image:
    """content | style | result side by side at one height (the seed's Figure 1)."""
    pictures = [tensor_to_pil(t) for t in (content, style, result)]
    pictures = [p.resize((max(1, round(p.width * height / p.height)), height)) for p in pictures]
    canvas = Image.new("RGB", (sum(p.width for p in pictures) + 8 * 2, height), "white")
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + 8
    return canvas


def _figure():
    import matplotlib  # matplotlib takes a second to import: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    return plt.subplots(figsize=(6, 4), dpi=100)


def _to_image(figure) -> Image.Image:
    import matplotlib.pyplot as plt  # loaded already by _figure

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def loss_plot(table: pd.DataFrame) -> Image.Image | None:
    """Final content and style loss against the (first) swept value; log axis for log-spaced values."""
    keys = table.attrs.get("swept", [])
    done = table[table["status"] == "FINISHED"]
    if not keys or done.empty:
        return None
    import matplotlib.pyplot as plt  # matplotlib takes a second to import: only when a plot is drawn

    key = keys[0]
    values = [finite_number(v) for v in done[key]]
    numeric = all(v is not None for v in values)
    figure, axis = _figure()
    order = sorted(range(len(done)), key=lambda i: values[i]) if numeric else list(range(len(done)))
    xs = [values[i] for i in order] if numeric else [str(done[key].iloc[i]) for i in order]
    for column, name in (("final_content", "content"), ("final_style", "style")):
        ys = [done[column].iloc[i] for i in order]
        axis.plot(xs, ys, marker="o", label=f"final {name} loss")
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
        axis.set_xscale("log")
    if all((y or 0) > 0 for y in [*done["final_content"], *done["final_style"]]):
        axis.set_yscale("log")
    axis.set_xlabel(key)
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    if not numeric:
        plt.setp(axis.get_xticklabels(), rotation=20, ha="right")
    return _to_image(figure)


class Video:
    """``optimisation.mp4``, encoded by a background thread while the run goes on.

    The frames used to be kept and encoded when the run ended, after the
    optimisation: 31 frames of 512x384 random noise (x264's worst case) took 3.3 s
    on the 2-core CPU, about as long as a 300-evaluation run optimises on an H200.
    Now each frame goes through a
    bounded queue (``add`` waits only if the encoder is ``depth`` frames behind)
    and ``close`` waits for the last ones. Every frame is fitted to ``size``, the
    result's (on an even canvas: yuv420p needs even sides). Without PyAV or an
    H.264 encoder the frames are kept and ``close`` writes a GIF instead.
    """

    def __init__(self, stem: Path, size: tuple[int, int], fps: int = 8, depth: int = 8):
        self.stem, self.size, self.fps = Path(stem), size, fps
        self.count = 0
        self.kept: list[Image.Image] = []  # for the GIF, when there is no H.264 encoder
        self.failure: Exception | None = None
        self.queue: queue.Queue[Image.Image | None] = queue.Queue(maxsize=depth)
        self.thread: threading.Thread | None = None

    def add(self, frame: Image.Image) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._encode, name="nst-video", daemon=True)
            self.thread.start()
        self.count += 1
        self.queue.put(frame)

    def close(self) -> Path | None:
        """The video's path once every frame is in it; None with fewer than two frames (or if encoding
        failed: logged, the run's other files are not affected)."""
        if self.thread is None:
            return None
        self.queue.put(None)
        self.thread.join()
        self.thread = None
        mp4 = self.stem.with_suffix(".mp4")
        if self.count < 2 or self.failure is not None:
            if self.failure is not None:
                log.warning("no video: encoding %s failed: %s", mp4, self.failure)
            mp4.unlink(missing_ok=True)
            return None
        if self.kept:
            path = self.stem.with_suffix(".gif")
            self.kept[0].save(path, save_all=True, append_images=self.kept[1:], duration=int(1000 / self.fps),
                              loop=0)
            return path
        return mp4

    def _frames(self):
        while (frame := self.queue.get()) is not None:
            yield frame

    def _encode(self) -> None:
        frames = self._frames()
        try:
            import av  # PyAV (and its codecs) only when a video is written

            container = av.open(str(self.stem.with_suffix(".mp4")), mode="w")
            stream = container.add_stream("libx264", rate=self.fps)
            width, height = self.size
            stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        except Exception as exc:  # noqa: BLE001 - no PyAV or no H.264 encoder: a GIF of the kept frames
            log.info("MP4 encoding unavailable (%s); writing a GIF", exc)
            self.kept.extend(frames)
            return
        try:
            with container:
                for frame in frames:
                    canvas = Image.new("RGB", (stream.width, stream.height))
                    canvas.paste(frame.resize(self.size), (0, 0))
                    for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        except Exception as exc:  # noqa: BLE001 - reported by close; the queue is drained so add never blocks
            self.failure = exc
            for _ in frames:
                pass
