"""The comparison grid (nst/figures/grid.py): a title line, then tiles of the chosen size."""

from nst.figures import grid as pictures
from tests.helpers.images import result_images


def test_the_grid_has_a_title_line_and_tiles_of_the_chosen_size():
    results = result_images(6, 256)
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


def test_a_caption_too_long_for_one_line_is_wrapped_at_its_separators_and_every_tile_grows_alike():
    results = result_images(3, 64)
    long = " · ".join(["β=316", "content_layers=conv4_2", "style_layers=conv1_1..conv5_1", "lr=0.1513",
                       "tv_weight=10", "init=content"])
    lines = pictures.caption_lines(long, pictures.TILE)
    assert len(lines) > 1 and " · ".join(lines) == long
    grid = pictures.comparison_grid(None, None, [("β=1", results[0]), (long, results[1])])
    tall = pictures.TILE + pictures.caption_height(len(lines)) + pictures.GAP
    assert grid.size == (4 * (pictures.TILE + pictures.GAP) + pictures.GAP, tall + pictures.GAP)
    assert pictures.caption_lines("β=1", pictures.TILE) == ["β=1"]
