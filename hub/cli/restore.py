"""`amber-hub restore ...`: staged restores (plan, start, status, abort, list)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from amber.hub.cli.client import AdminClient
from amber.hub.plans import parse_waves
from amber.protocol.errors import UsageError


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.locate(args.hub, args.data, args.ca)


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def show_plan(plan: dict[str, Any]) -> None:
    out(f"plan {plan['id']}: {plan['state']}" + (f" ({plan['reason']})" if plan["reason"] else ""))
    for n in plan["nodes"]:
        progress = f" {n['done']}/{n['total']} chunks" if n["state"] == "fetching" else ""
        detail = f" - {n['detail']}" if n["detail"] else ""
        src = "" if n["source_node"] == n["node"] else f" from {n['source_node']}"
        out(
            f"  wave {n['wave']}  {n['vault']}/{n['node']:<16} checkpoint {n['checkpoint'][:16]} "
            f"(seq {n['seq']}{src})  {n['state']}{progress}{detail}"
        )


def cmd_plan(args: argparse.Namespace) -> int:
    if bool(args.nodes) == bool(args.selector):
        raise UsageError("give exactly one of --nodes or --selector")
    selector = dict(item.split("=", 1) for item in _split(args.selector))
    spec = {
        "vault": args.vault,
        "nodes": _split(args.nodes),
        "selector": selector,
        "point": args.point,
        "sources": _split(args.sources),
        "canary": args.canary,
        "waves": parse_waves(args.waves),
        "health_cmd": args.health_cmd or "",
        "to_node": args.to_node or "",
        "rollback_on_failure": not args.no_rollback,
    }
    plan = _client(args).call("POST", "/api/v1/restores", spec)
    if args.json:
        out(json.dumps(plan, indent=2))
    else:
        show_plan(plan)
        out(f"dry run: nothing moves until 'amber-hub restore start {plan['id']}'")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    plan = _client(args).call("POST", f"/api/v1/restores/{args.plan}/start")
    show_plan(plan)
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    plan = _client(args).call("POST", f"/api/v1/restores/{args.plan}/abort")
    show_plan(plan)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    while True:
        plan = client.call("GET", f"/api/v1/restores/{args.plan}")
        if not args.wait or (
            plan["state"] not in ("running", "draft")
            and all(
                n["state"] not in ("queued", "fetching", "verifying", "swapped")
                for n in plan["nodes"]
            )
        ):
            break
        time.sleep(0.5)
    if args.json:
        out(json.dumps(plan, indent=2))
    else:
        show_plan(plan)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    plans = _client(args).call("GET", "/api/v1/restores")
    if args.json:
        out(json.dumps(plans, indent=2))
        return 0
    for p in plans:
        states: dict[str, int] = {}
        for n in p["nodes"]:
            states[n["state"]] = states.get(n["state"], 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
        out(f"{p['id']}  {p['state']:<8} {len(p['nodes'])} node(s): {summary}")
    return 0


def add_commands(sub: Any) -> None:
    r = sub.add_parser("restore", help="staged restores across the fleet").add_subparsers(
        dest="sub", required=True
    )
    s = r.add_parser("plan", help="plan a restore (a dry run: prints who gets what)")
    s.add_argument("--vault", required=True)
    s.add_argument("--nodes", help="NAME,NAME,...")
    s.add_argument("--selector", help="key=value[,key=value]: nodes whose labels match")
    s.add_argument(
        "--point",
        default="latest",
        help="latest | ID | label:key=value | at:TIMESTAMP (ISO or unix seconds)",
    )
    s.add_argument("--sources", help="only these sources: a,b")
    s.add_argument("--canary", type=int, default=1, help="nodes in the canary wave (default 1)")
    s.add_argument(
        "--waves", default="100%", help="cumulative waves after the canary, e.g. 10%%,50%%,100%%"
    )
    s.add_argument("--health-cmd", help="command each node runs after swapping; non-zero fails")
    s.add_argument("--to-node", help="restore the one named node's checkpoint onto this node")
    s.add_argument(
        "--no-rollback",
        action="store_true",
        help="on failure, halt without rolling back the nodes already restored",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plan)
    for name, func, text in (
        ("start", cmd_start, "start a planned restore"),
        ("abort", cmd_abort, "halt a plan and roll its nodes back"),
    ):
        s = r.add_parser(name, help=text)
        s.add_argument("plan")
        s.set_defaults(func=func)
    s = r.add_parser("status", help="per wave, per node progress")
    s.add_argument("plan")
    s.add_argument("--wait", action="store_true", help="wait until no node is in progress")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = r.add_parser("list", help="all restore plans")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
