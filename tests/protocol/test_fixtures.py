"""Frozen samples of every format version keep decoding with the current code.

The samples in tests/fixtures/ were written once by make_fixtures.py and must never
be regenerated: they stand for data that older releases wrote and that still sits
in journals, object stores and bundles. This test only reads them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import blake3
import pytest

from amber.protocol import chunk, enrolment, keys, packfile, records, wire
from amber.protocol.errors import ConfigError, IntegrityError, UnknownVersionError
from tests.fixtures.make_fixtures import jsonable  # how expected.json spells values

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())


def sample(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="module")
def vault() -> keys.VaultKeys:
    return keys.VaultKeys.from_file_bytes(sample("vault_key_v1.bin"))


@pytest.fixture(scope="module")
def signer_public() -> bytes:
    return keys.SigningKey.from_file_bytes(sample("signing_key_v1.bin")).public


def test_every_sample_is_listed_in_expected_json() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.bin")}
    assert on_disk == set(EXPECTED)


def test_vault_key_v1(vault: keys.VaultKeys) -> None:
    want = EXPECTED["vault_key_v1.bin"]
    assert vault.master.hex() == want["master"]
    assert vault.fingerprint == want["fingerprint"]
    got = {
        "chunk-id": vault.chunk_id,
        "chunk-enc": vault.chunk_enc,
        "chunk-nonce": vault.chunk_nonce,
        "meta-enc": vault.meta_enc,
        "meta-nonce": vault.meta_nonce,
    }
    assert jsonable(got) == want["subkeys"]


def test_vault_export_v1() -> None:
    want = EXPECTED["vault_export_v1.bin"]
    data = sample("vault_export_v1.bin")
    assert (data[6], data[7], data[8]) == (want["log2_n"], want["r"], want["p"])
    assert keys.import_vault_key(data, want["passphrase"]).hex() == want["master"]


def test_signing_key_v1() -> None:
    want = EXPECTED["signing_key_v1.bin"]
    sk = keys.SigningKey.from_file_bytes(sample("signing_key_v1.bin"))
    assert sk.seed.hex() == want["seed"]
    assert sk.public.hex() == want["public"]


CHUNK_SAMPLES = ["chunk_v1_raw.bin", "chunk_v1_zstd.bin", "chunk_v2_raw.bin", "chunk_v2_zstd.bin"]


@pytest.mark.parametrize("name", CHUNK_SAMPLES)
def test_chunk(vault: keys.VaultKeys, name: str) -> None:
    want = EXPECTED[name]
    blob = sample(name)
    assert blob[4] == want["version"]
    assert chunk.parse_chunk_header(blob) == (want["flags"], want["length"])
    plain = chunk.decode_chunk(vault, bytes.fromhex(want["id"]), blob)
    assert plain.hex() == want["plaintext"]
    assert chunk.chunk_id(vault, plain).hex() == want["id"]


def test_chunk_v2_is_what_writers_make(vault: keys.VaultKeys) -> None:
    """Today's writer reproduces the v2 samples byte for byte (for the compressed one,
    as long as the zstd library's level-3 output is unchanged)."""
    for name in ("chunk_v2_raw.bin", "chunk_v2_zstd.bin"):
        plain = bytes.fromhex(EXPECTED[name]["plaintext"])
        assert chunk.encode_chunk(vault, plain)[1] == sample(name)


def test_a_chunk_of_an_unknown_version_is_refused(vault: keys.VaultKeys) -> None:
    blob, cid = sample("chunk_v2_zstd.bin"), bytes.fromhex(EXPECTED["chunk_v2_zstd.bin"]["id"])
    with pytest.raises(UnknownVersionError, match="version 3 is not supported"):
        chunk.decode_chunk(vault, cid, blob[:4] + b"\x03" + blob[5:])


