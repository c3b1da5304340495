"""No argument to any command of either CLI ends in a traceback.

The test walks both argparse trees (``build_parser`` of amber-agent and amber-hub) and
gives every option and positional of every leaf command, one at a time, malformed values
(empty, ``=``, a negative and a huge number, a NUL byte, a missing path,
a name too long for the filesystem), the other arguments being valid, and runs ``main``
in this process against a real initialised node and a hub data directory with no hub
running. Each run must return an exit code of the error table (or 0), print no
traceback, and raise nothing but SystemExit. A value the parser refuses is a one-line
``error: PROG: argument OPT: ...`` naming the option, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from amber.agent.cli import parser as agent_cli
from amber.cli import leaf_parsers
from amber.hub.cli import parser as hub_cli
from amber.protocol.errors import ALL_ERRORS

CODES = {0} | {cls.exit_code for cls in ALL_ERRORS}
# these serve until stopped: only their parsing is checked
LONG_RUNNING = {"amber-agent run", "amber-hub serve"}


def malformed(tmp: Path) -> list[str]:
    # one value per way of being wrong (a plain word, "a=b=c", "0", a tab or "a,,b" found
    # nothing the ones below do not; each value costs ~50 ms per argument of both CLIs)
    return [
        "",
        "=",
        "-1",
        "99999999999999999999999999",
        "a\0b",
        str(tmp / "missing" / "x"),
        "x" * 5000,
        "../..",
    ]


def leaves(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for leaf in leaf_parsers(parser):
        yield leaf.prog, leaf


def valued(leaf: argparse.ArgumentParser) -> list[argparse.Action]:
    """The leaf's arguments that take a value (positionals and options; no flags, no -h)."""
    return [
        a
        for a in leaf._actions
        if a.nargs != 0 and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
    ]


def base_args(leaf: argparse.ArgumentParser, valid: Callable[[argparse.Action], str]) -> list[str]:
    """Valid values for the leaf's required arguments (and one of a required group)."""
    argv: list[str] = []
    groups = {id(g): g for g in leaf._mutually_exclusive_groups if g.required}
    chosen = {id(g._group_actions[0]) for g in groups.values()}
    for a in leaf._actions:
        if not (a.required or id(a) in chosen) or isinstance(a, argparse._SubParsersAction):
            continue
        if not a.option_strings:
            argv.append(valid(a))
        elif a.nargs == 0:
            argv.append(a.option_strings[-1])
        else:
            argv += [a.option_strings[-1], valid(a)]
    return argv


def with_value(leaf: argparse.ArgumentParser, base: list[str], action: argparse.Action, bad: str):
    """``base`` with ``action`` given the value ``bad`` (replacing a valid one)."""
    argv = list(base)
    if not action.option_strings:
        positionals = [a for a in leaf._actions if not a.option_strings and a.required]
        if action in positionals:
            # positionals come first in base, in order
            idx = next(i for i, a in enumerate(positionals) if a is action)
            argv[idx] = bad
        else:
            argv.append(bad)  # an optional positional (nargs="?")
        return argv
    opt = action.option_strings[-1]
    if opt in argv:
        i = argv.index(opt)
        del argv[i : i + 2]
    return [
        *argv,
        f"{opt}={bad}" if bad.startswith("-") else opt,
        *([] if bad.startswith("-") else [bad]),
    ]


