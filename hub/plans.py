"""Restore plans: which nodes get which checkpoint, in which wave, and their progress.

A plan is created as a dry run (state ``draft``); ``start`` makes it ``running`` and
the coordinator (coordinator.py) moves it along. Plans and their per-node rows live
in the catalog database, so a restarted hub carries on where it was.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from amber.hub.catalog import Catalog, CheckpointEntry, NodeRow, now_us
from amber.protocol import wire
from amber.protocol.errors import FormatError, NotFoundError, UsageError

PLAN_SCHEMA = """
CREATE TABLE IF NOT EXISTS plans(
    id TEXT PRIMARY KEY, created_us INTEGER NOT NULL, state TEXT NOT NULL,
    spec TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS plan_nodes(
    plan TEXT NOT NULL, vault TEXT NOT NULL, node TEXT NOT NULL, wave INTEGER NOT NULL,
    checkpoint BLOB NOT NULL, seq INTEGER NOT NULL, source_node TEXT NOT NULL,
    state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0, order_id TEXT NOT NULL DEFAULT '',
    updated_us INTEGER NOT NULL, PRIMARY KEY(plan, vault, node));
"""


class PlanState(enum.StrEnum):
    """A plan's state; the values are what the catalog and the admin API carry."""

    DRAFT = "draft"  # a dry run: nodes and checkpoints chosen, nothing sent
    RUNNING = "running"  # the coordinator moves it wave by wave
    HALTED = "halted"  # a node failed a gate: no further wave starts
    DONE = "done"  # every node healthy
    ABORTED = "aborted"  # on the operator's word
    EXPORTED = "exported"  # carried by a bundle; the node's receipt settles it


class NodeState(enum.StrEnum):
    """A node's state in a plan: planned -> queued (order sent) -> fetching -> verifying
    -> swapped -> healthy, or failed / rolled_back. All but ``planned`` are the states a
    node reports (wire.REPORT_STATES)."""

    PLANNED = "planned"
    QUEUED = "queued"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    SWAPPED = "swapped"
    HEALTHY = "healthy"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


PLAN_STATES = tuple(PlanState)
NODE_STATES = tuple(NodeState)
assert NODE_STATES[1:] == wire.REPORT_STATES


_FIELD_TYPES: dict[str, tuple[type, type | None]] = {  # name: (type, item type)
    "vault": (str, None),
    "nodes": (list, str),
    "selector": (dict, str),
    "point": (str, None),
    "sources": (list, str),
    "canary": (int, None),
    "waves": (list, int),
    "checks": (list, str),
    "to_node": (str, None),
    "rollback_on_failure": (bool, None),
}


def _check_field(name: str, value: Any) -> None:
    """A plan request's field has its documented JSON type (a crafted body is a usage
    error, never a traceback deep in the planner)."""
    kind, item = _FIELD_TYPES[name]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok or (item is not None and not all(isinstance(v, item) for v in items)):
        want = kind.__name__ + (f" of {item.__name__}" if item else "")
        raise UsageError(f"restore plan field {name!r} must be a {want}, not {value!r:.80}")


@dataclass
class PlanSpec:
    vault: str
    nodes: list[str] = field(default_factory=list)
    selector: dict[str, str] = field(default_factory=dict)
    point: str = "latest"
    sources: list[str] = field(default_factory=list)
    canary: int = 1
    waves: list[int] = field(default_factory=lambda: [100])  # cumulative percentages
    checks: list[str] = field(default_factory=list)  # defined in each node's agent.toml
    to_node: str = ""  # restore nodes[0]'s checkpoint onto this node
    rollback_on_failure: bool = True

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PlanSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(obj) - known
        if "health_cmd" in unknown:
            raise UsageError(
                "a restore plan cannot carry a command line (health_cmd)",
                hint="define the check in each node's agent.toml ([checks.NAME]) and name it: "
                "amber-hub restore plan ... --check NAME",
            )
        if unknown:
            raise UsageError(f"unknown restore plan field(s): {', '.join(sorted(unknown))}")
        for name, value in obj.items():
            _check_field(name, value)
        spec = cls(**obj)
        spec.checks = plan_checks(spec.checks)
        return spec

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class PlanNode:
    """One target node of a plan: its wave, restore point and progress."""

    vault: str
    node: str
    wave: int
    checkpoint: bytes
    seq: int
    source_node: str
    state: NodeState
    detail: str = ""
    done: int = 0
    total: int = 0
    order_id: str = ""
    updated_us: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "vault": self.vault,
            "node": self.node,
            "wave": self.wave,
            "checkpoint": self.checkpoint.hex(),
            "seq": self.seq,
            "source_node": self.source_node,
            "state": str(self.state),
            "detail": self.detail,
            "done": self.done,
            "total": self.total,
            "order_id": self.order_id,
            "updated_us": self.updated_us,
        }


