"""`amber-agent source add|remove|list`: what the node protects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from amber import cli
from amber.agent.config import config_path, load_config, make_source, save_config

KINDS = ("sqlite", "files", "model", "jsonl", "state")
TIERS = ("hot", "warm", "cold")


def run_source_add(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    raw: dict[str, Any] = {
        "name": args.name,
        "kind": args.kind,
        "path": str(Path(args.path).resolve()),
        "tier": args.tier,
        "exclude": args.exclude or [],
        "lineage": cli.merge(args.lineage),
    }
    cfg = cfg.with_source(make_source(raw, cfg.path.parent))
    save_config(cfg)
    cli.out(f"source {args.name} ({args.kind}, {args.tier}) added: {raw['path']}")
    return 0


def run_source_remove(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    save_config(cfg.without_source(args.name))
    cli.out(f"source {args.name} removed (its checkpoints stay in the journal)")
    return 0


def run_source_list(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    rows = [
        {"name": s.name, "kind": s.kind, "tier": s.tier, "path": str(s.path)} for s in cfg.sources
    ]
    if args.json:
        cli.out(json.dumps(rows, indent=2))
    else:
        for r in rows:
            cli.out(f"{r['name']:<16} {r['kind']:<7} {r['tier']:<5} {r['path']}")
    return 0


def add_commands(sub: Any) -> None:
    src = sub.add_parser("source", help="manage sources").add_subparsers(dest="sub", required=True)
    s = src.add_parser("add", help="protect a path")
    s.add_argument("name", type=cli.TEXT)
    s.add_argument("--kind", required=True, choices=KINDS)
    s.add_argument("--path", required=True, type=cli.PATH)
    s.add_argument("--tier", default="warm", choices=TIERS)
    s.add_argument(
        "--exclude", action="append", type=cli.TEXT, help="glob relative to the path (repeatable)"
    )
    s.add_argument(
        "--lineage",
        action="append",
        type=cli.KEY_VALUE,
        metavar="KEY=VALUE",
        help="lineage label recorded in every manifest (repeatable)",
    )
    s.set_defaults(func=run_source_add)
    s = src.add_parser("remove", help="stop protecting a source")
    s.add_argument("name", type=cli.TEXT)
    s.set_defaults(func=run_source_remove)
    s = src.add_parser("list", help="list sources")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_source_list)
