"""The frozen sample bundle (tests/fixtures/bundle_v1.tar) keeps decoding as it did.

It was written once by tests/fixtures/make_bundle_fixture.py and must never be
regenerated: it stands for bundles older releases wrote, which may still sit on a USB
disk. Inspecting it gives bundle_v1.json; its records and chunks open under the fixture
vault key; and any tar tool reads it (the INDEX matches what ``tarfile`` extracts).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import blake3

from amber.bundlefile import BundleStream, summarize
from amber.protocol import bundle
from amber.protocol.chunk import decode_chunk
from amber.protocol.keys import VaultKeys
from amber.protocol.records import decode_checkpoint, decode_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLE = FIXTURES / "bundle_v1.tar"


def test_inspecting_the_sample_gives_the_frozen_values() -> None:
    expected = json.loads((FIXTURES / "bundle_v1.json").read_text())
    with open(SAMPLE, "rb") as fh:
        assert summarize(BundleStream(fh)) == expected


def test_the_sample_opens_under_the_fixture_vault_key() -> None:
    keys = VaultKeys.from_file_bytes((FIXTURES / "vault_key_v1.bin").read_bytes())
    chunks = json.loads((FIXTURES / "expected.json").read_text())
    plain = {v["id"]: v["plaintext"] for k, v in chunks.items() if k.startswith("chunk_")}
    kinds = []
    with open(SAMPLE, "rb") as fh:
        stream = BundleStream(fh)
        for m in stream.members():
            if m.role == "chunk":
                assert decode_chunk(keys, m.id, m.data).hex() == plain[m.id.hex()]
            elif m.checkpoint is not None:
                kinds.append(decode_checkpoint(m.data, keys).kind)
            elif m.manifest is not None:
                assert decode_manifest(m.data, keys).source == "agent-memory"
        stream.finish()
    assert kinds == ["regular", "safety"]


def test_any_tar_tool_reads_the_sample() -> None:
    with tarfile.open(SAMPLE) as tf:
        files = {ti.name: tf.extractfile(ti).read() for ti in tf.getmembers()}  # type: ignore[union-attr]
    names = list(files)
    assert names[0] == bundle.HEADER_NAME
    assert names[-2:] == [bundle.INDEX_NAME, bundle.SIGNATURE_NAME]
    index = bundle.decode_index(files[bundle.INDEX_NAME])
    assert [e.name for e in index.entries] == names[:-2]
    for e in index.entries:
        assert blake3.blake3(files[e.name]).digest() == e.digest and len(files[e.name]) == e.size
    assert index.bundle == blake3.blake3(files[bundle.HEADER_NAME]).digest()
