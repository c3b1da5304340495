"""The enrolment file a hub hands a node: NATS address and credentials, scoped to the node.

Pure: the hub encodes it (``amber-hub node add --out FILE``), the agent decodes it
(``amber-agent enroll FILE``); reading and writing the file is theirs. UTF-8 JSON, one
object, written with two-space indentation in the field order below; unknown fields are
ignored when reading. Specified in docs/PROTOCOL.md §12 ("Enrolment and node
permissions"); frozen samples are tests/fixtures/enrolment_v1.json and enrolment_v2.json.

Version 2 adds ``ca`` (the PEM certificate of the CA the node must verify the NATS server
against) and ``tls_handshake_first`` (start TLS before the server speaks, so a plaintext
impostor never sees the password). Version 1 is still read: it has no CA, and the agent
then refuses plaintext ``nats://`` servers unless agent.toml allows them explicitly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from amber.protocol.errors import ConfigError, UnknownVersionError
from amber.protocol.wire import check_name

FORMAT = "amber-enrolment"
VERSION = 2
READABLE = (1, 2)
MAX_CA_CHARS = 64 * 1024


@dataclass(frozen=True, repr=False)
class Enrolment:
    vault: str
    node: str
    servers: tuple[str, ...]
    user: str
    password: str
    inbox_prefix: str
    hub_key: bytes = b""  # the hub's Ed25519 public key: restore orders must carry its signature
    ca: str = ""  # v2: PEM CA certificate the NATS server's certificate must chain to
    tls_handshake_first: bool = False  # v2: TLS from the first byte (the hub in a box)
    version: int = VERSION  # the version read, kept so a re-encoded file is unchanged

    def __repr__(self) -> str:  # never print the password
        return f"Enrolment({self.vault}/{self.node} via {','.join(self.servers)})"


def enrolment_object(enr: Enrolment) -> dict[str, Any]:
    """The JSON object of ``enr``, in the file's field order (v1 objects stay v1)."""
    obj: dict[str, Any] = {
        "format": FORMAT,
        "version": 1 if enr.version == 1 else VERSION,
        "vault": enr.vault,
        "node": enr.node,
        "nats_servers": list(enr.servers),
        "user": enr.user,
        "password": enr.password,
        "inbox_prefix": enr.inbox_prefix,
        "hub_key": enr.hub_key.hex(),
    }
    if enr.version != 1:
        obj["ca"] = enr.ca
        obj["tls_handshake_first"] = enr.tls_handshake_first
    return obj


def encode_enrolment(enr: Enrolment) -> bytes:
    """The bytes of an enrolment file."""
    return json.dumps(enrolment_object(enr), indent=2).encode()


def decode_enrolment(data: bytes, source: str) -> Enrolment:
    """Parse an enrolment file's bytes (``source`` names it in errors): not JSON or not
    an enrolment → ``ConfigError``; another version → ``UnknownVersionError``; a missing
    or malformed field → ``ConfigError``; a bad vault or node name → ``FormatError``."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: JSON nested beyond Python's stack
        raise ConfigError(f"{source} is not an enrolment file (not JSON)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{source} is not an Amber enrolment file")
    version = obj.get("version")
    if type(version) is not int or version not in READABLE:
        raise UnknownVersionError(
            f"enrolment {source} has version {version!r}; this agent reads 1 and {VERSION}",
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
            ca=_ca(obj, version, source),
            tls_handshake_first=version >= 2 and obj.get("tls_handshake_first") is True,
            version=version,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"enrolment {source} lacks {exc}") from None


def _ca(obj: dict[str, Any], version: int, source: str) -> str:
    """v2's ``ca``: empty, or PEM text of bounded size (the agent parses it)."""
    if version < 2:
        return ""
    ca = obj.get("ca", "")
    if not isinstance(ca, str) or len(ca) > MAX_CA_CHARS:
        raise ConfigError(f"enrolment {source} has a malformed 'ca' field")
    if ca and "-----BEGIN CERTIFICATE-----" not in ca:
        raise ConfigError(f"enrolment {source}: 'ca' is not a PEM certificate")
    return ca
