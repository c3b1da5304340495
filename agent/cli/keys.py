"""`amber-agent keygen` and `amber-agent key-export`: vault keys for several nodes."""

from __future__ import annotations

import argparse
import os
from getpass import getpass
from typing import Any

from amber import cli
from amber.agent.config import config_path, load_config
from amber.agent.identity import PASSPHRASE_ENV
from amber.protocol.errors import UsageError
from amber.protocol.keys import VaultKeys, export_vault_key
from amber.secretfile import read_secret, write_secret


def run_keygen(args: argparse.Namespace) -> int:
    keys = VaultKeys.generate()
    write_secret(args.out, keys.to_file_bytes())
    cli.out(
        f"vault key written to {args.out} (fingerprint {keys.fingerprint}); keep a copy offline"
    )
    return 0


def run_key_export(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    keys = VaultKeys.from_file_bytes(read_secret(cfg.vault_key_file, what="vault key"))
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        passphrase = getpass("passphrase for the export: ")
        if getpass("repeat it: ") != passphrase:
            raise UsageError("the passphrases differ")
    write_secret(args.out, export_vault_key(keys.master, passphrase))
    cli.out(f"passphrase-protected vault key written to {args.out} ({keys.fingerprint})")
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("keygen", help="write a new vault key to hand to several nodes")
    s.add_argument("--out", required=True, type=cli.PATH)
    s.set_defaults(func=run_keygen)

    s = sub.add_parser("key-export", help="write this vault key protected by a passphrase")
    s.add_argument("--out", required=True, type=cli.PATH)
    s.set_defaults(func=run_key_export)
