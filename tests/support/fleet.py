"""A real fleet for the staged-restore tests: one hub in a box, agent daemons as processes.

- :class:`Fleet` runs the hub (tests/support/hub.HubProcess), writes a vault key with
  ``amber-agent keygen`` and enrols nodes that share it. Each :class:`Node` protects three
  sources under ``<home>/data``: ``memory`` (a SQLite database), ``files`` (prompts,
  policies, a blob) and ``model`` (weights), and runs ``amber-agent run`` as a daemon
  subprocess with ``[hub] sync_interval = 1`` and no journal chunk cache (so restores
  really fetch from the hub).
- Every node has the same ``[hooks]`` and ``[checks.health]``, which every plan names
  (``--check health``; the check runs with no environment of the daemon's, so its script
  names the node's home itself); they log a
  timestamp to ``<home>/hooks.log`` and obey marker files in ``<home>`` (the daemon gets
  ``AMBER_TEST_HOME=<home>`` in its environment), so a test steers one node at a time:
  ``hold-pre`` / ``hold-health`` keep the pre_restore hook / the health command waiting,
  ``unhealthy`` makes the health command fail.
- Node data comes in numbered *states*: :meth:`Node.write_state` replaces the data with
  state N, :meth:`Node.capture` records what is there (trees with modes and digests, the
  database's dump), and the ``assert_*`` helpers compare.

Plain Python, no pytest imports; the fixture lives in tests/support/fixtures.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.agent.config import CheckConfig
from tests.support.data import integrity, sqlite_dump, tree, write_machine_state
from tests.support.faultproxy import ThreadedProxy
from tests.support.hub import HubProcess
from tests.support.node import Agent, keygen
from tests.support.procs import stop_proc, tail, wait_until

VAULT = "fleet"
HOME_ENV = "AMBER_TEST_HOME"
_LOG = f'"${HOME_ENV}/hooks.log"'
PRE_HOOK = (
    f'echo pre $(date +%s%N) >> {_LOG}; while [ -e "${HOME_ENV}/hold-pre" ]; do sleep 0.05; done'
)
POST_HOOK = f"echo post $(date +%s%N) >> {_LOG}"
HEALTH_CMD = (
    f"echo health $(date +%s%N) >> {_LOG}; "
    f'while [ -e "${HOME_ENV}/hold-health" ]; do sleep 0.05; done; '
    f'test ! -e "${HOME_ENV}/unhealthy"'
)
PLAN_DONE = ("done", "halted", "aborted")
NODE_FINAL = ("healthy", "failed", "rolled_back")
NODE_BUSY = ("queued", "fetching", "verifying", "swapped")


@dataclass
class State:
    """What a node's data held at one moment."""

    raw: dict[str, tuple[Any, ...]]  # the whole data dir, byte for byte (database included)
    files: dict[str, tuple[Any, ...]]
    model: dict[str, tuple[Any, ...]]
    dump: list[str]  # the database's logical content


