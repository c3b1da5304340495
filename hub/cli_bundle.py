"""`amber-hub bundle ...`: bundles for air-gapped sites (export, import, inspect, receipts).

They work on the hub's data directory (``--data``, and ``--config`` for a configured
store), beside a serving hub or without one. FILE may be ``-`` (stdin or stdout).
Exit codes: 0 ok; 10-14 a damaged, truncated or untrusted bundle, or one that would
fork the node's chain; 15 a bundle made for a node; 42 disk full; 44 unknown node,
checkpoint or source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from amber.bundlefile import BundleStream, open_input, render_summary, summarize
from amber.protocol.keys import SigningKey
from amber.secretfile import read_secret

from .bundle import (
    ExportRequest,
    HubData,
    export_bundle,
    import_bundle,
    list_receipts,
    open_hub_data,
)
from .catalog import Catalog
from .config import load_hub_config

T = TypeVar("T")
EPILOG = (
    "exit codes: 0 ok, 10-14 damaged, truncated or untrusted bundle or a forked chain, "
    "15 bundle made for a node, 42 disk full, 44 unknown node or checkpoint (docs/ERRORS.md)"
)


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _run(args: argparse.Namespace, work: Callable[[HubData], Awaitable[T]]) -> T:
    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)

    async def run() -> T:
        async with open_hub_data(cfg) as hd:
            return await work(hd)

    return asyncio.run(run())


def cmd_export(args: argparse.Namespace) -> int:
    req = ExportRequest(
        vault=args.vault,
        node=args.node,
        point=args.point,
        sources=_split(args.sources),
        all=args.all,
        restore_order=args.restore_order,
        health_cmd=args.health_cmd or "",
    )
    res = _run(args, lambda hd: export_bundle(hd, req, args.out))
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


def cmd_import(args: argparse.Namespace) -> int:
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


def cmd_inspect(args: argparse.Namespace) -> int:
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


def cmd_receipts(args: argparse.Namespace) -> int:
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
    bun = sub.add_parser(
        "bundle", help="bundles for air-gapped sites", epilog=EPILOG
    ).add_subparsers(dest="sub", required=True)
    s = bun.add_parser("export", help="a node's restore point(s) in a signed bundle", epilog=EPILOG)
    s.add_argument("--node", required=True)
    s.add_argument("--vault", required=True)
    s.add_argument(
        "--point",
        default="latest",
        help="latest | ID | label:key=value | at:TIMESTAMP (ISO or unix seconds)",
    )
    s.add_argument("--sources", help="only these sources' chunks: a,b")
    s.add_argument("--all", action="store_true", help="every checkpoint of the node")
    s.add_argument(
        "--restore-order",
        action="store_true",
        help="carry a signed order to restore the point (plan bundle-<id>, expires in 7 days)",
    )
    s.add_argument("--health-cmd", help="with --restore-order: run on the node after the swap")
    s.add_argument("--out", required=True, help="the bundle file, or - for stdout")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)
    s = bun.add_parser(
        "import", help="ingest a node's export, or a receipt, from a bundle", epilog=EPILOG
    )
    s.add_argument("file", help="the bundle file, or - for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_import)
    s = bun.add_parser("inspect", help="show what a bundle holds; checks its signature")
    s.add_argument("file", help="the bundle file, or - for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)
    s = bun.add_parser("receipts", help="the receipts nodes sent back, with their outcome")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_receipts)
