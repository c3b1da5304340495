"""The enrolment file a hub hands a node: NATS address and credentials, scoped to the node.

Pure: the hub encodes it (``amber-hub node add --out FILE``), the agent decodes it
(``amber-agent enroll FILE``); reading and writing the file is theirs. UTF-8 JSON, one
object, written with two-space indentation in the field order below; unknown fields are
ignored when reading. Specified in docs/PROTOCOL.md §12 ("Enrolment and node
permissions"); a frozen sample is tests/fixtures/enrolment_v1.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from amber.protocol.errors import ConfigError, UnknownVersionError
from amber.protocol.wire import check_name

FORMAT = "amber-enrolment"
VERSION = 1


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


def enrolment_object(enr: Enrolment) -> dict[str, Any]:
    """The JSON object of ``enr``, in the file's field order."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "vault": enr.vault,
        "node": enr.node,
        "nats_servers": list(enr.servers),
        "user": enr.user,
        "password": enr.password,
        "inbox_prefix": enr.inbox_prefix,
        "hub_key": enr.hub_key.hex(),
    }


def encode_enrolment(enr: Enrolment) -> bytes:
    """The bytes of an enrolment file."""
    return json.dumps(enrolment_object(enr), indent=2).encode()


def decode_enrolment(data: bytes, source: str) -> Enrolment:
    """Parse an enrolment file's bytes (``source`` names it in errors): not JSON or not
    an enrolment → ``ConfigError``; another version → ``UnknownVersionError``; a missing
    or malformed field → ``ConfigError``; a bad vault or node name → ``FormatError``."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise ConfigError(f"{source} is not an enrolment file (not JSON)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{source} is not an Amber enrolment file")
    if obj.get("version") != VERSION:
        raise UnknownVersionError(
            f"enrolment {source} has version {obj.get('version')!r}; this agent reads {VERSION}",
            hint="upgrade amber-agent, or write the enrolment again with this hub's release",
        )
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
