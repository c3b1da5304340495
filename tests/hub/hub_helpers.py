"""Process helpers for the hub and sync tests: a real hub in a box, real agents.

- :class:`HubProcess` runs ``python -m amber.hub.cli.parser --data D serve`` as a subprocess,
  waits for D/hub.json to name *this* process, and stops or SIGKILLs it by pid. The hub
  starts its own nats-server (pid in D/nats/nats-server.pid), which outlives a hub killed
  with SIGKILL; :meth:`HubProcess.cleanup` kills every nats-server the data dir ever
  had, by pid, after checking the pid still is that server.
- :class:`Agent` drives ``amber-agent`` in this process (fast) or as a real subprocess
  (when it must run while the test injects faults, or as the daemon).
- :class:`ThreadedProxy` runs tests/support/faultproxy.py's asyncio FaultProxy on its own event
  loop thread, so synchronous tests can cut and slow a link while a child process syncs.
- Sample data (agent memory, a model), tree digests, and inspectors for the agent's
  journal and the hub's catalog (read-only SQLite).

Plain Python, no pytest imports; fixtures live in tests/hub/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.agent.cli import main as agent_main
from amber.agent.config import TierPolicy, load_config, save_config
from amber.hub.cli import main as hub_main
from tests.support.faultproxy import FaultProxy

PY = sys.executable

# --------------------------------------------------------------------------- processes

_libc_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        _libc_prctl = None


def _die_with_parent() -> None:  # in the child, between fork and exec
    if _libc_prctl is not None:
        _libc_prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session, output appended to ``log``; it dies with us."""
    preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
    with open(log, "ab") as fh:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            env={**os.environ, **(env or {})},
        )


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_pid(pid)


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} survived SIGKILL for {timeout}s")
        time.sleep(0.02)


def stop_proc(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM a child, wait ``grace`` seconds, SIGKILL if needed; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err[-4000:]}"


