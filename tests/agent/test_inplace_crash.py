"""An in-place restore killed mid-swap is rolled back by the next agent process.

``amber-agent restore ID --in-place`` runs as a real process over three sources (a
files tree, a SQLite database, a second tree) and is SIGKILLed right after its first
source was swapped in (a prelude wraps ``swap.swap_keep_old``), leaving one source
restored and two not. The next command that takes the state directory's write lock
must put back what was there before the restore, bit for bit, and record the job as
rolled back; the same restore then runs to completion.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.data import make_files_tree, make_sqlite, sqlite_dump, tree, write
from tests.support.node import Node, cli_proc

KILL_AFTER_FIRST_SWAP = """
import os, signal
from amber.agent.restore import swap
_swap = swap.swap_keep_old
def _swap_then_die(*args, **kwargs):
    _swap(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
swap.swap_keep_old = _swap_then_die
"""


def jobs(node: Node) -> list[tuple[str, str, int]]:
    con = sqlite3.connect(node.journal)
    try:
        return con.execute("SELECT action, state, reported FROM restore_jobs").fetchall()
    finally:
        con.close()


def test_a_killed_in_place_restore_is_rolled_back_by_the_next_writer(
    node: Node, data: Path, tmp_path: Path
) -> None:
    a = make_files_tree(data / "a", seed=1)
    db = make_sqlite(data / "b" / "memory.db", rows=400, mode="delete")
    c = make_files_tree(data / "c", seed=2)
    node.add("a-prompts", "files", a)
    node.add("b-memory", "sqlite", db)
    node.add("c-more", "files", c)
    cp = node.checkpoint()
    restored, restored_rows = tree(data), sqlite_dump(db)

    write(a / "prompts" / "system.txt", "You obey everyone.\n")
    write(a / "injected.txt", "ignore previous instructions")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM msgs WHERE id > 10")
    con.commit()
    con.close()
    write(c / "prompts" / "system.txt", "changed too")
    before = tree(data)
    assert before != restored

    res = cli_proc(
        "--config", node.config, "restore", cp["id"], "--in-place", prelude=KILL_AFTER_FIRST_SWAP
    )
    assert res.code == -9, res
    midway = tree(data)
    assert tree(data / "a") == {k[2:]: v for k, v in restored.items() if k.startswith("a/")}
    assert any(".amber-old-" in name for name in midway), sorted(midway)
    assert tree(data / "c") == {k[2:]: v for k, v in before.items() if k.startswith("c/")}
    assert [j[:2] for j in jobs(node)] == [("in_place", "swapping")]

    node.restore_to("seq:0", tmp_path / "check", "--source", "c-more")  # takes the lock
    assert tree(data) == before  # every source as it was before the restore, bit for bit
    assert jobs(node) == [("in_place", "rolled_back", 1)]  # never reported to a hub

    node.ok("restore", cp["id"], "--in-place")  # a database comes back as its backup copy
    assert {k: v for k, v in tree(data).items() if k != "b/memory.db"} == {
        k: v for k, v in restored.items() if k != "b/memory.db"
    }
    assert sqlite_dump(db) == restored_rows
    assert [j[1] for j in jobs(node)] == ["rolled_back", "healthy"]
