"""Bad bundles are refused with a typed error and a stable exit code, changing nothing.

One node of an air-gapped site has its checkpoints at the hub and live data a restore
would overwrite, and a valid hub bundle carrying a restore order. Then: truncated
copies (from a file and through a pipe), bit flips in a chunk, the INDEX, the SIGNATURE
and a tar header, a bundle for another vault or under another vault key, an unknown
hub key, a node key the hub does not know, a node export that forks the chain, bundles
imported on the wrong side, and a disk that fills up during an export. After each, the
node's journal and data and the hub's catalog and store are as they were, and no
partial file or staging directory is left.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amber.protocol.keys import SigningKey
from tests.support.node import keygen
from tests.support.procs import PY, Result
from tests.support.site import VAULT, Machine, Site, State

NODE = "edge-c"


@dataclass
class Prepared:
    m: Machine
    live: State
    down: Path  # a valid hub bundle with a restore order for NODE
    up: Path  # a valid node export of NODE


@pytest.fixture(scope="module")
def prep(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    tmp = tmp_path_factory.mktemp("bundles")
    site.enrol(NODE)
    m = site.machine(NODE, NODE)
    m.write_state(31)
    m.checkpoint()
    up = tmp / "up.tar"
    site.ship(m, up)
    live = m.write_state(32)
    down = tmp / "down.tar"
    export = ("bundle", "export", "--node", NODE, "--vault", VAULT, "--restore-order")
    site.hub_ok(*export, "--out", down)
    return Prepared(m, live, down, up)


@contextlib.contextmanager
def untouched(site: Site, m: Machine) -> Iterator[None]:
    journal, data, catalog = m.journal(), m.raw(), site.catalog()
    yield
    assert m.journal() == journal, "the journal changed"
    assert m.raw() == data, "the node's data changed"
    assert site.catalog() == catalog, "the hub's catalog or store changed"
    assert not list((m.agent.state / "bundle-staging").glob("*")), "staging left behind"
    assert not list((site.hub.data / "bundle-staging").glob("*")), "hub staging left behind"


def node_import(site: Site, m: Machine, bundle: Path, *extra: object) -> Any:
    return m.run("bundle", "import", bundle, "--hub-key", site.hub_key, *extra)


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {ti.name: ti for ti in tf.getmembers()}


def damaged(src: Path, dst: Path, at: int, xor: int = 0x01, cut: bool = False) -> Path:
    data = bytearray(src.read_bytes())
    if cut:
        del data[at:]
    else:
        data[at] ^= xor
    dst.write_bytes(bytes(data))
    return dst


def end_of_signature(path: Path) -> int:
    sig = members(path)["amber-bundle/SIGNATURE"]
    return int(sig.offset_data + sig.size)


# --- damaged bundles ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["empty", "short", "header", "middle", "boundary", "end"])
def test_truncated_bundle_is_refused(
    site: Site, prep: Prepared, tmp_path: Path, where: str
) -> None:
    ms = members(prep.down)
    cut = {
        "empty": 0,
        "short": 300,  # not even one tar header
        "header": ms["amber-bundle/BUNDLE"].offset_data + 20,
        "middle": end_of_signature(prep.down) // 2,
        "boundary": ms["amber-bundle/INDEX"].offset,  # right before the INDEX
        "end": end_of_signature(prep.down),  # no end-of-archive marker
    }[where]
    bad = damaged(prep.down, tmp_path / "cut.tar", cut, cut=True)
    receipt = tmp_path / "receipt.tar"
    with untouched(site, prep.m):
        res = node_import(site, prep.m, bad, "--receipt", receipt)
    assert res.code == (10 if where in ("empty", "short") else 12), res
    assert "hint:" in res.err
    seen = prep.m.ok("bundle", "inspect", receipt, "--json").json()
    assert (seen["kind"], seen["receipt"]["outcome"]) == ("receipt", "refused")
    assert seen["receipt"]["exit_code"] == res.code


def test_truncated_bundle_through_a_pipe(site: Site, prep: Prepared) -> None:
    data = prep.down.read_bytes()[: end_of_signature(prep.down) - 100]
    argv = [PY, "-m", "amber.agent.cli", "--config", str(prep.m.agent.config)]
    with untouched(site, prep.m):
        done = subprocess.run(
            [*argv, "bundle", "import", "-", "--hub-key", site.hub_key],
            input=data,
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 12, done.stderr
    assert b"truncated" in done.stderr


@pytest.mark.parametrize(
    ("where", "code"),
    [("chunk", 12), ("record", 12), ("index", 12), ("signature", 13), ("tar-header", 12)],
)
def test_bit_flip_is_refused(
    site: Site, prep: Prepared, tmp_path: Path, where: str, code: int
) -> None:
    ms = members(prep.down)
    chunk = next(ti for name, ti in ms.items() if name.startswith("chunks/"))
    record = next(ti for name, ti in ms.items() if name.startswith("records/"))
    sig = ms["amber-bundle/SIGNATURE"]
    sig_text = prep.down.read_bytes()[sig.offset_data : sig.offset_data + sig.size]
    digit = sig_text.index(b'"signature":"') + 15
    at, xor = {
        "chunk": (chunk.offset_data + chunk.size // 2, 0x10),
        "record": (record.offset_data + 40, 0x04),
        "index": (ms["amber-bundle/INDEX"].offset_data + 60, 0x01),
        # one hex digit of the signature for another one: still well-formed, wrong
        "signature": (
            sig.offset_data + digit,
            sig_text[digit] ^ ord("0" if sig_text[digit] != 48 else "1"),
        ),
        "tar-header": (chunk.offset + 3, 0x01),  # a name byte: the checksum fails
    }[where]
    bad = damaged(prep.down, tmp_path / "flip.tar", at, xor)
    with untouched(site, prep.m):
        res = node_import(site, prep.m, bad)
    assert res.code == code, res
    inspected = prep.m.run("bundle", "inspect", bad)
    assert inspected.code == code, inspected


def test_truncated_node_export_is_refused_by_the_hub(
    site: Site, prep: Prepared, tmp_path: Path
) -> None:
    bad = damaged(prep.up, tmp_path / "cut.tar", end_of_signature(prep.up) - 700, cut=True)
    with untouched(site, prep.m):
        res = site.hub_run("bundle", "import", bad)
    assert res.code == 12, res


# --- the wrong bundle ------------------------------------------------------------------


def test_bundle_for_another_vault_is_refused(site: Site, prep: Prepared) -> None:
    other = site.machine("other-vault", NODE, vault="other", key=keygen(site.root / "o.key"))
    other.write_state(40)
    with untouched(site, other):
        res = other.run("bundle", "import", prep.down, "--hub-key", site.hub_key)
    assert res.code == 15, res
    assert "is for site/edge-c" in res.err


def test_bundle_under_another_vault_key_is_refused(site: Site, prep: Prepared) -> None:
    stranger = site.machine("same-name", NODE, key=keygen(site.root / "stranger.key"))
    stranger.write_state(41)
    with untouched(site, stranger):
        res = stranger.run("bundle", "import", prep.down, "--hub-key", site.hub_key)
    assert res.code == 12, res
    assert "vault key" in res.err


def test_bundle_signed_by_an_unknown_key_is_refused(site: Site, prep: Prepared) -> None:
    rogue = SigningKey.generate().public.hex()
    with untouched(site, prep.m):
        res = prep.m.run("bundle", "import", prep.down, "--hub-key", rogue)
    assert res.code == 13, res
    inspected = prep.m.ok("bundle", "inspect", prep.down).out
    assert "signature: valid" in inspected and "NOT trusted" in inspected


def test_node_export_under_another_node_key_is_refused(
    site: Site, prep: Prepared, tmp_path: Path
) -> None:
    impostor = site.machine("impostor", NODE)  # the vault key, but its own node key
    impostor.write_state(42)
    impostor.checkpoint()
    bundle = tmp_path / "impostor.tar"
    impostor.ok("bundle", "export", "--all", "--out", bundle)
    with untouched(site, prep.m):
        res = site.hub_run("bundle", "import", bundle)
    assert res.code == 13, res


def test_node_export_that_forks_the_chain_is_refused(
    site: Site, prep: Prepared, tmp_path: Path
) -> None:
    fork = site.replacement("reinstalled", prep.m)  # the node's keys, a fresh journal
    fork.write_state(43)
    fork.checkpoint()  # another seq 0
    bundle = tmp_path / "fork.tar"
    fork.ok("bundle", "export", "--all", "--out", bundle)
    with untouched(site, prep.m):
        res = site.hub_run("bundle", "import", bundle)
    assert res.code == 14, res
    assert "forks" in res.err


def test_bundles_imported_on_the_wrong_side_are_refused(site: Site, prep: Prepared) -> None:
    with untouched(site, prep.m):
        at_hub = site.hub_run("bundle", "import", prep.down)
        at_node = node_import(site, prep.m, prep.up)
    assert (at_hub.code, at_node.code) == (15, 15), (at_hub, at_node)


# --- a full disk -------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path`` if this process may mount one; else yields False."""
    path.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    mounted = subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


