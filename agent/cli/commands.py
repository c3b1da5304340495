"""One plain function per `amber-agent` command; tests call them directly.

Each takes the parsed arguments and returns the exit code; errors are
:class:`AmberError` subclasses that ``cli.main`` renders with their hint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from getpass import getpass
from pathlib import Path
from typing import Any

from amber import __version__
from amber.agent.cli.progress import ProgressLine
from amber.agent.config import AgentConfig, config_path, load_config, make_source, save_config
from amber.agent.enrolment import install_enrolment
from amber.agent.identity import PASSPHRASE_ENV, read_vault_key_input, register_key_secrets
from amber.agent.journal import Journal
from amber.agent.remote import adopt_from_hub, heartbeat, sync
from amber.agent.restore.inplace import restore_in_place
from amber.agent.runtime import AgentRuntime
from amber.agent.sources.drift import source_drift
from amber.agent.sources.registry import scanned_us
from amber.protocol.errors import AmberError, ConfigError, UsageError
from amber.protocol.keys import SigningKey, VaultKeys, export_vault_key
from amber.protocol.records import decode_checkpoint
from amber.secretfile import read_secret, write_secret


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def parse_labels(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"label {item!r} is not key=value")
        labels[key] = value
    return labels


def load(args: argparse.Namespace) -> AgentConfig:
    return load_config(config_path(args.config))


def age(us: int) -> str:
    secs = max(0, int(time.time() - us / 1e6))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit}"
    return f"{secs}s"


# --- keys and setup -----------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    keys = VaultKeys.generate()
    write_secret(args.out, keys.to_file_bytes())
    out(f"vault key written to {args.out} (fingerprint {keys.fingerprint}); keep a copy offline")
    return 0


def cmd_key_export(args: argparse.Namespace) -> int:
    cfg = load(args)
    keys = VaultKeys.from_file_bytes(read_secret(cfg.vault_key_file, what="vault key"))
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        passphrase = getpass("passphrase for the export: ")
        if getpass("repeat it: ") != passphrase:
            raise UsageError("the passphrases differ")
    write_secret(args.out, export_vault_key(keys.master, passphrase))
    out(f"passphrase-protected vault key written to {args.out} ({keys.fingerprint})")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    state = Path(args.dir).resolve()
    cfg_file = Path(args.config) if args.config else state / "agent.toml"
    if cfg_file.exists():
        raise ConfigError(f"{cfg_file} already exists", hint="use it, or remove it first")
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.vault_key:
        keys = VaultKeys.from_master(read_vault_key_input(Path(args.vault_key)))
    else:
        keys = VaultKeys.generate()
    cfg = AgentConfig(
        path=cfg_file.resolve(),
        state_dir=state,
        node=args.node,
        vault=args.vault,
        vault_key_file=state / "vault.key",
        signing_key_file=state / "node.key",
    )
    from amber.agent.config import parse_config  # validate names the same way load does

    parse_config({"agent": {"node": args.node, "vault": args.vault, "state_dir": "."}}, cfg.path)
    write_secret(cfg.vault_key_file, keys.to_file_bytes())
    signer = SigningKey.generate()
    register_key_secrets(keys, signer)
    write_secret(cfg.signing_key_file, signer.to_file_bytes())
    save_config(cfg)

    async def create() -> None:
        journal = await Journal.open(
            cfg.journal_path, keys, vault=cfg.vault, node=cfg.node, create=True
        )
        await journal.close()

    asyncio.run(create())
    if args.enroll:
        install_enrolment(Path(args.enroll), state, cfg.vault, cfg.node)
        out(f"enrolled with the hub ({_adopt_now(cfg)})")
    out(f"initialised node {cfg.node} in vault {cfg.vault}")
    out(f"config: {cfg.path}")
    out(f"vault key fingerprint: {keys.fingerprint}")
    out(f"node public key: {signer.public.hex()}")
    return 0


def _adopt_now(cfg: AgentConfig) -> str:
    """Learn the checkpoints the hub already holds for this node, if it answers."""

    async def run() -> str:
        async with AgentRuntime.open(cfg) as rt, rt.hub(timeout=5) as link:
            if link is None:
                return "hub unreachable now; the node works offline and syncs later"
            n = await adopt_from_hub(rt, link)
            return f"{n} checkpoint(s) already at the hub"

    return asyncio.run(run())


def cmd_enroll(args: argparse.Namespace) -> int:
    cfg = load(args)
    install_enrolment(Path(args.file), cfg.state_dir, cfg.vault, cfg.node)
    out(f"enrolled {cfg.vault}/{cfg.node} with the hub ({_adopt_now(cfg)})")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = load(args)

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt, rt.hub(required=True) as link:
            assert link is not None
            stats = await sync(rt, link)  # no write lock: sync never touches tentative rows
            await heartbeat(rt, link)
            return stats

    st = asyncio.run(run())
    if args.json:
        out(json.dumps(st.__dict__))
    else:
        out(
            f"synced {st.checkpoints} checkpoint(s): {st.chunks_sent} chunks sent "
            f"({st.bytes_sent:,} bytes), {st.chunks_skipped} already at the hub; "
            f"{st.evicted_bytes:,} bytes evicted from the journal"
        )
    return 0


def cmd_source_add(args: argparse.Namespace) -> int:
    cfg = load(args)
    raw: dict[str, Any] = {
        "name": args.name,
        "kind": args.kind,
        "path": str(Path(args.path).resolve()),
        "tier": args.tier,
        "exclude": args.exclude or [],
        "lineage": parse_labels(args.lineage),
    }
    cfg = cfg.with_source(make_source(raw, cfg.path.parent))
    save_config(cfg)
    out(f"source {args.name} ({args.kind}, {args.tier}) added: {raw['path']}")
    return 0


def cmd_source_remove(args: argparse.Namespace) -> int:
    cfg = load(args)
    save_config(cfg.without_source(args.name))
    out(f"source {args.name} removed (its checkpoints stay in the journal)")
    return 0


def cmd_source_list(args: argparse.Namespace) -> int:
    cfg = load(args)
    rows = [
        {"name": s.name, "kind": s.kind, "tier": s.tier, "path": str(s.path)} for s in cfg.sources
    ]
    if args.json:
        out(json.dumps(rows, indent=2))
    else:
        for r in rows:
            out(f"{r['name']:<16} {r['kind']:<7} {r['tier']:<5} {r['path']}")
    return 0


# --- checkpoints --------------------------------------------------------------------


def cmd_checkpoint(args: argparse.Namespace) -> int:
    cfg = load(args)
    labels = parse_labels(args.label)
    if not cfg.sources:
        raise ConfigError("no sources are configured", hint="add one with 'amber-agent source add'")

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt, rt.writing():
            bar = ProgressLine("checkpoint")
            res = await rt.checkpointer(bar).checkpoint(args.source, labels)
            bar.finish()
            return res

    res = asyncio.run(run())
    if args.json:
        s = res.stats
        out(
            json.dumps(
                {
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
            )
        )
    else:
        out(res.id.hex())
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    cfg = load(args)

    async def run() -> list[Any]:
        async with AgentRuntime.open(cfg) as rt, rt.hub(timeout=5) as link:
            if link is not None:
                try:
                    await adopt_from_hub(rt, link)
                except AmberError as exc:
                    sys.stderr.write(f"note: hub not consulted: {exc}\n")
            return await rt.journal.checkpoints()

    rows = asyncio.run(run())
    if args.json:
        out(
            json.dumps(
                [
                    {
                        "id": r.id.hex(),
                        "seq": r.seq,
                        "time_us": r.time_us,
                        "kind": r.kind,
                        "labels": r.labels,
                        "sources": r.sources,
                        "synced": r.synced,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time_us / 1e6))
        labels = " ".join(f"{k}={v}" for k, v in r.labels.items())
        out(
            f"{r.id.hex()[:16]}  seq {r.seq:<5} {when}  {r.kind:<7} {','.join(r.sources)}  {labels}"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args)

    async def run() -> dict[str, Any]:
        async with AgentRuntime.open(cfg) as rt:
            head = await rt.journal.head()
            backlog_bytes, backlog_chunks = await rt.journal.backlog()
            held = await rt.journal.held_bytes()
            manifests = {}
            if head is not None:
                data = await rt.journal.record(head.id)
                manifests = decode_checkpoint(data or b"", rt.ident.keys).manifests
            sources = []
            for s in cfg.sources:
                d = await source_drift(s, rt.journal)
                saved = await rt.journal.source_state(s.name)
                last_us = None
                if saved is not None and saved[0] in manifests.values():
                    last_us = scanned_us(saved[1]) or await _manifest_time(rt, saved[0])
                rpo = cfg.tiers[s.tier].rpo
                age_s = None if last_us is None else time.time() - last_us / 1e6
                sources.append(
                    {
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
                )
            return {
                "node": cfg.node,
                "vault": cfg.vault,
                "head": None
                if head is None
                else {"id": head.id.hex(), "seq": head.seq, "time_us": head.time_us},
                "backlog_bytes": backlog_bytes,
                "backlog_chunks": backlog_chunks,
                "journal_bytes": held,
                "journal_max_bytes": cfg.journal_max_bytes,
                "sources": sources,
            }

    st = asyncio.run(run())
    if args.json:
        out(json.dumps(st, indent=2))
        return 0
    head = st["head"]
    out(f"node {st['node']} (vault {st['vault']})")
    out(
        "last checkpoint: "
        + (f"{head['id'][:16]} seq {head['seq']}, {age(head['time_us'])} ago" if head else "none")
    )
    out(
        f"journal: {st['journal_bytes']:,} of {st['journal_max_bytes']:,} bytes; "
        f"backlog {st['backlog_chunks']} chunks, {st['backlog_bytes']:,} bytes not yet at the hub"
    )
    for s in st["sources"]:
        last = "never" if s["last_checkpoint_us"] is None else age(s["last_checkpoint_us"]) + " ago"
        flag = "RPO BREACHED" if s["rpo_breached"] else "ok"
        detail = (
            f"+{s['added']} -{s['removed']} ~{s['modified']}" if s["drift"] == "changed" else ""
        )
        out(
            f"  {s['name']:<16} {s['tier']:<5} last {last:<10} rpo {s['rpo_seconds']}s {flag:<13} "
            f"drift: {s['drift']} {detail}"
        )
    return 0


async def _manifest_time(rt: AgentRuntime, mid: bytes) -> int | None:
    from amber.protocol.records import manifest_public

    data = await rt.journal.record(mid)
    return None if data is None else int(manifest_public(data)["time_us"])


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = load(args)

    async def run() -> Any:
        # chunks evicted after sync, and checkpoints adopted from the hub, are checked
        # against the hub's copies when the node is enrolled
        async with AgentRuntime.open(cfg) as rt, rt.hub(timeout=5) as link:
            rows = await rt.journal.checkpoints()
            targets = [await rt.journal.resolve(args.id)] if args.id else rows
            bad = await rt.journal.integrity_check()
            if bad:
                from amber.protocol.errors import JournalError

                raise JournalError(f"journal integrity check failed: {bad[0]}")
            total = 0
            for row in targets:
                bar = ProgressLine(f"verify {row.id.hex()[:12]}")
                stats = await rt.restorer(bar, link).verify(row.id)
                bar.finish()
                total += stats.bytes
                out(
                    f"{row.id.hex()[:16]} seq {row.seq}: ok ({stats.files} files, "
                    f"{stats.chunks} chunks, {stats.bytes:,} bytes)"
                )
            return len(targets), total

    n, total = asyncio.run(run())
    out(
        f"verified {n} checkpoint(s), {total:,} bytes: "
        "every chunk authenticated and every digest matched"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    cfg = load(args)
    if bool(args.to) == bool(args.in_place):
        raise UsageError("give exactly one of --to DIR or --in-place")

    async def run() -> Any:
        async with AgentRuntime.open(cfg) as rt, rt.hub() as link:
            if link is not None:
                await adopt_from_hub(rt, link)
            row = await rt.journal.resolve(args.id)
            bar = ProgressLine("restore")
            restorer = rt.restorer(bar, link)
            async with rt.writing():
                if args.to:
                    stats = await restorer.restore_to(row.id, Path(args.to), args.source)
                    safety = None
                else:
                    safety, stats = await restore_in_place(
                        cfg, restorer, rt.checkpointer(), row.id, args.source
                    )
            bar.finish()
            return row, stats, safety

    row, stats, safety = asyncio.run(run())
    if safety is not None:
        out(f"safety checkpoint {safety.hex()} holds what was there before")
    where = args.to or "the sources' paths"
    out(
        f"restored checkpoint {row.id.hex()[:16]} (seq {row.seq}) to {where}: "
        f"{stats.files} files, {stats.bytes:,} bytes, verified"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from amber.agent.daemon import AgentDaemon  # its metrics exporter (prometheus_client) only here

    cfg = load(args)

    async def run() -> None:
        daemon = AgentDaemon(cfg)
        daemon.install_signals()
        await daemon.run()

    asyncio.run(run())
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    out(f"amber-agent {__version__}")
    return 0