@dataclass(frozen=True, slots=True)
class Wave:
    """The nodes of one wave (0: the canary), in node order."""

    index: int
    nodes: tuple[PlanNode, ...]

    @property
    def healthy(self) -> bool:
        return all(n.state == NodeState.HEALTHY for n in self.nodes)


@dataclass(frozen=True, slots=True)
class RestorePlan:
    id: str
    created_us: int
    state: PlanState
    reason: str
    spec: PlanSpec
    nodes: tuple[PlanNode, ...]

    @property
    def waves(self) -> list[Wave]:
        numbers = sorted({n.wave for n in self.nodes})
        return [Wave(w, tuple(n for n in self.nodes if n.wave == w)) for w in numbers]

    def to_json(self) -> dict[str, Any]:
        """The admin API's view of the plan."""
        return {
            "id": self.id,
            "created_us": self.created_us,
            "state": str(self.state),
            "reason": self.reason,
            "spec": self.spec.to_json(),
            "nodes": [n.to_json() for n in self.nodes],
        }


def plan_checks(names: Any) -> list[str]:
    """A plan's check names, as a node will check them (wire.check_names)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError("checks must be a list of check names")
    try:
        return list(wire.check_names(names))
    except FormatError as exc:
        raise UsageError(str(exc), hint=exc.hint) from None


def parse_waves(text: str) -> list[int]:
    """ "10%,50%,100%" -> [10, 50, 100]; the last wave is always 100%."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d{1,3})%?", part)
        if not m or not 0 < int(m.group(1)) <= 100:
            raise UsageError(f"wave {part!r} is not a percentage like 10%")
        out.append(int(m.group(1)))
    if out != sorted(out):
        raise UsageError("waves must be increasing cumulative percentages, e.g. 10%,50%,100%")
    if not out or out[-1] != 100:
        out.append(100)
    return out


def assign_waves(nodes: list[str], canary: int, waves: list[int]) -> dict[str, int]:
    """Wave 0 is the canary; then cumulative percentages of the remaining nodes."""
    canary = max(0, min(canary, len(nodes)))
    out = {n: 0 for n in nodes[:canary]}
    rest = nodes[canary:]
    done = 0
    for i, pct in enumerate(waves, start=1):
        upto = math.ceil(len(rest) * pct / 100)
        for n in rest[done:upto]:
            out[n] = i
        done = max(done, upto)
    return out


def pick_checkpoint(rows: list[CheckpointEntry], point: str) -> CheckpointEntry:
    """latest | <id hex prefix> | label:key=value | at:<ISO time or unix seconds>."""
    regular = [r for r in rows if r.kind == "regular"] or rows
    if not rows:
        raise NotFoundError("the node has no checkpoints at the hub")
    if point == "latest":
        return regular[-1]
    if point.startswith("label:"):
        key, _, value = point[6:].partition("=")
        hits = [r for r in rows if r.labels.get(key) == value]
        if not hits:
            raise NotFoundError(f"no checkpoint is labelled {key}={value}")
        return hits[-1]
    if point.startswith("at:"):
        limit = _parse_time(point[3:])
        hits = [r for r in regular if r.time_us <= limit]
        if not hits:
            raise NotFoundError(f"no checkpoint at or before {point[3:]}")
        return hits[-1]
    hits = [r for r in rows if r.id.hex().startswith(point.lower())] if len(point) >= 4 else []
    if len(hits) != 1:
        raise NotFoundError(f"checkpoint {point!r} is {'ambiguous' if hits else 'unknown'}")
    return hits[0]


def _parse_time(text: str) -> int:
    try:
        return int(float(text) * 1e6)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an ISO time or unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1e6)


def select_nodes(spec: PlanSpec, nodes: list[NodeRow]) -> list[str]:
    in_vault = [n for n in nodes if n.vault == spec.vault]
    if spec.nodes:
        names = {n.node for n in in_vault}
        unknown = [n for n in spec.nodes if n not in names]
        if unknown:
            raise NotFoundError(f"unknown node(s) in vault {spec.vault}: {', '.join(unknown)}")
        return list(spec.nodes)
    if spec.selector:
        hits = [
            n.node for n in in_vault if all(n.labels.get(k) == v for k, v in spec.selector.items())
        ]
        if not hits:
            raise NotFoundError(f"no node matches {spec.selector}")
        return hits
    raise UsageError("a plan needs --nodes or --selector")


PLAN_NODE_COLS = (
    "vault, node, wave, checkpoint, seq, source_node, state, detail, done, total, order_id,"
    " updated_us"
)
PLAN_NODE_FIELDS = frozenset(("state", "detail", "done", "total", "order_id"))


def _stored_spec(text: str) -> PlanSpec:
    """A plan's spec as stored: fields a newer hub may have added are ignored."""
    obj = json.loads(text)
    return PlanSpec(**{k: v for k, v in obj.items() if k in PlanSpec.__dataclass_fields__})


