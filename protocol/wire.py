"""Wire messages of the sync and restore protocol (NATS payloads).

Every message is a frozen dataclass; on the wire it is a msgpack map
``{"v": WIRE_VERSION, "t": <type>, <fields>...}``. Field types are limited to
str, int, float, bool, bytes, ``tuple[bytes, ...]``, ``tuple[str, ...]``,
``dict[str, str]`` and optional variants, and are checked on decode. Subjects are
built here too. docs/PROTOCOL.md describes each message.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, get_type_hints

from amber.protocol import codec as c
from amber.protocol.errors import (
    FormatError,
    ProtocolError,
    QuotaExceededError,
    UnknownVersionError,
)

WIRE_VERSION = 1
MAX_MESSAGE_SIZE = 8 * 1024 * 1024 - 64 * 1024  # fits nats max_payload 8MB with headers
MAX_IDS_PER_MESSAGE = 16_384
DECODE_OFF_LOOP_BYTES = 256 * 1024  # callers on an event loop decode more in a thread
MAX_CHECKS = 16  # check names in one restore order
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def check_name(name: str, what: str) -> str:
    """Vault and node names become NATS subject tokens: keep them to a safe alphabet."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FormatError(
            f"{what} name {name!r} is invalid",
            hint="use 1-63 letters, digits, '-' or '_', starting with a letter or digit",
        )
    return name


SUBJECT_KINDS = ("ingest", "cmd", "status", "rpc")
CMD_STREAM = "AMBER_CMD"  # JetStream stream of restore orders, one durable consumer per node


def subject(vault: str, node: str, kind: str) -> str:
    """``amber.<vault>.<node>.<kind>``, kind in ingest, cmd, status, rpc."""
    return f"amber.{check_name(vault, 'vault')}.{check_name(node, 'node')}.{kind}"


def any_node(kind: str) -> str:
    """The wildcard over every vault and node: ``amber.*.*.<kind>``."""
    return f"amber.*.*.{kind}"


def node_prefix(vault: str, node: str) -> str:
    """``amber.<vault>.<node>``: every subject of one node starts with it."""
    return f"amber.{check_name(vault, 'vault')}.{check_name(node, 'node')}"


def subject_owner(subject: str) -> tuple[str, str]:
    """(vault, node) of ``amber.<vault>.<node>.<kind>``; FormatError for anything else."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "amber" or parts[3] not in SUBJECT_KINDS:
        raise FormatError(f"unexpected subject {subject!r}")
    return parts[1], parts[2]


def inbox_prefix(vault: str, node: str) -> str:
    """The node's own reply inbox prefix (``_INBOX_<vault>.<node>``)."""
    return f"_INBOX_{check_name(vault, 'vault')}.{check_name(node, 'node')}"


def cmd_consumer(vault: str, node: str) -> str:
    """The durable consumer of a node's orders on CMD_STREAM (the length keeps
    ``w``/``x-y`` and ``w-x``/``y`` apart)."""
    return f"cmd-{len(vault)}-{vault}-{node}"


class Message:
    TYPE: ClassVar[str]


@dataclass(frozen=True)
class ChunkQuery(Message):
    """Node to hub: which of these chunk ids do you lack?"""

    TYPE: ClassVar[str] = "chunk.query"
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class ChunkQueryReply(Message):
    TYPE: ClassVar[str] = "chunk.query.reply"
    missing: tuple[bytes, ...]


@dataclass(frozen=True)
class ChunkPut(Message):
    """Node to hub (ingest stream): one encrypted chunk blob."""

    TYPE: ClassVar[str] = "chunk.put"
    id: bytes
    blob: bytes


@dataclass(frozen=True)
class RecordPut(Message):
    """Node to hub (ingest stream): a signed manifest or checkpoint record."""

    TYPE: ClassVar[str] = "record.put"
    id: bytes
    kind: int
    data: bytes


@dataclass(frozen=True)
class ReceiptQuery(Message):
    """Node to hub: which of these chunk/record ids are durable in the object store?"""

    TYPE: ClassVar[str] = "receipt.query"
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Receipt(Message):
    """Hub to node: these ids are durable (fsynced / acknowledged by the object store)."""

    TYPE: ClassVar[str] = "receipt"
    durable: tuple[bytes, ...]
    missing: tuple[bytes, ...]
    refused: tuple[bytes, ...]  # ingest rejected these for good (e.g. a forked chain)
    reason: str


@dataclass(frozen=True)
class Heartbeat(Message):
    """Node to hub (status subject)."""

    TYPE: ClassVar[str] = "heartbeat"
    node: str
    time_us: int
    backlog_bytes: int
    backlog_chunks: int
    last_seq: int
    last_checkpoint_us: int
    rpo_seconds: int
    agent_version: str


