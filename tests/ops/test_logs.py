"""Structured logs: JSON lines with node, source and checkpoint ids; no secret ever logged.

In this process: the JSON and text formats, the terminal auto-detection, and a positive
control that the redaction filter replaces a registered secret wherever it shows up
(message, arguments, bytes in hex/repr/base64, traceback, context field).

With real processes: a full flow (hub in a box, enrol, init, checkpoint, sync, the
daemon, restore from the hub on a replacement node), every command run with ``-v
--log-format json``. Every stderr line must parse as JSON; the key lines carry their ids;
and no stderr holds the vault key (raw, hex, base64, nor its subkeys), the signing seed,
the node's NATS password, the hub's NATS password or the admin token.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from amber import logs
from amber.agent.config import TierPolicy, load_config, save_config
from amber.protocol.keys import KEY_FILE_SIZE, VaultKeys
from tests.support.hub import HubProcess
from tests.support.procs import PY, spawn, stop_proc, wait_until

VAULT, NODE = "fleet", "edge-1"

# --------------------------------------------------------------------------- in process


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as it was (setup() replaces only its own handler)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        logging.captureWarnings(False)


def capture(emit: Callable[[logging.Logger], None], *, json_format: bool | None) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        logs.setup(json_format, logging.DEBUG)
        emit(logging.getLogger("amber.test"))
    return err.getvalue()


def test_json_lines_carry_ids(root_logging: None) -> None:
    cid = os.urandom(32)

    def emit(log: logging.Logger) -> None:
        log.info(
            "checkpoint %s committed",
            cid.hex()[:16],
            extra={"node": "n1", "vault": "v1", "source": "memory", "checkpoint": cid, "seq": 3},
        )
        log.debug('a "quoted" message\nover two lines')
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed", extra={"node": "n1"})

    lines = capture(emit, json_format=True).splitlines()
    assert len(lines) == 3, lines
    first, second, third = map(json.loads, lines)
    assert first["msg"] == f"checkpoint {cid.hex()[:16]} committed"
    assert (first["level"], first["logger"]) == ("info", "amber.test")
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert first["node"] == "n1" and first["vault"] == "v1" and first["source"] == "memory"
    assert first["checkpoint"] == cid.hex() and first["seq"] == 3  # bytes ids as hex
    assert second["msg"] == 'a "quoted" message\nover two lines' and "node" not in second
    assert third["level"] == "error" and "ValueError: boom" in third["exc"]


def test_text_format_and_auto_detection(root_logging: None) -> None:
    text = capture(
        lambda log: log.warning("sync paused", extra={"node": "n1", "checkpoint": "ab12"}),
        json_format=False,
    )
    assert " WARNING amber.test sync paused [node=n1 checkpoint=ab12]" in text

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, is_json in ((io.StringIO(), True), (Terminal(), False)):
        with contextlib.redirect_stderr(stream):
            logs.setup(None, logging.INFO)  # auto: JSON unless stderr is a terminal
            logging.getLogger("amber.test").info("hello")
        assert stream.getvalue().startswith("{") is is_json, stream.getvalue()
    root = logging.getLogger()
    assert sum(1 for h in root.handlers if getattr(h, "_amber", False)) == 1  # replaced


def test_redaction_positive_control(root_logging: None) -> None:
    """A registered secret is replaced wherever it would appear in a record."""
    token = "tok_" + base64.urlsafe_b64encode(os.urandom(24)).decode()
    key = os.urandom(32)
    logs.register_secret(token, key)

    def emit(log: logging.Logger) -> None:
        log.info("token is %s", token)
        log.info(f"inline token {token} here")
        log.info("key hex %s", key.hex())
        log.info("KEY HEX %s", key.hex().upper())
        log.info("key bytes %s", key)
        log.info("key b64 %s", base64.b64encode(key).decode())
        log.info("context", extra={"node": f"n-{token}"})
        try:
            raise RuntimeError(f"connect failed with password {token}")
        except RuntimeError:
            log.exception("with a traceback")
        log.info("nothing secret here: %s", "plain words")

    for json_format in (True, False):
        out = capture(emit, json_format=json_format)
        spellings = logs.secret_spellings([token, key])
        leaked = [s for s in spellings if s in out]
        assert not leaked, f"secret spellings leaked: {leaked}\n{out}"
        assert out.count(logs.REDACTED) >= 8, out
        assert "nothing secret here: plain words" in out
    # Short values are never registered: they would redact ordinary words.
    logs.register_secret("abc")
    assert logs.redact("abc abc") == "abc abc"


# --------------------------------------------------------------------------- processes


class Flow:
    """Runs every command with ``-v --log-format json`` and keeps all their stderr."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hub_data = tmp / "hub"
        self.stderr: dict[str, bytes] = {}

    def _run(self, tag: str, module: str, *args: object) -> str:
        argv = [PY, "-m", module, "-v", "--log-format", "json", *map(str, args)]
        res = subprocess.run(argv, capture_output=True, timeout=180, check=False)
        self.stderr[f"{len(self.stderr):02d} {tag}"] = res.stderr
        assert res.returncode == 0, f"{tag}: exit {res.returncode}\n{res.stdout!r}\n{res.stderr!r}"
        return res.stdout.decode()

    def hub(self, *args: object) -> str:
        return self._run(f"hub {args[0]}", "amber.hub.cli", "--data", self.hub_data, *args)

    def agent(self, state: Path, *args: object) -> str:
        tag = f"agent {args[0]}"
        return self._run(tag, "amber.agent.cli", "--config", state / "agent.toml", *args)

    def agent_init(self, state: Path, *args: object) -> str:
        return self._run("agent init", "amber.agent.cli", "init", "--dir", state, *args)

    def spawn(self, tag: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{tag}.stderr"
        return spawn([PY, "-m", *argv], log, stdout=self.tmp / f"{tag}.stdout"), log

    def records(self, text: bytes) -> list[dict[str, Any]]:
        """Every line parsed as JSON (any other line fails the test)."""
        out = []
        for line in text.decode().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pytest.fail(f"not a JSON log line: {line!r}")
        return out


def make_data(root: Path) -> Path:
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "system.txt").write_text("You are careful.\n" * 200)
    (root / "prompts" / "weights.bin").write_bytes(os.urandom(200_000))
    con = sqlite3.connect(root / "memory.db")
    con.execute("CREATE TABLE m(id INTEGER PRIMARY KEY, body BLOB)")
    con.executemany("INSERT INTO m(body) VALUES(randomblob(300))", [()] * 200)
    con.commit()
    con.close()
    old = time.time() - 3600
    for p in (root / "prompts").iterdir():
        os.utime(p, (old, old))
    return root


