"""What every source kind shares: the scan context, the result, and the registry."""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from amber.agent.config import SourceConfig
from amber.agent.pipeline import ChunkWriter
from amber.agent.sources.chunking import cdc_pieces
from amber.protocol.errors import SourceError
from amber.protocol.records import Entry, Manifest

log = logging.getLogger("amber.agent.sources")
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass
class ScanContext:
    source: SourceConfig
    writer: ChunkWriter
    prev_manifest: Manifest | None
    prev_state: dict[str, Any]
    tmp_dir: Path
    busy_timeout: float
    make_cdc: Callable[[str], Any]  # "files" | "model" -> FastCDC

    def prev_entry(self, path: str) -> Entry | None:
        if self.prev_manifest is None:
            return None
        if not hasattr(self, "_index"):
            self._index = {e.path: e for e in self.prev_manifest.entries}
        return self._index.get(path)


@dataclass
class ScanResult:
    entries: list[Entry]
    meta: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


Scanner = Callable[[ScanContext], Awaitable[ScanResult]]


def pack_state(state: dict[str, Any], scanned_us: int | None = None) -> bytes:
    """A scanner's state; with ``scanned_us``, wrapped with when the source was scanned
    (an unchanged source keeps its old manifest, so the manifest's time is not that)."""
    obj = state if scanned_us is None else {"v": 1, "state": state, "scanned_us": scanned_us}
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # a damaged cache only costs a full rescan
        return {}
    return obj if isinstance(obj, dict) else {}


def _wrapped(obj: dict[str, Any]) -> bool:
    return obj.get("v") == 1 and isinstance(obj.get("state"), dict) and "scanned_us" in obj


def unpack_state(data: bytes) -> dict[str, Any]:
    obj = _unpack(data)
    return obj["state"] if _wrapped(obj) else obj


def scanned_us(data: bytes) -> int | None:
    """When the source was last scanned (None for state saved by older versions)."""
    obj = _unpack(data)
    return int(obj["scanned_us"]) if _wrapped(obj) else None


def source_root(src: SourceConfig) -> Path:
    """Check the source path exists and is readable; return it."""
    path = src.path
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise SourceError(f"source {src.name!r}: {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"source {src.name!r}: cannot stat {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):  # it would save (and a restore overwrite) what it points at
        raise SourceError(
            f"source {src.name!r}: {path} is a symlink",
            hint="point the source at the real path ('readlink -f' shows it) in agent.toml",
        )
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise SourceError(f"source {src.name!r}: {path} is not readable (mode {st.st_mode:o})")
    return path


def walk(root: Path, exclude: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
    """Every path under ``root`` (relative, sorted), without following symlinks."""
    if not root.is_dir():
        return [(root.name, root.lstat())]
    out: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(rel, pat) for pat in exclude) or not utf8_name(full):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            out.append((rel, full.lstat()))
    out.sort()
    return out


def utf8_name(path: Path | str) -> bool:
    """Whether ``path`` is valid UTF-8 (records carry names as UTF-8 text). A name that
    is not (a byte the file system allows, seen by Python as a surrogate escape) is
    skipped with a warning naming it: one odd file must not stop a source's backups."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        log.warning(
            "%s: the name is not valid UTF-8: skipped (not in this checkpoint); rename it "
            "to back it up",
            ascii(str(path)),
        )
        return False
    return True


def _walk_error(exc: OSError) -> None:
    raise SourceError(f"cannot read {exc.filename}: {exc.strerror}")


def open_for_read(path: Path, name: str) -> Any:
    """Open a file the scanner made itself (never follows a symlink)."""
    try:
        return os.fdopen(os.open(path, _NOFOLLOW), "rb")
    except OSError as exc:
        raise SourceError(f"source {name!r}: cannot read {path}: {exc.strerror}") from None


def open_listed(path: Path, name: str, listed: os.stat_result) -> BinaryIO | None:
    """Open the regular file ``walk`` listed, or return None (with a warning) when
    the path no longer is that file: gone, a symlink now (never followed), or another
    file (same device and inode as listed, else a directory above it was swapped for a
    symlink). A file swapped between listing and reading is skipped for this
    checkpoint, not read: see docs/SECURITY.md and OPERATIONS.md."""
    try:
        fd = os.open(path, _NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            raise SourceError(f"source {name!r}: cannot read {path}: {exc.strerror}") from None
        _swapped(path, name, exc.strerror or "gone")
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino):
        os.close(fd)
        _swapped(path, name, "another file than the one listed")
        return None
    return os.fdopen(fd, "rb")


def _swapped(path: Path, name: str, why: str) -> None:
    log.warning(
        "source %r: %s changed between listing and reading (%s): skipped in this "
        "checkpoint (its previous version, if any, is kept)",
        name,
        path,
        why,
    )


@contextmanager
def reading(path: Path, name: str) -> Iterator[None]:
    """Turn a read error (an I/O error, a file gone stale on a network mount) into a
    SourceError naming the file."""
    try:
        yield
    except OSError as exc:
        raise SourceError(f"source {name!r}: reading {path}: {exc}") from None


def read_pieces(fh: BinaryIO, start: int, cdc: Any, path: Path, name: str) -> Iterator[bytes]:
    """Content-defined chunks of the open file ``fh`` from offset ``start`` to its end."""
    with reading(path, name):
        fh.seek(start)
        yield from cdc_pieces(fh, cdc)
