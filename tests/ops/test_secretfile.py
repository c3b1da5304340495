"""Key files: created 0600, never overwritten, never half-written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from amber.protocol.errors import KeyFileError
from amber.secretfile import read_secret, write_secret


def test_created_0600_and_read_back(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "k" / "vault.key", b"secret" * 1000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret(path) == b"secret" * 1000
    assert [p.name for p in path.parent.iterdir()] == ["vault.key"]  # no temp file left


def test_never_overwrites_an_existing_key(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "vault.key", b"old")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_secret(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["vault.key"]


def test_a_dangling_symlink_at_the_target_is_not_replaced(tmp_path: Path) -> None:
    """Whatever sits at the path, even a link to nowhere that `exists()` calls absent, is
    kept: the write links the new file into place, which fails if the name is taken."""
    link = tmp_path / "vault.key"
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_secret(link, b"new")
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()


def test_overwrite_replaces_atomically(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "enrolment", b"old")
    write_secret(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "vault.key", b"k")
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="readable by group or others") as info:
        read_secret(path)
    assert "chmod 600" in info.value.hint
