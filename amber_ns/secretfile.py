"""Writing files that hold keys: created 0600, written atomically, never logged.

Shared by the agent and the hub (they import :mod:`amber.protocol` and this module,
never each other).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from amber.protocol.errors import KeyFileError


def write_secret(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Create ``path`` with mode 0600 holding ``data``: a fresh temporary file, fsync, then
    ``link`` (never overwrites: whatever appears at ``path`` in the meantime, even a
    dangling symlink, makes it fail) or, with ``overwrite``, ``rename``; then the directory
    is fsynced. A half-written key file is never visible under ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target, follow_symlinks=False)
            except FileExistsError:
                raise KeyFileError(
                    f"{target} already exists; refusing to overwrite a key file",
                    hint="move the old key away first if you really mean to replace it",
                ) from None
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return target


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_secret(path: str | os.PathLike[str], *, what: str = "key file") -> bytes:
    """Read a key file, refusing one that group or others can read."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {p}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {p} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"run: chmod 600 {p}",
        )
    return data
