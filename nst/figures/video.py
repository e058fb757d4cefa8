"""The run's video, ``optimisation.mp4``, encoded while the optimisation goes on (a GIF without H.264)."""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

from PIL import Image

from nst.files import PART, written

log = logging.getLogger(__name__)


class Video:
    """``optimisation.mp4``, encoded by a background thread while the run goes on, so that encoding
    does not add to the run's time once the optimisation ends.

    Each frame goes through a bounded queue (``add`` waits only if the encoder is
    ``depth`` frames behind) and ``close`` waits for the last ones. Every frame is
    fitted to ``size``, the result's (on an even canvas: yuv420p needs even sides).
    Without PyAV or an H.264 encoder the frames are kept and ``close`` writes a GIF instead.
    The video is encoded under a temporary name and renamed when complete (``nst.files``): a run that
    stops, or a disk that fills, leaves no broken video behind.
    """

    def __init__(self, stem: Path, size: tuple[int, int], fps: int = 8, depth: int = 8):
        self.stem, self.size, self.fps = Path(stem), size, fps
        self.count = 0
        self.kept: list[Image.Image] = []  # for the GIF, when there is no H.264 encoder
        self.failure: Exception | None = None
        self.queue: queue.Queue[Image.Image | None] = queue.Queue(maxsize=depth)
        self.thread: threading.Thread | None = None
        self.partial = stem.with_name(f".{stem.name}.mp4{PART}")

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
            self.partial.unlink(missing_ok=True)
            return None
        if self.kept:
            path = self.stem.with_suffix(".gif")
            with written(path) as temporary:
                self.kept[0].save(temporary, format="GIF", save_all=True, append_images=self.kept[1:],
                                  duration=int(1000 / self.fps), loop=0)
            return path
        os.replace(self.partial, mp4)
        return mp4

    def _frames(self):
        while (frame := self.queue.get()) is not None:
            yield frame

    def _encode(self) -> None:
        frames = self._frames()
        try:
            import av  # PyAV (and its codecs) only when a video is written

            container = av.open(str(self.partial), mode="w", format="mp4")
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
