"""The CLI runner both tools share (amber.cli): global options before or after the
command, the exit-code help generated from the error table, Ctrl-C, broken pipes, and
the one ``key=value`` parser."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amber import cli
from amber.agent.cli import parser as agent_cli
from amber.hub.cli import parser as hub_cli
from amber.hub.cli.vaults import only_vault
from amber.protocol.errors import ALL_ERRORS, UsageError


def run(main: object, *argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])  # type: ignore[operator]
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- global options


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_hub_global_options_before_or_after_the_command(before: bool, tmp_path: Path) -> None:
    glob = ["--data", str(tmp_path / "d"), "--config", "hub.toml", "--hub", "http://h:1"]
    glob += ["-v", "--log-format", "json"]
    for command in (["serve"], ["nodes"], ["restore", "plan"], ["bundle", "receipts"]):
        argv = [*glob, *command] if before else [*command, *glob]
        args = hub_cli.build_parser().parse_args(argv)
        assert args.data == str(tmp_path / "d"), argv
        assert (args.config, args.hub, args.verbose, args.log_format) == (
            "hub.toml",
            "http://h:1",
            True,
            "json",
        )
    # and it is the one given that counts, not a default of the subcommand
    args = hub_cli.build_parser().parse_args(["nodes"])
    assert (args.data, args.config, args.hub, args.verbose, args.log_format) == (
        None,
        None,
        None,
        False,
        "auto",
    )


def test_hub_serve_data_after_the_command_is_used(tmp_path: Path) -> None:
    """`amber-hub nodes --data DIR` looks for the hub in DIR (once refused by the parser)."""
    code, _, err = run(hub_cli.main, "nodes", "--data", tmp_path / "elsewhere")
    assert code == 3, err
    assert f"no running hub found in {tmp_path / 'elsewhere'}" in err


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_agent_global_options_before_or_after_the_command(before: bool, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run(agent_cli.main, "init", "--dir", state, "--node", "n1", "--vault", "v1")[0] == 0
    glob = ["--config", str(state / "agent.toml"), "-v", "--log-format", "text"]
    argv = [*glob, "status", "--json"] if before else ["status", "--json", *glob]
    code, out, err = run(agent_cli.main, *argv)
    assert code == 0, err
    assert '"node": "n1"' in out


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("build", [agent_cli.build_parser, hub_cli.build_parser])
def test_exit_codes_in_help_come_from_the_error_table(build: object) -> None:
    parser = build()  # type: ignore[operator]
    text = parser.format_help()
    for cls in ALL_ERRORS:
        assert f"{cls.exit_code:<4} {cls.__name__}:" in text
    for leaf in cli.leaf_parsers(parser):
        flat = " ".join(leaf.format_help().split())
        for cls in ALL_ERRORS:
            assert f"{cls.exit_code} {cls.__name__}" in flat, leaf.prog


# --------------------------------------------------------------------------- running


def toy(func: object) -> argparse.ArgumentParser:
    p = cli.Parser(prog="toy")
    cli.add_logging_options(p, suppress=False)
    p.set_defaults(func=func)
    return p


def test_ctrl_c_exits_130() -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.run(toy(interrupted), []) == cli.INTERRUPTED == 130
    assert "Traceback" not in err.getvalue()


def test_an_amber_error_is_rendered_with_its_code() -> None:
    def fails(args: argparse.Namespace) -> int:
        raise UsageError("nope", hint="do this")

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.run(toy(fails), []) == 2
    assert err.getvalue() == "error: nope\nhint: do this\n"


def test_a_stray_os_error_is_an_error_line_not_a_traceback(tmp_path: Path) -> None:
    def reads(args: argparse.Namespace) -> int:
        (tmp_path / "missing").read_bytes()
        return 0

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.run(toy(reads), []) == 1
    assert err.getvalue().startswith("error: No such file or directory")


def test_stdout_closed_early_exits_quietly() -> None:
    code = textwrap.dedent(
        """
        from amber import cli
        from amber.agent.cli.parser import build_parser
        def chatty(args):
            for i in range(200000):
                cli.out(f"line {i}")
            return 0
        p = cli.Parser(prog="toy")
        cli.add_logging_options(p, suppress=False)
        p.set_defaults(func=chatty)
        raise SystemExit(cli.run(p, []))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


# --------------------------------------------------------------------------- key=value


def test_one_key_value_parser() -> None:
    assert cli.parse_key_value("model=v2") == ("model", "v2")
    assert cli.parse_key_value("cmd=a=b") == ("cmd", "a=b")  # the value may hold '='
    assert cli.parse_key_value("k=") == ("k", "")
    assert cli.parse_key_values("site=a, tier=edge") == {"site": "a", "tier": "edge"}
    for bad in ("foo", "=", "=x", "a b=c", "k=\0", "k=\n", ""):
        with pytest.raises(ValueError):
            cli.parse_key_values(bad) if "," in bad else cli.parse_key_value(bad)
    assert cli.merge([("a", "1"), {"b": "2"}, ("a", "3")]) == {"a": "3", "b": "2"}


def test_only_vault_names_the_vaults() -> None:
    assert only_vault(["v1", "v1"]) == "v1"
    with pytest.raises(UsageError, match="no vault"):
        only_vault([])
    with pytest.raises(UsageError, match=r"2 vaults \(a, b\)"):
        only_vault(["b", "a", "b"])
