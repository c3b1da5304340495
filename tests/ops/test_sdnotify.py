"""The daemons under systemd's notify protocol: READY=1, WATCHDOG=1, STOPPING=1.

Each daemon runs as a real process the way systemd starts it: ``$NOTIFY_SOCKET`` points
at a unix datagram socket this test binds (a path for the agent, an abstract name for
the hub) and ``$WATCHDOG_USEC`` asks for pings. READY=1 must arrive only once the daemon
is really serving, WATCHDOG=1 must keep arriving at about half the interval, and SIGTERM
must give STOPPING=1 and a prompt exit 0, leaving no checkpoint half-written.

The daemons also run inside the parts of their unit's sandbox that a process can put on
itself: no_new_privs, MemoryDenyWriteExecute (prctl PR_SET_MDWE, the same rule) and the
unit's SystemCallFilter= / RestrictAddressFamilies= as a seccomp filter built with
libseccomp from ``systemd-analyze syscall-filter`` — so a syscall the units forbid but
Python, an extension or the hub's nats-server needs shows up here, not in production.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from amber import sdnotify
from amber.agent.config import TierPolicy, load_config, save_config
from tests.support.hubtls import admin_context, host_port, tls_socket
from tests.support.node import cli_proc
from tests.support.procs import Result

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s
START_TIMEOUT = 60.0
COMMITTED = re.compile(r"checkpoint ([0-9a-f]{16}) seq \d+")  # logged once committed
UNITS = Path(__file__).resolve().parents[2] / "systemd"

# Run before the daemon's module: apply the unit's sandbox to this process (inherited by
# its children, e.g. nats-server). AMBER_TEST_SYSCALLS: the allowed syscall names.
SANDBOX_PRELUDE = r"""
import ctypes, ctypes.util, os, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
done = []
if libc.prctl(38, 1, 0, 0, 0) == 0:  # PR_SET_NO_NEW_PRIVS
    done.append("nnp")
if libc.prctl(65, 1, 0, 0, 0) == 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    done.append("mdwe")
allowed = [n for n in os.environ.pop("AMBER_TEST_SYSCALLS", "").split(",") if n]
if allowed:
    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
    sc = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    sc.seccomp_init.restype = ctypes.c_void_p
    sc.seccomp_init.argtypes = [ctypes.c_uint32]
    sc.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
    sc.seccomp_load.argtypes = [ctypes.c_void_p]
    ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
    ctx = sc.seccomp_init(EPERM)  # SystemCallErrorNumber=EPERM
    for name in allowed:
        nr = sc.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not on this architecture
        if name == "socket":  # RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
            for fam in (1, 2, 10):
                cmp = Cmp(0, 4, fam, 0)  # SCMP_CMP_EQ on arg 0
                assert sc.seccomp_rule_add_array(ctx, ALLOW, nr, 1, ctypes.byref(cmp)) == 0
        else:
            assert sc.seccomp_rule_add_array(ctx, ALLOW, nr, 0, None) == 0
    assert sc.seccomp_load(ctypes.c_void_p(ctx)) == 0, "seccomp_load failed"
    done.append("seccomp")
sys.stderr.write("sandbox: " + " ".join(done) + "\n")
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def unit_syscalls(unit: str) -> list[str]:
    """The syscalls a unit's SystemCallFilter= lines allow, groups expanded."""
    groups = _syscall_groups()

    def expand(item: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if not item.startswith("@"):
            return {item}
        if item in seen:
            return set()
        return set().union(*(expand(m, seen | {item}) for m in groups[item]))

    allowed: set[str] = set()
    for line in (UNITS / unit).read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1].strip()
        names = value.lstrip("~").split()
        found = set().union(*(expand(n) for n in names))
        allowed = allowed - found if value.startswith("~") else allowed | found
    assert "execve" in allowed and "reboot" not in allowed  # sanity
    return sorted(allowed)


