"""Filesystem durability shared by the agent, the hub and bundle files.

One helper, so the whole code base makes a rename or a new file durable the same way.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (renames, new and removed files) durable.

    A failure raises :class:`OSError` and must be treated as "not durable": after a
    failed fsync Linux may clear the error and report the next fsync of the same
    directory as a success although the data never reached the disk, so a caller never
    retries it and carries on (PostgreSQL's "fsyncgate")."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
