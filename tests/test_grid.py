"""The sweep grid: a title line, and tiles at the results' own resolution when the sweep is small."""

from PIL import Image

from nst import pictures, reports


def _results(count, side):
    return [Image.new("RGB", (side, side * 3 // 4), (40 * i % 255, 90, 160)) for i in range(count)]


def test_a_small_sweep_keeps_its_results_resolution():
    assert reports.tile_size(_results(6, 256)) == 256  # was cut to 192
    assert reports.tile_size(_results(6, 1024)) == reports.LARGEST_TILE
    assert reports.tile_size(_results(6, 64)) == pictures.TILE  # never smaller: the labels must fit
    assert reports.tile_size(_results(reports.SMALL_SWEEP + 1, 256)) == pictures.TILE
    assert reports.tile_size([None, None]) == pictures.TILE


def test_the_grid_has_a_title_line_and_tiles_of_the_chosen_size():
    results = _results(6, 256)
    tiles = [(f"β={10 ** i}", result) for i, result in enumerate(results)]
    grid = pictures.comparison_grid(results[0], results[1], tiles, size=256,
                                    title="tubingen + starry_night · vgg16_hed · 256 px · 15 epochs")
    gap, caption = pictures.GAP, pictures.CAPTION
    assert grid.size == (4 * (256 + gap) + gap, pictures.TITLE + 2 * (256 + caption + gap) + gap)
    band = grid.crop((0, 0, grid.width, pictures.TITLE))
    assert band.getextrema() != ((255, 255),) * 3  # text in the title band
    # the first result sits unscaled (256 x 192) in the third tile, centred vertically
    x, y = gap + 2 * (256 + gap), pictures.TITLE + gap + (256 - 192) // 2
    assert grid.crop((x, y, x + 256, y + 192)).tobytes() == results[0].tobytes()
    untitled = pictures.comparison_grid(None, None, tiles)
    assert untitled.height == 2 * (pictures.TILE + caption + gap) + gap
