"""The enrolment a hub hands a node: NATS address and credentials, scoped to the node.

Written by ``amber-hub node add --out FILE``; read by ``amber-agent init --enroll FILE``
or ``amber-agent enroll FILE``, which keep a copy (0600) in the state directory. The
codec is ``amber.protocol.enrolment``, shared with the hub; format in docs/PROTOCOL.md
("Enrolment").
"""

from __future__ import annotations

from pathlib import Path

from amber.logs import register_secret
from amber.protocol.enrolment import FORMAT, VERSION, Enrolment, decode_enrolment
from amber.protocol.errors import ConfigError
from amber.secretfile import read_secret, write_secret

__all__ = ["FILE_NAME", "FORMAT", "VERSION", "Enrolment", "parse_enrolment", "read_enrolment"]
FILE_NAME = "enrolment.json"


def parse_enrolment(data: bytes, source: str) -> Enrolment:
    """Decode an enrolment (``amber.protocol.enrolment``); its password is kept out of
    the logs from here on."""
    enr = decode_enrolment(data, source)
    register_secret(enr.password)
    return enr


def read_enrolment(path: Path) -> Enrolment:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read enrolment {path}: {exc.strerror}") from None
    return parse_enrolment(data, str(path))


def install_enrolment(src: Path, state_dir: Path, vault: str, node: str) -> Path:
    """Check an enrolment fits this node and keep a 0600 copy in the state directory."""
    enr = read_enrolment(src)
    if (enr.vault, enr.node) != (vault, node):
        raise ConfigError(
            f"enrolment {src} is for {enr.vault}/{enr.node}, not this node {vault}/{node}",
            hint="enrol with the file 'amber-hub node add' wrote for this node",
        )
    target = state_dir / FILE_NAME
    write_secret(target, src.read_bytes(), overwrite=True)
    return target


def load_installed(state_dir: Path) -> Enrolment | None:
    path = state_dir / FILE_NAME
    if not path.exists():
        return None
    return parse_enrolment(read_secret(path, what="enrolment"), str(path))
