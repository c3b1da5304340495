"""Helpers for the hub's security tests: node connections with their enrolled
credentials, forged records, and a scanner that looks for leaked plaintext in everything
the hub stored. The hub itself is tests/support/hub.py's HubProcess.

Plain Python (no pytest imports). Used by test_permissions.py, test_hostile_input.py
and test_no_plaintext.py.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import zstandard

from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import Checkpoint, encode_checkpoint
from tests.support.hubtls import enrolment_tls

# --- node connections -------------------------------------------------------------


@dataclass
class Errors:
    """Collects what the NATS client's error_cb receives."""

    seen: list[Exception] = field(default_factory=list)

    async def cb(self, exc: Exception) -> None:
        self.seen.append(exc)

    def texts(self) -> list[str]:
        return [str(e).lower() for e in self.seen]

    def violations(self, kind: str, subject: str) -> list[str]:
        """The permissions violations the server reported for ``kind`` on ``subject``."""
        want = f'permissions violation for {kind} to "{subject.lower()}"'
        return [t for t in self.texts() if want in t]


async def connect(enr: dict[str, Any], errors: Errors | None = None, **kw: Any) -> Any:
    """A NATS connection with a node's enrolled credentials, failing fast."""
    opts: dict[str, Any] = {
        "user": enr["user"],
        "password": enr["password"],
        "inbox_prefix": enr["inbox_prefix"],
        "allow_reconnect": False,
        "connect_timeout": 5,
        **enrolment_tls(enr),
    }
    if errors is not None:
        opts["error_cb"] = errors.cb
    opts.update(kw)
    return await nats.connect(list(enr["nats_servers"]), **opts)


# --- forged records -----------------------------------------------------------------


def checkpoint_record(
    keys: VaultKeys,
    signer: SigningKey,
    vault: str,
    node: str,
    seq: int = 0,
    prev: bytes | None = None,
    time_us: int | None = None,
) -> bytes:
    """A validly signed checkpoint with no manifests (the hub needs nothing else for it)."""
    cp = Checkpoint(
        vault=vault,
        node=node,
        seq=seq,
        prev=prev,
        time_us=time_us if time_us is not None else int(time.time() * 1e6),
        manifests={},
    )
    return encode_checkpoint(cp, keys, signer)


# --- leak scanner -------------------------------------------------------------------


def needle_forms(secret: bytes) -> dict[str, bytes]:
    """Byte strings whose presence in a file would reveal ``secret``: the raw bytes,
    UTF-16 (both byte orders; for text secrets), lower/upper hex, and base64 at each of
    the three alignments it can take inside a longer base64 text."""
    forms = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    try:
        text = secret.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        forms["utf-16-le"] = text.encode("utf-16-le")
        forms["utf-16-be"] = text.encode("utf-16-be")
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + secret)
        skip = (pad * 4 + 2) // 3  # characters that also depend on the preceding bytes
        core = enc[skip:].rstrip(b"=")
        core = core[: len(core) - (1 if (pad + len(secret)) % 3 else 0)]
        forms[f"base64/{pad}"] = core
        forms[f"base64url/{pad}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return forms


def walk_files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    yield p


@dataclass(frozen=True)
class Finding:
    secret: str
    form: str
    where: str  # file path relative to the scan root, "+name" for a hit in the path

    def __str__(self) -> str:
        return f"{self.secret} ({self.form}) in {self.where}"


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_INFLATE = 64 * 1024 * 1024


def zstd_frames(data: bytes) -> Iterator[bytes]:
    """The decompressed contents of every zstd frame inside ``data``: compressed but
    unencrypted text would not show its plaintext to a plain byte search."""
    at = data.find(ZSTD_MAGIC)
    while at >= 0:
        try:
            out = zstandard.ZstdDecompressor().decompressobj().decompress(data[at:])
        except zstandard.ZstdError:
            out = b""
        if out:
            yield out[:MAX_INFLATE]
        at = data.find(ZSTD_MAGIC, at + 1)


def scan(root: Path, secrets: dict[str, bytes]) -> list[Finding]:
    """Every form of every secret found in any file under ``root`` (or ``root`` itself):
    in its contents, in any zstd frame inside them, and in its path relative to
    ``root``."""
    needles = [
        (name, form, needle)
        for name, secret in secrets.items()
        for form, needle in needle_forms(secret).items()
    ]
    found: list[Finding] = []
    files = list(walk_files([root]))
    assert files, f"nothing to scan under {root}"
    for path in files:
        rel = str(path.relative_to(root)) if path != root else path.name
        data = path.read_bytes()
        inflated = list(zstd_frames(data))
        for name, form, needle in needles:
            if needle in data:
                found.append(Finding(name, form, rel))
            if any(needle in frame for frame in inflated):
                found.append(Finding(name, form + "+zstd", rel))
            if needle in rel.encode():
                found.append(Finding(name, form, "+" + rel))
    return found


def scanned_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in walk_files([root]))
