"""Processes for tests: run a CLI in this process or as a child, start and stop children
by pid, poll for a condition.

Plain Python, no pytest imports. Children started here are registered with
tests/support/servers.py, so they die with the test session (atexit, SIGTERM, and
``PR_SET_PDEATHSIG`` on Linux) even when a test forgets them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import _spawn
from tests.support.servers import _tail as tail

PY = sys.executable

__all__ = [
    "PY",
    "Result",
    "in_process",
    "kill_pid",
    "permissions_bind",
    "pid_alive",
    "run_measured",
    "run_no_dac",
    "run_python",
    "spawn",
    "stop_pid",
    "stop_proc",
    "tail",
    "wait_for",
    "wait_until",
]


@dataclass
class Result:
    """What a command did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err[-4000:]}"


def in_process(main: Callable[[list[str]], int], args: tuple[object, ...]) -> Result:
    """``main(ARGS)`` in this process, its output captured (argparse exits become codes)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def run_python(
    *args: object,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    stdin: int | None = subprocess.DEVNULL,
) -> Result:
    """``python ARGS`` as a child process (``env`` added to ours), bounded by ``timeout``."""
    try:
        done = subprocess.run(
            [PY, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=stdin,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"python {args} ran over {timeout}s: {exc.stderr!r}") from None
    return Result(done.returncode, done.stdout, done.stderr)


def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None, stdout: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session, output appended to ``log`` (only its stderr
    when ``stdout`` names another file); it dies with us."""
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as fh, contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stdout, "ab")) if stdout is not None else None
        return _spawn(argv, cwd=Path.cwd(), log=fh, env=full_env, stdout=out)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_pid(pid)


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} survived SIGKILL for {timeout}s")
        time.sleep(0.02)


def stop_proc(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM a child, wait ``grace`` seconds, SIGKILL if needed; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """:func:`wait_until` with the arguments in the other order (check first)."""
    return wait_until(what, check, timeout, interval=0.05)


# --- peak memory of a process --------------------------------------------------------------

# Linux charges a child with the peak RSS of the process it was forked from (the
# address space it had until exec), so a child of a big pytest process reports
# pytest's peak. A tiny launcher in between keeps the measurement clean.
LAUNCHER = r"""
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "maxrss_kib": peak}, fh)
"""


def run_measured(args: list[object], workdir: Path, timeout: float = 300) -> tuple[Result, float]:
    """Run ``python ARGS``; return its result and its peak RSS in MiB."""
    report = workdir / "peak.json"
    res = run_python("-c", LAUNCHER, report, PY, *args, timeout=timeout, stdin=None)
    got = json.loads(report.read_text())
    return Result(got["code"], res.out, res.err), got["maxrss_kib"] / 1024


# --- running as root without root's power over file permissions --------------------------

NO_DAC = r"""
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_CAPBSET_DROP CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: lost for good at exec
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            sys.exit(99)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def run_no_dac(*python_args: object, timeout: float = 120) -> Result:
    """``python ARGS`` in a process for which mode 000 means unreadable, even as root.

    Exit code 99: this machine does not let the test drop those capabilities.
    """
    return run_python("-c", NO_DAC, *python_args, timeout=timeout, stdin=None)


def permissions_bind(probe_dir: Path) -> bool:
    """Whether a ``run_no_dac`` process is really refused a mode-000 file."""
    probe = probe_dir / "probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("x")
    probe.chmod(0)
    try:
        res = run_no_dac("-c", "import sys; open(sys.argv[1]).read()", probe)
    finally:
        probe.unlink()
    return res.code not in (0, 99) and "PermissionError" in res.err
