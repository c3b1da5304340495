"""`amber-hub bundle ...`: bundles for air-gapped sites (export, import, inspect, receipts).

They work on the hub's data directory (``--data``, and ``--config`` for a configured
store), beside a serving hub or without one. FILE may be ``-`` (stdin or stdout).
``--vault`` may be left out when the catalog holds exactly one vault.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from amber import cli
from amber.bundlefile import BundleStream, BundleWriter, open_input, render_summary, summarize
from amber.hub.bundle import HubData, import_bundle, list_receipts, open_hub_data, write_rows
from amber.hub.catalog import RECORD, Catalog, CheckpointEntry, now_us
from amber.hub.cli.vaults import vault_from_catalog
from amber.hub.config import load_hub_config
from amber.hub.coordinator import ORDER_TTL_US
from amber.hub.plans import PlanSpec, pick_checkpoint, plan_checks
from amber.hub.store.layout import object_key
from amber.hub.store.ranged import read_objects
from amber.protocol import bundle as b
from amber.protocol import wire
from amber.protocol.errors import IntegrityError, NotFoundError
from amber.protocol.keys import SigningKey
from amber.protocol.records import manifest_chunk_ids, manifest_part_ids, record_id
from amber.secretfile import read_secret

T = TypeVar("T")
out = cli.out


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _run(args: argparse.Namespace, work: Callable[[HubData], Awaitable[T]]) -> T:
    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)

    async def run() -> T:
        async with open_hub_data(cfg) as hd:
            return await work(hd)

    return asyncio.run(run())


# --- export -------------------------------------------------------------------------


@dataclass
class ExportRequest:
    vault: str
    node: str
    point: str = "latest"
    sources: list[str] = field(default_factory=list)
    all: bool = False
    restore_order: bool = False
    checks: list[str] = field(default_factory=list)


async def export_bundle(hd: HubData, req: ExportRequest, out: str) -> dict[str, Any]:
    rows = await hd.catalog.checkpoints(req.vault, req.node)
    if not rows:
        raise NotFoundError(f"the hub holds no checkpoints of {req.vault}/{req.node}")
    point = pick_checkpoint(rows, req.point)
    unknown = [s for s in req.sources if s not in point.manifests]
    if unknown:
        raise NotFoundError(
            f"checkpoint {point.id.hex()[:16]} has no source(s) {', '.join(unknown)}",
            hint=f"it holds: {', '.join(sorted(point.manifests))}",
        )
    chosen = rows if req.all else [point]
    header = b.BundleHeader(b.HUB_EXPORT, req.vault, req.node, now_us(), hd.signer.public)
    with BundleWriter(out, header) as w:
        chunks = await _write_records(hd, w, chosen, req.sources)
        await _write_chunks(hd, w, req.vault, chunks)
        order = _order(req, point, w.bundle_id) if req.restore_order else None
        if order is not None:
            w.add(b.ORDER_NAME, wire.encode(wire.sign_order(order, hd.signer)))
        w.finish(hd.signer)
        await _record_export(hd, req, w, point, order, len(chosen), len(chunks))
    return {
        "bundle": w.bundle_id.hex(),
        "checkpoints": len(chosen),
        "chunks": len(chunks),
        "bytes": w.bytes,
        "order": order.order_id if order else None,
        "plan": order.plan_id if order else None,
    }


async def _get(hd: HubData, vault: str, oid: bytes, kind: str) -> bytes:
    return await hd.store.get(object_key(vault, oid, kind))


async def _write_records(
    hd: HubData, w: BundleWriter, chosen: list[CheckpointEntry], sources: list[str]
) -> list[bytes]:
    """Write the checkpoints and all their manifests; returns the chunk ids needed."""
    lists: dict[bytes, list[bytes]] = {}  # manifest id -> its chunk ids
    chunks: set[bytes] = set()
    for row in chosen:
        for name, mid_hex in sorted(row.manifests.items()):
            mid = bytes.fromhex(mid_hex)
            if mid not in lists:
                data = _checked(await _get(hd, row.vault, mid, RECORD), mid)
                parts = []
                for pid in manifest_part_ids(data):  # a version 2 manifest: parts first
                    parts.append(_checked(await _get(hd, row.vault, pid, RECORD), pid))
                    w.add(f"{b.RECORD_DIR}{pid.hex()}", parts[-1])
                lists[mid] = manifest_chunk_ids(data, parts)
                w.add(f"{b.RECORD_DIR}{mid_hex}", data)
            if not sources or name in sources:
                chunks.update(lists[mid])
        data = await _get(hd, row.vault, row.id, RECORD)
        w.add(f"{b.RECORD_DIR}{row.id.hex()}", _checked(data, row.id))
    return sorted(chunks)


def _checked(data: bytes, oid: bytes) -> bytes:
    if record_id(data) != oid:
        raise IntegrityError(f"stored record {oid.hex()[:16]} is damaged", hint="run verify")
    return data


async def _write_chunks(hd: HubData, w: BundleWriter, vault: str, ids: list[bytes]) -> None:
    have = await hd.catalog.locate(vault, ids)
    missing = [i for i in ids if i not in have]
    if missing:
        raise NotFoundError(
            f"the hub lacks {len(missing)} chunk(s) of the chosen checkpoint(s), "
            f"e.g. {missing[0].hex()[:16]}",
            hint="the checkpoint is not restorable from this hub; choose another point",
        )
    # in the order they sit in the hub's packs (members may come in any order, FORMAT.md
    # §13.1), so each group of 64 is a few merged ranged reads rather than 64
    ids = sorted(ids, key=lambda c: (have[c].pack or b"", have[c].off or 0, c))
    for i in range(0, len(ids), 64):
        part = [(cid, have[cid]) for cid in ids[i : i + 64]]
        for (cid, _), blob in zip(part, await read_objects(hd.store, vault, part), strict=True):
            w.add(f"{b.CHUNK_DIR}{cid.hex()}", blob)


def _order(req: ExportRequest, point: CheckpointEntry, bundle_id: bytes) -> wire.RestoreOrder:
    now = int(time.time() * 1e6)
    return wire.RestoreOrder(
        order_id=f"o-{uuid.uuid4().hex[:12]}",
        plan_id=b.plan_id_for(bundle_id),
        vault=req.vault,
        node=req.node,
        action="restore",
        checkpoint=point.id,
        source_node=req.node,
        sources=tuple(req.sources),
        checks=tuple(req.checks),
        issued_us=now,
        expires_us=now + ORDER_TTL_US,
    )


async def _record_export(
    hd: HubData,
    req: ExportRequest,
    w: BundleWriter,
    point: CheckpointEntry,
    order: wire.RestoreOrder | None,
    checkpoints: int,
    chunks: int,
) -> None:
    """The export, and the plan of its order, in one catalog transaction."""
    row = (w.bundle_id, req.vault, req.node, w.header.created_us, checkpoints, chunks, w.bytes)
    ids = (order.order_id, order.plan_id) if order else ("", "")
    rows: list[tuple[str, tuple[Any, ...]]] = [
        ("INSERT INTO bundle_exports VALUES(?,?,?,?,?,?,?,?,?)", (*row, *ids))
    ]
    if order is not None:
        spec = PlanSpec(
            vault=req.vault,
            nodes=[req.node],
            point=req.point,
            sources=list(req.sources),
            checks=list(req.checks),
            rollback_on_failure=False,  # no link to send a rollback on: the node rolls back
        )
        reason = f"carried by bundle {w.bundle_id.hex()[:16]}; waiting for the node's receipt"
        plan = (order.plan_id, now_us(), "exported", json.dumps(spec.__dict__), reason)
        node = (order.plan_id, req.vault, req.node, 0, point.id, point.seq, req.node)
        rows += [
            ("INSERT INTO plans VALUES(?,?,?,?,?)", plan),
            (
                "INSERT INTO plan_nodes(plan, vault, node, wave, checkpoint, seq, source_node,"
                " state, order_id, updated_us) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (*node, "queued", order.order_id, now_us()),
            ),
        ]
    await write_rows(hd.catalog, rows)


def run_export(args: argparse.Namespace) -> int:
    req = ExportRequest(
        vault=args.vault or "",
        node=args.node,
        point=args.point,
        sources=_split(args.sources),
        all=args.all,
        restore_order=args.restore_order,
        checks=plan_checks(args.check or []),
    )

    async def work(hd: HubData) -> dict[str, Any]:
        req.vault = await vault_from_catalog(args.vault, hd.catalog)
        return await export_bundle(hd, req, args.out)

    res = _run(args, work)
    stream = sys.stderr if args.out == "-" else sys.stdout
    if args.json and args.out != "-":
        out(json.dumps(res, indent=2))
        return 0
    stream.write(
        f"bundle {res['bundle'][:16]} written to {args.out}: {res['checkpoints']} "
        f"checkpoint(s), {res['chunks']} chunk(s), {res['bytes']:,} bytes\n"
    )
    if res["order"]:
        stream.write(
            f"restore order {res['order']}: follow it with "
            f"'amber-hub restore status {res['plan']}' once the node's receipt is imported\n"
        )
    return 0


def run_import(args: argparse.Namespace) -> int:
    res = _run(args, lambda hd: import_bundle(hd, args.file))
    if args.json:
        out(json.dumps(res, indent=2))
    elif "receipt" in res:
        note = "" if res["new"] else " (imported before: nothing changed)"
        out(
            f"receipt {res['receipt'][:16]}: order {res['order_id'] or '-'} "
            f"{res['outcome']} {res['state']} - {res['detail']}{note}"
        )
        if res["plan"]:
            out(f"plan {res['plan']} updated: amber-hub restore status {res['plan']}")
    else:
        out(
            f"imported {res['vault']}/{res['node']}: {res['checkpoints']} checkpoint(s), "
            f"{res['new_checkpoints']} new; {res['chunks']} chunk(s), {res['new_chunks']} new"
        )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    with open_input(args.file) as fh:
        summary = summarize(BundleStream(fh))
    summary["trust"] = asyncio.run(_trust(args, summary))
    if args.json:
        out(json.dumps(summary, indent=2))
    else:
        for line in render_summary(summary, summary["trust"]):
            out(line)
    return 0


async def _trust(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """Whether this hub trusts the signer: its own key, or the node's known key."""
    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)
    signer = bytes.fromhex(summary["signer"])
    key_file = cfg.data_dir / "hub.key"
    if summary["producer"] == "hub":
        if not key_file.exists():
            return "trust unknown: no hub data here"
        own = SigningKey.from_file_bytes(read_secret(key_file, what="hub signing key"))
        return "trusted: this hub's key" if own.public == signer else "NOT this hub's key"
    if not cfg.catalog_path.exists():
        return "trust unknown: no hub data here"
    catalog = await Catalog.open(cfg.catalog_path)
    try:
        nodes = {(n.vault, n.node): n.signer for n in await catalog.nodes()}
    finally:
        await catalog.close()
    key = (summary["vault"], summary["node"])
    if key not in nodes:
        return "NOT trusted: the node is not enrolled here"
    if nodes[key] is None:
        return "trusted on first import: the node has no known key yet"
    return "trusted: the node's key" if nodes[key] == signer else "NOT the node's known key"