def limited_export(m: Machine, out: Path) -> Result:
    """``amber-agent bundle export`` in a process whose files may not grow past 100 kB."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from amber.agent.cli import main\n"
        "sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, "--config", str(m.agent.config)]
    argv += ["bundle", "export", "--all", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return Result(done.returncode, done.stdout, done.stderr)


def test_disk_full_during_export(site: Site, prep: Prepared, tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    export = ("bundle", "export", "--node", NODE, "--vault", VAULT, "--restore-order")
    with small_disk(usb, "100k") as mounted, untouched(site, prep.m):
        out = usb / "down.tar"
        if mounted:
            hub = site.hub_run(*export, "--out", out)
            node = prep.m.run("bundle", "export", "--all", "--out", out)
        else:  # no mount allowed here: a file size limit fails the writes the same way
            hub = node = limited_export(prep.m, out)
        leftovers = sorted(p.name for p in usb.iterdir())
    assert (hub.code, node.code) == (42, 42), (hub, node)
    assert "no space left" in node.err and "partial file was removed" in node.err
    assert leftovers == [], leftovers


def test_a_refused_bundle_halts_its_plan_by_receipt(
    site: Site, prep: Prepared, tmp_path: Path
) -> None:
    export = ("bundle", "export", "--node", NODE, "--vault", VAULT, "--restore-order")
    res = site.hub_ok(*export, "--out", tmp_path / "mine.tar", "--json").json()
    bad = damaged(tmp_path / "mine.tar", tmp_path / "cut.tar", 3000, cut=True)
    receipt = tmp_path / "receipt.tar"
    assert node_import(site, prep.m, bad, "--receipt", receipt).code == 12
    back = site.hub_ok("bundle", "import", receipt, "--json").json()
    assert (back["plan"], back["outcome"], back["order_id"]) == (res["plan"], "refused", "")
    status = site.hub_ok("restore", "status", res["plan"], "--json").json()
    assert (status["state"], status["nodes"][0]["state"]) == ("halted", "failed")
    assert "IntegrityError" in status["nodes"][0]["detail"]
