"""The sweep grid: a title line, and tiles at the results' own resolution when the sweep is small."""

from PIL import Image

from nst.compare import sweep_report
from nst.figures import grid as pictures


def _results(count, side):
    return [Image.new("RGB", (side, side * 3 // 4), (40 * i % 255, 90, 160)) for i in range(count)]


def test_a_small_sweep_keeps_its_results_resolution_and_shape():
    assert sweep_report.tile_box(_results(6, 256)) == (256, 192)  # was cut to 192 x 192, 4:3 inside a square
    assert sweep_report.tile_box(_results(6, 1024)) == (sweep_report.LARGEST_TILE, sweep_report.LARGEST_TILE * 3 // 4)
    assert sweep_report.tile_box(_results(6, 64))[0] == pictures.TILE  # never smaller: the labels must fit
    assert sweep_report.tile_box(_results(sweep_report.SMALL_SWEEP + 1, 256))[0] == pictures.TILE
    assert sweep_report.tile_box([None, None]) == (pictures.TILE, pictures.TILE)
    assert sweep_report.tile_box([Image.new("RGB", (96, 256))]) == (256, 256)  # a portrait result: square


def test_the_grid_has_a_title_line_and_tiles_of_the_chosen_size():
    results = _results(6, 256)
    tiles = [(f"β={10 ** i}", result) for i, result in enumerate(results)]
    grid = pictures.comparison_grid(results[0], results[1], tiles, box=(256, 192),
                                    title="tubingen + starry_night · vgg16_hed · 256 px · 15 epochs")
    gap, caption = pictures.GAP, pictures.CAPTION
    assert grid.size == (4 * (256 + gap) + gap, pictures.TITLE + 2 * (192 + caption + gap) + gap)
    band = grid.crop((0, 0, grid.width, pictures.TITLE))
    assert band.getextrema() != ((255, 255),) * 3  # text in the title band
    # the first result sits unscaled (256 x 192) in the third tile, filling it
    x, y = gap + 2 * (256 + gap), pictures.TITLE + gap
    assert grid.crop((x, y, x + 256, y + 192)).tobytes() == results[0].tobytes()
    untitled = pictures.comparison_grid(None, None, tiles)
    assert untitled.height == 2 * (pictures.TILE + caption + gap) + gap
