"""Bundle files on disk or in a pipe: a streaming tar writer and a strict tar reader.

Shared by the agent and the hub (they import :mod:`amber.protocol` and this module,
never each other). The writer is Python's :mod:`tarfile` in stream mode (``w|``, plain
POSIX ustar); the reader accepts exactly that subset (ustar headers, regular files) and
reads front to back with memory bounded by the largest member, so both work on pipes
(``-`` is stdin or stdout). What the members mean, and every check, is
:mod:`amber.protocol.bundle`. Layout in docs/FORMAT.md ("Bundle").
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from amber.fsutil import fsync_dir
from amber.protocol import bundle as b
from amber.protocol.errors import (
    AmberError,
    DiskFullError,
    FormatError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from amber.protocol.keys import SigningKey

BLOCK = 512
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# --- writing ----------------------------------------------------------------------


class BundleWriter:
    """Write one bundle: the header at once, then :meth:`add` members, then :meth:`finish`.

    Used as a context manager. A file is written under a temporary name beside ``out``
    and renamed into place when the ``with`` block ends without an error; on any error
    (a full disk included) the partial file is removed. ``out = "-"`` writes to stdout.
    """

    def __init__(self, out: str, header: b.BundleHeader) -> None:
        self.out, self.header = out, header
        self.bundle_id = b.digest(header.encode())
        self.entries: list[b.IndexEntry] = []
        self.bytes = 0
        self._tmp: Path | None = None
        self._fh: BinaryIO
        self._tar: tarfile.TarFile | None = None
        self._finished = False

    def __enter__(self) -> BundleWriter:
        if self.out == "-":
            self._fh = sys.stdout.buffer
        else:
            target = Path(self.out)
            self._tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
            try:
                self._fh = open(self._tmp, "xb")
            except OSError as exc:
                raise self._os_error(exc, "create") from None
        try:
            self._call(self._open_tar)
            self._add(b.HEADER_NAME, self.header.encode())
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None and not self._finished:
            self._discard()
            raise UsageError("internal: a bundle was left without its INDEX and SIGNATURE")
        if kind is not None:
            self._discard()
            return
        if self._tmp is not None:
            try:
                os.replace(self._tmp, self.out)
                fsync_dir(Path(self.out).parent)
            except OSError as err:
                self._discard()
                raise self._os_error(err, "rename") from None

    def add(self, name: str, data: bytes) -> None:
        b.member_role(name)  # only names of the format
        self._add(name, data)

    def finish(self, signer: SigningKey) -> b.BundleIndex:
        """Write the INDEX and the SIGNATURE, end the archive and flush it to disk."""
        index = b.BundleIndex(self.bundle_id, tuple(self.entries))
        index_bytes = b.encode_index(index)
        self._add(b.INDEX_NAME, index_bytes, listed=False)
        self._add(b.SIGNATURE_NAME, b.encode_signature(signer, index_bytes), listed=False)
        self._call(self._close_tar)
        self._finished = True
        return index

    # -- internals
    def _open_tar(self) -> None:
        self._tar = tarfile.open(fileobj=self._fh, mode="w|", format=tarfile.USTAR_FORMAT)

    def _close_tar(self) -> None:
        assert self._tar is not None
        self._tar.close()
        self._fh.flush()
        if self._tmp is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()

    def _add(self, name: str, data: bytes, *, listed: bool = True) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        info.mtime = self.header.created_us // 1_000_000
        info.uname = info.gname = ""
        assert self._tar is not None
        self._call(lambda: self._tar.addfile(info, io.BytesIO(data)))  # type: ignore[union-attr]
        if listed:
            self.entries.append(b.IndexEntry(name, len(data), b.digest(data)))
        self.bytes += len(data)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except OSError as exc:
            raise self._os_error(exc, "write") from None

    def _os_error(self, exc: OSError, action: str) -> AmberError:
        where = "stdout" if self.out == "-" else self.out
        if exc.errno in _SPACE_ERRNOS:
            return DiskFullError(
                f"no space left to {action} the bundle {where}"
                + ("; the partial file was removed" if self._tmp is not None else ""),
                hint="free space on that disk (or write the bundle to a larger one) and retry",
            )
        return UsageError(
            f"cannot {action} the bundle {where}: {exc.strerror or exc}",
            hint="check that the directory exists and that this user may write there",
        )

    def _discard(self) -> None:
        if self._tar is not None:  # never flush what is left into a failed file
            self._tar.closed = True
            self._tar.fileobj.closed = True  # type: ignore[union-attr]
        if self._tmp is None:
            return
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


# --- reading ----------------------------------------------------------------------


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """A bundle to read: a file, or stdin for ``-``."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"bundle {path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise UsageError(f"cannot open bundle {path}: {exc.strerror or exc}") from None
    with fh:
        yield fh


def _read(fh: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        try:
            piece = fh.read(min(left, 1 << 20))
        except OSError as exc:
            raise IntegrityError(f"cannot read the bundle: {exc.strerror or exc}") from None
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _octal(field: bytes, what: str, offset: int) -> int:
    text = field.replace(b"\0", b" ").strip()
    if not text or not all(48 <= c <= 55 for c in text):
        raise IntegrityError(f"tar header at offset {offset}: {what} is not an octal number")
    return int(text, 8)


def _text(field: bytes, offset: int) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"tar header at offset {offset}: a name is not ASCII") from None


def parse_tar_header(block: bytes, offset: int) -> tuple[str, int]:
    """``(name, size)`` of a ustar header block holding a regular file."""
    stored = _octal(block[148:156], "checksum", offset)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for x in block[:148] + block[156:] if x > 127)
    if stored not in (unsigned, signed):
        if offset == 0:
            raise FormatError("not an Amber bundle (not a tar archive)")
        raise IntegrityError(f"tar header at offset {offset} is damaged (checksum mismatch)")
    if block[257:263] not in (b"ustar\0", b"ustar "):
        raise FormatError(f"tar header at offset {offset} is not POSIX ustar")
    if block[156:157] not in (b"0", b"\0"):
        raise FormatError(
            f"tar member at offset {offset} has type {block[156:157]!r}: a bundle holds "
            "regular files only"
        )
    name, prefix = _text(block[0:100], offset), _text(block[345:500], offset)
    return (f"{prefix}/{name}" if prefix else name), _octal(block[124:136], "size", offset)


