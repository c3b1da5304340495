"""Chunk blobs of the journal, in append-only pack files (docs/FORMAT.md §14, "Pack files").

SQLite in WAL mode writes every byte twice (once to the WAL, once more when the WAL
is checkpointed into the database), which made the journal the costliest stage of a
checkpoint. Blobs therefore go to pack files that are written once, sequentially, and
fsynced once per checkpoint; the ``chunks`` table is their index (pack number and
offset). A pack file is ``AMBP`` ‖ version ‖ 3 zero bytes, then entries
``id (32) ‖ stored length (u32 BE) ‖ blob``.

Every method here is blocking and runs on the journal's single pack thread, so
appends, reads, truncation and deletion never interleave within one process; the
journal serialises the steps that span SQLite and the packs (docs/FORMAT.md §14, "Pack files").
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from amber.fsutil import fsync_dir
from amber.protocol.errors import DiskFullError, IntegrityError, JournalError
from amber.protocol.packfile import ENTRY, HEADER, check_header

ROLL_BYTES = 32 * 1024 * 1024  # start a new pack once the active one is this big
IOV_BATCH = 512  # buffers per writev (under IOV_MAX)

Location = tuple[int, int]  # (pack number, offset of the entry)


def entry_size(stored: int) -> int:
    return ENTRY.size + stored


class PackStore:
    """The pack files of one journal, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._fd: int | None = None  # the active pack, open for appending
        self._num = -1
        self._size = 0
        self._dirty: set[int] = set()  # packs written since the last sync
        self._new_file = False
        self._new_dir = False  # the packs directory was created: its parent needs a sync
        self._sync_failed: OSError | None = None  # see sync()

    # --- naming -----------------------------------------------------------------------

    def path(self, num: int) -> Path:
        return self.dir / f"{num:08d}.pack"

    def numbers(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if p.suffix == ".pack" and p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    # --- writing ----------------------------------------------------------------------

    def _open_active(self) -> int:
        if self._fd is not None:
            # where the file ends now (O_APPEND writes there), not where this process
            # last wrote: offsets recorded in the index must be the real ones
            self._size = os.fstat(self._fd).st_size
            if self._size < ROLL_BYTES:
                return self._fd
        self._close_active()
        if not self.dir.is_dir():
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._new_dir = True
        nums = self.numbers()
        num = nums[-1] if nums else 0
        path = self.path(num)
        if nums and path.stat().st_size >= ROLL_BYTES:
            num += 1
            path = self.path(num)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(fd).st_size
        if size == 0:
            os.write(fd, HEADER)
            size = len(HEADER)
            self._new_file = True
        else:
            _check_header(os.pread(fd, len(HEADER), 0), path)
        self._fd, self._num, self._size = fd, num, size
        return fd

    def _close_active(self) -> None:
        if self._fd is not None:
            if self._num in self._dirty:
                os.fsync(self._fd)
                self._dirty.discard(self._num)
            os.close(self._fd)
            self._fd, self._num, self._size = None, -1, 0

    def append(self, rows: Sequence[tuple[bytes, bytes]]) -> list[Location]:
        """Append ``(id, blob)`` entries; returns where each one went. Not yet durable:
        ``sync()`` before anything that references them commits."""
        try:
            return self._append(rows)
        except OSError as exc:
            if self._fd is not None:  # the size we track may be off now: re-read it
                os.close(self._fd)
                self._fd, self._num, self._size = None, -1, 0
            raise _os_error(exc, self.dir) from None

    def _append(self, rows: Sequence[tuple[bytes, bytes]]) -> list[Location]:
        out: list[Location] = []
        i = 0
        while i < len(rows):
            fd = self._open_active()
            bufs: list[bytes] = []
            start = self._size
            off = start
            while i < len(rows) and len(bufs) < IOV_BATCH and off - start < ROLL_BYTES:
                cid, blob = rows[i]
                bufs.append(ENTRY.pack(cid, len(blob)))
                bufs.append(blob)
                out.append((self._num, off))
                off += ENTRY.size + len(blob)
                i += 1
            _writev_all(fd, bufs)
            self._size = off
            self._dirty.add(self._num)
        return out

    def sync(self) -> None:
        """Make every entry appended so far durable (fsync of the packs written since the
        last sync, and of the directory when a pack file was created).

        After a failed fsync every later sync fails too, until :meth:`close`: Linux may
        report a repeated fsync as a success although the pages it failed to write are
        lost, so what was appended since the last good sync is never trusted again (the
        journal discards those tentative rows before it appends anew)."""
        if self._sync_failed is not None:
            raise _os_error(self._sync_failed, self.dir)
        try:
            for num in sorted(self._dirty):
                if num == self._num and self._fd is not None:
                    os.fsync(self._fd)
                else:
                    fd = os.open(self.path(num), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            self._dirty.clear()
            if self._new_file:
                fsync_dir(self.dir)
                self._new_file = False
            if self._new_dir:  # else a power cut can lose the directory and every pack
                fsync_dir(self.dir.parent)
                self._new_dir = False
        except OSError as exc:
            self._sync_failed = exc
            raise _os_error(exc, self.dir) from None

    def close(self) -> None:
        self._sync_failed = None
        try:
            self._close_active()
        except OSError:
            pass

    # --- reading ----------------------------------------------------------------------

    def read(self, wanted: Iterable[tuple[bytes, int, int, int]]) -> dict[bytes, bytes]:
        """Blobs for ``(id, pack, offset, stored)``; an entry that is missing or holds
        another id raises ``IntegrityError`` naming the pack."""
        by_pack: dict[int, list[tuple[int, bytes, int]]] = defaultdict(list)
        for cid, num, off, stored in wanted:
            by_pack[num].append((off, cid, stored))
        out: dict[bytes, bytes] = {}
        for num, items in by_pack.items():
            path = self.path(num)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise IntegrityError(
                    f"journal pack {path} is missing; the journal's index refers to it",
                    hint="run 'amber-agent verify'; chunks already at the hub can be fetched "
                    "again, others are lost",
                ) from None
            try:
                _check_header(os.pread(fd, len(HEADER), 0), path)
                for off, cid, stored in sorted(items):
                    head = os.pread(fd, ENTRY.size, off)
                    blob = (
                        os.pread(fd, stored, off + ENTRY.size) if len(head) == ENTRY.size else b""
                    )
                    if len(blob) != stored:
                        raise IntegrityError(
                            f"journal pack {path} is truncated at offset {off}",
                            hint="run 'amber-agent verify'; chunks already at the hub can be "
                            "fetched again",
                        )
                    got, length = ENTRY.unpack(head)
                    if got != cid or length != stored:
                        raise IntegrityError(
                            f"journal pack {path} at offset {off} does not hold chunk "
                            f"{cid.hex()[:16]}",
                            hint="run 'amber-agent verify'; the pack or the journal's index "
                            "is damaged",
                        )
                    out[cid] = blob
            finally:
                os.close(fd)
        return out

    def sizes(self) -> dict[int, int]:
        return {n: self.path(n).stat().st_size for n in self.numbers()}

    # --- reclaiming space -------------------------------------------------------------

    def trim(self, ends: dict[int, int]) -> int:
        """Delete the packs nothing references and cut the unreferenced tail off the
        others (a crashed or cancelled checkpoint's blobs). ``ends``: pack -> end of its
        last referenced entry. Returns the bytes freed."""
        freed = 0
        try:
            for num in self.numbers():
                path = self.path(num)
                size = path.stat().st_size
                end = ends.get(num)
                if end is None:
                    if num == self._num:
                        self._close_active()
                    path.unlink()
                    freed += size
                elif size > end:
                    if num == self._num:
                        self._close_active()
                    os.truncate(path, end)
                    freed += size - end
            if freed:
                fsync_dir(self.dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, self.dir) from None
        return freed

    def active(self) -> int:
        """The number of the pack new entries go to (-1 before the first append)."""
        return self._num

    def remove(self, num: int) -> None:
        if num == self._num:
            self._close_active()
        try:
            self.path(num).unlink()
            fsync_dir(self.dir)
        except FileNotFoundError:
            pass


def _writev_all(fd: int, bufs: list[bytes]) -> None:
    views = [memoryview(b) for b in bufs]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _check_header(head: bytes, path: Path) -> None:
    check_header(head, f"journal pack {path}", "run 'amber-agent verify'; the pack file is damaged")


def _os_error(exc: OSError, where: Path) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"no space left for the journal's packs in {where}: nothing was committed"
        )
    return JournalError(f"cannot write the journal's packs in {where}: {exc}")
