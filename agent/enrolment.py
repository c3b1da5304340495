"""The enrolment a hub hands a node: NATS address and credentials, scoped to the node.

Written by ``amber-hub node add --out FILE``; read by ``amber-agent init --enroll FILE``
or ``amber-agent enroll FILE``, which keep a copy (0600) in the state directory.
Format in docs/PROTOCOL.md ("Enrolment").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from amber.logs import register_secret
from amber.protocol.errors import ConfigError, UnknownVersionError
from amber.protocol.wire import check_name
from amber.secretfile import read_secret, write_secret

FORMAT = "amber-enrolment"
VERSION = 1
FILE_NAME = "enrolment.json"


@dataclass(frozen=True, repr=False)
class Enrolment:
    vault: str
    node: str
    servers: tuple[str, ...]
    user: str
    password: str
    inbox_prefix: str
    hub_key: bytes = b""  # the hub's Ed25519 public key: restore orders must carry its signature

    def __repr__(self) -> str:  # never print the password
        return f"Enrolment({self.vault}/{self.node} via {','.join(self.servers)})"


def parse_enrolment(data: bytes, source: str) -> Enrolment:
    try:
        obj = json.loads(data)
    except ValueError:
        raise ConfigError(f"{source} is not an enrolment file (not JSON)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{source} is not an Amber enrolment file")
    if obj.get("version") != VERSION:
        raise UnknownVersionError(f"enrolment version {obj.get('version')} is not supported")
    register_secret(str(obj.get("password") or ""))
    try:
        return Enrolment(
            vault=check_name(obj["vault"], "vault"),
            node=check_name(obj["node"], "node"),
            servers=tuple(str(s) for s in obj["nats_servers"]),
            user=str(obj["user"]),
            password=str(obj["password"]),
            inbox_prefix=str(obj["inbox_prefix"]),
            hub_key=bytes.fromhex(str(obj.get("hub_key", ""))),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"enrolment {source} lacks {exc}") from None


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