def read_members(fh: BinaryIO, limit: Callable[[str], int]) -> Iterator[tuple[str, bytes]]:
    """Every member of a tar stream, front to back; ``limit(name)`` bounds each one's
    size before it is read (and refuses names it does not know)."""
    offset = 0
    while True:
        block = _read(fh, BLOCK)
        if len(block) < BLOCK:
            if offset == 0:
                raise FormatError("not an Amber bundle (too short for a tar archive)")
            raise IntegrityError(f"the bundle is truncated at byte {offset + len(block)}")
        if block == bytes(BLOCK):
            if offset == 0:
                raise FormatError("not an Amber bundle (an empty tar archive)")
            tail = _read(fh, BLOCK)
            if tail.strip(b"\0"):
                raise IntegrityError(f"the bundle is damaged after byte {offset}")
            return
        name, size = parse_tar_header(block, offset)
        most = limit(name)
        if size > most:
            raise FormatError(f"bundle member {name} claims {size} bytes, over its limit of {most}")
        padded = -(-size // BLOCK) * BLOCK
        data = _read(fh, size)
        pad = _read(fh, padded - size)
        if len(data) + len(pad) < padded:
            raise IntegrityError(f"the bundle is truncated inside member {name}")
        offset += BLOCK + padded
        yield name, data


class BundleStream:
    """Read and verify a bundle front to back.

    stream = BundleStream(fh)
    header = stream.header()        # decoded, not yet authenticated
    for member in stream.members(): # each checked on its own
        ...
    index = stream.finish()         # complete, unaltered, signed by header.signer
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.verifier = b.BundleVerifier()
        self._it = read_members(fh, self.verifier.limit)

    def header(self) -> b.BundleHeader:
        if self.verifier.header is None:
            try:
                name, data = next(self._it)
            except StopIteration:
                raise FormatError("not an Amber bundle (an empty archive)") from None
            self.verifier.feed(name, data)
        assert self.verifier.header is not None
        return self.verifier.header

    @property
    def bundle_id(self) -> bytes:
        return self.verifier.bundle_id

    def members(self) -> Iterator[b.Member]:
        self.header()
        for name, data in self._it:
            member = self.verifier.feed(name, data)
            if member is not None:
                yield member

    def finish(self) -> b.BundleIndex:
        for _ in self.members():
            pass
        return self.verifier.finish()


# --- inspecting -------------------------------------------------------------------


def summarize(stream: BundleStream) -> dict[str, Any]:
    """What a bundle holds (public parts only), after verifying all of it."""
    h = stream.header()
    cps: list[dict[str, Any]] = []
    counts = {"manifests": 0, "record_bytes": 0, "chunks": 0, "chunk_bytes": 0}
    order: dict[str, Any] | None = None
    receipt: dict[str, Any] | None = None
    for m in stream.members():
        if m.checkpoint is not None:
            cp = m.checkpoint
            cps.append(
                {
                    "seq": cp.seq,
                    "id": m.id.hex(),
                    "time_us": cp.time_us,
                    "kind": cp.kind,
                    "labels": cp.labels,
                    "sources": sorted(cp.manifests),
                }
            )
        counts["manifests"] += m.manifest is not None
        if m.role == "record":
            counts["record_bytes"] += len(m.data)
        elif m.role == "chunk":
            counts["chunks"] += 1
            counts["chunk_bytes"] += len(m.data)
        elif m.order is not None:
            order = jsonable(m.order)
        elif m.receipt is not None:
            receipt = jsonable(m.receipt)
    index = stream.finish()
    return {
        "bundle": stream.bundle_id.hex(),
        "kind": h.kind,
        "vault": h.vault,
        "node": h.node,
        "producer": h.producer,
        "created_us": h.created_us,
        "signer": h.signer.hex(),
        "signature": "valid",
        "members": len(index.entries) + 2,
        "checkpoints": sorted(cps, key=lambda c: c["seq"]),
        **counts,
        "order": order,
        "receipt": receipt,
    }


def jsonable(value: Any) -> dict[str, Any]:
    """A decoded order or receipt as JSON: bytes as hex, tuples as lists."""
    out = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        out[f.name] = v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v
    return out


def iso(us: int) -> str:
    """A time in microseconds as ISO 8601 UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6))


