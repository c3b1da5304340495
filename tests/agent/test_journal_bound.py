"""The journal's configured size bound ([journal] max_bytes) and what happens at it.

A checkpoint that would take the journal over its bound fails with JournalFullError
(exit 41) and a hint to sync or raise the bound; the journal keeps exactly what it
held (same checkpoints, same bytes, no tentative chunks), and once the bound is raised
the same checkpoint goes through. The bound covers everything the journal holds:
chunks (checked while they are written) and the checkpoint's records (checked at the
commit).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from amber.agent.cli import parser as cli
from amber.agent.config import load_config, save_config
from amber.agent.journal import TENTATIVE
from amber.protocol.errors import JournalFullError
from tests.support.node import cli_ok, cli_proc

pytestmark = pytest.mark.servers  # agent processes

MiB = 1024 * 1024


def set_bound(cfg: Path, max_bytes: int) -> None:
    save_config(replace(load_config(cfg), journal_max_bytes=max_bytes))


def amber_json(cfg: Path, *args: str) -> object:
    """``amber-agent --config CFG ARGS --json`` in this process; it must succeed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config", str(cfg), *args, "--json"])
    assert code == 0, f"{args}: exit {code}\n{err.getvalue()}"
    return json.loads(out.getvalue())


def journal_view(cfg: Path) -> tuple[list[str], int, int]:
    """(checkpoint ids, held bytes per `status`, tentative chunk rows)."""
    ids = [r["id"] for r in amber_json(cfg, "checkpoints")]  # type: ignore[attr-defined]
    status = amber_json(cfg, "status")
    con = sqlite3.connect(f"file:{load_config(cfg).journal_path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT count(*) FROM chunks WHERE state = ?", (TENTATIVE,)).fetchone()
    finally:
        con.close()
    return ids, int(status["journal_bytes"]), int(row[0])  # type: ignore[index]


def make_node(tmp_path: Path) -> Path:
    rng = random.Random(41)
    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    for i in range(8):
        (data / "prompts" / f"p{i}.md").write_bytes(rng.randbytes(40_000))
    (data / "model.bin").write_bytes(rng.randbytes(6 * MiB))  # barely compressible
    state = tmp_path / "state"
    assert cli.main(["init", "--dir", str(state), "--node", "edge-1", "--vault", "fleet"]) == 0
    cfg = state / "agent.toml"
    argv = ["--config", str(cfg), "source", "add", "prompts", "--kind", "files"]
    assert cli.main([*argv, "--path", str(data / "prompts")]) == 0
    return cfg


def add_model(cfg: Path) -> None:
    model = cfg.parent.parent / "data" / "model.bin"
    argv = ["--config", str(cfg), "source", "add", "model", "--kind", "model"]
    assert cli.main([*argv, "--path", str(model)]) == 0


def test_checkpoint_over_the_bound_fails_cleanly_then_passes_when_raised(tmp_path: Path) -> None:
    cfg = make_node(tmp_path)
    set_bound(cfg, 2 * MiB)
    cli_ok("--config", cfg, "checkpoint")  # ~320 KB of prompts fit
    add_model(cfg)  # 6 MiB of weights do not
    before = journal_view(cfg)
    assert len(before[0]) == 1 and 300_000 < before[1] < 2 * MiB and before[2] == 0

    proc = cli_proc("--config", cfg, "checkpoint")
    assert proc.code == JournalFullError.exit_code == 41, proc.err
    assert "nothing was committed" in proc.err
    hint = proc.err.split("hint:", 1)[1]
    assert "sync" in hint and "journal.max_bytes" in hint
    assert journal_view(cfg) == before  # same checkpoints, same bytes, nothing tentative
    cli_ok("--config", cfg, "verify")

    set_bound(cfg, 64 * MiB)
    out = cli_ok("--config", cfg, "checkpoint", "--json").json()
    assert out["seq"] == 1 and out["changed"] == ["model"]
    ids, held, tentative = journal_view(cfg)
    assert ids == [*before[0], out["id"]]
    assert held >= before[1] + 6 * MiB and tentative == 0
    cli_ok("--config", cfg, "verify")


def test_bound_counts_the_checkpoints_records_at_commit(tmp_path: Path) -> None:
    """Chunks that fit under the bound by a few bytes, with records that do not: the
    check at the commit refuses the checkpoint, atomically."""
    cfg = make_node(tmp_path)
    cli_ok("--config", cfg, "checkpoint")
    add_model(cfg)
    before = journal_view(cfg)
    # The same checkpoint in a copy of the state directory (chunks and records encode
    # deterministically, so it holds the same bytes) tells what the journal would hold.
    twin = tmp_path / "twin"
    shutil.copytree(cfg.parent, twin)
    cli_ok("--config", twin / "agent.toml", "checkpoint")
    _, would_hold, _ = journal_view(twin / "agent.toml")
    # Set the bound a few bytes under that: the chunks alone still fit.
    set_bound(cfg, would_hold - 40)

    proc = cli_proc("--config", cfg, "checkpoint")
    assert proc.code == 41, proc.err
    assert "would grow the journal" in proc.err and "nothing was committed" in proc.err
    assert journal_view(cfg) == before
    cli_ok("--config", cfg, "verify")

    set_bound(cfg, would_hold)
    cli_ok("--config", cfg, "checkpoint")
    ids, held, tentative = journal_view(cfg)
    assert len(ids) == 2 and held == would_hold and tentative == 0
    cli_ok("--config", cfg, "verify")