class PlanBook:
    """Plans in the catalog database (tables ``plans`` and ``plan_nodes``)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def setup(self) -> None:
        await self.catalog.ensure_schema(PLAN_SCHEMA)

    async def create(self, spec: PlanSpec) -> RestorePlan:
        """A draft plan: the nodes, their waves and their restore points (a dry run)."""
        targets = select_nodes(spec, await self.catalog.nodes())
        if spec.to_node:
            if len(targets) != 1:
                raise UsageError("--to-node restores exactly one node's checkpoint")
            await self.catalog.node(spec.vault, spec.to_node)
        rows = []
        waves = assign_waves([spec.to_node] if spec.to_node else targets, spec.canary, spec.waves)
        for target, wave in waves.items():
            source_node = targets[0] if spec.to_node else target
            cps = await self.catalog.checkpoints(spec.vault, source_node)
            cp = pick_checkpoint(cps, spec.point)
            missing = [s for s in spec.sources if s not in cp.manifests]
            if missing:
                raise NotFoundError(
                    f"checkpoint {cp.id.hex()[:16]} of {source_node} has no "
                    f"source(s) {', '.join(missing)}"
                )
            rows.append((target, wave, cp, source_node))
        plan_id = "p-" + uuid.uuid4().hex[:10]
        t = now_us()
        async with self.catalog.transaction() as tx:
            await tx.execute(
                "INSERT INTO plans VALUES(?,?,?,?,?)",
                (plan_id, t, PlanState.DRAFT, json.dumps(spec.to_json()), ""),
            )
            await tx.execute_many(
                "INSERT INTO plan_nodes(plan, vault, node, wave, checkpoint, seq, source_node,"
                " state, updated_us) VALUES(?,?,?,?,?,?,?,?,?)",
                [
                    (plan_id, spec.vault, n, w, cp.id, cp.seq, src, NodeState.PLANNED, t)
                    for n, w, cp, src in rows
                ],
            )
        return await self.get(plan_id)

    async def get(self, plan_id: str) -> RestorePlan:
        rows = await self.catalog.query("SELECT * FROM plans WHERE id = ?", (plan_id,))
        if not rows:
            raise NotFoundError(
                f"no restore plan {plan_id!r}", hint="list them: amber-hub restore list"
            )
        pid, created, state, spec, reason = rows[0]
        nodes = await self.catalog.query(
            f"SELECT {PLAN_NODE_COLS} FROM plan_nodes WHERE plan = ? ORDER BY wave, node", (pid,)
        )
        return RestorePlan(
            id=pid,
            created_us=created,
            state=PlanState(state),
            reason=reason,
            spec=_stored_spec(spec),
            nodes=tuple(PlanNode(*r[:6], NodeState(r[6]), *r[7:]) for r in nodes),
        )

    async def list(self) -> list[RestorePlan]:
        rows = await self.catalog.query("SELECT id FROM plans ORDER BY created_us")
        return [await self.get(r[0]) for r in rows]

    async def set_state(self, plan_id: str, state: PlanState, reason: str = "") -> None:
        await self.catalog.execute(
            "UPDATE plans SET state = ?, reason = ? WHERE id = ?", (state, reason, plan_id)
        )

    async def set_node(self, plan_id: str, vault: str, node: str, **fields: Any) -> None:
        """Update a node's row: ``state``, ``detail``, ``done``, ``total``, ``order_id``."""
        unknown = set(fields) - PLAN_NODE_FIELDS
        if unknown:
            raise ValueError(f"not a plan node field: {', '.join(sorted(unknown))}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        await self.catalog.execute(
            f"UPDATE plan_nodes SET {cols}, updated_us = ?"
            " WHERE plan = ? AND vault = ? AND node = ?",
            (*fields.values(), now_us(), plan_id, vault, node),
        )

    async def by_order(self, order_id: str) -> tuple[str, str, str] | None:
        rows = await self.catalog.query(
            "SELECT plan, vault, node FROM plan_nodes WHERE order_id = ?", (order_id,)
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def counts(self, active: Iterable[PlanState]) -> tuple[dict[str, int], dict[str, int]]:
        """(plans by state, nodes of the plans in an ``active`` state by state)."""
        active = tuple(active)
        plans = await self.catalog.query("SELECT state, count(*) FROM plans GROUP BY state")
        marks = ",".join("?" * len(active))
        nodes = await self.catalog.query(
            "SELECT n.state, count(*) FROM plan_nodes n JOIN plans p ON p.id = n.plan"
            f" WHERE p.state IN ({marks}) GROUP BY n.state",
            active,
        )
        return {r[0]: int(r[1]) for r in plans}, {r[0]: int(r[1]) for r in nodes}
