"""Checked downloads (nst/downloads.py): a wrong sha256 leaves nothing, NST_OFFLINE forbids them."""

import hashlib
import shutil

import pytest

from nst.downloads import download
from nst.errors import DownloadError


def test_download_rejects_wrong_hash_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("NST_OFFLINE")
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "dest.bin"
    with pytest.raises(DownloadError, match="sha256"):
        download(source.as_uri(), dest, "0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    good = hashlib.sha256(b"payload").hexdigest()
    assert download(source.as_uri(), dest, good).read_bytes() == b"payload"
    # torch hub style: an 8-digit prefix is enough
    shutil.rmtree(dest.parent)
    assert download(source.as_uri(), dest, good[:8]).is_file()


def test_offline_forbids_downloads(tmp_path):
    with pytest.raises(DownloadError, match="NST_OFFLINE"):
        download("https://example.invalid/x", tmp_path / "x", "0" * 64)
