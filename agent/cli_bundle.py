"""`amber-agent bundle ...`: air-gapped transfer (import, export, inspect).

    import FILE [--receipt OUT] [--hub-key HEX]   verify a hub's bundle, add its
        checkpoints to the journal, run the restore order it carries, write a receipt
    export (--since ID | --all) --out FILE         checkpoints for a hub out of reach
    inspect FILE                                   what a bundle holds; no vault key needed

FILE and OUT may be ``-`` (stdin, stdout). Exit codes: 0 ok; 10-13 a damaged, truncated
or untrusted bundle; 15 a bundle for another vault or node; 42 disk full; 70 the carried
restore failed (the node stays on its previous state); 71 the order was run before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from amber.bundlefile import BundleStream, open_input, render_summary, summarize
from amber.protocol.errors import AmberError, RestoreError
from amber.protocol.keys import SigningKey
from amber.secretfile import read_secret

from .bundle import (
    ImportState,
    export_bundle,
    import_bundle,
    make_receipt,
    trusted_hub_keys,
    write_receipt,
)
from .config import config_path, load_config
from .runtime import AgentRuntime

EPILOG = (
    "exit codes: 0 ok, 10-13 damaged, truncated or untrusted bundle, 15 bundle for another "
    "vault or node, 42 disk full, 70 restore failed, 71 order already run (docs/ERRORS.md)"
)


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_import(args: argparse.Namespace) -> int:
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
        "added": len(st.accepted),
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


def cmd_export(args: argparse.Namespace) -> int:
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


def cmd_inspect(args: argparse.Namespace) -> int:
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
        "bundle", help="air-gapped transfer: import, export and inspect bundle files", epilog=EPILOG
    ).add_subparsers(dest="sub", required=True)
    s = bun.add_parser(
        "import",
        help="verify a hub's bundle, add its checkpoints, run the restore order it carries",
        epilog=EPILOG,
    )
    s.add_argument("file", help="the bundle file, or - for stdin")
    s.add_argument("--receipt", metavar="OUT", help="write a receipt bundle (also on failure)")
    s.add_argument(
        "--hub-key",
        metavar="HEX",
        help="the hub's public key (default: [hub] key in agent.toml, else the enrolment's)",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_import)
    s = bun.add_parser("export", help="write checkpoints for the hub into a bundle", epilog=EPILOG)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--since", metavar="ID", help="the checkpoints after this one")
    which.add_argument("--all", action="store_true", help="every checkpoint in the journal")
    s.add_argument("--out", required=True, help="the bundle file, or - for stdout")
    s.set_defaults(func=cmd_export)
    s = bun.add_parser("inspect", help="show what a bundle holds; checks its signature")
    s.add_argument("file", help="the bundle file, or - for stdin")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)