def secrets_of(state: Path, hub_data: Path, enrolment: Path) -> dict[str, bytes]:
    """Every secret, and the spellings of it a log line could hold, as bytes."""
    vault_file = (state / "vault.key").read_bytes()
    seed_file = (state / "node.key").read_bytes()
    assert len(vault_file) == len(seed_file) == KEY_FILE_SIZE
    keys = VaultKeys.from_master(vault_file[8:40])
    raw = {
        "vault key": keys.master,
        "chunk-id subkey": keys.chunk_id,
        "chunk-enc subkey": keys.chunk_enc,
        "meta-enc subkey": keys.meta_enc,
        "meta-nonce subkey": keys.meta_nonce,
        "signing seed": seed_file[8:40],
    }
    hub_secrets = json.loads((hub_data / "secrets.json").read_text())
    text = {
        "node NATS password": json.loads(enrolment.read_text())["password"],
        "hub admin token": hub_secrets["admin_token"],
        "hub NATS password": hub_secrets["nats_password"],
    }
    out: dict[str, bytes] = {}
    for name, value in raw.items():
        out[f"{name} (raw)"] = value
        out[f"{name} (hex)"] = value.hex().encode()
        out[f"{name} (HEX)"] = value.hex().upper().encode()
        out[f"{name} (base64)"] = base64.b64encode(value).rstrip(b"=")
        out[f"{name} (base64url)"] = base64.urlsafe_b64encode(value).rstrip(b"=")
        out[f"{name} (repr)"] = repr(value)[2:-1].encode()
    for name, value in text.items():
        assert len(value) >= 16
        out[name] = value.encode()
    return out


