"""`amber-agent checkpoint|checkpoints|status|verify`: restore points and their health."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from amber import cli
from amber.agent.cli.progress import ProgressLine
from amber.agent.config import AgentConfig, SourceConfig, config_path, load_config
from amber.agent.remote import adopt_from_hub
from amber.agent.runtime import AgentRuntime
from amber.agent.sources.drift import source_drift
from amber.agent.sources.registry import scanned_us
from amber.agent.vouches import fingerprint, signer_label, vouches
from amber.protocol.errors import AmberError, ConfigError, JournalError
from amber.protocol.records import decode_checkpoint, manifest_public

ID_HELP = "checkpoint id prefix, latest or seq:N"


def run_checkpoint(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    labels = cli.merge(args.label)
    if not cfg.sources:
        raise ConfigError("no sources are configured", hint="add one with 'amber-agent source add'")

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt, rt.writing():
            bar = ProgressLine("checkpoint")
            res = await rt.checkpointer(bar).checkpoint(args.source, labels)
            bar.finish()
            return res

    res = asyncio.run(run())
    if not args.json:
        cli.out(res.id.hex())
        return 0
    s = res.stats
    row = {
        "id": res.id.hex(),
        "seq": res.checkpoint.seq,
        "time_us": res.checkpoint.time_us,
        "sources": sorted(res.checkpoint.manifests),
        "changed": res.changed,
        "labels": res.checkpoint.labels,
        "read_bytes": s.read_bytes,
        "new_chunks": s.new_chunks,
        "new_bytes": s.new_bytes,
        "dedup_chunks": s.dedup_chunks,
    }
    cli.out(json.dumps(row))
    return 0


def run_checkpoints(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))

    async def run() -> tuple[list[Any], dict[bytes, Any], bytes]:
        async with AgentRuntime.open(cfg) as rt, rt.hub(timeout=5) as link:
            if link is not None:
                try:
                    await adopt_from_hub(rt, link)
                except AmberError as exc:
                    sys.stderr.write(f"note: hub not consulted: {exc}\n")
            rows = await rt.journal.checkpoints()
            return rows, await vouches(rt.journal.query), rt.ident.signer.public

    rows, vouched, own = asyncio.run(run())
    if args.json:
        keys = ("seq", "time_us", "kind", "labels", "sources", "synced")
        listed = [
            {"id": r.id.hex(), **{k: getattr(r, k) for k in keys}, **_signer(vouched, r.id, own)}
            for r in rows
        ]
        cli.out(json.dumps(listed, indent=2))
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time_us / 1e6))
        labels = " ".join(f"{k}={v}" for k, v in r.labels.items())
        signer = signer_label(vouched.get(r.id), own)
        cli.out(
            f"{r.id.hex()[:16]}  seq {r.seq:<5} {when}  {r.kind:<7} {signer:<16} "
            f"{','.join(r.sources)}  {labels}"
        )
    return 0


def _signer(vouched: dict[bytes, Any], cid: bytes, own: bytes) -> dict[str, Any]:
    """``signer`` (self, hub or the key's fingerprint), the signing key and who vouched
    for it (``self``, ``hub``, ``link`` or ``migrated``, and the hub key's fingerprint)."""
    v = vouched.get(cid)
    return {
        "signer": signer_label(v, own),
        "signer_key": v.signer.hex() if v else None,
        "vouched_by": v.voucher if v else None,
        "vouched_key": fingerprint(v.key) if v and v.key else None,
    }


# --- status -------------------------------------------------------------------------


async def _source_status(
    rt: AgentRuntime, cfg: AgentConfig, s: SourceConfig, manifests: dict[str, bytes]
) -> dict[str, Any]:
    d = await source_drift(s, rt.journal)
    saved = await rt.journal.source_state(s.name)
    last_us = None
    if saved is not None and saved[0] in manifests.values():
        last_us = scanned_us(saved[1]) or await _manifest_time(rt, saved[0])
    rpo = cfg.tiers[s.tier].rpo
    age_s = None if last_us is None else time.time() - last_us / 1e6
    return {
        "name": s.name,
        "kind": s.kind,
        "tier": s.tier,
        "rpo_seconds": rpo,
        "last_checkpoint_us": last_us,
        "age_seconds": age_s,
        "rpo_breached": age_s is None or age_s > rpo,
        "drift": d.state,
        "added": d.added,
        "removed": d.removed,
        "modified": d.modified,
    }


async def _manifest_time(rt: AgentRuntime, mid: bytes) -> int | None:
    data = await rt.journal.record(mid)
    return None if data is None else int(manifest_public(data)["time_us"])


async def node_status(cfg: AgentConfig) -> dict[str, Any]:
    """What `status --json` prints: head, journal use and backlog, each source's RPO."""
    async with AgentRuntime.open(cfg) as rt:
        head = await rt.journal.head()
        backlog_bytes, backlog_chunks = await rt.journal.backlog()
        manifests = {}
        if head is not None:
            data = await rt.journal.record(head.id)
            manifests = decode_checkpoint(data or b"", rt.ident.keys).manifests
        return {
            "node": cfg.node,
            "vault": cfg.vault,
            "head": None
            if head is None
            else {"id": head.id.hex(), "seq": head.seq, "time_us": head.time_us},
            "backlog_bytes": backlog_bytes,
            "backlog_chunks": backlog_chunks,
            "journal_bytes": await rt.journal.held_bytes(),
            "journal_max_bytes": cfg.journal_max_bytes,
            "sources": [await _source_status(rt, cfg, s, manifests) for s in cfg.sources],
        }


def run_status(args: argparse.Namespace) -> int:
    st = asyncio.run(node_status(load_config(config_path(args.config))))
    if args.json:
        cli.out(json.dumps(st, indent=2))
        return 0
    head = st["head"]
    cli.out(f"node {st['node']} (vault {st['vault']})")
    cli.out(
        "last checkpoint: "
        + (f"{head['id'][:16]} seq {head['seq']}, {cli.ago(head['time_us'])}" if head else "none")
    )
    cli.out(
        f"journal: {st['journal_bytes']:,} of {st['journal_max_bytes']:,} bytes; "
        f"backlog {st['backlog_chunks']} chunks, {st['backlog_bytes']:,} bytes not yet at the hub"
    )
    for s in st["sources"]:
        last = cli.ago(s["last_checkpoint_us"])
        flag = "RPO BREACHED" if s["rpo_breached"] else "ok"
        detail = (
            f"+{s['added']} -{s['removed']} ~{s['modified']}" if s["drift"] == "changed" else ""
        )
        cli.out(
            f"  {s['name']:<16} {s['tier']:<5} last {last:<10} rpo {s['rpo_seconds']}s {flag:<13} "
            f"drift: {s['drift']} {detail}"
        )
    return 0


# --- verify -------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))

    async def run() -> tuple[int, int]:
        # chunks evicted after sync, and checkpoints adopted from the hub, are checked
        # against the hub's copies when the node is enrolled
        async with AgentRuntime.open(cfg) as rt, rt.hub(timeout=5) as link:
            rows = await rt.journal.checkpoints()
            targets = [await rt.journal.resolve(args.id)] if args.id else rows
            bad = await rt.journal.integrity_check()
            if bad:
                raise JournalError(f"journal integrity check failed: {bad[0]}")
            total = 0
            for row in targets:
                bar = ProgressLine(f"verify {row.id.hex()[:12]}")
                stats = await rt.restorer(bar, link).verify(row.id)
                bar.finish()
                total += stats.bytes
                cli.out(
                    f"{row.id.hex()[:16]} seq {row.seq}: ok ({stats.files} files, "
                    f"{stats.chunks} chunks, {stats.bytes:,} bytes)"
                )
            return len(targets), total

    n, total = asyncio.run(run())
    cli.out(
        f"verified {n} checkpoint(s), {total:,} bytes: "
        "every chunk authenticated and every digest matched"
    )
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("checkpoint", help="take a checkpoint now; prints its id")
    s.add_argument("--source", action="append", type=cli.TEXT, help="only this source (repeatable)")
    s.add_argument("--label", action="append", type=cli.KEY_VALUE, metavar="KEY=VALUE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_checkpoint)

    s = sub.add_parser("checkpoints", help="list checkpoints")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_checkpoints)

    s = sub.add_parser("status", help="backlog, checkpoint age against RPO, drift")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_status)

    s = sub.add_parser("verify", help="re-read and check every chunk of a checkpoint (or all)")
    s.add_argument("id", nargs="?", type=cli.TEXT, help=ID_HELP)
    s.set_defaults(func=run_verify)
