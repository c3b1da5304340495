"""Writing files that hold keys: created 0600, written atomically, never logged.

Shared by the agent and the hub (they import :mod:`amber.protocol` and this module,
never each other).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from amber.protocol.errors import KeyFileError


def write_secret(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Create ``path`` with mode 0600 holding ``data``: temp file, fsync, rename."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyFileError(
            f"{target} already exists; refusing to overwrite a key file",
            hint="move the old key away first if you really mean to replace it",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return target


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
