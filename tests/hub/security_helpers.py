"""Helpers for the hub's security tests: a hub in a box as a real process, node
connections with their enrolled credentials, the agent CLI as a process, forged
records, and a scanner that looks for leaked plaintext in everything the hub stored.

Plain Python (no pytest imports). Used by test_permissions.py, test_hostile_input.py
and test_no_plaintext.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import nats
import zstandard

from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import Checkpoint, encode_checkpoint
from tests.support.hubtls import admin_context, enrolment_tls

START_TIMEOUT = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists": look at its state
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class HubProc:
    """``python -m amber.hub.cli.parser --data D serve`` on free ports, as a real process."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = data.parent / f"{data.name}.stderr.log"
        self.stdout_path = data.parent / f"{data.name}.stdout.log"
        self._err: IO[bytes] | None = None
        self.nats_pid: int | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> HubProc:
        (self.data / "hub.json").unlink(missing_ok=True)
        self._err = open(self.stderr_path, "ab")
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "amber.hub.cli",
                    "--data",
                    str(self.data),
                    "serve",
                    "--nats-listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                ],
                stdout=out,
                stderr=self._err,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.data / "hub.json").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub did not start in {START_TIMEOUT}s:\n{self.stderr()}")
            time.sleep(0.05)
        with contextlib.suppress(OSError, ValueError):
            self.nats_pid = int((self.data / "nats" / "nats-server.pid").read_text().strip())
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the hub (it stops its nats-server), then make sure both are gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.nats_pid is None:
            with contextlib.suppress(OSError, ValueError):
                self.nats_pid = int((self.data / "nats" / "nats-server.pid").read_text().strip())
        if self.nats_pid is not None and _alive(self.nats_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.nats_pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(self.nats_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.nats_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.nats_pid, signal.SIGKILL)
        if self._err is not None:
            self._err.close()
            self._err = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- what it tells us -----------------------------------------------------------

    @property
    def runtime(self) -> dict[str, Any]:
        return json.loads((self.data / "hub.json").read_text())

    @property
    def nats_url(self) -> str:
        return str(self.runtime["nats_url"])

    @property
    def admin_url(self) -> str:
        return str(self.runtime["admin_url"])

    @property
    def token(self) -> str:
        return str(json.loads((self.data / "secrets.json").read_text())["admin_token"])

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.admin_url + path,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
        )
        ctx = admin_context(self.data)
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        return dict(self.api("/api/v1/status"))

    def rejected(self, vault: str, node: str) -> int:
        return int(self.status()["ingest"]["rejected"].get(f"{vault}/{node}", 0))

    def checkpoints(self, vault: str | None = None, node: str | None = None) -> list[Any]:
        query = "&".join(f"{k}={v}" for k, v in (("vault", vault), ("node", node)) if v)
        return list(self.api("/api/v1/checkpoints" + (f"?{query}" if query else "")))

    def stored_files(self) -> dict[str, int]:
        """Every object file under DATA/objects, with its size."""
        root = self.data / "objects"
        if not root.exists():
            return {}
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    def snapshot(self) -> tuple[Any, ...]:
        """What the hub holds: object files, catalog counts, checkpoints per node."""
        st = self.status()
        cps = [(c["vault"], c["node"], c["seq"], c["id"]) for c in self.checkpoints()]
        return (self.stored_files(), st["objects"], st["stored_bytes"], sorted(cps))

    # --- enrolment ------------------------------------------------------------------

    def enrol(self, vault: str, node: str, out: Path, *, cli: bool = True) -> dict[str, Any]:
        """Enrol a node with `amber-hub node add` (or, faster, the admin API it calls)."""
        if not cli:
            enrolment = dict(self.api("/api/v1/nodes", {"vault": vault, "node": node}))
            out.write_text(json.dumps(enrolment))
            return enrolment
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "amber.hub.cli",
                "--data",
                str(self.data),
                "node",
                "add",
                node,
                "--vault",
                vault,
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, f"node add {vault}/{node}: {res.stdout}{res.stderr}"
        return dict(json.loads(out.read_text()))


# --- node connections -------------------------------------------------------------


@dataclass
class Errors:
    """Collects what the NATS client's error_cb receives."""

    seen: list[Exception] = field(default_factory=list)

    async def cb(self, exc: Exception) -> None:
        self.seen.append(exc)

    def texts(self) -> list[str]:
        return [str(e).lower() for e in self.seen]

    def violations(self, kind: str, subject: str) -> list[str]:
        """The permissions violations the server reported for ``kind`` on ``subject``."""
        want = f'permissions violation for {kind} to "{subject.lower()}"'
        return [t for t in self.texts() if want in t]