def test_pack_v1(vault: keys.VaultKeys) -> None:
    data = sample("pack_v1.bin")
    got = [[cid.hex(), off, n] for cid, off, n in packfile.entries(data, "pack_v1.bin")]
    assert got == EXPECTED["pack_v1.bin"]["entries"]
    for (cid, off, n), name in zip(got, ["chunk_v1_raw.bin", "chunk_v1_zstd.bin"], strict=True):
        assert data[off : off + n] == sample(name)  # the entries are the chunk samples
        assert cid == EXPECTED[name]["id"]
        chunk.decode_chunk(vault, bytes.fromhex(cid), data[off : off + n])


@pytest.mark.parametrize("head", [b"", b"AMBP", b"AMBP\x01\x00", b"PK\x03\x04\x14\x00\x00\x00"])
def test_pack_with_a_short_or_foreign_header_is_refused(head: bytes) -> None:
    with pytest.raises(IntegrityError, match="does not start with an Amber pack header"):
        list(packfile.entries(head, "pack x"))


def test_pack_of_an_unknown_version_is_refused() -> None:
    data = sample("pack_v1.bin")
    with pytest.raises(UnknownVersionError, match="format version 2"):
        list(packfile.entries(data[:4] + b"\x02" + data[5:], "pack x"))


def test_manifest_v1(vault: keys.VaultKeys, signer_public: bytes) -> None:
    want = EXPECTED["manifest_v1.bin"]
    data = sample("manifest_v1.bin")
    m = records.decode_manifest(data, vault, trusted=signer_public)
    assert jsonable(m) == want["manifest"]
    assert jsonable(records.manifest_public(data)) == want["public"]
    raw = records.parse(data)
    assert raw.id.hex() == want["record_id"] == blake3.blake3(data).hexdigest()
    assert raw.signer.hex() == want["signer"]


@pytest.mark.parametrize("name", ["checkpoint_v1_seq0.bin", "checkpoint_v1_seq1.bin"])
def test_checkpoint_v1(vault: keys.VaultKeys, signer_public: bytes, name: str) -> None:
    want = EXPECTED[name]
    data = sample(name)
    cp = records.decode_checkpoint(data, vault, trusted=signer_public)
    assert jsonable(cp) == want["checkpoint"]
    hub_view = records.checkpoint_public(data, trusted=signer_public)
    assert hub_view == dataclasses.replace(cp, note="")
    assert records.record_id(data).hex() == want["record_id"]


def test_checkpoint_v1_chain(vault: keys.VaultKeys) -> None:
    data0, data1 = sample("checkpoint_v1_seq0.bin"), sample("checkpoint_v1_seq1.bin")
    cp0 = records.decode_checkpoint(data0, vault)
    cp1 = records.decode_checkpoint(data1, vault)
    records.check_chain(None, None, cp0)
    records.check_chain(records.record_id(data0), cp0.seq, cp1)
    manifest_id = records.record_id(sample("manifest_v1.bin"))
    assert set(cp0.manifests.values()) == {manifest_id}


def test_manifest_v1_chunks_are_the_chunk_samples(vault: keys.VaultKeys) -> None:
    m = records.decode_manifest(sample("manifest_v1.bin"), vault)
    by_id = {bytes.fromhex(EXPECTED[n]["id"]): n for n in ("chunk_v1_raw.bin", "chunk_v1_zstd.bin")}
    (entry,) = [e for e in m.entries if e.type == "f"]
    content = b"".join(
        chunk.decode_chunk(vault, cid, sample(by_id[cid])) for cid, _ in entry.chunks
    )
    assert len(content) == entry.size
    assert blake3.blake3(content).digest() == entry.digest


def test_wire_v1_chunk_query() -> None:
    want = EXPECTED["wire_v1_chunk_query.bin"]
    msg = wire.decode(sample("wire_v1_chunk_query.bin"), expect=wire.ChunkQuery)
    assert msg.TYPE == want["type"]
    assert jsonable(msg) == want["fields"]


