"""Checks: programs the node's own agent.toml defines, that a restore order names.

A restore order (online or carried by a bundle) names checks; it never carries a command
line. Each name must be defined in the node's ``[checks.NAME]`` table, else the order is
refused before anything is fetched or swapped (:func:`resolve`). After the swap and the
``post_restore`` hook, each named check runs in order (:func:`run_checks`): its argv (no
shell), a minimal environment plus ``AMBER_SOURCE_<NAME>`` = the path of each restored
source, its own timeout. A non-zero exit or a timeout fails the restore, which the node
then rolls back. The check's output goes to the node's log only, never to the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path

from amber.agent.config import AgentConfig, CheckConfig, SourceConfig
from amber.protocol.errors import CheckFailedError, OrderRefusedError

log = logging.getLogger("amber.agent.restore.checks")
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
OUTPUT_TAIL = 4000  # bytes of a failed check's output kept in the node's log


def resolve(cfg: AgentConfig, names: Iterable[str]) -> list[CheckConfig]:
    """The node's checks an order names; OrderRefusedError if one is not defined."""
    out = []
    for name in names:
        check = cfg.checks.get(name)
        if check is None:
            defined = ", ".join(sorted(cfg.checks)) or "none"
            raise OrderRefusedError(
                f"the order names check {name!r}, which this node does not define "
                f"(its [checks] in {cfg.path}: {defined})"
            )
        out.append(check)
    return out


def source_env_name(source: str) -> str:
    """``AMBER_SOURCE_<NAME>``: the name upper-cased, anything not alphanumeric as '_'."""
    return "AMBER_SOURCE_" + re.sub(r"[^A-Z0-9]", "_", source.upper())


def check_env(targets: Mapping[str, SourceConfig]) -> dict[str, str]:
    """The whole environment of a check: nothing of the agent's own environment."""
    env = dict(BASE_ENV)
    for name, src in sorted(targets.items()):
        env[source_env_name(name)] = str(src.path)
    return env


async def run_checks(checks: list[CheckConfig], targets: Mapping[str, SourceConfig]) -> None:
    """Run each check in turn; CheckFailedError on the first that fails or times out."""
    env = check_env(targets)
    for check in checks:
        await _run(check, env)


async def _run(check: CheckConfig, env: dict[str, str]) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *check.argv,
            env=env,
            cwd=Path("/"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise CheckFailedError(f"check {check.name!r} could not start: {exc}") from None
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), check.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the check and its children
        await proc.wait()
        raise CheckFailedError(f"check {check.name!r} timed out after {check.timeout}s") from None
    text = output.decode(errors="replace")[-OUTPUT_TAIL:].strip()
    if proc.returncode != 0:
        log.warning("check %s exited %s; its output:\n%s", check.name, proc.returncode, text)
        raise CheckFailedError(f"check {check.name!r} exited {proc.returncode}: {text[-200:]}")
    log.info("check %s passed", check.name)
