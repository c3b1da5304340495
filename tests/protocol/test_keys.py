"""Key files (AMBK, AMBS), the passphrase export (AMBE), subkeys and signatures."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.protocol import keys
from amber.protocol.errors import (
    AmberError,
    FormatError,
    KeyFileError,
    SignatureError,
    UnknownVersionError,
)
from tests.support.checks import flip, raises

MASTER = bytes(range(32))
SEED = bytes(range(100, 132))
PASSPHRASE = "tr0ub4dor&3"
FAST = {"log2_n": 10}  # scrypt in tests: N = 1024

key32 = st.binary(min_size=32, max_size=32)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 written out, to pin the labels independently of the library."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


# --- vault key file (AMBK) and signing key file (AMBS) ---------------------------------

KEY_FILES = [
    pytest.param(keys.encode_vault_key, keys.decode_vault_key, b"AMBK", id="vault"),
    pytest.param(
        lambda k: keys.SigningKey(k).to_file_bytes(),
        lambda d: keys.SigningKey.from_file_bytes(d).seed,
        b"AMBS",
        id="signing",
    ),
]


@pytest.mark.parametrize(("encode", "decode", "magic"), KEY_FILES)
@settings(max_examples=30, deadline=None)
@given(key=key32)
def test_key_file_round_trip_and_layout(encode, decode, magic, key) -> None:
    data = encode(key)
    assert data == encode(key)  # deterministic
    assert len(data) == keys.KEY_FILE_SIZE == 48
    assert data[:4] == magic and data[4:8] == b"\x01\0\0\0" and data[8:40] == key
    assert data[40:] == blake3.blake3(data[:40]).digest(8)
    assert decode(data) == key


@pytest.mark.parametrize(("encode", "decode", "magic"), KEY_FILES)
def test_key_file_every_bit_flip_is_refused(encode, decode, magic) -> None:
    data = encode(MASTER)
    for bit in range(len(data) * 8):
        expected = UnknownVersionError if bit // 8 == 4 else KeyFileError
        raises(expected, decode, flip(data, bit))


@pytest.mark.parametrize(("encode", "decode", "magic"), KEY_FILES)
def test_key_file_every_truncation_and_trailing_garbage(encode, decode, magic) -> None:
    data = encode(MASTER)
    for n in range(len(data)):
        raises(KeyFileError, decode, data[:n])
    raises(KeyFileError, decode, data + b"\0")
    raises(KeyFileError, decode, data + data)


@pytest.mark.parametrize(("encode", "decode", "magic"), KEY_FILES)
def test_key_file_unknown_versions(encode, decode, magic) -> None:
    data = encode(MASTER)
    for version in set(range(256)) - {keys.KEY_FILE_VERSION}:
        err = raises(UnknownVersionError, decode, data[:4] + bytes([version]) + data[5:])
        assert str(version) in str(err)


def test_key_files_are_not_interchangeable() -> None:
    raises(KeyFileError, keys.decode_vault_key, keys.SigningKey(SEED).to_file_bytes())
    raises(KeyFileError, keys.SigningKey.from_file_bytes, keys.encode_vault_key(MASTER))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=100))
def test_key_file_arbitrary_bytes_only_amber_errors(data: bytes) -> None:
    for decode in (keys.decode_vault_key, keys.SigningKey.from_file_bytes):
        try:
            decode(data)
        except AmberError:
            pass


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_vault_key_must_have_32_bytes(size: int) -> None:
    raises(KeyFileError, keys.encode_vault_key, bytes(size))
    raises(KeyFileError, keys.VaultKeys.from_master, bytes(size))


# --- subkeys and fingerprint ------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(master=key32)
def test_subkeys_are_hkdf_sha256_with_documented_labels(master: bytes) -> None:
    vk = keys.VaultKeys.from_master(master)
    salt = b"amber/vault/v1"
    assert vk.chunk_id == hkdf_sha256(master, salt, b"chunk-id")
    assert vk.chunk_enc == hkdf_sha256(master, salt, b"chunk-enc")
    assert vk.meta_enc == hkdf_sha256(master, salt, b"meta-enc")
    assert vk.meta_nonce == hkdf_sha256(master, salt, b"meta-nonce")
    raw = hkdf_sha256(master, salt, b"fingerprint")[:8].hex()
    assert vk.fingerprint == "-".join(raw[i : i + 4] for i in range(0, 16, 4))
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}", vk.fingerprint)
    subkeys = {vk.chunk_id, vk.chunk_enc, vk.meta_enc, vk.meta_nonce, master}
    assert len(subkeys) == 5
    assert keys.VaultKeys.from_master(master) == vk  # deterministic
    assert keys.VaultKeys.from_file_bytes(vk.to_file_bytes()) == vk


def test_key_reprs_never_show_key_bytes() -> None:
    vk = keys.VaultKeys.from_master(MASTER)
    sk = keys.SigningKey(SEED)
    for secret in (vk.master, vk.chunk_id, vk.chunk_enc, vk.meta_enc, vk.meta_nonce):
        assert secret.hex() not in repr(vk)
        assert secret.hex()[:8] not in repr(vk)
    assert SEED.hex()[:8] not in repr(sk)
    assert vk.fingerprint in repr(vk)


# --- passphrase export (AMBE) -----------------------------------------------------------


@pytest.fixture(scope="module")
def export() -> bytes:
    return keys.export_vault_key(MASTER, PASSPHRASE, **FAST)


def test_export_layout(export: bytes) -> None:
    assert len(export) == keys.EXPORT_FILE_SIZE == 88
    assert export[:4] == b"AMBE"
    assert struct.unpack(">BBBBB3s", export[4:12]) == (1, 1, 10, 8, 1, b"\0\0\0")
    salt, nonce = export[12:28], export[28:40]
    kek = hashlib.scrypt(PASSPHRASE.encode(), salt=salt, n=1024, r=8, p=1, dklen=32)
    aead = AESGCM(kek)
    assert aead.decrypt(nonce, export[40:], export[:40]) == MASTER


@settings(max_examples=8, deadline=None)
@given(master=key32, passphrase=st.text(min_size=1, max_size=40))
def test_export_round_trip(master: bytes, passphrase: str) -> None:
    data = keys.export_vault_key(master, passphrase, **FAST)
    assert keys.import_vault_key(data, passphrase) == master


def test_export_is_salted(export: bytes) -> None:
    again = keys.export_vault_key(MASTER, PASSPHRASE, **FAST)
    assert again[12:40] != export[12:40] and again[40:] != export[40:]
    assert keys.import_vault_key(again, PASSPHRASE) == MASTER


def test_export_wrong_passphrase(export: bytes) -> None:
    for wrong in ("", PASSPHRASE + " ", PASSPHRASE.upper(), "x"):
        raises(KeyFileError, keys.import_vault_key, export, wrong)


def test_export_every_bit_flip_is_refused(export: bytes) -> None:
    for bit in range(len(export) * 8):
        expected = UnknownVersionError if bit // 8 == 4 else KeyFileError
        raises(expected, keys.import_vault_key, flip(export, bit), PASSPHRASE)


def test_export_every_truncation_and_trailing_garbage(export: bytes) -> None:
    for n in range(len(export)):
        raises(KeyFileError, keys.import_vault_key, export[:n], PASSPHRASE)
    raises(KeyFileError, keys.import_vault_key, export + b"\0", PASSPHRASE)


def test_export_unknown_versions_and_magic(export: bytes) -> None:
    for version in (0, 2, 255):
        bad = export[:4] + bytes([version]) + export[5:]
        raises(UnknownVersionError, keys.import_vault_key, bad, PASSPHRASE)
    raises(KeyFileError, keys.import_vault_key, b"AMBK" + export[4:], PASSPHRASE)
    raises(KeyFileError, keys.import_vault_key, keys.encode_vault_key(MASTER), PASSPHRASE)


@pytest.mark.parametrize(
    ("field", "value"),
    [(5, 0), (5, 2), (6, 9), (6, 21), (7, 0), (7, 33), (8, 0), (8, 17), (9, 1), (11, 1)],
)
def test_export_out_of_range_header_fields(export: bytes, field: int, value: int) -> None:
    bad = bytearray(export)
    bad[field] = value
    raises(KeyFileError, keys.import_vault_key, bytes(bad), PASSPHRASE)


def test_export_header_is_authenticated(export: bytes) -> None:
    """In-range but altered scrypt parameters derive another KEK: the tag fails."""
    for field, value in ((6, 11), (7, 9), (8, 2)):
        bad = bytearray(export)
        bad[field] = value
        raises(KeyFileError, keys.import_vault_key, bytes(bad), PASSPHRASE)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=120))
def test_export_arbitrary_bytes_only_amber_errors(data: bytes) -> None:
    try:
        keys.import_vault_key(data, PASSPHRASE)
    except AmberError:
        pass


def test_export_refuses_empty_passphrase_and_bad_cost() -> None:
    raises(KeyFileError, keys.export_vault_key, MASTER, "")
    for log2_n in (9, 21):
        with pytest.raises(KeyFileError):
            keys.export_vault_key(MASTER, PASSPHRASE, log2_n=log2_n)


def test_export_never_writes_what_import_refuses() -> None:
    for r, p in ((64, 1), (8, 17)):
        try:
            data = keys.export_vault_key(MASTER, PASSPHRASE, log2_n=10, r=r, p=p)
        except KeyFileError:
            continue
        assert keys.import_vault_key(data, PASSPHRASE) == MASTER


# --- signing keys and signatures --------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=key32, message=st.binary(max_size=200))
def test_signing_key_is_ed25519(seed: bytes, message: bytes) -> None:
    sk = keys.SigningKey(seed)
    reference = Ed25519PrivateKey.from_private_bytes(seed)
    assert sk.public == reference.public_key().public_bytes_raw()
    sig = sk.sign(message)
    assert sig == sk.sign(message) == reference.sign(message)  # deterministic (RFC 8032)
    keys.verify_signature(sk.public, sig, message)


def test_every_flipped_signature_or_message_bit_is_refused() -> None:
    sk = keys.SigningKey(SEED)
    message = b"checkpoint 7 of edge-01"
    sig = sk.sign(message)
    for bit in range(len(sig) * 8):
        raises(SignatureError, keys.verify_signature, sk.public, flip(sig, bit), message)
    for bit in range(len(message) * 8):
        raises(SignatureError, keys.verify_signature, sk.public, sig, flip(message, bit))
    for bit in range(len(sk.public) * 8):
        raises(SignatureError, keys.verify_signature, flip(sk.public, bit), sig, message)


def test_signature_by_another_key_or_malformed_is_refused() -> None:
    sk, other = keys.SigningKey(SEED), keys.SigningKey(MASTER)
    sig = sk.sign(b"m")
    raises(SignatureError, keys.verify_signature, other.public, sig, b"m")
    raises(SignatureError, keys.verify_signature, sk.public[:31], sig, b"m")
    raises(SignatureError, keys.verify_signature, sk.public, sig[:63], b"m")
    raises(SignatureError, keys.verify_signature, sk.public, sig + b"\0", b"m")


@settings(max_examples=100, deadline=None)
@given(public=st.binary(max_size=40), sig=st.binary(max_size=70), data=st.binary(max_size=20))
def test_verify_arbitrary_input_only_signature_errors(public, sig, data) -> None:
    with pytest.raises(SignatureError):
        keys.verify_signature(public, sig, data)


def test_parse_public_key() -> None:
    pub = keys.SigningKey(SEED).public
    assert keys.parse_public_key(pub.hex()) == pub
    assert keys.parse_public_key(f"  {pub.hex().upper()}\n") == pub
    raises(FormatError, keys.parse_public_key, "zz" * 32)
    raises(FormatError, keys.parse_public_key, pub.hex()[:-2])
    raises(FormatError, keys.parse_public_key, "")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_parse_public_key_arbitrary_text_only_format_errors(text: str) -> None:
    try:
        assert len(keys.parse_public_key(text)) == 32
    except FormatError:
        pass
