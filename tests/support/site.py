"""An air-gapped site for the bundle tests: a hub in a box, and nodes that never reach it.

- :class:`Site` runs the hub (tests/support/hub.HubProcess) and writes a vault key.
  Nodes are enrolled at the hub (``amber-hub node add``), but the enrolment never reaches
  the node's agent: the node learns only the hub's public key (:attr:`Site.hub_key`), as
  an operator would carry it to the site with the first bundle. No agent here ever opens
  a connection to the hub.
- :class:`Machine` is one agent (state directory, agent.toml) with three sources under
  ``<home>/data``: ``memory`` (SQLite), ``files`` and ``model``, and ``[hooks]`` that log
  to ``<home>/hooks.log``. Its data comes in numbered states (:meth:`Machine.write_state`);
  :meth:`Machine.capture` records what is there, :meth:`Machine.assert_state` compares.
- Snapshots of a journal and of the hub's catalog, to show that a refused bundle changed
  nothing.

Plain Python, no pytest imports; the fixture lives in tests/support/fixtures.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.data import has_table, integrity, sqlite_dump, tree, write_machine_state
from tests.support.hub import HubProcess
from tests.support.node import Agent, keygen
from tests.support.procs import PY, Result

VAULT = "site"


@dataclass
class State:
    """What a machine's sources held at one moment."""

    files: dict[str, tuple[Any, ...]]
    model: dict[str, tuple[Any, ...]]
    dump: list[str]


class Machine:
    """One agent at the air-gapped site."""

    def __init__(self, home: Path, agent: Agent) -> None:
        self.home, self.agent = home, agent
        self.data = home / "data"

    @property
    def db(self) -> Path:
        return self.data / "db" / "memory.db"

    @property
    def node(self) -> str:
        return self.agent.node

    def run(self, *args: object) -> Result:
        return self.agent.run(*args)

    def ok(self, *args: object) -> Result:
        return self.agent.ok(*args)

    # -- data
    def write_state(self, seed: int) -> State:
        """Replace the machine's data with state ``seed`` (every source differs per seed)."""
        write_machine_state(self.data, self.node, seed, 80 * 1024)
        return self.capture()

    def capture(self) -> State:
        return State(tree(self.data / "files"), tree(self.data / "model"), sqlite_dump(self.db))

    def assert_state(self, st: State) -> None:
        assert tree(self.data / "files") == st.files, "files differ"
        assert tree(self.data / "model") == st.model, "model differs"
        assert integrity(self.db) == "ok"
        assert sqlite_dump(self.db) == st.dump, "the database differs"

    def raw(self) -> dict[str, tuple[Any, ...]]:
        """The whole data directory, byte for byte."""
        return tree(self.data)

    def checkpoint(self, *labels: str) -> dict[str, Any]:
        args: list[object] = []
        for label in labels:
            args += ["--label", label]
        return self.agent.checkpoint(*args)

    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.ok("checkpoints", "--json").json())

    def hooks(self) -> list[str]:
        path = self.home / "hooks.log"
        return path.read_text().split() if path.exists() else []

    # -- the journal, read directly
    def journal(self) -> dict[str, Any]:
        """Everything a bundle import could change in the journal."""
        q = self.agent.journal_query
        tables = {r[0] for r in q("SELECT name FROM sqlite_master WHERE type='table'")}
        return {
            "checkpoints": q("SELECT * FROM checkpoints ORDER BY seq"),
            "records": q("SELECT id, kind, state FROM records ORDER BY id"),
            "chunks": q(
                "SELECT id, state, pack IS NOT NULL OR blob IS NOT NULL FROM chunks ORDER BY id"
            ),
            "jobs": q("SELECT * FROM restore_jobs ORDER BY order_id")
            if "restore_jobs" in tables
            else [],
        }


class Site:
    """A hub in a box and the vault key its nodes share."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub = HubProcess(root / "hub")
        self.key = root / "vault.key"
        self.hub_key = ""

    def start(self) -> None:
        self.hub.start()
        keygen(self.key)

    def close(self) -> None:
        self.hub.cleanup()

    def enrol(self, node: str, vault: str = VAULT) -> dict[str, Any]:
        """Enrol at the hub; the node's agent never gets the file, only the hub key."""
        path = self.hub.enrol(node, vault, self.root / f"{vault}.{node}.enrolment.json")
        enrolment = dict(json.loads(path.read_text()))
        self.hub_key = enrolment["hub_key"]
        return enrolment

    def machine(
        self, name: str, node: str, *, vault: str = VAULT, key: Path | None = None
    ) -> Machine:
        """An initialised agent with its three sources and hooks (not enrolled)."""
        home = self.root / name
        home.mkdir(parents=True)
        agent = Agent.init(home / "state", node, vault, key or self.key)
        m = Machine(home, agent)
        agent.add("memory", "sqlite", m.db)
        agent.add("files", "files", m.data / "files")
        agent.add("model", "model", m.data / "model")
        log = home / "hooks.log"
        agent.configure(
            hooks={"pre_restore": f"echo pre >> {log}", "post_restore": f"echo post >> {log}"}
        )
        return m

    def replacement(self, name: str, of: Machine) -> Machine:
        """A new machine for ``of``'s node: the vault key and the node's key from
        safekeeping, a fresh journal, no checkpoints."""
        m = self.machine(name, of.node)
        shutil.copyfile(of.agent.state / "node.key", m.agent.state / "node.key")
        return m

    # -- the hub
    def hub_run(self, *args: object) -> Result:
        return self.hub.admin(*args)

    def hub_ok(self, *args: object) -> Result:
        res = self.hub.admin(*args)
        assert res.code == 0, res
        return res

    def ship(self, m: Machine, bundle: Path, *export: object) -> dict[str, Any]:
        """The node's checkpoints to the hub by disk: export (default --all), import."""
        m.ok("bundle", "export", *(export or ("--all",)), "--out", bundle)
        return dict(self.hub_ok("bundle", "import", bundle, "--json").json())

    def catalog(self) -> dict[str, Any]:
        """Everything a bundle import or export could change at the hub."""
        q = self.hub.catalog_query
        return {
            "checkpoints": q("SELECT vault, node, seq, id FROM checkpoints ORDER BY 1, 2, 3"),
            "objects": q("SELECT vault, id FROM objects ORDER BY 1, 2"),
            "plans": q("SELECT id, state FROM plans ORDER BY id"),
            "plan_nodes": q("SELECT plan, node, state, detail FROM plan_nodes ORDER BY 1, 2"),
            "receipts": q("SELECT receipt FROM bundle_receipts ORDER BY 1")
            if has_table(self.hub.catalog_path, "bundle_receipts")
            else [],
            "signers": q("SELECT vault, node, signer FROM nodes ORDER BY 1, 2"),
            "store": len(self.hub.store_files()),
        }


def pipe(producer: list[object], consumer: list[object], timeout: float = 60) -> Result:
    """``producer | consumer`` (argv after ``python -m``), through a real OS pipe; the
    consumer's exit code and output, the producer's stderr appended."""
    first = subprocess.Popen(
        [PY, "-m", *map(str, producer)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert first.stdout is not None
    try:
        second = subprocess.run(
            [PY, "-m", *map(str, consumer)],
            stdin=first.stdout,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        first.stdout.close()
        _, err = first.communicate(timeout=timeout)
    assert first.returncode == 0, err
    return Result(second.returncode, second.stdout, second.stderr + err.decode())
