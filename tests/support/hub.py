"""The hub in tests: one way to run ``amber-hub serve`` as a real process and talk to it.

- :class:`HubProcess` runs ``python -m amber.hub.cli --data D serve`` on free ports,
  waits for D/hub.json to name *this* process and for the admin API's health check, and
  stops or SIGKILLs it by pid. The hub starts its own nats-server (pid in
  D/nats/nats-server.pid), which outlives a hub killed with SIGKILL;
  :meth:`HubProcess.cleanup` kills every nats-server the data dir ever had, by pid,
  after checking the pid still is that server.
- The admin CLI runs in this process (:meth:`HubProcess.admin`, fast) or as a real
  process (:meth:`HubProcess.admin_proc`); :meth:`HubProcess.api` calls the HTTP admin
  API directly with the admin token.
- :func:`new_agent` enrols a node and initialises its agent (tests/support/node.py);
  invariants check what a node and the hub agree on.

Plain Python, no pytest imports; fixtures live in tests/support/fixtures.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amber.hub.cli import main as hub_main
from tests.support.data import query_ro
from tests.support.hubtls import admin_context
from tests.support.node import Agent
from tests.support.procs import (
    PY,
    Result,
    in_process,
    kill_pid,
    pid_alive,
    run_python,
    spawn,
    stop_proc,
    tail,
    wait_until,
)
from tests.support.servers import ChildServer

# --------------------------------------------------------------------------- the hub


class HubProcess(ChildServer):
    """``amber-hub --data DATA serve`` as a real process (a hub in a box)."""

    START_TIMEOUT = 30.0

    def __init__(
        self,
        data: Path,
        *,
        options: Sequence[object] = (),
        serve_options: Sequence[object] = (),
        env: dict[str, str] | None = None,
        stdout: Path | None = None,
        config: str | None = None,
    ) -> None:
        """``options`` go before ``serve`` (e.g. ``-v``, ``--log-format json``),
        ``serve_options`` after it (e.g. ``--store URL``); ``env`` is added to ours.
        Output goes to :attr:`log`, stdout to ``stdout`` instead if given. ``config``:
        hub.toml text, written beside DATA and passed as ``--config``."""
        self.data = data
        self.config = config
        self.log = data.parent / f"{data.name}-serve.log"
        self.stdout = stdout
        self.options = [str(o) for o in options]
        self.serve_options = [str(o) for o in serve_options]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.nats_pids: set[int] = set()  # every nats-server seen, killed by cleanup()

    # -- where things are
    @property
    def runtime(self) -> dict[str, Any]:
        return json.loads((self.data / "hub.json").read_text())

    def _child(self) -> subprocess.Popen[bytes] | None:
        return self.proc

    @property
    def nats_url(self) -> str:
        return str(self.runtime["nats_url"])

    @property
    def admin_url(self) -> str:
        return str(self.runtime["admin_url"])

    @property
    def token(self) -> str:
        return str(json.loads((self.data / "secrets.json").read_text())["admin_token"])

    @property
    def nats_port(self) -> int:
        return int((self.data / "nats" / "port").read_text())

    @property
    def catalog_path(self) -> Path:
        return self.data / "catalog.db"

    @property
    def objects_dir(self) -> Path:
        """Where the default local store keeps object files (keys are paths below)."""
        return self.data / "objects" / "objects"

    def record_path(self, vault: str, rid: str) -> Path:
        return self.objects_dir / vault / "records" / rid

    def nats_pid(self) -> int | None:
        """The pid in DATA/nats/nats-server.pid if that process is this hub's server."""
        try:
            pid = int((self.data / "nats" / "nats-server.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        conf = str(self.data / "nats" / "nats.conf").encode()
        if b"nats-server" in cmdline and conf in cmdline and pid_alive(pid):
            return pid
        return None

    # -- lifecycle
    def start(self) -> HubProcess:
        if self.running:
            raise AssertionError("hub already running")
        self.data.parent.mkdir(parents=True, exist_ok=True)
        argv = [PY, "-m", "amber.hub.cli", *self.options, "--data", str(self.data)]
        if self.config is not None:
            toml = self.data.parent / f"{self.data.name}.toml"
            toml.write_text(self.config)
            argv += ["--config", str(toml)]
        argv.append("serve")
        argv += ["--nats-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        self.proc = spawn([*argv, *self.serve_options], self.log, self.env, self.stdout)
        self._ready_or_killed()
        return self

    def _wait_ready(self) -> None:
        try:
            wait_until("amber-hub serve to answer", self._ready, self.START_TIMEOUT, 0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{tail(self.log)}") from None

    def _ready(self) -> bool:
        """Whether hub.json names this process and its admin API answers its health
        check (then its nats-server's pid is noted for :meth:`cleanup`)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"amber-hub serve exited with {self.proc.returncode}")
        try:
            info = self.runtime
            if info.get("pid") != self.proc.pid:
                return False
            url = info["admin_url"] + "/api/v1/health"
            ctx = admin_context(self.data)
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                if not json.loads(resp.read()).get("ok"):
                    return False
        except (OSError, ValueError, KeyError):
            return False
        pid = self.nats_pid()
        if pid is not None:
            self.nats_pids.add(pid)
        return True

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the hub (it stops its nats-server), SIGKILL after ``grace`` s."""
        if self.proc is None:
            return None
        code = stop_proc(self.proc, grace)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the hub process only: its nats-server keeps running."""
        pid = self.nats_pid()
        if pid is not None:
            self.nats_pids.add(pid)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill_nats(self) -> int:
        """SIGKILL the hub's nats-server (by the pid in its pid file)."""
        pid = self.nats_pid()
        assert pid is not None, "the hub's nats-server is not running"
        self.nats_pids.add(pid)
        kill_pid(pid)
        return pid

    def restart(self) -> HubProcess:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the hub and make sure no nats-server of this data dir survives."""
        with contextlib.suppress(Exception):
            self.stop(grace=10)
        if self.proc is not None:
            self.kill()
        current = self.nats_pid()
        if current is not None:
            self.nats_pids.add(current)
        conf = str(self.data / "nats" / "nats.conf").encode()
        for pid in self.nats_pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"nats-server" in cmdline and conf in cmdline:
                kill_pid(pid)

    # -- admin CLI (in this process; it talks to the running hub over HTTP)
    def admin(self, *args: object) -> Result:
        return in_process(hub_main, ("--data", self.data, *args))

    def ok(self, *args: object) -> Result:
        res = self.admin(*args)
        assert res.code == 0, res
        return res

    def admin_proc(self, *args: object, timeout: float = 60) -> Result:
        """``amber-hub --data DATA ARGS`` as a real process (its own logging, exit code)."""
        return run_python("-m", "amber.hub.cli", "--data", self.data, *args, timeout=timeout)

    def enrol(self, node: str, vault: str, out: Path, *labels: str) -> Path:
        """``amber-hub node add``: the enrolment file for ``vault/node`` written to ``out``."""
        args: list[object] = ["node", "add", node, "--vault", vault, "--out", out]
        for label in labels:
            args += ["--label", label]
        self.ok(*args)
        return out

    def enrolment(self, vault: str, node: str, out: Path, *, api: bool = False) -> dict[str, Any]:
        """Enrol ``vault/node`` (by the CLI, or the admin API it calls) and return the
        enrolment, also written to ``out``."""
        if not api:
            return dict(json.loads(self.enrol(node, vault, out).read_text()))
        enrolment = dict(self.api("/api/v1/nodes", {"vault": vault, "node": node}))
        out.write_text(json.dumps(enrolment))
        return enrolment

    # -- the HTTP admin API, with the admin token
    def api(self, path: str, body: Any = None) -> Any:
        """GET ``path`` (POST ``body`` as JSON when given) and decode the answer."""
        req = urllib.request.Request(
            self.admin_url + path,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
        )
        ctx = admin_context(self.data)
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return json.loads(resp.read())

    def rejected(self, vault: str, node: str) -> int:
        """How many messages of ``vault/node`` the hub's ingest refused."""
        status = self.api("/api/v1/status")
        return int(status["ingest"]["rejected"].get(f"{vault}/{node}", 0))

    def output(self) -> str:
        """Everything ``serve`` wrote (stdout and stderr) so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def checkpoints(self, node: str | None = None, vault: str | None = None) -> list[Any]:
        args: list[object] = ["checkpoints", "--json"]
        if node:
            args += ["--node", node]
        if vault:
            args += ["--vault", vault]
        return list(self.ok(*args).json())

    def status(self) -> dict[str, Any]:
        return dict(self.ok("status", "--json").json())

    def node_status(self, node: str) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["node"] == node)

    # -- the catalog and store, read directly
    def catalog_query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return query_ro(self.catalog_path, sql, args)

    def catalog_object_ids(self, vault: str) -> set[bytes]:
        return {r[0] for r in self.catalog_query("SELECT id FROM objects WHERE vault=?", (vault,))}

    def store_files(self) -> list[Path]:
        root = self.objects_dir
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def stored_files(self) -> dict[str, int]:
        """Every file under DATA/objects (objects and store metadata), with its size."""
        root = self.data / "objects"
        if not root.exists():
            return {}
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    def holdings(self) -> tuple[Any, ...]:
        """What the hub holds: object files, catalog counts, checkpoints per node."""
        st = self.api("/api/v1/status")
        cps = [(c["vault"], c["node"], c["seq"], c["id"]) for c in self.api("/api/v1/checkpoints")]
        return (self.stored_files(), st["objects"], st["stored_bytes"], sorted(cps))


# --------------------------------------------------------------------------- invariants


def assert_exactly_once_at_hub(hub: HubProcess, agent: Agent) -> list[dict[str, Any]]:
    """Every checkpoint of the node is at the hub once, in one unbroken chain, and the
    journal marks each as synced."""
    local = agent.journal_checkpoints()
    remote = hub.checkpoints(node=agent.node, vault=agent.vault)
    assert [c["seq"] for c in remote] == list(range(len(remote))), remote
    assert [(c["seq"], c["id"]) for c in remote] == [(s, i) for s, i, _ in local]
    prev = None
    for c in remote:
        assert c["prev"] == prev, f"the hub's chain breaks at seq {c['seq']}"
        prev = c["id"]
    assert all(state == 2 for _, _, state in local), f"unsynced in the journal: {local}"
    # and each checkpoint's record is an object in the store (content-addressed: once)
    records = {p.name for p in hub.store_files() if p.parent.name == "records"}
    assert {c["id"] for c in remote} <= records
    return remote


def assert_evicted_only_durable(hub: HubProcess, agent: Agent) -> int:
    """Every chunk whose blob the journal dropped is in the hub's catalog."""
    evicted = agent.evicted_chunks()
    missing = evicted - hub.catalog_object_ids(agent.vault)
    assert not missing, f"{len(missing)} evicted chunk(s) are not at the hub"
    return len(evicted)


def new_agent(
    hub: HubProcess,
    root: Path,
    node: str,
    vault: str,
    vault_key: Path | None = None,
) -> Agent:
    """Enrol ``node`` at the hub and initialise its agent in ``root/<vault>.<node>-state``
    (its enrolment file, kept as a real node keeps it, is ``agent.enrolment``)."""
    enrolment = hub.enrol(node, vault, root / f"{vault}.{node}.enrol.json")
    agent = Agent.init(root / f"{vault}.{node}-state", node, vault, vault_key, enroll=enrolment)
    agent.enrolment = enrolment
    return agent


def synced_node(hub: HubProcess, root: Path, node: str = "n1", vault: str = "v1") -> Agent:
    """:func:`new_agent` with one ``files`` source, ``root/src`` holding ``a.txt``,
    checkpointed and synced once."""
    agent = new_agent(hub, root, node, vault)
    src = root / "src"
    src.mkdir()
    (src / "a.txt").write_text("first\n")
    agent.add("files", "files", src)
    agent.ok("checkpoint")
    agent.ok("sync", "--once")
    return agent