def test_enrolment_v1_keeps_decoding_and_encodes_byte_identical() -> None:
    data = sample("enrolment_v1.json")  # as amber-hub node add --out wrote it
    enr = enrolment.decode_enrolment(data, "enrolment_v1.json")
    assert (enr.vault, enr.node, enr.user) == ("fleet1", "edge-7", "node.fleet1.edge-7")
    assert enr.servers == ("nats://127.0.0.1:4222", "nats://127.0.0.2:4222")
    assert enr.password == "fixture-not-a-real-password-000"
    assert enr.inbox_prefix == "_INBOX_fleet1.edge-7"
    assert enr.hub_key.hex() == json.loads(data)["hub_key"]
    assert "password" not in repr(enr) and enr.password not in repr(enr)
    assert enrolment.encode_enrolment(enr) == data


def test_enrolment_of_an_unknown_version_is_refused() -> None:
    obj = json.loads(sample("enrolment_v1.json"))
    for version in (3, 0, "1", None, True):
        obj["version"] = version
        with pytest.raises(UnknownVersionError):
            enrolment.decode_enrolment(json.dumps(obj).encode(), "future.json")
    obj["version"] = 1
    del obj["hub_key"]  # optional for reading
    assert enrolment.decode_enrolment(json.dumps(obj).encode(), "old.json").hub_key == b""


def v2_parts() -> list[bytes]:
    return [sample(n) for n in EXPECTED["manifest_v2_head.bin"]["parts"]]


def test_manifest_v2_head_and_parts(vault: keys.VaultKeys, signer_public: bytes) -> None:
    want = EXPECTED["manifest_v2_head.bin"]
    head, parts = sample("manifest_v2_head.bin"), v2_parts()
    m = records.decode_manifest(head, vault, trusted=signer_public, parts=parts)
    assert jsonable(m) == want["manifest"] == EXPECTED["manifest_v1.bin"]["manifest"]
    assert jsonable(records.manifest_public(head)) == want["public"]
    raw = records.parse(head)
    assert (raw.version, raw.kind) == (2, records.KIND_MANIFEST)
    assert raw.id.hex() == want["record_id"] and raw.signer.hex() == want["signer"]
    assert records.manifest_part_ids(head) == [records.record_id(p) for p in parts]
    for name, part in zip(want["parts"], parts, strict=True):
        assert records.record_id(part).hex() == EXPECTED[name]["record_id"]
        assert jsonable(records.part_public(part)) == EXPECTED[name]["public"]
    assert records.manifest_chunk_ids(head, parts) == m.chunk_ids()


def test_manifest_v2_refuses_parts_that_are_not_its_own(vault: keys.VaultKeys) -> None:
    head, parts = sample("manifest_v2_head.bin"), v2_parts()
    for wrong in (parts[::-1], parts[:-1], [*parts[:-1], parts[0]]):
        with pytest.raises(IntegrityError):
            records.decode_manifest(head, vault, parts=wrong)
        with pytest.raises(IntegrityError):
            records.manifest_chunk_ids(head, wrong)


def test_enrolment_v2_carries_the_ca_and_encodes_byte_identical() -> None:
    data = sample("enrolment_v2.json")  # as amber-hub node add --out writes it (TLS)
    enr = enrolment.decode_enrolment(data, "enrolment_v2.json")
    assert enr.version == 2 and enr.tls_handshake_first is True
    assert enr.servers == ("tls://127.0.0.1:4222", "tls://hub.example.net:4222")
    assert enr.ca.startswith("-----BEGIN CERTIFICATE-----")
    assert enrolment.encode_enrolment(enr) == data
    v1 = enrolment.decode_enrolment(sample("enrolment_v1.json"), "enrolment_v1.json")
    assert (v1.version, v1.ca, v1.tls_handshake_first) == (1, "", False)


def test_enrolment_v2_with_a_malformed_ca_is_refused() -> None:
    obj = json.loads(sample("enrolment_v2.json"))
    for bad in (["pem"], "not a certificate", "-----BEGIN CERTIFICATE-----" + "A" * 70_000):
        obj["ca"] = bad
        with pytest.raises(ConfigError):
            enrolment.decode_enrolment(json.dumps(obj).encode(), "bad.json")


def test_an_enrolment_nested_deeper_than_the_stack_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        enrolment.decode_enrolment(b"[" * 200_000 + b"]" * 200_000, "deep.json")