class Node:
    """One enrolled agent with its data, hooks and daemon process."""

    def __init__(self, fleet: Fleet, name: str, home: Path, agent: Agent) -> None:
        self.fleet, self.name, self.home, self.agent = fleet, name, home, agent
        self.data = home / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.data / "db" / "memory.db"

    # -- data
    def write_state(self, seed: int, model_size: int = 96 * 1024) -> State:
        """Replace the node's data with state ``seed`` (every source differs per seed)."""
        write_machine_state(self.data, f"node {self.name}", seed, model_size)
        return self.capture()

    def capture(self) -> State:
        raw = tree(self.data)  # before anything opens the database
        return State(
            raw, tree(self.data / "files"), tree(self.data / "model"), sqlite_dump(self.db)
        )

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.data.rglob(".amber-*"))

    # -- the daemon
    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        self.proc = self.agent.popen("run", env={HOME_ENV: str(self.home)})

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc, grace=15)
            self.proc = None

    def crash(self) -> None:
        """SIGKILL the daemon and whatever hook it is running (its process group)."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a session leader: pgid == pid
        self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.agent.log, lines)

    # -- markers and the hook log
    def mark(self, name: str) -> None:
        (self.home / name).touch()

    def unmark(self, name: str) -> None:
        (self.home / name).unlink(missing_ok=True)

    def hook_times(self, kind: str) -> list[int]:
        """Microsecond times the pre/post hook or the health command started."""
        path = self.home / "hooks.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == kind:
                out.append(int(parts[1]) // 1000)
        return out

    # -- the journal
    def jobs(self, plan_id: str) -> list[tuple[str, str, str]]:
        """(order id, action, state) of the journal's restore jobs for a plan."""
        try:
            rows = self.agent.journal_query(
                "SELECT order_id, action, state FROM restore_jobs WHERE plan_id = ?"
                " ORDER BY updated_us",
                (plan_id,),
            )
        except Exception as exc:  # the table appears with the daemon's first start
            if "no such table" in str(exc):
                return []
            raise
        return [(r[0], r[1], r[2]) for r in rows]

    def checkpoint(self, *labels: str) -> dict[str, Any]:
        """``amber-agent checkpoint --json`` while the daemon runs. A checkpoint that
        fails with "journal ... is locked" (exit 40) committed nothing and is taken again:
        the chunk pipeline writes to the journal from a background task while the next
        window's read is open on the same connection, so a sync the daemon committed
        meanwhile makes BEGIN IMMEDIATE fail with SQLITE_BUSY_SNAPSHOT, which the busy
        timeout does not cover (an agent bug outside these tests, ~1 checkpoint in 100)."""
        args: list[object] = ["checkpoint", "--json"]
        for label in labels:
            args += ["--label", label]
        for _ in range(3):
            res = self.agent.run(*args)
            if res.code != 40 or "is locked" not in res.err:
                break
            time.sleep(0.2)
        assert res.code == 0, res
        return dict(res.json())

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.agent.checkpoints()


@dataclass
class Prepared:
    """A node after :meth:`Fleet.prepare`: checkpoint ``cp`` holds ``a``; ``b`` is live."""

    a: State
    b: State
    cp: str


class Fleet:
    """A hub in a box and the nodes of one vault (sharing one vault key)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub = HubProcess(root / "hub")
        self.nodes: dict[str, Node] = {}
        self.proxies: dict[str, ThreadedProxy] = {}
        self.key: Path | None = None
        self.seed = 0

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hub.start()
        self.key = keygen(self.root / "vault.key")

    def add_node(
        self, name: str, labels: tuple[str, ...] = (), via_proxy: bool = False, data: bool = True
    ) -> Node:
        """Enrol ``name``, initialise its agent with the vault key and its three sources.
        ``data=False``: a replacement machine, sources configured but nothing there yet."""
        home = self.root / name
        home.mkdir(parents=True)
        enrolment = self.hub.enrol(name, VAULT, home / "enrolment.json", *labels)
        agent = Agent.init(home / "state", name, VAULT, self.key, enroll=enrolment)
        node = Node(self, name, home, agent)
        node.write_state(self.next_seed())
        agent.add("memory", "sqlite", node.db)
        agent.add("files", "files", node.data / "files")
        agent.add("model", "model", node.data / "model")
        health = ("/bin/sh", "-c", f"{HOME_ENV}={shlex.quote(str(home))}; {HEALTH_CMD}")
        agent.configure(
            journal_cache_bytes=0,
            hooks={"pre_restore": PRE_HOOK, "post_restore": POST_HOOK},
            checks={"health": CheckConfig("health", health, 120)},
        )
        agent.set_hub(sync_interval=1)
        if data:
            node.checkpoint()  # so the daemon finds nothing due when it starts
        else:
            shutil.rmtree(node.data)
        if via_proxy:
            proxy = ThreadedProxy(self.hub.nats_port)
            self.proxies[name] = proxy
            agent.point_at(proxy.url)
        self.nodes[name] = node
        return node

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        for proxy in self.proxies.values():
            proxy.close()
        self.hub.cleanup()

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed * 7919

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    # -- between tests
    def reset(self) -> None:
        """Every daemon running, no markers, links at full speed, an empty hook log."""
        for proxy in self.proxies.values():
            proxy.set_bandwidth(None)
            proxy.restore()
        for node in self.nodes.values():
            for marker in ("hold-pre", "hold-health", "unhealthy", "hooks.log"):
                node.unmark(marker)
            if not node.running:
                node.start()

    def prepare(self, names: list[str], model_size: int = 96 * 1024) -> dict[str, Prepared]:
        """Each node: write a new state A, checkpoint it, wait until the hub holds it, then
        write state B (the live data a restore of A will overwrite)."""
        a = {n: self[n].write_state(self.next_seed(), model_size) for n in names}
        cps = {n: self[n].checkpoint()["id"] for n in names}
        self.wait_at_hub(set(cps.values()))
        b = {n: self[n].write_state(self.next_seed()) for n in names}
        return {n: Prepared(a[n], b[n], cps[n]) for n in names}

    def wait_at_hub(self, ids: set[str], timeout: float = 30) -> list[dict[str, Any]]:
        def synced() -> list[dict[str, Any]] | None:
            rows = self.hub.checkpoints(vault=VAULT)
            return rows if ids <= {r["id"] for r in rows} else None

        return list(wait_until("checkpoints at the hub", synced, timeout, interval=0.2))

    # -- restore plans through `amber-hub restore ...`
    def plan(self, *args: object, health: bool = True) -> dict[str, Any]:
        extra: list[object] = ["--check", "health"] if health else []
        res = self.hub.ok("restore", "plan", "--vault", VAULT, *args, *extra, "--json")
        return dict(res.json())

    def start_plan(self, plan_id: str) -> None:
        self.hub.ok("restore", "start", plan_id)

    def status(self, plan_id: str) -> dict[str, Any]:
        return dict(self.hub.ok("restore", "status", plan_id, "--json").json())

    def wait_plan(
        self,
        plan_id: str,
        check: Any,
        what: str,
        timeout: float = 45,
        seen: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Poll the plan's status until ``check(plan)``; every status polled is appended
        to ``seen``. On timeout, fail with the plan and the daemons' logs."""
        deadline = time.monotonic() + timeout
        while True:
            plan = self.status(plan_id)
            if seen is not None:
                seen.append(plan)
            if check(plan):
                return plan
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{n.log_tail(15)}" for n in self.nodes.values())
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}:\n"
                    f"{json.dumps(plan, indent=1)}\n{logs}"
                )
            time.sleep(0.1)

    def wait_settled(self, plan_id: str, timeout: float = 45, **kw: Any) -> dict[str, Any]:
        """Until the plan is done/halted/aborted and no node is mid-restore."""
        return self.wait_plan(plan_id, settled, "the plan to settle", timeout, **kw)


