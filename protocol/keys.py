"""Key material: the vault key, its subkeys, its passphrase export, node signing keys.

Pure functions over bytes; writing key files (mode 0600) is the caller's job
(:mod:`amber.secretfile`). Byte layouts are in docs/FORMAT.md.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from amber.protocol.errors import FormatError, KeyFileError, SignatureError, UnknownVersionError

VAULT_KEY_MAGIC = b"AMBK"
VAULT_EXPORT_MAGIC = b"AMBE"
SIGNING_KEY_MAGIC = b"AMBS"
KEY_FILE_VERSION = 1
KEY_SIZE = 32
KEY_FILE_SIZE = 48  # magic 4, version 1, reserved 3, key 32, check 8
EXPORT_FILE_SIZE = 88
HKDF_SALT = b"amber/vault/v1"
SCRYPT_LOG2_N = 17
SCRYPT_MAX_LOG2_N = 20
SCRYPT_MAX_MEMORY = 1 << 30  # 128 * r * N bytes
KDF_SCRYPT = 1


def _check(prefix: bytes) -> bytes:
    return blake3.blake3(prefix).digest(8)


def _encode_key_file(magic: bytes, key: bytes) -> bytes:
    head = magic + bytes([KEY_FILE_VERSION, 0, 0, 0]) + key
    return head + _check(head)


def _decode_key_file(magic: bytes, data: bytes, what: str) -> bytes:
    if len(data) < 5 or data[:4] != magic:
        raise KeyFileError(f"not an Amber {what} file (bad magic)")
    if data[4] != KEY_FILE_VERSION:
        raise UnknownVersionError(f"{what} file version {data[4]} is not supported")
    if len(data) != KEY_FILE_SIZE:
        raise KeyFileError(f"{what} file has {len(data)} bytes, expected {KEY_FILE_SIZE}")
    if data[5:8] != b"\0\0\0" or not hmac.compare_digest(_check(data[:40]), data[40:]):
        raise KeyFileError(f"{what} file is damaged (checksum mismatch)")
    return data[8:40]


@dataclass(frozen=True, repr=False)
class VaultKeys:
    """The vault key and the independent subkeys HKDF-SHA256 derives from it."""

    master: bytes
    chunk_id: bytes
    chunk_enc: bytes
    chunk_nonce: bytes
    meta_enc: bytes
    meta_nonce: bytes
    fingerprint: str

    def __repr__(self) -> str:  # never print key bytes
        return f"VaultKeys(fingerprint={self.fingerprint})"

    @classmethod
    def from_master(cls, master: bytes) -> VaultKeys:
        if len(master) != KEY_SIZE:
            raise KeyFileError(f"a vault key has {KEY_SIZE} bytes, got {len(master)}")
        return cls(
            master=master,
            chunk_id=derive_subkey(master, b"chunk-id"),
            chunk_enc=derive_subkey(master, b"chunk-enc"),
            chunk_nonce=derive_subkey(master, b"chunk-nonce"),
            meta_enc=derive_subkey(master, b"meta-enc"),
            meta_nonce=derive_subkey(master, b"meta-nonce"),
            fingerprint=format_fingerprint(derive_subkey(master, b"fingerprint")[:8]),
        )

    @classmethod
    def generate(cls) -> VaultKeys:
        return cls.from_master(os.urandom(KEY_SIZE))

    def to_file_bytes(self) -> bytes:
        return encode_vault_key(self.master)

    @classmethod
    def from_file_bytes(cls, data: bytes) -> VaultKeys:
        return cls.from_master(decode_vault_key(data))


def derive_subkey(master: bytes, label: bytes) -> bytes:
    """HKDF-SHA256(master, salt="amber/vault/v1", info=label), 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=HKDF_SALT, info=label).derive(
        master
    )


def format_fingerprint(raw: bytes) -> str:
    h = raw.hex()
    return "-".join(h[i : i + 4] for i in range(0, len(h), 4))


def encode_vault_key(master: bytes) -> bytes:
    if len(master) != KEY_SIZE:
        raise KeyFileError(f"a vault key has {KEY_SIZE} bytes, got {len(master)}")
    return _encode_key_file(VAULT_KEY_MAGIC, master)