@pytest.mark.servers
def test_full_flow_logs_are_json_with_ids_and_no_secrets(tmp_path: Path) -> None:
    flow = Flow(tmp_path)
    hub = HubProcess(
        flow.hub_data,
        options=["-v", "--log-format", "json"],
        serve_options=["--metrics-listen", "127.0.0.1:0"],
        stdout=tmp_path / "hub serve.stdout",
    )
    state, state2 = tmp_path / "node" / "state", tmp_path / "node2" / "state"
    enrolment = tmp_path / "edge-1.enrol"
    daemon_log: Path | None = None
    try:
        hub.start()
        flow.hub("node", "add", NODE, "--vault", VAULT, "--out", enrolment)
        flow.hub("nodes")
        data = make_data(tmp_path / "data")
        flow.agent_init(state, "--node", NODE, "--vault", VAULT, "--enroll", enrolment)
        flow.agent(state, "source", "add", "prompts", "--kind", "files", "--path",
                   data / "prompts", "--tier", "hot")  # fmt: skip
        flow.agent(state, "source", "add", "memory", "--kind", "sqlite", "--path",
                   data / "memory.db")  # fmt: skip
        cp = flow.agent(state, "checkpoint").strip()
        assert len(cp) == 64
        flow.agent(state, "sync")
        flow.agent(state, "status")
        flow.agent(state, "restore", "latest", "--to", tmp_path / "restored-local")

        # The daemon: checkpoints every second, syncs them, serves metrics.
        cfg = load_config(state / "agent.toml")
        tiers = {**cfg.tiers, "hot": TierPolicy(interval=1, rpo=60)}
        save_config(
            dataclasses.replace(
                cfg, tiers=tiers, metrics_listen="127.0.0.1:0", hub={"sync_interval": 1}
            )
        )
        daemon, daemon_log = flow.spawn(
            "agent run",
            [
                "amber.agent.cli",
                "-v",
                "--log-format",
                "json",
                "--config",
                str(state / "agent.toml"),
                "run",
            ],
        )
        try:
            wait_until(
                "the daemon to sync a checkpoint of its own",
                lambda: (
                    daemon_log.read_text().count("is durable at the hub") >= 1
                    and daemon.poll() is None
                ),
                60,
            )
        finally:
            assert stop_proc(daemon, grace=20) == 0

        # Replacement hardware: same vault key and enrolment, restore from the hub.
        (tmp_path / "vault.key.backup").write_bytes((state / "vault.key").read_bytes())
        os.chmod(tmp_path / "vault.key.backup", 0o600)
        flow.agent_init(state2, "--node", NODE, "--vault", VAULT, "--vault-key",
                        tmp_path / "vault.key.backup", "--enroll", enrolment)  # fmt: skip
        flow.agent(state2, "checkpoints")
        flow.agent(state2, "restore", cp[:16], "--to", tmp_path / "restored")
        assert (tmp_path / "restored" / "prompts" / "weights.bin").read_bytes() == (
            data / "prompts" / "weights.bin"
        ).read_bytes()
        flow.hub("checkpoints")
        flow.hub("status")
    finally:
        code = hub.stop(grace=20)
        hub.cleanup()
    assert code == 0
    flow.stderr["hub serve"] = hub.log.read_bytes()
    assert daemon_log is not None
    flow.stderr["agent run"] = daemon_log.read_bytes()

    # Every line of every stderr is a JSON object with the standard fields.
    records = {tag: flow.records(text) for tag, text in flow.stderr.items()}
    for tag, recs in records.items():
        for r in recs:
            assert {"ts", "level", "logger", "msg"} <= r.keys(), (tag, r)
    everything = [r for recs in records.values() for r in recs]
    assert any(r["level"] == "debug" for r in everything)  # -v took effect

    def one(tag_part: str, logger: str, **fields: Any) -> dict[str, Any]:
        found = [
            r
            for tag, recs in records.items()
            if tag_part in tag
            for r in recs
            if r["logger"] == logger and all(r.get(k) == v for k, v in fields.items())
        ]
        assert found, f"no {logger} line with {fields} in {tag_part}: {records}"
        return found[0]

    # checkpoint committed (agent), sync done (agent), checkpoint durable (hub)
    committed = one("agent checkpoint", "amber.agent.checkpoint", checkpoint=cp)
    assert (committed["node"], committed["vault"]) == (NODE, VAULT)
    assert set(committed["source"].split(",")) == {"prompts", "memory"}
    synced = one("agent sync", "amber.agent.sync", checkpoint=cp)
    assert (synced["node"], synced["vault"], synced["seq"]) == (NODE, VAULT, 0)
    stored = one("hub serve", "amber.hub.ingest", checkpoint=cp)
    assert (stored["node"], stored["vault"]) == (NODE, VAULT)
    assert "hub serving" in one("hub serve", "amber.hub")["msg"]
    daemon_cp = one("agent run", "amber.agent.checkpoint", node=NODE, vault=VAULT)
    assert len(daemon_cp["checkpoint"]) == 64 and daemon_cp["source"] == "prompts"
    one("agent run", "amber.agent.sync", node=NODE, vault=VAULT)

    # No secret, in any spelling, anywhere in anything the processes wrote to stderr.
    secrets = secrets_of(state, flow.hub_data, enrolment)
    for tag, text in flow.stderr.items():
        for name, needle in secrets.items():
            assert needle not in text, f"the {name} appears in the stderr of {tag}"
    # The same with the replacement node's copies (it shares the vault key, not the seed).
    for name, needle in secrets_of(state2, flow.hub_data, enrolment).items():
        for tag, text in flow.stderr.items():
            assert needle not in text, f"the {name} (node 2) appears in the stderr of {tag}"
