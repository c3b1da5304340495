"""The edge agent in tests: one way to init, enrol, configure and run a node.

:class:`Agent` is one initialised node (state directory and agent.toml). Its commands
run in this process through ``amber.agent.cli.main`` (fast), as a real process
(:meth:`Agent.proc`, when a separate process matters) or in the background
(:meth:`Agent.popen`, :func:`background`: the daemon, or a sync the test disturbs).

Plain Python, no pytest imports; fixtures live in tests/support/fixtures.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amber.agent.cli import main as agent_main
from amber.agent.config import TierPolicy, load_config, save_config
from tests.support.data import query_ro
from tests.support.procs import PY, Result, in_process, run_python, spawn, stop_proc

FINGERPRINT = re.compile(r"fingerprint:? ([0-9a-f]{4}(?:-[0-9a-f]{4}){3})")


def cli(*args: object) -> Result:
    """``amber-agent ARGS`` in this process, its output captured."""
    return in_process(agent_main, args)


agent_cli = cli


def agent_argv(*args: object) -> list[str]:
    """The argv of ``amber-agent ARGS`` as a real process."""
    return [PY, "-m", "amber.agent.cli", *map(str, args)]


def cli_proc(
    *args: object, env: dict[str, str] | None = None, timeout: float = 120, prelude: str = ""
) -> Result:
    """``amber-agent ARGS`` as a real process (``prelude``: Python run before main)."""
    if not prelude:
        return run_python("-m", "amber.agent.cli", *args, env=env, timeout=timeout)
    code = f"import sys\n{prelude}\nfrom amber.agent.cli import main\nsys.exit(main(sys.argv[1:]))"
    return run_python("-c", code, *args, env=env, timeout=timeout)


def cli_ok(*args: object, timeout: float = 120) -> Result:
    """:func:`cli_proc` that must exit 0."""
    res = cli_proc(*args, timeout=timeout)
    assert res.code == 0, str(res)
    return res


def keygen(out: Path) -> Path:
    """A vault key file (``amber-agent keygen``) to hand to several nodes of one vault."""
    res = cli("keygen", "--out", out)
    assert res.code == 0, res
    return out


def fingerprint_of(text: str) -> str:
    m = FINGERPRINT.search(text)
    assert m, f"no fingerprint in {text!r}"
    return m.group(1)


class Agent:
    """One initialised node: its state directory and agent.toml."""

    def __init__(self, state: Path, node: str = "n1", vault: str = "v1") -> None:
        self.state, self.node, self.vault = state, node, vault
        self.config = state / "agent.toml"
        self.log = state.parent / f"{state.name}-agent.log"
        self.init_output = ""
        self.enrolment: Path | None = None

    @classmethod
    def init(
        cls,
        state: Path,
        node: str = "n1",
        vault: str = "v1",
        vault_key: Path | None = None,
        enroll: Path | None = None,
    ) -> Agent:
        """``amber-agent init`` (with a vault key, and an enrolment from the hub)."""
        args: list[object] = ["init", "--dir", state, "--node", node, "--vault", vault]
        if vault_key is not None:
            args += ["--vault-key", vault_key]
        if enroll is not None:
            args += ["--enroll", enroll]
        res = cli(*args)
        assert res.code == 0, res
        agent = cls(state, node, vault)
        agent.init_output = res.out
        agent.enrolment = enroll
        return agent

    @property
    def fingerprint(self) -> str:
        """The node key's fingerprint, as ``init`` printed it."""
        return fingerprint_of(self.init_output)

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    # -- commands
    def run(self, *args: object) -> Result:
        return cli("--config", self.config, *args)

    def ok(self, *args: object) -> Result:
        res = self.run(*args)
        assert res.code == 0, res
        return res

    def proc(self, *args: object, timeout: float = 60, env: dict[str, str] | None = None) -> Result:
        """``amber-agent ARGS`` as a real process, bounded by ``timeout``."""
        return cli_proc("--config", self.config, *args, timeout=timeout, env=env)

    def popen(self, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``amber-agent ARGS`` started in the background (output to self.log)."""
        with open(self.log, "ab") as fh:
            fh.write(f"\n==== amber-agent {' '.join(map(str, args))} ====\n".encode())
        return spawn(agent_argv("--config", self.config, *args), self.log, env=env)

    def add(self, name: str, kind: str, path: Path, *extra: object) -> None:
        self.ok("source", "add", name, "--kind", kind, "--path", path, *extra)

    def checkpoint(self, *args: object) -> dict[str, Any]:
        return dict(self.ok("checkpoint", "--json", *args).json())

    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.ok("checkpoints", "--json").json())

    def status(self) -> dict[str, Any]:
        return dict(self.ok("status", "--json").json())

    def source_status(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["sources"] if s["name"] == name)

    def sync(self) -> dict[str, Any]:
        return dict(self.ok("sync", "--once", "--json").json())

    def restore_to(self, ref: str, dest: Path, *extra: object) -> Result:
        return self.ok("restore", ref, "--to", dest, *extra)

    # -- configuration
    def configure(self, **changes: Any) -> None:
        """Change agent.toml options (AgentConfig field names)."""
        cfg = load_config(self.config)
        save_config(dataclasses.replace(cfg, **changes))

    def set_tier(self, tier: str, interval: int, rpo: int = 900) -> None:
        cfg = load_config(self.config)
        tiers = {**cfg.tiers, tier: TierPolicy(interval=interval, rpo=rpo)}
        save_config(dataclasses.replace(cfg, tiers=tiers))

    def set_hub(self, **options: Any) -> None:
        cfg = load_config(self.config)
        save_config(dataclasses.replace(cfg, hub={**cfg.hub, **options}))

    def point_at(self, url: str) -> None:
        """Rewrite the installed enrolment's NATS servers (e.g. to a fault proxy)."""
        path = self.state / "enrolment.json"
        enr = json.loads(path.read_text())
        enr["nats_servers"] = [url]
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(enr, fh)
        os.replace(tmp, path)

    # -- the journal, read directly
    def journal_query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return query_ro(self.journal, sql, args)

    def journal_checkpoints(self) -> list[tuple[int, str, int]]:
        """(seq, id hex, state) of every checkpoint in the journal (2 = durable at hub)."""
        rows = self.journal_query("SELECT seq, id, state FROM checkpoints ORDER BY seq")
        return [(r[0], r[1].hex(), r[2]) for r in rows]

    def evicted_chunks(self) -> set[bytes]:
        return {
            r[0]
            for r in self.journal_query("SELECT id FROM chunks WHERE pack IS NULL AND blob IS NULL")
        }

    def held_chunk_bytes(self) -> int:
        rows = self.journal_query(
            "SELECT coalesce(sum(stored),0) FROM chunks WHERE pack NOT NULL OR blob NOT NULL"
        )
        return int(rows[0][0])

    def snapshot(self) -> tuple[list[Any], str]:
        """The checkpoint list and a digest of everything else the journal holds, read
        with sqlite3 directly (to prove that a failed command changed nothing)."""
        con = sqlite3.connect(self.journal)
        try:
            rows = con.execute("SELECT seq, hex(id), kind, labels FROM checkpoints ORDER BY seq")
            listed = rows.fetchall()
            h = hashlib.sha256()
            for line in con.iterdump():
                h.update(line.encode() + b"\n")
            return listed, h.hexdigest()
        finally:
            con.close()


Node = Agent  # the name the agent's own tests use


def add_memory_sources(agent: Agent, root: Path, tier: str = "warm") -> None:
    """The four sources of tests.support.data.make_memory's tree."""
    agent.add("memory", "sqlite", root / "memory.db", "--tier", tier)
    agent.add("logs", "jsonl", root / "logs", "--tier", tier)
    agent.add("prompts", "files", root / "prompts", "--tier", tier)
    agent.add("policies", "files", root / "policies", "--tier", tier)


@contextlib.contextmanager
def background(agent: Agent, *args: object) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``amber-agent ARGS`` in the background; stop it (SIGTERM) on exit."""
    proc = agent.popen(*args)
    try:
        yield proc
    finally:
        stop_proc(proc, grace=15)
