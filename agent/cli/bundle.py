"""`amber-agent bundle ...`: air-gapped transfer (import, export, inspect).

    import FILE [--receipt OUT] [--hub-key HEX]   verify a hub's bundle, add its
        checkpoints to the journal, run the restore order it carries, write a receipt
    export (--since ID | --all) --out FILE         checkpoints for a hub out of reach
    inspect FILE                                   what a bundle holds; no vault key needed

FILE and OUT may be ``-`` (stdin, stdout). A carried restore that fails leaves the node
on its previous state (RestoreError); an order is never run twice (OrderReplayError).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from amber import cli
from amber.agent.bundle import (
    ImportState,
    batches,
    import_bundle,
    make_receipt,
    trusted_hub_keys,
    write_receipt,
)
from amber.agent.config import config_path, load_config
from amber.agent.journal import DURABLE
from amber.agent.manifests import manifest_records
from amber.agent.runtime import AgentRuntime
from amber.bundlefile import BundleStream, BundleWriter, open_input, render_summary, summarize
from amber.protocol import bundle as b
from amber.protocol.errors import AmberError, JournalError, NotFoundError, RestoreError
from amber.protocol.keys import SigningKey
from amber.protocol.records import checkpoint_public, manifest_chunk_ids, manifest_public
from amber.secretfile import read_secret

out = cli.out


def run_import(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    st = ImportState()

    async def run() -> None:
        async with AgentRuntime.open(cfg) as rt:
            error: AmberError | None = None
            try:
                await import_bundle(rt, args.file, trusted_hub_keys(cfg, args.hub_key), st)
            except AmberError as exc:
                error = exc
            if args.receipt:
                try:
                    write_receipt(rt, args.receipt, make_receipt(st, error))
                except AmberError as exc:
                    if error is None:
                        raise
                    sys.stderr.write(f"warning: no receipt written: {exc}\n")
            if error is not None:
                raise error

    asyncio.run(run())
    _report_import(args, st)
    job = st.job
    if job is not None and job.state != "healthy":
        raise RestoreError(
            f"the bundle's restore order {job.order_id} ended {job.state}: {job.detail}",
            hint="the node is back on its previous state; the receipt tells the hub",
        )
    return 0


def _report_import(args: argparse.Namespace, st: ImportState) -> None:
    job = st.job
    summary: dict[str, Any] = {
        "bundle": st.bundle_id.hex(),
        "checkpoints": len(st.checkpoints),
        "added": st.added,
        "conflicts": st.conflicts,
        "chunks": len(st.chunks),
        "new_chunks": st.new_chunks,
        "order": None if st.order is None else st.order.order_id,
        "plan": None if st.order is None else st.order.plan_id,
        "state": None if job is None else job.state,
        "detail": None if job is None else job.detail,
        "safety": None if job is None or not job.safety else job.safety.hex(),
        "receipt": args.receipt,
    }
    if args.json:
        out(json.dumps(summary, indent=2))
        return
    out(
        f"bundle {summary['bundle'][:16]}: {summary['checkpoints']} checkpoint(s), "
        f"{summary['added']} new in the journal; {summary['chunks']} chunk(s), "
        f"{summary['new_chunks']} new; every member verified"
    )
    if st.conflicts:
        out(f"  seq {st.conflicts} differ from the journal's: kept, not indexed")
    if job is not None:
        out(f"restore order {job.order_id} (plan {job.plan_id}): {job.state} - {job.detail}")
        if job.safety:
            out(f"safety checkpoint {job.safety.hex()} holds what was there before")
    if args.receipt:
        out(f"receipt written to {args.receipt}")


# --- export -------------------------------------------------------------------------


@dataclass
class ExportStats:
    checkpoints: int = 0
    manifests: int = 0
    chunks: int = 0
    bytes: int = 0
    first_seq: int = -1
    last_seq: int = -1


async def export_bundle(rt: AgentRuntime, out: str, since: str | None) -> ExportStats:
    """Checkpoints after ``since`` (all with None) and their manifests, signed by the node
    key, with the chunks the hub may lack: not those of the ``since`` checkpoint (the hub
    holds it, so it holds them) nor those the hub acknowledged (journal state durable)."""
    j, stats = rt.journal, ExportStats()
    rows = await j.checkpoints()
    at_hub: dict[bytes, bytes] = {}  # manifests the hub holds -> their record
    if since is not None:
        base = await j.resolve(since)
        rows = [r for r in rows if r.seq > base.seq]
        for mid in checkpoint_public(await _record(rt, base.id)).manifests.values():
            at_hub[mid] = await _record(rt, mid)
    if not rows:
        raise NotFoundError(
            "no checkpoints to export" + (f" after {since}" if since else ""),
            hint="take a checkpoint first, or give an older --since",
        )
    header = b.BundleHeader(
        b.NODE_EXPORT, rt.cfg.vault, rt.cfg.node, time.time_ns() // 1000, rt.ident.signer.public
    )
    with BundleWriter(out, header) as w:
        wanted = await _export_records(rt, w, [r.id for r in rows], at_hub, stats)
        for batch in batches(await _exportable_chunks(rt, wanted)):
            blobs = await j.get_chunks(batch)
            for cid in batch:
                if cid not in blobs:
                    raise JournalError(f"chunk {cid.hex()[:16]} left the journal during export")
                w.add(f"{b.CHUNK_DIR}{cid.hex()}", blobs[cid])
                stats.chunks += 1
        w.finish(rt.ident.signer)
        stats.bytes = w.bytes
    stats.first_seq, stats.last_seq = rows[0].seq, rows[-1].seq
    return stats


async def _record(rt: AgentRuntime, rid: bytes) -> bytes:
    data = await rt.journal.record(rid)
    if data is None:
        raise JournalError(f"record {rid.hex()[:16]} is indexed but missing from the journal")
    return data


async def _export_records(
    rt: AgentRuntime,
    w: BundleWriter,
    cp_ids: list[bytes],
    at_hub: dict[bytes, bytes],
    stats: ExportStats,
) -> dict[bytes, bool]:
    """Write the checkpoints and the manifests the hub lacks; returns the chunk ids to
    send, each with whether the journal must still hold it."""
    # (a version 2 manifest at the hub lists no chunks in its head: its chunks are sent)
    known = {c for data in at_hub.values() for c in manifest_public(data).get("chunks", [])}
    seen, wanted = set(at_hub), {}
    for cid in cp_ids:
        data = await _record(rt, cid)
        for mid in checkpoint_public(data).manifests.values():
            if mid in seen:
                continue
            seen.add(mid)
            recs = await manifest_records(lambda r: _record(rt, r), mid)
            assert recs is not None
            durable = (await rt.journal.record_states([mid])).get(mid) == DURABLE
            parts = [d for _, d in recs[1:]]
            for chunk in manifest_chunk_ids(recs[0][1], parts):
                if chunk not in known:
                    wanted[chunk] = wanted.get(chunk, False) or not durable
            for rid, rdata in recs[1:] + recs[:1]:  # a version 2 manifest's parts first
                w.add(f"{b.RECORD_DIR}{rid.hex()}", rdata)
            stats.manifests += 1
        w.add(f"{b.RECORD_DIR}{cid.hex()}", data)
        stats.checkpoints += 1
    return wanted


async def _exportable_chunks(rt: AgentRuntime, wanted: dict[bytes, bool]) -> list[bytes]:
    ids, out = sorted(wanted), []
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        rows = await rt.journal.chunk_states(part)
        for cid in part:
            state, held = rows.get(cid, (None, False))
            if state == DURABLE:
                continue  # the hub acknowledged it
            if held:
                out.append(cid)
            elif wanted[cid]:
                raise JournalError(
                    f"chunk {cid.hex()[:16]} of a checkpoint the hub lacks is not in the journal"
                )
    return out


def run_export(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt:
            return await export_bundle(rt, args.out, None if args.all else args.since)

    st = asyncio.run(run())
    text = (
        f"exported {st.checkpoints} checkpoint(s) (seq {st.first_seq}..{st.last_seq}), "
        f"{st.manifests} manifest(s), {st.chunks} chunk(s), {st.bytes:,} bytes to {args.out}"
    )
    (sys.stderr if args.out == "-" else sys.stdout).write(text + "\n")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    with open_input(args.file) as fh:
        summary = summarize(BundleStream(fh))
    summary["trust"] = _trust(args, summary)
    if args.json:
        out(json.dumps(summary, indent=2))
    else:
        for line in render_summary(summary, summary["trust"]):
            out(line)
    return 0


def _trust(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """Whether this node would trust the signer (needs its configuration, not its vault key)."""
    signer = bytes.fromhex(summary["signer"])
    try:
        cfg = load_config(config_path(args.config))
    except AmberError:
        return "trust unknown: no agent configuration"
    try:
        if signer in trusted_hub_keys(cfg, None):
            return "trusted: this node's hub key"
    except AmberError:
        pass
    try:
        own = SigningKey.from_file_bytes(read_secret(cfg.signing_key_file, what="signing key"))
        if own.public == signer:
            return "trusted: this node's own key"
    except AmberError:
        pass
    return "NOT trusted: neither this node's hub key nor its own"


def add_commands(sub: Any) -> None:
    bun = sub.add_parser(
        "bundle", help="air-gapped transfer: import, export and inspect bundle files"
    ).add_subparsers(dest="sub", required=True)
    s = bun.add_parser(
        "import",
        help="verify a hub's bundle, add its checkpoints, run the restore order it carries",
    )
    s.add_argument("file", type=cli.PATH, help="the bundle file, or - for stdin")
    s.add_argument(
        "--receipt", metavar="OUT", type=cli.PATH, help="write a receipt bundle (also on failure)"
    )
    s.add_argument(
        "--hub-key",
        metavar="HEX",
        type=cli.TEXT,
        help="the hub's public key (default: [hub] key in agent.toml, else the enrolment's)",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_import)
    s = bun.add_parser("export", help="write checkpoints for the hub into a bundle")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--since", metavar="ID", type=cli.TEXT, help="the checkpoints after this one"
    )
    which.add_argument("--all", action="store_true", help="every checkpoint in the journal")
    s.add_argument("--out", required=True, type=cli.PATH, help="the bundle file, or - for stdout")
    s.set_defaults(func=run_export)
    s = bun.add_parser("inspect", help="show what a bundle holds; checks its signature")
    s.add_argument("file", type=cli.PATH, help="the bundle file, or - for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_inspect)
