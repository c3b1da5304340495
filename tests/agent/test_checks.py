"""Checks in agent.toml and restore orders that name them (no servers).

The order fixtures are frozen samples (tests/fixtures/order_v{1,2}_signed.bin): version 2
names checks; version 1 carried a shell command, which a node decodes and never runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from amber.agent.config import CheckConfig, SourceConfig, dump_config, parse_config
from amber.agent.restore.checks import check_env, resolve, run_checks, source_env_name
from amber.agent.restore.orders import report_detail
from amber.protocol import wire
from amber.protocol.errors import (
    CheckFailedError,
    ConfigError,
    FormatError,
    OrderRefusedError,
)
from amber.protocol.keys import SigningKey

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
BASE = {"agent": {"node": "n1", "vault": "v", "state_dir": "state"}}


def config(checks: object, tmp_path: Path) -> object:
    return parse_config({**BASE, "checks": checks}, tmp_path / "agent.toml")


def test_checks_parse_as_argv_without_a_shell_and_round_trip(tmp_path: Path) -> None:
    cfg = config(
        {
            "smoke": {"command": "/usr/local/bin/selftest --db 'my db'; rm -rf /", "timeout": "2m"},
            "list": {"command": ["/bin/true", "a b"]},
        },
        tmp_path,
    )
    smoke = cfg.checks["smoke"]  # type: ignore[attr-defined]
    assert smoke.argv == ("/usr/local/bin/selftest", "--db", "my db;", "rm", "-rf", "/")
    assert smoke.timeout == 120 and cfg.checks["list"].timeout == 300  # type: ignore[attr-defined]
    path = tmp_path / "agent.toml"
    path.write_text(dump_config(cfg))  # type: ignore[arg-type]
    import tomllib

    again = parse_config(tomllib.loads(path.read_text()), path)
    assert again.checks == cfg.checks  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "checks",
    [
        {"bad name!": {"command": "/bin/true"}},
        {"x": {"command": ""}},
        {"x": {"command": "/bin/true", "shell": True}},
        {"x": {"command": 5}},
        {"x": {"command": "'unterminated"}},
        {"x": {"command": "/bin/true", "timeout": "soon"}},
        ["not", "a", "table"],
    ],
)
def test_bad_checks_are_config_errors(checks: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        config(checks, tmp_path)


def test_an_order_naming_an_undefined_check_is_refused(tmp_path: Path) -> None:
    cfg = config({"smoke": {"command": "/bin/true"}}, tmp_path)
    assert [c.name for c in resolve(cfg, ["smoke"])] == ["smoke"]  # type: ignore[arg-type]
    with pytest.raises(OrderRefusedError, match="does not define"):
        resolve(cfg, ["smoke", "cat-vault-key"])  # type: ignore[arg-type]


def open_fixture(name: str) -> wire.RestoreOrder | wire.RestoreOrderV1:
    signed = wire.decode((FIXTURES / name).read_bytes(), wire.SignedOrder)
    assert isinstance(signed, wire.SignedOrder)
    return wire.open_order(signed, bytes.fromhex(EXPECTED[name]["signer"]))


def test_order_v2_fixture_names_checks() -> None:
    order = open_fixture("order_v2_signed.bin")
    assert isinstance(order, wire.RestoreOrder)
    assert order.TYPE == EXPECTED["order_v2_signed.bin"]["type"] == "restore.order.2"
    assert order.checks == ("smoke", "db-integrity")
    assert wire.current_order(order) is order


def test_order_v1_fixture_decodes_but_its_command_is_refused() -> None:
    order = open_fixture("order_v1_signed.bin")
    assert isinstance(order, wire.RestoreOrderV1) and order.health_cmd
    with pytest.raises(OrderRefusedError, match="never runs a command"):
        wire.current_order(order)
    fields = {k: getattr(order, k) for k in ("order_id", "plan_id", "vault", "node")}
    rollback = wire.RestoreOrderV1(**{**vars(order), "action": "rollback"})
    assert wire.current_order(rollback).checks == ()  # a rollback never ran its command
    empty = wire.current_order(wire.RestoreOrderV1(**{**vars(order), "health_cmd": ""}))
    assert empty.checks == () and {k: getattr(empty, k) for k in fields} == fields


@pytest.mark.parametrize("checks", [("a", "a"), ("bad name",), tuple(f"c{i}" for i in range(17))])
def test_bad_check_names_in_an_order_are_format_errors(checks: tuple[str, ...]) -> None:
    hub = SigningKey(bytes(32))
    order = wire.RestoreOrder("o-1", "p-1", "v", "n", "restore", bytes(32), "n", (), checks, 1, 2)
    with pytest.raises(FormatError):
        wire.open_order(wire.sign_order(order, hub), hub.public)


def test_a_check_runs_with_only_its_environment(tmp_path: Path) -> None:
    targets = {
        "agent-memory": SourceConfig("agent-memory", "sqlite", tmp_path / "m.db"),
        "files": SourceConfig("files", "files", tmp_path / "files"),
    }
    assert source_env_name("agent-memory.v2") == "AMBER_SOURCE_AGENT_MEMORY_V2"
    env = check_env(targets)
    assert env["AMBER_SOURCE_AGENT_MEMORY"] == str(tmp_path / "m.db")
    out = tmp_path / "env.txt"
    ok = CheckConfig("env", ("/bin/sh", "-c", f"env > {out}"), 10)
    asyncio.run(run_checks([ok], targets))
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert seen["AMBER_SOURCE_FILES"] == str(tmp_path / "files")
    assert "HOME" not in seen and "USER" not in seen
    bad = CheckConfig("bad", ("/bin/sh", "-c", "echo /secret/path; exit 4"), 10)
    with pytest.raises(CheckFailedError, match="exited 4") as err:
        asyncio.run(run_checks([bad], targets))
    detail = f"CheckFailedError (exit 73): {err.value}"
    assert report_detail("failed", detail) == "CheckFailedError (exit 73)"
    slow = CheckConfig("slow", ("/bin/sleep", "30"), 1)
    with pytest.raises(CheckFailedError, match="timed out"):
        asyncio.run(run_checks([slow], targets))
