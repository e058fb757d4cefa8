"""Files written whole (nst/files.py): the target is absent, as it was, or complete."""

import errno
import os
import stat

import pytest

from nst.files import is_partial, write_text, written


def test_a_file_is_renamed_into_place_only_once_complete(tmp_path):
    target = tmp_path / "deep" / "run.json"
    with written(target) as temporary:
        temporary.write_text("{}")
        assert not target.exists() and is_partial(temporary)
    assert target.read_text() == "{}" and [p.name for p in target.parent.iterdir()] == ["run.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    """A full disk mid-write used to leave a 0-byte result.png."""
    target = tmp_path / "result.png"
    target.write_text("old")
    with pytest.raises(OSError) as raised, written(target) as temporary:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary))
    assert raised.value.filename == str(target)  # the message names the file being written
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_a_file_gets_the_mode_open_would_give_it(tmp_path):
    """The temporary file was mkstemp's, owner-only (0600): results others could not read."""
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "text")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").read_text() == "text"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
