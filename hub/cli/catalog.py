"""`amber-hub checkpoints` and `amber-hub catalog rebuild`: what the hub holds."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from amber import cli
from amber.hub.catalog import Catalog
from amber.hub.cli.client import AdminClient, query
from amber.hub.config import load_hub_config
from amber.hub.rebuild import rebuild_catalog
from amber.hub.store.base import open_store
from amber.protocol.errors import ConfigError


def run_checkpoints(args: argparse.Namespace) -> int:
    path = "/api/v1/checkpoints" + query(node=args.node, vault=args.vault)
    rows = AdminClient.from_args(args).call("GET", path)
    if args.json:
        cli.out(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        labels = " ".join(f"{k}={v}" for k, v in r["labels"].items())
        cli.out(
            f"{r['id'][:16]}  {r['vault']}/{r['node']} seq {r['seq']:<5} "
            f"{cli.ago(r['time_us']):<10} {r['kind']:<7} {','.join(r['sources'])} {labels}"
        )
    return 0


def run_catalog_rebuild(args: argparse.Namespace) -> int:
    cfg = load_hub_config(Path(args.config) if args.config else None, args.data)
    if cfg.store_url is None and not (cfg.data_dir / "objects").is_dir():
        raise ConfigError(
            f"no hub data in {cfg.data_dir}: no local store to rebuild the catalog from",
            hint="pass the hub's data directory with --data (and its --config for S3)",
        )
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def run() -> dict[str, Any]:
        catalog = await Catalog.open(cfg.catalog_path)
        store = open_store(cfg.store())
        try:
            return await rebuild_catalog(store, catalog)
        finally:
            await store.close()
            await catalog.close()

    counts = asyncio.run(run())
    cli.out("catalog rebuilt from the store: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("checkpoints", help="list checkpoints held by the hub")
    s.add_argument("--node", type=cli.NAME, help="only this node's")
    s.add_argument("--vault", type=cli.NAME, help="only this vault's")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_checkpoints)

    cat = sub.add_parser("catalog", help="catalog maintenance").add_subparsers(
        dest="sub", required=True
    )
    s = cat.add_parser("rebuild", help="recreate the catalog from the store (hub stopped)")
    s.set_defaults(func=run_catalog_rebuild)