def decode_vault_key(data: bytes) -> bytes:
    return _decode_key_file(VAULT_KEY_MAGIC, data, "vault key")


# --- passphrase-protected export -------------------------------------------------


def _check_scrypt(log2_n: int, r: int, p: int) -> None:
    ok = 10 <= log2_n <= SCRYPT_MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16
    if not ok or 128 * r * (1 << log2_n) > SCRYPT_MAX_MEMORY:
        raise KeyFileError(
            f"scrypt parameters log2(N)={log2_n}, r={r}, p={p} are out of range "
            f"(log2(N) 10..{SCRYPT_MAX_LOG2_N}, r 1..32, p 1..16, at most 1 GiB of memory)"
        )


def _scrypt(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    try:
        secret = passphrase.encode("utf-8")
    except UnicodeEncodeError:
        raise KeyFileError("the passphrase is not valid text (UTF-8)") from None
    return Scrypt(salt=salt, length=KEY_SIZE, n=1 << log2_n, r=r, p=p).derive(secret)


def export_vault_key(
    master: bytes, passphrase: str, *, log2_n: int = SCRYPT_LOG2_N, r: int = 8, p: int = 1
) -> bytes:
    """Encrypt the vault key under a passphrase (scrypt + AES-256-GCM)."""
    if not passphrase:
        raise KeyFileError("an empty passphrase cannot protect a vault key")
    _check_scrypt(log2_n, r, p)
    salt, nonce = os.urandom(16), os.urandom(12)
    head = VAULT_EXPORT_MAGIC + struct.pack(
        ">BBBBB3s", KEY_FILE_VERSION, KDF_SCRYPT, log2_n, r, p, b""
    )
    head += salt + nonce
    kek = _scrypt(passphrase, salt, log2_n, r, p)
    return head + AESGCM(kek).encrypt(nonce, master, head)


def import_vault_key(data: bytes, passphrase: str) -> bytes:
    """Decrypt an export made by :func:`export_vault_key`; returns the 32-byte key."""
    if len(data) < 5 or data[:4] != VAULT_EXPORT_MAGIC:
        raise KeyFileError("not an Amber vault key export (bad magic)")
    if data[4] != KEY_FILE_VERSION:
        raise UnknownVersionError(f"vault key export version {data[4]} is not supported")
    if len(data) != EXPORT_FILE_SIZE:
        raise KeyFileError(f"vault key export has {len(data)} bytes, expected {EXPORT_FILE_SIZE}")
    _, kdf, log2_n, r, p, reserved = struct.unpack(">BBBBB3s", data[4:12])
    if kdf != KDF_SCRYPT or reserved != b"\0\0\0":
        raise KeyFileError(f"vault key export uses unknown key derivation {kdf}")
    _check_scrypt(log2_n, r, p)
    salt, nonce = data[12:28], data[28:40]
    kek = _scrypt(passphrase, salt, log2_n, r, p)
    try:
        return AESGCM(kek).decrypt(nonce, data[40:], data[:40])
    except InvalidTag:
        raise KeyFileError(
            "wrong passphrase, or the vault key export is damaged",
            hint="retype the passphrase; if it is right, use another copy of the export",
        ) from None


# --- node signing keys ------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SigningKey:
    """A node's (or hub's) Ed25519 signing key."""

    seed: bytes

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}…)"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(KEY_SIZE))

    @property
    def public(self) -> bytes:
        return _private(self.seed).public_key().public_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        return _private(self.seed).sign(data)

    def to_file_bytes(self) -> bytes:
        return _encode_key_file(SIGNING_KEY_MAGIC, self.seed)

    @classmethod
    def from_file_bytes(cls, data: bytes) -> SigningKey:
        return cls(_decode_key_file(SIGNING_KEY_MAGIC, data, "signing key"))


def _private(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def verify_signature(public: bytes, signature: bytes, data: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``public``'s over ``data``."""
    if len(public) != 32 or len(signature) != 64:
        raise SignatureError("malformed Ed25519 public key or signature")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify") from None


def parse_public_key(text: str) -> bytes:
    """A public key as written in configuration: 64 hex digits."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise FormatError(f"public key {text!r} is not hex") from None
    if len(raw) != 32:
        raise FormatError(f"public key has {len(raw)} bytes, expected 32")
    return raw