def _in_process(main: Callable[[list[str]], int], args: tuple[object, ...]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


# --------------------------------------------------------------------------- the hub


class HubProcess:
    """``amber-hub --data DATA serve`` as a real process (a hub in a box)."""

    START_TIMEOUT = 30.0

    def __init__(self, data: Path, config: str | None = None) -> None:
        self.data = data
        self.config = config  # hub.toml text, written beside DATA and passed as --config
        self.log = data.parent / f"{data.name}-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.nats_pids: set[int] = set()  # every nats-server seen, killed by cleanup()

    # -- where things are
    @property
    def runtime(self) -> dict[str, Any]:
        return json.loads((self.data / "hub.json").read_text())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def nats_url(self) -> str:
        return str(self.runtime["nats_url"])

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
        argv = [PY, "-m", "amber.hub.cli", "--data", str(self.data)]
        if self.config is not None:
            toml = self.data.parent / f"{self.data.name}.toml"
            toml.write_text(self.config)
            argv += ["--config", str(toml)]
        argv.append("serve")
        argv += ["--nats-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        self.proc = spawn(argv, self.log)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"amber-hub serve exited with {self.proc.returncode}:\n{tail(self.log)}"
                )
            try:
                info = self.runtime
                if info.get("pid") == self.proc.pid:
                    url = info["admin_url"] + "/api/v1/health"
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        if json.loads(resp.read()).get("ok"):
                            pid = self.nats_pid()
                            if pid is not None:
                                self.nats_pids.add(pid)
                            return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"hub not ready after {self.START_TIMEOUT}s:\n{tail(self.log)}")

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
        return _in_process(hub_main, ("--data", self.data, *args))

    def ok(self, *args: object) -> Result:
        res = self.admin(*args)
        assert res.code == 0, res
        return res

    def admin_proc(self, *args: object, timeout: float = 60) -> Result:
        """``amber-hub --data DATA ARGS`` as a real process (its own logging, exit code)."""
        done = subprocess.run(
            [PY, "-m", "amber.hub.cli", "--data", str(self.data), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def enrol(self, node: str, vault: str, out: Path) -> Path:
        self.ok("node", "add", node, "--vault", vault, "--out", out)
        return out

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
        con = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def catalog_object_ids(self, vault: str) -> set[bytes]:
        return {r[0] for r in self.catalog_query("SELECT id FROM objects WHERE vault=?", (vault,))}

    def store_files(self) -> list[Path]:
        root = self.objects_dir
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------- agents


def agent_cli(*args: object) -> Result:
    """``amber-agent ARGS`` in this process."""
    return _in_process(agent_main, args)


def agent_argv(*args: object) -> list[str]:
    return [PY, "-m", "amber.agent.cli", *map(str, args)]


def keygen(out: Path) -> Path:
    res = agent_cli("keygen", "--out", out)
    assert res.code == 0, res
    return out


class Agent:
    """One initialised node: its state directory and agent.toml."""

    def __init__(self, state: Path, node: str, vault: str) -> None:
        self.state, self.node, self.vault = state, node, vault
        self.config = state / "agent.toml"
        self.log = state.parent / f"{state.name}-agent.log"
        self.init_output = ""
        self.enrolment: Path | None = None

    @classmethod
    def init(
        cls,
        state: Path,
        node: str,
        vault: str,
        vault_key: Path | None = None,
        enroll: Path | None = None,
    ) -> Agent:
        args: list[object] = ["init", "--dir", state, "--node", node, "--vault", vault]
        if vault_key is not None:
            args += ["--vault-key", vault_key]
        if enroll is not None:
            args += ["--enroll", enroll]
        res = agent_cli(*args)
        assert res.code == 0, res
        agent = cls(state, node, vault)
        agent.init_output = res.out
        agent.enrolment = enroll
        return agent

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    # -- commands
    def run(self, *args: object) -> Result:
        return agent_cli("--config", self.config, *args)

    def ok(self, *args: object) -> Result:
        res = self.run(*args)
        assert res.code == 0, res
        return res

    def proc(self, *args: object, timeout: float = 60) -> Result:
        """``amber-agent ARGS`` as a real process, bounded by ``timeout``."""
        try:
            done = subprocess.run(
                agent_argv("--config", self.config, *args),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"amber-agent {args} ran over {timeout}s: {exc.stderr!r}"
            ) from None
        return Result(done.returncode, done.stdout, done.stderr)

    def popen(self, *args: object) -> subprocess.Popen[bytes]:
        """``amber-agent ARGS`` started in the background (output to self.log)."""
        with open(self.log, "ab") as fh:
            fh.write(f"\n==== amber-agent {' '.join(map(str, args))} ====\n".encode())
        return spawn(agent_argv("--config", self.config, *args), self.log)

    def add(self, name: str, kind: str, path: Path, *extra: object) -> None:
        self.ok("source", "add", name, "--kind", kind, "--path", path, *extra)

    def checkpoint(self, *args: object) -> dict[str, Any]:
        return dict(self.ok("checkpoint", "--json", *args).json())

    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.ok("checkpoints", "--json").json())

    def status(self) -> dict[str, Any]:
        return dict(self.ok("status", "--json").json())

    def sync(self) -> dict[str, Any]:
        return dict(self.ok("sync", "--once", "--json").json())

    def restore_to(self, ref: str, dest: Path) -> Result:
        return self.ok("restore", ref, "--to", dest)

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
        con = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

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


# --------------------------------------------------------------------------- a fault proxy


class ThreadedProxy:
    """tests/support/faultproxy.py's FaultProxy on an event loop in a thread of its own."""

    def __init__(self, target_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = FaultProxy("127.0.0.1", target_port)
        self._call(self.proxy.start())

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _do(self, fn: Callable[[], None]) -> None:
        async def run() -> None:
            fn()

        self._call(run())

    @property
    def url(self) -> str:
        return self.proxy.url("nats")

    @property
    def bytes_upstream(self) -> int:
        return self.proxy.bytes_upstream

    @property
    def connections_total(self) -> int:
        return self.proxy.connections_total

    def cut(self, silent: bool = False) -> None:
        self._do(lambda: self.proxy.cut(silent=silent))

    def restore(self) -> None:
        self._do(self.proxy.restore)

    def set_latency(self, seconds: float) -> None:
        self._do(lambda: self.proxy.set_latency(seconds))

    def set_bandwidth(self, bps: float | None) -> None:
        self._do(lambda: self.proxy.set_bandwidth(bps))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# --------------------------------------------------------------------------- sample data


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def age_tree(root: Path, seconds: int = 3600) -> None:
    """Give everything under ``root`` an old mtime (past the racy-file window)."""
    t = time.time_ns() - seconds * 1_000_000_000
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if not p.is_symlink():
            os.utime(p, ns=(t, t))


def make_model(root: Path, size: int, seed: int = 7) -> Path:
    """A model directory: incompressible weights of ``size`` bytes and a small config."""
    write(root / "weights.bin", rand(size, seed))
    write(root / "config.json", json.dumps({"layers": 12, "seed": seed}))
    age_tree(root)
    return root


def make_sqlite(path: Path, rows: int = 400, body: int = 200, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS msgs(id INTEGER PRIMARY KEY, role TEXT, body BLOB)")
    rng = random.Random(seed)
    con.executemany(
        "INSERT INTO msgs(role, body) VALUES(?, ?)",
        [("user" if i % 2 else "assistant", rng.randbytes(body)) for i in range(rows)],
    )
    con.commit()
    con.close()
    return path


def make_memory(root: Path, seed: int = 1) -> Path:
    """Agent memory: a SQLite database, a JSONL conversation log, prompts and policies."""
    make_sqlite(root / "memory.db", seed=seed)
    write(
        root / "logs" / "conversation.jsonl",
        "".join(
            json.dumps({"turn": i, "text": f"message {i} seed {seed}"}) + "\n" for i in range(300)
        ),
    )
    write(root / "prompts" / "system.txt", f"You are a careful assistant ({seed}).\n" * 50)
    write(root / "policies" / "allow.json", json.dumps({"allow": list(range(200))}))
    age_tree(root / "prompts")
    age_tree(root / "policies")
    return root


def add_memory_sources(agent: Agent, root: Path, tier: str = "warm") -> None:
    agent.add("memory", "sqlite", root / "memory.db", "--tier", tier)
    agent.add("logs", "jsonl", root / "logs", "--tier", tier)
    agent.add("prompts", "files", root / "prompts", "--tier", tier)
    agent.add("policies", "files", root / "policies", "--tier", tier)


def grow_memory(root: Path, rows: int = 50, seed: int = 99) -> None:
    """What an agent does between checkpoints: new rows, new log lines."""
    make_sqlite(root / "memory.db", rows=rows, seed=seed)
    with open(root / "logs" / "conversation.jsonl", "a") as fh:
        for i in range(rows):
            fh.write(json.dumps({"turn": 1000 + i, "text": f"later {seed}"}) + "\n")


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root``: type, mode, size and content digest (or link)."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d",)
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, digest)
    return out


def sqlite_dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def integrity(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


@dataclass
class Snapshot:
    """What a memory/model root held when a checkpoint was taken."""

    files: dict[str, dict[str, tuple[Any, ...]]]  # source dir name -> tree
    db_dump: list[str] | None


def snapshot(sources: dict[str, Path], db: Path | None = None) -> Snapshot:
    return Snapshot(
        {name: tree(path) for name, path in sources.items()},
        sqlite_dump(db) if db is not None else None,
    )


def assert_restored(dest: Path, snap: Snapshot, db_source: str | None = None) -> None:
    """``dest/<source>`` matches the snapshot bit for bit; the db passes integrity_check."""
    for name, expected in snap.files.items():
        assert tree(dest / name) == expected, f"source {name} differs after restore"
    if db_source is not None:
        dbs = list((dest / db_source).glob("*.db"))
        assert len(dbs) == 1, f"restored {db_source}: {sorted(dest.rglob('*'))}"
        assert integrity(dbs[0]) == "ok"
        assert sqlite_dump(dbs[0]) == snap.db_dump


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


@contextlib.contextmanager
def background(agent: Agent, *args: object) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``amber-agent ARGS`` in the background; stop it (SIGTERM) on exit."""
    proc = agent.popen(*args)
    try:
        yield proc
    finally:
        stop_proc(proc, grace=15)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


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