def run_main(main: Callable[[Sequence[str]], int], argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except Exception:
            return -1, err.getvalue() + "\n" + traceback.format_exc()
    return code, err.getvalue()


def check_leaf(
    main: Callable[[Sequence[str]], int],
    leaf: argparse.ArgumentParser,
    head: list[str],
    valid: Callable[[argparse.Action], str],
    tmp: Path,
) -> list[str]:
    """Every malformed value for every argument of ``leaf``; returns the failures."""
    command = leaf.prog.split()[1:]
    base = base_args(leaf, valid)
    failures = []
    for action in valued(leaf):
        for bad in malformed(tmp):
            argv = [*head, *command, *with_value(leaf, base, action, bad)]
            if leaf.prog in LONG_RUNNING:
                code, err = parse_only(main, argv)
            else:
                code, err = run_main(main, argv)
            name = action.option_strings[-1] if action.option_strings else action.dest
            where = f"{' '.join(argv)!r} ({name}={bad!r})"
            if code not in CODES or "Traceback" in err:
                failures.append(f"{where}: exit {code}\n{err[-2000:]}")
            elif code != 0 and "error: " not in err:
                failures.append(f"{where}: exit {code} without an error line: {err[:300]!r}")
            elif err.startswith(f"error: {leaf.prog}: argument") and name not in err.split("\n")[0]:
                failures.append(f"{where}: the error does not name the option: {err!r}")
    return failures


def parse_only(main: Callable[[Sequence[str]], int], argv: list[str]) -> tuple[int, str]:
    """For a command that serves until stopped: parse with the real parser, run nothing."""
    from amber import cli
    from amber.protocol.errors import AmberError

    build = agent_cli.build_parser if main is agent_cli.main else hub_cli.build_parser
    try:
        cli._check_argv(argv)
        build().parse_args(argv)
    except AmberError as exc:
        return exc.exit_code, exc.render() + "\n"
    return 0, ""


# --------------------------------------------------------------------------- agent


@pytest.fixture
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.chdir(tmp_path)  # relative values ("foo") land here
    monkeypatch.setenv("AMBER_VAULT_PASSPHRASE", "correct horse battery staple")
    monkeypatch.delenv("AMBER_AGENT_CONFIG", raising=False)
    state = tmp_path / "state"
    code, err = run_main(
        agent_cli.main, ["init", "--dir", str(state), "--node", "n1", "--vault", "v1"]
    )
    assert code == 0, err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello\n")
    (tmp_path / "junk.bin").write_bytes(b"not a bundle\n" * 10)
    return {"tmp": tmp_path, "config": state / "agent.toml"}


@pytest.mark.slow
def test_no_agent_argument_ends_in_a_traceback(agent_env: dict[str, Path]) -> None:
    tmp, config = agent_env["tmp"], agent_env["config"]
    counter = iter(range(10**6))

    def valid(a: argparse.Action) -> str:
        if a.choices:
            return str(next(iter(a.choices)))
        return {
            "dir": str(tmp / f"node-{next(counter)}"),
            "node": "n2",
            "vault": "v1",
            "out": str(tmp / f"out-{next(counter)}"),
            "path": str(tmp / "data"),
            "name": "docs",
            "file": str(tmp / "junk.bin"),
            "id": "latest",
            "since": "latest",
            "config": str(config),
        }.get(a.dest, "x")

    failures: list[str] = []
    parser = agent_cli.build_parser()
    for _, leaf in leaves(parser):
        failures += check_leaf(agent_cli.main, leaf, ["--config", str(config)], valid, tmp)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:15])


# --------------------------------------------------------------------------- hub


@pytest.mark.slow
def test_no_hub_argument_ends_in_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--hub`` names a port where nothing listens and ``--data`` a directory with no hub
    (for the offline commands): commands fail with an error of the table, never a
    traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMBER_HUB_TOKEN", "a-token-for-nothing")
    (tmp_path / "junk.bin").write_bytes(b"not a bundle\n" * 10)
    data = tmp_path / "hub-data"
    head = ["--data", str(data), "--hub", "http://127.0.0.1:9"]  # discard port: no answer
    counter = iter(range(10**6))

    def valid(a: argparse.Action) -> str:
        if a.choices:
            return str(next(iter(a.choices)))
        return {
            "name": "n1",
            "node": "n1",
            "vault": "v1",
            "out": str(tmp_path / f"out-{next(counter)}"),
            "file": str(tmp_path / "junk.bin"),
            "plan": "p1",
            "nodes": "n1",
            "data": str(data),
        }.get(a.dest, "x")

    failures: list[str] = []
    for _, leaf in leaves(hub_cli.build_parser()):
        failures += check_leaf(hub_cli.main, leaf, head, valid, tmp_path)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:15])


# --------------------------------------------------------------------------- the reported two


@pytest.mark.parametrize(
    ("main", "argv", "option"),
    [
        (
            hub_cli.main,
            ["node", "add", "n1", "--vault", "v1", "--out", "x", "--label", "foo"],
            "--label",
        ),
        (hub_cli.main, ["restore", "plan", "--selector", "site"], "--selector"),
        (hub_cli.main, ["restore", "plan", "--vault", "v1", "--canary", "-3"], "--canary"),
        (hub_cli.main, ["serve", "--admin-listen", "nowhere"], "--admin-listen"),
        (agent_cli.main, ["checkpoint", "--label", "=x"], "--label"),
        (
            agent_cli.main,
            ["source", "add", "s", "--kind", "files", "--path", "p", "--lineage", "k"],
            "--lineage",
        ),
    ],
)
def test_a_malformed_value_is_one_error_naming_the_option(
    main: Callable[[Sequence[str]], int], argv: list[str], option: str
) -> None:
    code, err = run_main(main, argv)
    assert code == 2, err
    first, hint = err.splitlines()
    assert first.startswith("error: ") and f"argument {option}" in first, err
    assert hint.startswith("hint: run 'amber-"), err
