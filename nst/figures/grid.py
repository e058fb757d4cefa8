"""Grids of labelled pictures: a tile per picture, the sweep's comparison grid, the run's triptych.

A run's recorder and a sweep's report (at the end of a multirun, or rebuilt from the
store by ``nst-report``) both draw with these, so the same run gives the same picture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from nst.images.files import tensor_to_pil

TILE = 192  # px: the smallest side of a tile, wide enough for its label
CAPTION = 28  # px below each tile for its label
SMALLEST_FONT = 9  # px: a caption that would need a smaller font on one line is wrapped
WRAPPED_FONT, WRAPPED_LINE = 11, 14  # px: a wrapped caption's font and line height
TITLE = 36  # px above the grid for its title line
GAP = 6


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib, has Greek letters for alpha/beta), else Pillow's default."""
    try:
        import matplotlib  # matplotlib takes a second to import: only when a picture is drawn

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def caption_lines(caption: str, width: int) -> list[str]:
    """``caption`` as one line when it fits ``width`` px at ``SMALLEST_FONT`` or larger, else broken at its
    `` · `` separators into lines that fit at ``WRAPPED_FONT`` (a search's trial names several values)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if draw.textlength(caption, font=_font(SMALLEST_FONT)) <= width - 4:
        return [caption]
    lines: list[str] = []
    for part in caption.split(" · "):
        joined = f"{lines[-1]} · {part}" if lines else part
        if lines and draw.textlength(joined, font=_font(WRAPPED_FONT)) <= width - 4:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def tile(picture: Image.Image | None, caption: str, box: tuple[int, int] = (TILE, TILE),
         lines: int = 1) -> Image.Image:
    """A tile: the picture fitted in a ``box`` (width, height) px, the caption below it, on one line or
    wrapped on up to ``lines`` lines (tiles of one grid share it, to be one size)."""
    width, height = box
    wrapped = caption_lines(caption, width) if lines > 1 else [caption]
    canvas = Image.new("RGB", (width, height + caption_height(lines)), "white")
    if picture is not None:
        scale = min(width / picture.width, height / picture.height)
        fitted = picture if scale == 1 else picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    else:
        ImageDraw.Draw(canvas).text((width // 2, height // 2), "no image", fill="grey", anchor="mm", font=_font(14))
    if len(wrapped) == 1:
        _centred(canvas, caption, height + caption_height(lines) // 2, 14)
    else:
        for number, line in enumerate(wrapped[:lines]):
            _centred(canvas, line, height + 6 + WRAPPED_LINE * number + WRAPPED_LINE // 2, WRAPPED_FONT)
    return canvas


def caption_height(lines: int) -> int:
    """The px below a tile for a caption of ``lines`` lines."""
    return CAPTION if lines <= 1 else 12 + WRAPPED_LINE * lines


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
    lines = max((len(caption_lines(caption, box[0])) for caption, _ in tiles), default=1)
    if rows and columns and cell:
        grid = [[None] * (len(columns) + 1) for _ in range(max(2, len(rows)))]
        grid[0][0], grid[1][0] = tile(content, "content", box, lines), tile(style, "style", box, lines)
        for (r, c), index in cell.items():
            grid[rows.index(r)][columns.index(c) + 1] = tile(tiles[index][1], tiles[index][0], box, lines)
    else:
        flat = [tile(content, "content", box, lines), tile(style, "style", box, lines)] + [
            tile(p, t, box, lines) for t, p in tiles]
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
