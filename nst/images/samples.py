"""Sample images by name: ``content=tubingen style=starry_night``.

The images are never part of the repository. Each name maps to a public address
and a sha256; the file is downloaded into the asset cache on first use and
verified. ``$NST_ASSETS_DIR`` points the cache at a local folder, which is how
offline machines (CI, tests) use a pre-filled copy; without it a checkout's sibling
``../shared/assets`` (holding SOURCES.md) is used when there is one.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from nst.downloads import cache_dir, download, sha256_file
from nst.errors import AssetError, DownloadError

ASSETS_ENV = "NST_ASSETS_DIR"
_JCJ = "https://raw.githubusercontent.com/jcjohnson/neural-style/07c4b8299f8fbdafec0c514fc820ff1d7ff62e46/examples/inputs/"
_AST = "https://raw.githubusercontent.com/asetoodehnia/Neural-Style-Transfer/71eaf3fe22c5d3bc40817cfee1a1a4a65f261bfe/styles/"


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str
    url: str
    sha256: str
    role: str
    licence: str


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset("tubingen", "tubingen.jpg", _JCJ + "tubingen.jpg",
              "e67d1869f01fd805385c681a80d9ebcf0f70ea4a5fe6127f0606bb1c7f4bf506", "content", "CC BY 3.0"),
        Asset("golden_gate", "golden_gate.jpg", _JCJ + "golden_gate.jpg",
              "f8476ac216e0d409af2e52bf82ad2cdc3433e23d7895e6f9b2048fc014ed57ba", "content", "MIT repo"),
        Asset("hoovertowernight", "hoovertowernight.jpg", _JCJ + "hoovertowernight.jpg",
              "8852910ed1594af535c3dee012b020b9ee4045798645885d20a9445d12e98093", "content", "MIT repo"),
        Asset("mona_lisa", "mona_lisa.jpg",
              "https://raw.githubusercontent.com/5A-INSA-LilaR66/projet_HDDL_StyleTransfer/"
              "18f8360263fa94bef812f6ef3de75feb98d72a4b/images/joconde.jpg",
              "867acd7b7e43f2fc5cbbf0d332192d0d117ca892f0423e39f95e4dabd97abaeb", "content", "public domain"),
        Asset("starry_night", "starry_night.jpg", _JCJ + "starry_night.jpg",
              "0592ab0f7b51b3ce72608a95e53880bd93971e5b48f93a0ce8dfd3cbccf3d098", "style", "public domain"),
        Asset("the_scream", "the_scream.jpg", _JCJ + "the_scream.jpg",
              "f3075cddeb974a9ee1d6418f7f33fd05185a7ac7dcb4288bd2805d499a9dcaee", "style", "public domain"),
        Asset("shipwreck", "shipwreck.jpg", _JCJ + "shipwreck.jpg",
              "4f7cf34e3cd4a5daaf3f421f059ca9a01aaa2a3afd7243d6670c9c8bc001a213", "style", "public domain"),
        Asset("composition_vii", "composition_vii.jpg", _AST + "composition_vii.jpg",
              "20af1d4c3bcb0cc370162700f2d9d4101ea3781cf79f2b979addf5225fd31ef9", "style", "public domain"),
        Asset("wave", "wave.jpg", _AST + "wave.jpg",
              "df2e388bacc4d395214ef0a9fc94da6a8791547ed3e3a4736d6180a6682d6ebd", "style", "public domain"),
    ]
}


# A checkout's sibling folder of pre-fetched sample images (offline machines: the Makefile points
# NST_ASSETS_DIR there too); recognised by the SOURCES.md that lists where each image came from.
SHARED_ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"


def shared_assets() -> Path | None:
    """``../shared/assets`` beside the checkout, when it holds SOURCES.md; else None."""
    return SHARED_ASSETS if (SHARED_ASSETS / "SOURCES.md").is_file() else None


def assets_dir() -> Path:
    """Where sample images are cached: ``$NST_ASSETS_DIR``, else the checkout's ``../shared/assets``
    (when it holds SOURCES.md, as the Makefile finds it), else ``<nst cache>/assets``."""
    override = os.environ.get(ASSETS_ENV)
    if override:
        return Path(override).expanduser()
    return shared_assets() or cache_dir("assets")


def _asset_named(spec: str) -> Asset | None:
    key = spec[:-4] if spec.lower().endswith(".jpg") else spec
    return ASSETS.get(key)


def resolve_image(spec: str | os.PathLike, what: str = "image") -> Path:
    """Turn a path or a sample-asset name into the path of a local file.

    A path that exists wins over a name. A name is looked up in the asset cache,
    verified, and downloaded there when absent. ``what`` (``content``, ``style``)
    makes error messages say which input was wrong.
    """
    spec_str = str(spec).strip()
    if not spec_str or spec_str in ("???", "None"):
        raise AssetError(f"{what} image is not set: give a path or one of {', '.join(ASSETS)}")
    path = Path(spec_str).expanduser()
    if path.exists():
        return path.resolve()
    asset = _asset_named(spec_str)
    if asset is None:
        close = difflib.get_close_matches(spec_str, list(ASSETS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AssetError(
            f"{what} image {spec_str!r}: no such file, and not a sample asset name{hint} "
            f"(known names: {', '.join(ASSETS)})"
        )
    return fetch_asset(asset, what)


def fetch_asset(asset: Asset, what: str = "image") -> Path:
    """Return the verified cached file of ``asset``, downloading it on first use."""
    folder = assets_dir()
    local = folder / asset.filename
    if local.is_file():
        got = sha256_file(local)
        if got == asset.sha256:
            return local
        if folder != cache_dir("assets"):  # a folder of the user's: never delete from it
            raise AssetError(
                f"{what} image {asset.name!r}: {local} has sha256 {got}, expected {asset.sha256} "
                f"(the file in {folder} ({ASSETS_ENV} or ../shared/assets) is not the published one)"
            )
        local.unlink()  # a corrupt entry of our own cache: fetch it again
    try:
        return download(asset.url, local, asset.sha256)
    except DownloadError as exc:
        raise AssetError(
            f"{what} image {asset.name!r} is not in the asset cache {folder} and could not be "
            f"downloaded ({exc}). Offline, put {asset.filename} (sha256 {asset.sha256}) in a folder "
            f"and set {ASSETS_ENV} to it, or pass a path to an image file instead."
        ) from exc
