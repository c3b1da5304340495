"""`amber-agent init` and `amber-agent enroll`: set a node up and connect it to a hub."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from amber import cli
from amber.agent.config import AgentConfig, config_path, load_config, parse_config, save_config
from amber.agent.enrolment import install_enrolment
from amber.agent.identity import read_vault_key_input, register_key_secrets
from amber.agent.journal import Journal
from amber.agent.remote import adopt_from_hub
from amber.agent.runtime import AgentRuntime
from amber.protocol.errors import ConfigError, FormatError, UsageError
from amber.protocol.keys import SigningKey, VaultKeys, parse_public_key
from amber.secretfile import write_secret


def run_init(args: argparse.Namespace) -> int:
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
        hub=_hub_key_option(args.hub_key),
    )
    # validate names the same way load does
    parse_config({"agent": {"node": args.node, "vault": args.vault, "state_dir": "."}}, cfg.path)
    write_secret(cfg.vault_key_file, keys.to_file_bytes())
    signer = SigningKey.generate()
    register_key_secrets(keys, signer)
    write_secret(cfg.signing_key_file, signer.to_file_bytes())
    save_config(cfg)
    asyncio.run(_create_journal(cfg, keys))
    if args.enroll:
        install_enrolment(Path(args.enroll), state, cfg.vault, cfg.node)
        cli.out(f"enrolled with the hub ({_adopt_now(cfg)})")
    cli.out(f"initialised node {cfg.node} in vault {cfg.vault}")
    cli.out(f"config: {cfg.path}")
    cli.out(f"vault key fingerprint: {keys.fingerprint}")
    cli.out(f"node public key: {signer.public.hex()}")
    return 0


def _hub_key_option(text: str | None) -> dict[str, str]:
    """``--hub-key HEX``: the hub key an air-gapped node trusts, as [hub] key."""
    if text is None:
        return {}
    try:
        return {"key": parse_public_key(text).hex()}
    except FormatError as exc:
        raise UsageError(f"--hub-key: {exc}", hint="give the 64 hex digits of the key") from None


async def _create_journal(cfg: AgentConfig, keys: VaultKeys) -> None:
    journal = await Journal.open(
        cfg.journal_path, keys, vault=cfg.vault, node=cfg.node, create=True
    )
    await journal.close()


def _adopt_now(cfg: AgentConfig) -> str:
    """Learn the checkpoints the hub already holds for this node, if it answers."""

    async def run() -> str:
        async with AgentRuntime.open(cfg) as rt, rt.hub(timeout=5) as link:
            if link is None:
                return "hub unreachable now; the node works offline and syncs later"
            n = await adopt_from_hub(rt, link)
            return f"{n} checkpoint(s) already at the hub"

    return asyncio.run(run())


def run_enroll(args: argparse.Namespace) -> int:
    cfg = load_config(config_path(args.config))
    install_enrolment(Path(args.file), cfg.state_dir, cfg.vault, cfg.node)
    cli.out(f"enrolled {cfg.vault}/{cfg.node} with the hub ({_adopt_now(cfg)})")
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("init", help="set up a node: config, journal, keys")
    s.add_argument("--dir", required=True, type=cli.PATH, help="state directory (config, keys)")
    s.add_argument("--node", required=True, type=cli.NAME)
    s.add_argument("--vault", required=True, type=cli.NAME)
    s.add_argument(
        "--vault-key", type=cli.PATH, help="existing vault key file or passphrase export"
    )
    s.add_argument(
        "--enroll", metavar="FILE", type=cli.PATH, help="enrolment file from 'amber-hub node add'"
    )
    s.add_argument(
        "--hub-key",
        type=cli.TEXT,
        help="the hub's public key (64 hex digits), for a node that is never enrolled: "
        "bundles it signs are trusted",
    )
    s.set_defaults(func=run_init)

    s = sub.add_parser("enroll", help="connect this node to a hub with its enrolment file")
    s.add_argument("file", type=cli.PATH)
    s.set_defaults(func=run_enroll)