def daemon_cmd(unit: str, module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and extra env to run ``python -m module args`` inside ``unit``'s sandbox."""
    extra = {}
    if shutil.which("systemd-analyze"):
        extra["AMBER_TEST_SYSCALLS"] = ",".join(unit_syscalls(unit))
    return [sys.executable, "-c", SANDBOX_PRELUDE, module, *args], extra


def check_sandboxed(log: str) -> None:
    line = next((x for x in log.splitlines() if x.startswith("sandbox:")), "")
    assert "nnp" in line, log
    if _kernel_at_least(6, 3):
        assert "mdwe" in line, f"PR_SET_MDWE failed on a 6.3+ kernel: {line}"
    if shutil.which("systemd-analyze"):
        assert "seccomp" in line, line


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = os.uname().release.split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


class NotifyListener:
    """The systemd side of sd_notify: a bound datagram socket and what arrived on it.

    A thread receives continuously, so each line's arrival time is its real send time.
    """

    def __init__(self, address: str) -> None:
        self.address = address  # as written in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []  # (monotonic time, one KEY=VALUE line)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().split("\n"))

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.sock.close()

    def wait_for(self, line: str, timeout: float, alive: Callable[[], bool]) -> float:
        """Wait until ``line`` has arrived; returns its time. Fails if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, seen in list(self.messages):
                if seen == line:
                    return t
            if not alive():
                time.sleep(0.2)
                if line not in self.lines():
                    pytest.fail(f"daemon exited before sending {line!r}: {self.lines()}")
            time.sleep(0.02)
        pytest.fail(f"no {line!r} within {timeout}s; got {self.lines()}")

    def lines(self) -> list[str]:
        return [m for _, m in list(self.messages)]

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]


def _env(notify: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "NOTIFY_SOCKET")}
    env.update(NOTIFY_SOCKET=notify, WATCHDOG_USEC=str(WATCHDOG_USEC), PYTHONUNBUFFERED="1")
    return env


def _agent(cfg: Path, *args: str) -> Result:
    return cli_proc("--config", cfg, *args)


def _assert_watchdog_fed(listener: NotifyListener, since: float) -> None:
    pings = [t for t in listener.times("WATCHDOG=1") if t >= since]
    assert len(pings) >= 5, f"too few WATCHDOG=1 pings: {listener.lines()}"
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Every WATCHDOG_USEC/2 = 0.2 s; never anywhere near the 0.4 s deadline on average.
    assert sum(gaps) / len(gaps) < 0.3, gaps
    assert max(gaps) < 1.5, gaps  # (slack for a loaded CI machine)


def _stop(proc: subprocess.Popen[bytes], listener: NotifyListener) -> float:
    """SIGTERM, expect STOPPING=1 and exit 0; returns how long the exit took."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    listener.wait_for("STOPPING=1", 10, lambda: True)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("daemon did not exit within 20 s of SIGTERM")
    took = time.monotonic() - sent
    assert code == 0, f"exit {code} after SIGTERM"
    return took


# --------------------------------------------------------------------------- agent


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


@pytest.mark.servers  # the agent daemon, sandboxed as its unit would be
def test_agent_ready_watchdog_and_clean_stop(tmp_path: Path, notify_path: NotifyListener) -> None:
    state, data, cfg = tmp_path / "state", tmp_path / "data", tmp_path / "agent.toml"
    data.mkdir()
    for i in range(4):
        (data / f"file{i}.bin").write_bytes(os.urandom(256 * 1024))
    r = _agent(cfg, "init", "--dir", str(state), "--node", "edge1", "--vault", "v1")
    assert r.code == 0, r
    r = _agent(cfg, "source", "add", "models", "--kind", "files", "--path", str(data))
    assert r.code == 0, r
    conf = load_config(cfg)
    tiers = dict(conf.tiers)
    tiers["warm"] = TierPolicy(interval=1, rpo=60)  # the source's tier: 1 s
    save_config(replace(conf, tiers=tiers))

    log = tmp_path / "agent.log"
    with open(log, "wb") as err:
        argv, extra = daemon_cmd(
            "amber-agent.service", "amber.agent.cli", "--config", str(cfg), "run"
        )
        proc = subprocess.Popen(
            argv,
            env={**_env(notify_path.address), **extra},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        ready = notify_path.wait_for("READY=1", START_TIMEOUT, lambda: proc.poll() is None)
        assert (state / "journal.db").exists()
        assert any(m.startswith("STATUS=") for m in notify_path.lines())
        time.sleep(2.5)
        _assert_watchdog_fed(notify_path, ready)
        assert proc.poll() is None

        # Let a few checkpoints commit, then stop while new data is being checkpointed.
        deadline = time.monotonic() + 30
        while len(COMMITTED.findall(log.read_text())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(COMMITTED.findall(log.read_text())) >= 2, log.read_text()
        # ~50 MB of new data takes a few seconds to checkpoint; the next one starts within
        # the 1 s interval, so SIGTERM lands while it runs (it must be cancelled cleanly).
        for i in range(6):
            (data / f"new{i}.bin").write_bytes(os.urandom(8 * 1024 * 1024))
        time.sleep(1.0)
        took = _stop(proc, notify_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 10, f"agent took {took:.1f}s to stop"
    text = log.read_text()
    check_sandboxed(text)
    assert "agent stopped" in text, text
    assert "checkpoint failed" not in text, text  # a cancelled one is not a failure
    assert "Traceback" not in text, text

    # No checkpoint half-written: the journal verifies, and the list is the committed ones.
    r = _agent(cfg, "verify")
    assert r.code == 0, r
    r = _agent(cfg, "checkpoints", "--json")
    assert r.code == 0, r
    rows = r.json()
    assert [row["seq"] for row in sorted(rows, key=lambda x: x["seq"])] == list(range(len(rows)))
    logged = set(COMMITTED.findall(text))
    listed = {row["id"][:16] for row in rows}
    assert logged <= listed, (logged, listed)
    assert len(listed) >= 2


# --------------------------------------------------------------------------- hub


def _nats_pid(data: Path) -> int | None:
    try:
        return int((data / "nats" / "nats-server.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def hub_data(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "hub"
    yield data
    pid = _nats_pid(data)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.servers  # the hub, sandboxed as its unit would be
def test_hub_ready_only_when_serving(hub_data: Path, tmp_path: Path) -> None:
    listener = NotifyListener(f"@amber-test-{secrets.token_hex(8)}")
    log = tmp_path / "hub.log"
    with open(log, "wb") as err:
        argv, extra = daemon_cmd(
            "amber-hub.service",
            *("amber.hub.cli", "--data", str(hub_data), "serve"),
            *("--nats-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
        )
        proc = subprocess.Popen(
            argv,
            env={**_env(listener.address), **extra},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        ready = listener.wait_for("READY=1", START_TIMEOUT, lambda: proc.poll() is None)
        # At READY=1 the hub must already be fully up: runtime file, admin API, NATS.
        runtime = json.loads((hub_data / "hub.json").read_text())
        ctx = admin_context(hub_data)
        url = runtime["admin_url"] + "/api/v1/health"
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            assert resp.status == 200
        with tls_socket(hub_data, *host_port(runtime["nats_url"]), timeout=5) as s:
            assert s.recv(4).startswith(b"INFO")
        time.sleep(2.5)
        _assert_watchdog_fed(listener, ready)
        took = _stop(proc, listener)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    assert took < 15, f"hub took {took:.1f}s to stop"
    assert "Traceback" not in log.read_text(), log.read_text()
    check_sandboxed(log.read_text())
    pid = _nats_pid(hub_data)
    if pid is not None:  # the hub stops its own nats-server
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the hub left its nats-server running"


# --------------------------------------------------------------------------- the module


def test_notify_is_a_noop_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000")
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False


def test_notify_reports_a_dead_socket_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


def test_watchdog_pid_must_match(
    notify_path: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == pytest.approx(0.2)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # a parent's watchdog
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert sdnotify.watchdog_interval() is None


def test_watchdog_stops_when_the_loop_is_wedged(
    notify_path: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path.address)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    async def main() -> None:
        task = sdnotify.ready("testing")
        await asyncio.sleep(0.3)
        time.sleep(0.5)  # noqa: ASYNC251 - wedge the loop: no pings may go out meanwhile
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(main())
    time.sleep(0.2)
    assert notify_path.lines()[:2] == ["READY=1", "STATUS=testing"]
    pings = notify_path.times("WATCHDOG=1")
    assert len(pings) >= 4
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.45  # the wedge shows as a gap: systemd would have fired


def test_stopping_then_notifies_before_the_callback(
    notify_path: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path.address)
    called: list[bool] = []
    sdnotify.stopping_then(lambda: called.append(True))()
    assert called == [True]
    time.sleep(0.2)
    assert "STOPPING=1" in notify_path.lines()


def test_the_sandbox_emulation_really_restricts(tmp_path: Path) -> None:
    """The prelude above must enforce what the units forbid, or the daemon runs prove little."""
    (tmp_path / "probe.py").write_text(
        "import mmap, os, socket\n"
        "def attempt(what, fn):\n"
        "    try:\n"
        "        fn()\n"
        "        print(what, 'allowed')\n"
        "    except OSError as exc:\n"
        "        print(what, 'refused', exc.errno)\n"
        "attempt('rwx', lambda: mmap.mmap(-1, 4096, prot=7))\n"
        "attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))\n"
        "attempt('inet', lambda: socket.socket(socket.AF_INET).close())\n"
        "attempt('nice', lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))\n"
        "attempt('chown', lambda: os.chown(__file__, os.getuid(), os.getgid()))\n"
    )
    argv, extra = daemon_cmd("amber-agent.service", "probe")
    r = subprocess.run(
        argv,
        env={**os.environ, **extra, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    check_sandboxed(r.stderr)
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert got["inet"] == "allowed"
    if _kernel_at_least(6, 3):
        assert got["rwx"].startswith("refused"), got
    if shutil.which("systemd-analyze"):
        assert got["netlink"] == "refused 1", got  # RestrictAddressFamilies
        assert got["nice"] == "refused 1", got  # ~@resources
        assert got["chown"] == "refused 1", got  # ~@privileged