@dataclass(frozen=True)
class FetchRequest(Message):
    """Node to hub: send me these stored objects (chunks or records) by id."""

    TYPE: ClassVar[str] = "fetch"
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class FetchReply(Message):
    TYPE: ClassVar[str] = "fetch.reply"
    ids: tuple[bytes, ...]
    blobs: tuple[bytes, ...]
    missing: tuple[bytes, ...]


@dataclass(frozen=True)
class ListCheckpoints(Message):
    """Node to hub: the checkpoint records of ``node`` after ``after_seq``."""

    TYPE: ClassVar[str] = "checkpoints.list"
    node: str
    after_seq: int


@dataclass(frozen=True)
class CheckpointList(Message):
    TYPE: ClassVar[str] = "checkpoints.list.reply"
    records: tuple[bytes, ...]
    more: bool


@dataclass(frozen=True)
class ErrorReply(Message):
    """Any request's reply when the hub refuses it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class RestoreOrder(Message):
    """Hub to node (cmd stream), always inside a :class:`SignedOrder`. Version 2 of the
    order: it names checks (``checks``) that only the node's agent.toml defines; the hub
    cannot send a command line."""

    TYPE: ClassVar[str] = "restore.order.2"
    order_id: str
    plan_id: str
    vault: str
    node: str
    action: str  # "restore" or "rollback"
    checkpoint: bytes  # the restore point (a checkpoint id); empty for rollback
    source_node: str  # whose checkpoint it is (another node's for --to-node)
    sources: tuple[str, ...]  # empty: every source of the checkpoint
    checks: tuple[str, ...]  # names of checks in the node's [checks] table
    issued_us: int
    expires_us: int


@dataclass(frozen=True)
class RestoreOrderV1(Message):
    """The order of version 1, with a free-form shell command (``health_cmd``). Still
    decoded (a bundle or a stream may carry one) and turned into a :class:`RestoreOrder`
    by :func:`current_order`, which refuses a restore that carries a command."""

    TYPE: ClassVar[str] = "restore.order"
    order_id: str
    plan_id: str
    vault: str
    node: str
    action: str
    checkpoint: bytes
    source_node: str
    sources: tuple[str, ...]
    health_cmd: str
    issued_us: int
    expires_us: int


@dataclass(frozen=True)
class SignedOrder(Message):
    """An encoded :class:`RestoreOrder` and the hub's Ed25519 signature over it."""

    TYPE: ClassVar[str] = "order.signed"
    order: bytes
    signer: bytes
    signature: bytes


@dataclass(frozen=True)
class RestoreReport(Message):
    """Node to hub (rpc): the state of a restore order on the node."""

    TYPE: ClassVar[str] = "restore.report"
    order_id: str
    plan_id: str
    state: str  # queued fetching verifying swapped healthy failed rolled_back
    detail: str
    done: int  # chunks fetched so far
    total: int  # chunks to fetch
    safety: bytes  # the safety checkpoint id (empty until taken)


@dataclass(frozen=True)
class ReportAck(Message):
    TYPE: ClassVar[str] = "restore.report.ack"
    ok: bool


ORDER_ACTIONS = ("restore", "rollback")
REPORT_STATES = (
    "queued",
    "fetching",
    "verifying",
    "swapped",
    "healthy",
    "failed",
    "rolled_back",
)


MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m
    for m in (
        ChunkQuery,
        ChunkQueryReply,
        ChunkPut,
        RecordPut,
        ReceiptQuery,
        Receipt,
        Heartbeat,
        FetchRequest,
        FetchReply,
        ListCheckpoints,
        CheckpointList,
        ErrorReply,
        RestoreOrder,
        RestoreOrderV1,
        SignedOrder,
        RestoreReport,
        ReportAck,
    )
}


def sign_order(order: RestoreOrder, signer: Any) -> SignedOrder:
    """Wrap an order with the hub's signature (``signer``: a protocol.keys.SigningKey)."""
    data = encode(order)
    return SignedOrder(order=data, signer=signer.public, signature=signer.sign(data))


def open_order(msg: SignedOrder, trusted: bytes) -> RestoreOrder | RestoreOrderV1:
    """Check the hub's signature and decode the order inside (either version; a version 1
    order goes through :func:`current_order` before it may run)."""
    from amber.protocol.errors import SignatureError
    from amber.protocol.keys import verify_signature

    if msg.signer != trusted:
        raise SignatureError("restore order is signed by a key that is not this node's hub")
    verify_signature(msg.signer, msg.signature, msg.order)
    order = decode(msg.order)
    if not isinstance(order, RestoreOrder | RestoreOrderV1):
        raise FormatError(f"expected a restore order, got {order.TYPE}")
    if order.action not in ORDER_ACTIONS:
        raise FormatError(f"unknown restore order action {order.action!r}")
    if isinstance(order, RestoreOrder):
        check_names(order.checks)
    return order