def settled(plan: dict[str, Any]) -> bool:
    return plan["state"] in PLAN_DONE and all(n["state"] not in NODE_BUSY for n in plan["nodes"])


def node_states(plan: dict[str, Any]) -> dict[str, str]:
    return {n["node"]: n["state"] for n in plan["nodes"]}


def waves_of(plan: dict[str, Any]) -> dict[str, int]:
    return {n["node"]: n["wave"] for n in plan["nodes"]}


# --------------------------------------------------------------------------- assertions


def assert_restored(node: Node, expected: State) -> None:
    """The node's sources hold ``expected`` (restored copies: the database's content is
    compared, not its bytes), with nothing left over from staging or swapping."""
    assert node.leftovers() == [], f"{node.name}: staging/old copies left: {node.leftovers()}"
    assert tree(node.data / "files") == expected.files, f"{node.name}: files differ"
    assert tree(node.data / "model") == expected.model, f"{node.name}: model differs"
    assert sorted(p.name for p in node.db.parent.iterdir()) == ["memory.db"]
    assert integrity(node.db) == "ok", f"{node.name}: database fails integrity_check"
    assert sqlite_dump(node.db) == expected.dump, f"{node.name}: database content differs"


def without_reader_files(t: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """``t`` less a database's ``-shm`` and empty ``-wal``: what a read-only reader (the
    agent's own backup connection for the safety checkpoint) leaves beside a WAL-mode
    database, with no content in them."""
    return {
        k: v
        for k, v in t.items()
        if not k.endswith("-shm") and not (k.endswith("-wal") and v[2] == 0)
    }


def assert_untouched(node: Node, expected: State) -> None:
    """The node's data is byte for byte ``expected`` (the database file included)."""
    now = without_reader_files(tree(node.data))
    assert now == expected.raw, (
        f"{node.name}: data changed: {sorted(set(now.items()) ^ set(expected.raw.items()))[:6]}"
    )
    assert integrity(node.db) == "ok"