def run_receipts(args: argparse.Namespace) -> int:
    rows = _run(args, list_receipts)
    if args.json:
        out(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        out(
            f"{r['receipt'][:16]}  {r['vault']}/{r['node']:<16} order {r['order_id'] or '-'} "
            f"plan {r['plan_id'] or '-'}  {r['outcome']} {r['state']}  {r['detail']}"
        )
    return 0


def add_commands(sub: Any) -> None:
    bun = sub.add_parser("bundle", help="bundles for air-gapped sites").add_subparsers(
        dest="sub", required=True
    )
    s = bun.add_parser("export", help="a node's restore point(s) in a signed bundle")
    s.add_argument("--node", required=True, type=cli.NAME)
    s.add_argument("--vault", type=cli.NAME, help="default: the hub's only vault")
    s.add_argument(
        "--point",
        default="latest",
        type=cli.TEXT,
        help="latest | ID | label:key=value | at:TIMESTAMP (ISO or unix seconds)",
    )
    s.add_argument("--sources", type=cli.TEXT, help="only these sources' chunks: a,b")
    s.add_argument("--all", action="store_true", help="every checkpoint of the node")
    s.add_argument(
        "--restore-order",
        action="store_true",
        help="carry a signed order to restore the point (plan bundle-<id>, expires in 7 days)",
    )
    s.add_argument(
        "--check",
        action="append",
        type=cli.NAME,
        metavar="NAME",
        help="with --restore-order: a check the node runs after the swap, defined in its "
        "agent.toml [checks.NAME] (repeatable)",
    )
    s.add_argument("--out", required=True, type=cli.PATH, help="the bundle file, or - for stdout")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_export)
    s = bun.add_parser("import", help="ingest a node's export, or a receipt, from a bundle")
    s.add_argument("file", type=cli.PATH, help="the bundle file, or - for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_import)
    s = bun.add_parser("inspect", help="show what a bundle holds; checks its signature")
    s.add_argument("file", type=cli.PATH, help="the bundle file, or - for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_inspect)
    s = bun.add_parser("receipts", help="the receipts nodes sent back, with their outcome")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_receipts)