def check_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Check names of an order: at most MAX_CHECKS, each like a node name, no repeats."""
    if len(names) > MAX_CHECKS:
        raise FormatError(f"an order names {len(names)} checks; at most {MAX_CHECKS}")
    if len(set(names)) != len(names):
        raise FormatError("an order names a check twice")
    return tuple(check_name(n, "check") for n in names)


def current_order(order: RestoreOrder | RestoreOrderV1) -> RestoreOrder:
    """The order as version 2. A version 1 restore that carries a command line is refused
    (``OrderRefusedError``): a node never runs a command the hub sent. A version 1 rollback
    is carried out (it never ran its command) and one with no command is a restore with no
    checks."""
    from amber.protocol.errors import OrderRefusedError

    if isinstance(order, RestoreOrder):
        return order
    if order.health_cmd and order.action == "restore":
        raise OrderRefusedError(
            f"restore order {order.order_id} (plan {order.plan_id}) is a version 1 order "
            "carrying a command line (health_cmd); this agent never runs a command the hub "
            "sends",
            hint="re-plan with checks the node defines: 'amber-hub restore plan ... --check "
            "NAME' (or 'amber-hub bundle export ... --restore-order --check NAME')",
        )
    fields = {f.name: getattr(order, f.name) for f in dataclasses.fields(order)}
    del fields["health_cmd"]
    return RestoreOrder(**fields, checks=())


def register(cls: type[Message]) -> type[Message]:
    """Add a message type (later protocol parts declare theirs next to their code)."""
    if cls.TYPE in MESSAGES and MESSAGES[cls.TYPE] is not cls:
        raise ValueError(f"message type {cls.TYPE} registered twice")
    MESSAGES[cls.TYPE] = cls
    return cls


def encode(msg: Message) -> bytes:
    body: dict[str, Any] = {"v": WIRE_VERSION, "t": msg.TYPE}
    for f in dataclasses.fields(msg):  # type: ignore[arg-type]
        value = getattr(msg, f.name)
        body[f.name] = list(value) if isinstance(value, tuple) else value
    data = c.pack(body)
    if len(data) > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"{msg.TYPE} message of {len(data)} bytes is too large")
    return data


_CHECKS: dict[Any, c.Check] = {
    str: c.is_str,
    int: c.is_int,
    float: c.is_float,
    bool: c.is_bool,
    bytes: c.is_bytes,
    tuple[bytes, ...]: c.list_of(c.is_bytes, max_len=MAX_IDS_PER_MESSAGE),
    tuple[str, ...]: c.list_of(c.is_str, max_len=MAX_IDS_PER_MESSAGE),
    dict[str, str]: c.dict_of(c.is_str),
    bytes | None: c.optional(c.is_bytes),
    str | None: c.optional(c.is_str),
    int | None: c.optional(c.is_int),
}
_SPECS: dict[type[Message], dict[str, c.Check]] = {}


def _spec(cls: type[Message]) -> dict[str, c.Check]:
    spec = _SPECS.get(cls)
    if spec is None:
        hints = get_type_hints(cls)
        spec = {f.name: _CHECKS[hints[f.name]] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        _SPECS[cls] = spec
    return spec


def decode(data: bytes | memoryview, expect: type[Message] | None = None) -> Message:
    """Decode any message (or exactly ``expect``); raises FormatError on bad input."""
    obj = c.unpack(data, what="wire message", max_size=MAX_MESSAGE_SIZE, limits=c.WIRE_LIMITS)
    if not isinstance(obj, dict):
        raise FormatError("wire message is not a map")
    version, kind = obj.pop("v", None), obj.pop("t", None)
    if type(version) is not int or version != WIRE_VERSION:
        raise UnknownVersionError(f"wire message version {version!r} is not supported")
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FormatError(f"unknown wire message type {kind!r}")
    if expect is not None and cls is not expect:
        if cls is ErrorReply:
            err = c.fields(obj, kind, _spec(ErrorReply))
            if err["code"] == QuotaExceededError.__name__:  # the node's own error, exit 43
                raise QuotaExceededError(f"the hub refused: {err['message']}")
            raise ProtocolError(f"peer refused: {err['code']}: {err['message']}")
        raise FormatError(f"expected a {expect.TYPE} message, got {kind}")
    values = c.fields(obj, kind, _spec(cls))
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if cls is FetchReply and len(values["ids"]) != len(values["blobs"]):
        raise FormatError("fetch.reply: ids and blobs differ in number")
    return cls(**values)
