"""Pack files: many chunk blobs in one file or object (docs/FORMAT.md §14, §18).

One layout serves the agent's journal packs and the hub's pack objects::

    "AMBP" ‖ version (1 byte, = 1) ‖ 3 zero bytes
    entries: chunk id (32) ‖ stored length (u32 BE) ‖ blob (AMBC, §8)

A pack carries its own index (every entry names its chunk), so the hub's catalog can
be rebuilt from the store by reading the packs back. No I/O here: the agent and the hub
each read and write packs their own way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from amber.protocol.errors import FormatError, IntegrityError, UnknownVersionError

MAGIC = b"AMBP"
VERSION = 1
HEADER = MAGIC + bytes([VERSION, 0, 0, 0])
ENTRY = struct.Struct(">32sI")


def build(entries: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """The bytes of a pack holding ``entries`` (chunk id, blob), and for each entry
    (chunk id, offset of its blob in the pack, blob length)."""
    parts: list[bytes] = [HEADER]
    index: list[tuple[bytes, int, int]] = []
    off = len(HEADER)
    for cid, blob in entries:
        parts.append(ENTRY.pack(cid, len(blob)))
        parts.append(blob)
        index.append((cid, off + ENTRY.size, len(blob)))
        off += ENTRY.size + len(blob)
    return b"".join(parts), index


def check_header(
    head: bytes, what: str, hint: str = "the object or file is damaged or is not Amber's"
) -> None:
    """Raise unless ``head`` starts like a pack this version of Amber reads: a damaged
    or foreign (or too short) header is an :class:`IntegrityError` with ``hint``."""
    if len(head) < len(HEADER) or head[:4] != MAGIC:
        raise IntegrityError(
            f"{what} does not start with an Amber pack header (it starts {head[:8]!r})",
            hint=hint,
        )
    if head[4] != VERSION:
        raise UnknownVersionError(
            f"{what} is an Amber pack of format version {head[4]}; this Amber reads "
            f"version {VERSION}",
            hint="upgrade Amber to read it",
        )


def entries(data: bytes | memoryview, what: str) -> Iterator[tuple[bytes, int, int]]:
    """(chunk id, blob offset, blob length) of every entry of a whole pack, in order.

    Raises :class:`FormatError` at the first entry that runs past the end (a truncated
    pack); the entries before it have been yielded by then.
    """
    view = memoryview(data)
    check_header(bytes(view[: len(HEADER)]), what)
    off = len(HEADER)
    while off < len(view):
        if off + ENTRY.size > len(view):
            raise FormatError(f"{what} is truncated inside the entry at offset {off}")
        cid, length = ENTRY.unpack_from(view, off)
        start = off + ENTRY.size
        if start + length > len(view):
            raise FormatError(
                f"{what} is truncated: the entry at offset {off} needs {length} bytes, "
                f"{len(view) - start} remain"
            )
        yield cid, start, length
        off = start + length
