"""`amber-hub`: the parser; each command group is one module beside it (serve.py,
nodes.py, catalog.py, restore.py, bundle.py), with its options and a plain ``run_*``
function that tests may call directly.

Admin commands find the hub through ``--data DIR`` on its machine, elsewhere through
``--hub URL`` and ``$AMBER_HUB_TOKEN``. The global options (``--config``, ``--data``,
``--hub``, ``-v``, ``--log-format``) go before or after the command. Exit codes come
from the error table (``amber-hub --help``, docs/ERRORS.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from amber import __version__, cli
from amber.hub.cli import bundle, catalog, nodes, restore, serve

GROUPS = (serve, nodes, catalog, restore, bundle)


def add_global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--config",
        type=cli.PATH,
        default=default,
        help="hub.toml (optional: defaults make a hub in a box)",
    )
    p.add_argument(
        "--data",
        type=cli.PATH,
        default=default,
        help="hub data directory (default ./amber-hub-data)",
    )
    p.add_argument(
        "--hub",
        type=cli.HTTP_URL,
        default=default,
        help="admin API URL when not on the hub's machine",
    )
    p.add_argument(
        "--ca",
        type=cli.PATH,
        default=default,
        help="the hub's CA certificate (DATA/tls/ca.pem; default: found via --data)",
    )
    cli.add_logging_options(p, suppress=suppress)


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="amber-hub",
        description="Amber hub and its admin commands",
        epilog=cli.exit_codes_help(),
    )
    p.add_argument("--version", action="version", version=f"amber-hub {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    cli.share_options(p, add_global_options)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), argv)
