"""`amber-hub node add|rotate|replace`, `amber-hub nodes` and `amber-hub status`: the fleet."""

from __future__ import annotations

import argparse
import json
from typing import Any

from amber import cli, logs
from amber.hub.cli.client import AdminClient, quote
from amber.hub.cli.vaults import vault_from_hub
from amber.secretfile import write_secret

VAULT_HELP = "the node's vault (default: the hub's only vault)"


def _enrolment(args: argparse.Namespace, path: str | None, *, overwrite: bool) -> str:
    """Ask the hub for an enrolment (``POST /api/v1/nodes`` when ``path`` is None, else
    ``POST /api/v1/nodes/VAULT/NAME/<path>``), write it 0600 to ``--out``; the vault."""
    client = AdminClient.from_args(args)
    vault = vault_from_hub(args.vault, client)
    if path is None:
        body = {"vault": vault, "node": args.name, "labels": cli.merge(args.label)}
        enrolment = client.call("POST", "/api/v1/nodes", body)
    else:
        enrolment = client.call("POST", f"/api/v1/nodes/{quote(vault)}/{quote(args.name)}/{path}")
    logs.register_secret(enrolment.get("password"))
    write_secret(args.out, json.dumps(enrolment, indent=2).encode(), overwrite=overwrite)
    return vault


def run_node_add(args: argparse.Namespace) -> int:
    vault = _enrolment(args, None, overwrite=False)
    cli.out(f"enrolled {vault}/{args.name}; enrolment written to {args.out} (keep it secret)")
    return 0


def run_node_rotate(args: argparse.Namespace) -> int:
    vault = _enrolment(args, "rotate", overwrite=True)
    cli.out(
        f"new credentials for {vault}/{args.name} in {args.out}; the old ones no longer "
        "work: run 'amber-agent enroll FILE' on the node"
    )
    return 0


def run_node_replace(args: argparse.Namespace) -> int:
    vault = _enrolment(args, "replace", overwrite=True)
    cli.out(
        f"{vault}/{args.name} may now get a new device: its enrolment is in {args.out}. "
        "The old credentials no longer work and the old signing key is refused; the key "
        "of the first device to sign with the new enrolment is pinned"
    )
    return 0


def run_nodes(args: argparse.Namespace) -> int:
    rows = AdminClient.from_args(args).call("GET", "/api/v1/nodes")
    if args.json:
        cli.out(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        cli.out(f"{r['vault']}/{r['node']:<20} last seen {cli.ago(r['last_seen_us'])}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    st = AdminClient.from_args(args).call("GET", "/api/v1/status")
    if args.json:
        cli.out(json.dumps(st, indent=2))
        return 0
    cli.out(f"objects: {st['objects']} ({st['stored_bytes']:,} bytes)")
    for n in st["nodes"]:
        rpo = n["rpo_seconds"]
        flag = "RPO BREACHED" if n["rpo_breached"] else "ok"
        backlog = "?" if n["backlog_bytes"] is None else f"{n['backlog_bytes']:,} bytes"
        cli.out(
            f"  {n['vault']}/{n['node']:<16} "
            f"last checkpoint {cli.ago(n['last_checkpoint_us']):<10} "
            f"rpo {rpo or '?'}s {flag:<13} backlog on node {backlog}"
        )
    return 0


def add_commands(sub: Any) -> None:
    node = sub.add_parser("node", help="enrol nodes").add_subparsers(dest="sub", required=True)
    s = node.add_parser("add", help="enrol a node and write its enrolment file")
    s.add_argument("name", type=cli.NAME)
    s.add_argument("--vault", type=cli.NAME, help=VAULT_HELP)
    s.add_argument("--out", required=True, type=cli.PATH)
    s.add_argument("--label", action="append", type=cli.KEY_VALUE, metavar="KEY=VALUE")
    s.set_defaults(func=run_node_add)
    s = node.add_parser("rotate", help="replace a node's NATS credentials (e.g. after a theft)")
    s.add_argument("name", type=cli.NAME)
    s.add_argument("--vault", type=cli.NAME, help=VAULT_HELP)
    s.add_argument("--out", required=True, type=cli.PATH)
    s.set_defaults(func=run_node_rotate)
    s = node.add_parser(
        "replace", help="a node's new hardware: new enrolment, its old signing key retired"
    )
    s.add_argument("name", type=cli.NAME)
    s.add_argument("--vault", type=cli.NAME, help=VAULT_HELP)
    s.add_argument("--out", required=True, type=cli.PATH)
    s.set_defaults(func=run_node_replace)

    for name, func, helptext in (
        ("nodes", run_nodes, "list enrolled nodes"),
        ("status", run_status, "per node: checkpoint age vs RPO"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=func)