async def connect(enr: dict[str, Any], errors: Errors | None = None, **kw: Any) -> Any:
    """A NATS connection with a node's enrolled credentials, failing fast."""
    opts: dict[str, Any] = {
        "user": enr["user"],
        "password": enr["password"],
        "inbox_prefix": enr["inbox_prefix"],
        "allow_reconnect": False,
        "connect_timeout": 5,
        **enrolment_tls(enr),
    }
    if errors is not None:
        opts["error_cb"] = errors.cb
    opts.update(kw)
    return await nats.connect(list(enr["nats_servers"]), **opts)


# --- the agent as a process ---------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def agent(*args: object, timeout: float = 120) -> Run:
    """``amber-agent ARGS`` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "amber.agent.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def agent_ok(*args: object, timeout: float = 120) -> Run:
    res = agent(*args, timeout=timeout)
    assert res.code == 0, str(res)
    return res


# --- forged records -----------------------------------------------------------------


def checkpoint_record(
    keys: VaultKeys,
    signer: SigningKey,
    vault: str,
    node: str,
    seq: int = 0,
    prev: bytes | None = None,
    time_us: int | None = None,
) -> bytes:
    """A validly signed checkpoint with no manifests (the hub needs nothing else for it)."""
    cp = Checkpoint(
        vault=vault,
        node=node,
        seq=seq,
        prev=prev,
        time_us=time_us if time_us is not None else int(time.time() * 1e6),
        manifests={},
    )
    return encode_checkpoint(cp, keys, signer)


# --- leak scanner -------------------------------------------------------------------


def needle_forms(secret: bytes) -> dict[str, bytes]:
    """Byte strings whose presence in a file would reveal ``secret``: the raw bytes,
    UTF-16 (both byte orders; for text secrets), lower/upper hex, and base64 at each of
    the three alignments it can take inside a longer base64 text."""
    forms = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    try:
        text = secret.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        forms["utf-16-le"] = text.encode("utf-16-le")
        forms["utf-16-be"] = text.encode("utf-16-be")
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + secret)
        skip = (pad * 4 + 2) // 3  # characters that also depend on the preceding bytes
        core = enc[skip:].rstrip(b"=")
        core = core[: len(core) - (1 if (pad + len(secret)) % 3 else 0)]
        forms[f"base64/{pad}"] = core
        forms[f"base64url/{pad}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return forms


def walk_files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    yield p


@dataclass(frozen=True)
class Finding:
    secret: str
    form: str
    where: str  # file path relative to the scan root, "+name" for a hit in the path

    def __str__(self) -> str:
        return f"{self.secret} ({self.form}) in {self.where}"


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_INFLATE = 64 * 1024 * 1024


def zstd_frames(data: bytes) -> Iterator[bytes]:
    """The decompressed contents of every zstd frame inside ``data``: compressed but
    unencrypted text would not show its plaintext to a plain byte search."""
    at = data.find(ZSTD_MAGIC)
    while at >= 0:
        try:
            out = zstandard.ZstdDecompressor().decompressobj().decompress(data[at:])
        except zstandard.ZstdError:
            out = b""
        if out:
            yield out[:MAX_INFLATE]
        at = data.find(ZSTD_MAGIC, at + 1)


def scan(root: Path, secrets: dict[str, bytes]) -> list[Finding]:
    """Every form of every secret found in any file under ``root`` (or ``root`` itself):
    in its contents, in any zstd frame inside them, and in its path relative to
    ``root``."""
    needles = [
        (name, form, needle)
        for name, secret in secrets.items()
        for form, needle in needle_forms(secret).items()
    ]
    found: list[Finding] = []
    files = list(walk_files([root]))
    assert files, f"nothing to scan under {root}"
    for path in files:
        rel = str(path.relative_to(root)) if path != root else path.name
        data = path.read_bytes()
        inflated = list(zstd_frames(data))
        for name, form, needle in needles:
            if needle in data:
                found.append(Finding(name, form, rel))
            if any(needle in frame for frame in inflated):
                found.append(Finding(name, form + "+zstd", rel))
            if needle in rel.encode():
                found.append(Finding(name, form, "+" + rel))
    return found


def scanned_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in walk_files([root]))
