"""`amber-hub`: serve the hub, and the admin commands that talk to it.

Exit codes: 0 success; 2 usage; others are the error classes' stable codes
(docs/ERRORS.md). Admin commands find the hub through --data DIR on its machine,
elsewhere through --hub URL and $AMBER_HUB_TOKEN.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amber import __version__, logs, sdnotify
from amber.hub.catalog import Catalog
from amber.hub.cli.bundle import add_commands as add_bundle_commands
from amber.hub.cli.client import AdminClient
from amber.hub.cli.restore import add_commands as add_restore_commands
from amber.hub.config import load_hub_config
from amber.hub.rebuild import rebuild_catalog
from amber.hub.server import Hub
from amber.hub.store.base import open_store
from amber.protocol.errors import AmberError
from amber.secretfile import write_secret


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)
    if args.nats_listen:
        cfg.nats_listen = args.nats_listen
    if args.admin_listen:
        cfg.admin_listen = args.admin_listen
    if args.metrics_listen:
        cfg.metrics_listen = args.metrics_listen
    if args.store:
        cfg.store_url = args.store

    async def run() -> None:
        async with Hub(cfg) as hub:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, sdnotify.stopping_then(hub.stopping.set))
            out(f"amber-hub {__version__} serving: nats {hub.nats_url}, admin {hub.admin_url}")
            sys.stdout.flush()
            watchdog = sdnotify.ready(f"serving: nats {hub.nats_url}, admin {hub.admin_url}")
            try:
                await hub.wait_closed()
            finally:
                watchdog.cancel()

    asyncio.run(run())
    return 0


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.locate(args.hub, args.data, args.ca)


def cmd_node_add(args: argparse.Namespace) -> int:
    labels = dict(item.split("=", 1) for item in args.label or [])
    enrolment = _client(args).call(
        "POST", "/api/v1/nodes", {"vault": args.vault, "node": args.name, "labels": labels}
    )
    logs.register_secret(enrolment.get("password"))
    write_secret(args.out, json.dumps(enrolment, indent=2).encode())
    out(f"enrolled {args.vault}/{args.name}; enrolment written to {args.out} (keep it secret)")
    return 0


def cmd_node_rotate(args: argparse.Namespace) -> int:
    enrolment = _client(args).call("POST", f"/api/v1/nodes/{args.vault}/{args.name}/rotate")
    logs.register_secret(enrolment.get("password"))
    write_secret(args.out, json.dumps(enrolment, indent=2).encode(), overwrite=True)
    out(
        f"new credentials for {args.vault}/{args.name} in {args.out}; the old ones no longer "
        "work: run 'amber-agent enroll FILE' on the node"
    )
    return 0


def _age(us: int | None) -> str:
    if us is None:
        return "never"
    secs = int(time.time() - us / 1e6)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit} ago"
    return f"{secs}s ago"


def cmd_nodes(args: argparse.Namespace) -> int:
    rows = _client(args).call("GET", "/api/v1/nodes")
    if args.json:
        out(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        out(f"{r['vault']}/{r['node']:<20} last seen {_age(r['last_seen_us'])}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    query = "?" + "&".join(f"{k}={v}" for k, v in (("node", args.node), ("vault", args.vault)) if v)
    rows = _client(args).call("GET", "/api/v1/checkpoints" + (query if len(query) > 1 else ""))
    if args.json:
        out(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        labels = " ".join(f"{k}={v}" for k, v in r["labels"].items())
        out(
            f"{r['id'][:16]}  {r['vault']}/{r['node']} seq {r['seq']:<5} {_age(r['time_us']):<10} "
            f"{r['kind']:<7} {','.join(r['sources'])} {labels}"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = _client(args).call("GET", "/api/v1/status")
    if args.json:
        out(json.dumps(st, indent=2))
        return 0
    out(f"objects: {st['objects']} ({st['stored_bytes']:,} bytes)")
    for n in st["nodes"]:
        rpo = n["rpo_seconds"]
        flag = "RPO BREACHED" if n["rpo_breached"] else "ok"
        backlog = "?" if n["backlog_bytes"] is None else f"{n['backlog_bytes']:,} bytes"
        out(
            f"  {n['vault']}/{n['node']:<16} last checkpoint {_age(n['last_checkpoint_us']):<10} "
            f"rpo {rpo or '?'}s {flag:<13} backlog on node {backlog}"
        )
    return 0


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)

    async def run() -> dict[str, Any]:
        catalog = await Catalog.open(cfg.catalog_path)
        store = open_store(cfg.store())
        try:
            return await rebuild_catalog(store, catalog)
        finally:
            await store.close()
            await catalog.close()

    counts = asyncio.run(run())
    out("catalog rebuilt from the store: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amber-hub",
        description="Amber hub and its admin commands",
        epilog="exit codes: 0 ok, 2 usage, 3 config, 44 not found, 50 hub unreachable "
        "(all: docs/ERRORS.md)",
    )
    p.add_argument("--version", action="version", version=f"amber-hub {__version__}")
    p.add_argument("--config", help="hub.toml (optional: defaults make a hub in a box)")
    p.add_argument("--data", help="hub data directory (default ./amber-hub-data)")
    p.add_argument("--hub", help="admin API URL when not on the hub's machine")
    p.add_argument(
        "--ca", help="the hub's CA certificate (DATA/tls/ca.pem; default: found via --data)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    logs.add_arguments(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the hub")
    s.add_argument("--nats-listen", help="host:port for the embedded nats-server (0 = free)")
    s.add_argument("--admin-listen", help="host:port for the admin API")
    s.add_argument(
        "--metrics-listen", help="host:port for Prometheus metrics at /metrics (0 = free port)"
    )
    s.add_argument("--store", help="store URL: file:///dir or s3://bucket/prefix?endpoint=...")
    s.set_defaults(func=cmd_serve)

    node = sub.add_parser("node", help="enrol nodes").add_subparsers(dest="sub", required=True)
    s = node.add_parser("add", help="enrol a node and write its enrolment file")
    s.add_argument("name")
    s.add_argument("--vault", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--label", action="append", metavar="KEY=VALUE")
    s.set_defaults(func=cmd_node_add)
    s = node.add_parser("rotate", help="replace a node's NATS credentials (e.g. after a theft)")
    s.add_argument("name")
    s.add_argument("--vault", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_node_rotate)

    for name, func, helptext in (
        ("nodes", cmd_nodes, "list enrolled nodes"),
        ("status", cmd_status, "per node: checkpoint age vs RPO"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=func)
    s = sub.add_parser("checkpoints", help="list checkpoints held by the hub")
    s.add_argument("--node")
    s.add_argument("--vault")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_checkpoints)

    cat = sub.add_parser("catalog", help="catalog maintenance").add_subparsers(
        dest="sub", required=True
    )
    s = cat.add_parser("rebuild", help="recreate the catalog from the store (hub stopped)")
    s.set_defaults(func=cmd_catalog_rebuild)
    add_restore_commands(sub)
    add_bundle_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(logs.parse_format(args.log_format), logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except AmberError as exc:
        sys.stderr.write(exc.render() + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
