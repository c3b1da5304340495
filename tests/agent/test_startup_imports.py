"""Local commands start fast: they never import the hub's client libraries.

nats-py (which loads aiohttp, and aiohttp builds SSL contexts at import) costs about
0.2 s per process, and prometheus_client is only the daemon's. A command that does
not talk to a hub — every command of a node that is not enrolled — must not import
them. Each check runs in a fresh interpreter, since this one has them loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("nats", "aiohttp", "prometheus_client")

# every local command, in order, in one process, on a fresh node in the directory given
LOCAL_COMMANDS = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path

    heavy, tmp = json.loads(sys.argv[1]), Path(sys.argv[2])
    from amber.agent.cli import parser as cli

    def loaded():
        return sorted(m for m in heavy if m in sys.modules)

    seen = {"import": loaded()}
    cfg = str(tmp / "state" / "agent.toml")
    (tmp / "data").mkdir()
    (tmp / "data" / "a.txt").write_text("hello\\n" * 100)
    local = [
        ["source", "add", "d", "--kind", "files", "--path", str(tmp / "data")],
        ["source", "list"],
        ["checkpoint"],
        ["checkpoints"],
        ["status"],
        ["verify"],
        ["restore", "latest", "--to", str(tmp / "out")],
    ]
    init = ["init", "--dir", str(tmp / "state"), "--node", "n1", "--vault", "v1"]
    for argv in [init] + [["--config", cfg, *a] for a in local]:
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
        assert code == 0, (argv, code)
        seen[" ".join(argv[:4])] = loaded()
    assert (tmp / "out" / "d" / "a.txt").read_text() == "hello\\n" * 100
    print(json.dumps(seen))
    """
)


def run_python(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_importing_the_cli_loads_no_hub_client() -> None:
    code = (
        "import sys, amber.agent.cli.parser, amber.agent.remote, "
        "amber.agent.hublink, amber.agent.runtime; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert run_python(code).strip() == "[]"


def test_local_commands_load_no_hub_client(tmp_path: Path) -> None:
    seen = json.loads(run_python(LOCAL_COMMANDS, json.dumps(HEAVY), str(tmp_path)))
    assert len(seen) == 9  # the import, then each command
    assert {step: mods for step, mods in seen.items() if mods} == {}
