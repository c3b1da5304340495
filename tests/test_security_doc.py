"""A security claim is a test: every test that docs/SECURITY.md's threat table names exists,
and every row names at least one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def table_rows() -> list[str]:
    text = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    table = text.split("## The threat table", 1)[1].split("\n## ", 1)[0]
    return [
        line
        for line in table.splitlines()
        if line.startswith("|")
        and not line.startswith("| ---")
        and not line.startswith("| attacker")
    ]


def test_the_table_has_rows_for_every_attacker() -> None:
    rows = table_rows()
    assert len(rows) >= 30
    attackers = " ".join(r.split("|")[1] for r in rows)
    for who in ("hub", "stolen node", "vault key", "crafted"):
        assert who in attackers, who


def test_every_row_names_a_test_and_every_named_test_exists() -> None:
    missing = []
    for row in table_rows():
        refs = TEST_REF.findall(row.split("|")[4])
        assert refs, f"a threat row names no test: {row[:120]}"
        for path, name in refs:
            source = ROOT / path
            if not source.exists() or not re.search(
                rf"^(async )?def {name}\(", source.read_text(encoding="utf-8"), re.M
            ):
                missing.append(f"{path}::{name}")
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"
