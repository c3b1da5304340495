"""Who this node is: its vault keys and its signing key, loaded from key files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from getpass import getpass
from pathlib import Path

from amber.agent.config import AgentConfig
from amber.logs import register_secret
from amber.protocol.errors import KeyFileError
from amber.protocol.keys import (
    VAULT_EXPORT_MAGIC,
    SigningKey,
    VaultKeys,
    decode_vault_key,
    import_vault_key,
)
from amber.secretfile import read_secret

PASSPHRASE_ENV = "AMBER_VAULT_PASSPHRASE"


@dataclass(frozen=True)
class NodeIdentity:
    vault: str
    node: str
    keys: VaultKeys
    signer: SigningKey


def load_identity(cfg: AgentConfig) -> NodeIdentity:
    keys = VaultKeys.from_file_bytes(read_secret(cfg.vault_key_file, what="vault key"))
    signer = SigningKey.from_file_bytes(read_secret(cfg.signing_key_file, what="signing key"))
    register_key_secrets(keys, signer)
    return NodeIdentity(cfg.vault, cfg.node, keys, signer)


def register_key_secrets(keys: VaultKeys | None, signer: SigningKey | None = None) -> None:
    """Keep the vault key, its subkeys and the signing seed out of every log line."""
    if keys is not None:
        register_secret(keys.master, keys.chunk_id, keys.chunk_enc, keys.meta_enc, keys.meta_nonce)
    if signer is not None:
        register_secret(signer.seed)


def read_vault_key_input(path: Path) -> bytes:
    """A vault key handed to ``init --vault-key``: a key file or a passphrase export."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read vault key {path}: {exc.strerror}") from None
    if data[:4] == VAULT_EXPORT_MAGIC:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase is None:
            passphrase = getpass(f"passphrase for {path}: ")
        register_secret(passphrase)
        master = import_vault_key(data, passphrase)
    else:
        master = decode_vault_key(data)
    register_secret(master)
    return master
