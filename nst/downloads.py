"""Hash-checked downloads into nst's cache.

Links to model weights and sample images die or change; every download is
therefore checked against a known sha256 before it is moved into place, so a
cached file is either complete and right or absent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from nst.errors import DownloadError
from nst.files import written

CACHE_ENV = "NST_CACHE_DIR"
OFFLINE_ENV = "NST_OFFLINE"
DEFAULT_TIMEOUT_S = 30.0


def cache_dir(*parts: str) -> Path:
    """nst's cache root (``$NST_CACHE_DIR`` or ``~/.cache/nst``), joined with ``parts``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nst"
    return Path(root).expanduser().joinpath(*parts)


def offline() -> bool:
    """True when ``NST_OFFLINE`` forbids network access (tests, air-gapped machines)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_matches(digest: str, expected: str) -> bool:
    """``expected`` is a full sha256 or a prefix of at least 8 hex digits."""
    return len(expected) >= 8 and digest.startswith(expected.lower())


def download(url: str, dest: str | os.PathLike, sha256: str, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` if the bytes hash to ``sha256``; raise ``DownloadError`` otherwise.

    ``sha256`` is the full hex digest, or a prefix of it (torch hub names weight
    files ``<name>-<first 8 hex digits>.pth``, and that prefix is all that is published).

    The file is written next to ``dest`` under a temporary name and renamed only
    after the hash matched, so an interrupted or wrong download never looks cached.
    """
    dest = Path(dest)
    if offline():
        raise DownloadError(f"cannot download {url}: {OFFLINE_ENV} is set (no network access allowed)")
    try:
        with written(dest) as temporary:
            with open(temporary, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
            got = sha256_file(temporary)
            if not hash_matches(got, sha256):
                raise DownloadError(f"download of {url} has sha256 {got}, expected {sha256}; not cached")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from exc
    return dest


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a HEAD request to ``url`` succeeds quickly (used to choose a backbone, never to fail)."""
    if offline():
        return False
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return False