def render_summary(s: dict[str, Any], trust: str) -> list[str]:
    """Lines for ``bundle inspect`` (agent and hub)."""
    lines = [
        f"bundle {s['bundle'][:16]}: {s['kind']} for {s['vault']}/{s['node']} "
        f"(made by the {s['producer']} at {iso(s['created_us'])})",
        f"signature: {s['signature']}, key {s['signer']}; {trust}",
        f"records: {len(s['checkpoints'])} checkpoint(s), {s['manifests']} manifest(s), "
        f"{s['record_bytes']:,} bytes; chunks: {s['chunks']}, {s['chunk_bytes']:,} bytes "
        "(encrypted)",
    ]
    for c in s["checkpoints"]:
        labels = " ".join(f"{k}={v}" for k, v in c["labels"].items())
        lines.append(
            f"  {c['id'][:16]}  seq {c['seq']:<5} {iso(c['time_us'])}  {c['kind']:<7} "
            f"{','.join(c['sources'])}  {labels}".rstrip()
        )
    if s["order"]:
        o = s["order"]
        lines.append(
            f"order {o['order_id']} (plan {o['plan_id']}): {o['action']} checkpoint "
            f"{o['checkpoint'][:16]} sources {','.join(o['sources']) or 'all'}, "
            f"expires {iso(o['expires_us'])}"
        )
    if s["receipt"]:
        r = s["receipt"]
        lines.append(
            f"receipt for bundle {r['bundle'][:16] or '?'}: {r['outcome']}"
            + (f", order {r['order_id']} {r['state']}" if r["order_id"] else "")
            + (f" - {r['detail']}" if r["detail"] else "")
        )
    return lines
