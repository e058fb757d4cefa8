"""Sample images by name (nst/images/samples.py): the registry, the cache and verified downloads."""

import pytest

from nst.downloads import sha256_file
from nst.errors import AssetError
from nst.images import samples
from nst.images.samples import ASSETS, resolve_image


def test_registry_matches_shared_sources(assets_dir):
    """Every name in SOURCES.md is registered with the same sha256 and public address."""
    text = (assets_dir / "SOURCES.md").read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ") and ".jpg" in line]
    listed = {cells[1].strip(): (cells[5].strip(), cells[6].strip()) for cells in rows}
    assert {a.filename for a in ASSETS.values()} == set(listed)
    for asset in ASSETS.values():
        assert (asset.sha256, asset.url) == listed[asset.filename]


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_names_resolve_offline_from_the_cache_folder(assets_dir, name):
    path = resolve_image(name)
    assert path == assets_dir / ASSETS[name].filename
    assert sha256_file(path) == ASSETS[name].sha256


def test_name_with_extension_resolves(assets_dir):
    assert resolve_image("tubingen.jpg").name == "tubingen.jpg"


def test_path_wins_over_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tubingen").write_bytes(b"mine")
    assert resolve_image("tubingen") == tmp_path / "tubingen"


def test_missing_name_offline_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_ASSETS_DIR", str(tmp_path))
    with pytest.raises(AssetError) as info:
        resolve_image("starry_night", "style")
    message = str(info.value)
    for part in ("style image 'starry_night'", str(tmp_path), "starry_night.jpg", "NST_ASSETS_DIR",
                 ASSETS["starry_night"].sha256):
        assert part in message


def test_unknown_name_lists_known_names():
    with pytest.raises(AssetError, match=r"'mystery'.*no such file.*tubingen.*starry_night") as info:
        resolve_image("mystery", "content")
    assert "did you mean" not in str(info.value)  # nothing close


def test_a_misspelt_sample_name_gets_a_did_you_mean():
    with pytest.raises(AssetError, match=r"'starry_nite'.*\(did you mean starry_night\?\)"):
        resolve_image("starry_nite", "style")


def test_wrong_bytes_in_assets_dir_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_ASSETS_DIR", str(tmp_path))
    (tmp_path / "wave.jpg").write_bytes(b"not the wave")
    with pytest.raises(AssetError, match="sha256"):
        resolve_image("wave")


def test_names_resolve_offline_from_the_checkouts_shared_assets(monkeypatch, assets_dir):
    """A fresh checkout beside ../shared/assets (SOURCES.md in it) needs no NST_ASSETS_DIR, as the
    README's first command runs it (the Makefile sets the variable, .venv/bin/nst does not)."""
    monkeypatch.delenv("NST_ASSETS_DIR")
    assert samples.SHARED_ASSETS.resolve() == assets_dir.resolve()  # tests run from such a checkout
    assert samples.assets_dir() == samples.SHARED_ASSETS
    assert resolve_image("tubingen") == samples.SHARED_ASSETS / "tubingen.jpg"  # offline: no download
    monkeypatch.setattr(samples, "SHARED_ASSETS", assets_dir / "elsewhere")  # no SOURCES.md there
    assert samples.assets_dir() != assets_dir / "elsewhere"


def test_first_use_downloads_into_the_cache_and_verifies(tmp_path, monkeypatch, assets_dir):
    """The real download path, fed from a file:// address (no network here)."""
    monkeypatch.delenv("NST_ASSETS_DIR")
    monkeypatch.setattr(samples, "SHARED_ASSETS", tmp_path / "no-shared-folder")
    monkeypatch.delenv("NST_OFFLINE")
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "cache"))
    source = ASSETS["mona_lisa"]
    local = assets_dir / source.filename
    monkeypatch.setitem(ASSETS, "mona_lisa", samples.Asset(
        source.name, source.filename, local.as_uri(), source.sha256, source.role, source.licence))
    path = resolve_image("mona_lisa")
    assert path == tmp_path / "cache" / "assets" / "mona_lisa.jpg"
    assert sha256_file(path) == source.sha256
    # a corrupted cache entry is replaced by a verified download
    path.write_bytes(b"corrupt")
    assert sha256_file(resolve_image("mona_lisa")) == source.sha256
