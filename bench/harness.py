"""What the bench scripts share: timed runs with CPU accounting, machine-busy checks,
verdicts against targets, tables, the agent and hub they drive, and restore checks.

Each bench script imports this module (the bench folder is on ``sys.path`` when a script
runs); no bench script imports another. Importing it also puts the repository root on
``sys.path``, so the benches can use ``tests/support`` (real servers, the fault proxy,
the hub process helper).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ainode
import blake3
from ainode import SOURCES, WORK_DIR, MiB
from restic import find_restic, restic_version

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.faultproxy import ThreadedProxy  # noqa: E402
from tests.support.hub import HubProcess  # noqa: E402

__all__ = [
    "REPO_ROOT",
    "AmberNode",
    "HubProcess",
    "Run",
    "ThreadedProxy",
    "check_restore",
    "environment",
    "finish",
    "fmt_bytes",
    "hub_process",
    "log",
    "machine_busy",
    "machine_cpu",
    "open_bench",
    "own_cpu",
    "precompile",
    "print_table",
    "proc_cpu",
    "run_timed",
    "tool",
    "tree_cpu",
    "tree_digests",
    "verdict",
    "verdicts",
    "via_proxy",
    "warm",
]


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- CPU accounting


def machine_cpu() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine since boot (see :func:`machine_cpu`)."""
    cpu = machine_cpu()
    return None if cpu is None else cpu[0]


def own_cpu() -> float:
    """CPU seconds (user + system) this process has used."""
    t = os.times()
    return t.user + t.system


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its threads (utime + stime)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = _stat_fields(d)
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return total


# --------------------------------------------------------------------------- timed runs


@dataclass
class Run:
    """One timed child process."""

    argv: list[str]
    wall_s: float
    cpu_s: float  # user + system of the child (and its waited-for descendants)
    maxrss_mib: float
    other_cpu_s: float | None  # CPU the rest of the machine used meanwhile
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stdout"), d.pop("stderr")
        d["argv"] = [Path(a).name if os.sep in a else a for a in self.argv[:3]]
        return d


def run_timed(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> Run:
    """Run ``argv`` to completion; wall time, CPU time and peak RSS of the child.

    ``wait4`` gives the rusage of exactly this child, so nothing else the bench
    started earlier counts towards its peak RSS.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, own0 = machine_busy(), own_cpu()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env, cwd=cwd)
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy1, own1 = machine_busy(), own_cpu()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    cpu = ru.ru_utime + ru.ru_stime
    other = None
    if busy0 is not None and busy1 is not None:
        other = max(0.0, busy1 - busy0 - cpu - (own1 - own0))
    run = Run(list(argv), wall, cpu, ru.ru_maxrss / 1024, other, proc.returncode, stdout, stderr)
    if check and run.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} ... exited {run.returncode}:\n{stderr[-3000:]}{stdout[-1000:]}"
        )
    return run


def tool(name: str) -> str:
    """A console script of this venv (next to the interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"cannot find {name}: run the bench with the project's venv (.venv/bin/python)")
    return found


# --------------------------------------------------------------------------- reporting


def fmt_bytes(n: float) -> str:
    return f"{n / MiB:,.1f} MiB" if n >= MiB else f"{n / 1024:,.1f} KiB"


def print_table(rows: list[list[str]], out: Any) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def environment() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": cpus,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "loadavg_start": os.getloadavg(),
    }


def precompile() -> None:
    """Write the bytecode of Amber's packages once, as installing a wheel does: with an
    editable install and ``PYTHONDONTWRITEBYTECODE`` set, every timed command would
    otherwise recompile ~40 modules (40-70 ms per command)."""
    dirs = [str(REPO_ROOT / d) for d in ("agent", "hub", "protocol", "amber_ns")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True)


# --------------------------------------------------------------------------- verdicts


def verdict(targets: Mapping[str, tuple[str, float]], name: str, value: float | None) -> str:
    """PASS or MISS of ``value`` against ``targets[name]`` (an operator and a bound)."""
    if value is None:
        return "n/a"
    op, bound = targets[name]
    ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound, ">": value > bound}
    return "PASS" if ok[op] else "MISS"


def verdicts(
    targets: Mapping[str, tuple[str, float]], results: Mapping[str, float | None]
) -> dict[str, dict[str, Any]]:
    """Each result with its target and verdict, as the benches' JSON reports them."""
    return {
        k: {
            "value": v,
            "target": f"{targets[k][0]} {targets[k][1]}",
            "verdict": verdict(targets, k, v),
        }
        for k, v in results.items()
    }


def finish(doc: dict[str, Any], as_json: bool) -> int:
    """The end of a bench: its JSON document on stdout if asked; exit code 0."""
    if as_json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    return 0


# --------------------------------------------------------------------------- the hub


def hub_process(
    data: Path, store: str | None = None, env: dict[str, str] | None = None
) -> HubProcess:
    """``amber-hub serve`` on free ports with its data in ``data`` (and a store URL and
    environment for an S3 store), not started yet: the tests' process helper, which
    stops the hub and its nats-server by pid (:meth:`HubProcess.cleanup`)."""
    hub = HubProcess(data, serve_options=["--store", store] if store else (), env=env)
    hub.START_TIMEOUT = 60.0  # beside SeaweedFS, on a busy machine
    return hub


def via_proxy(enrolment: Path, port: int) -> Path:
    """Point an enrolment file at the byte-counting proxy instead of the hub's NATS."""
    obj = json.loads(enrolment.read_text())
    obj["nats_servers"] = [f"nats://127.0.0.1:{port}"]
    enrolment.write_text(json.dumps(obj, indent=2))
    os.chmod(enrolment, 0o600)
    return enrolment


def open_bench(name: str, seed: int, scale: float) -> tuple[dict[str, Any], Path, Path]:
    """The start every bench against restic makes: its JSON document (environment,
    restic version, the AI node's figures), the cached AI node (read once, so the page
    cache is warm) and a fresh work directory ``bench/.work/<name>``."""
    doc: dict[str, Any] = {"bench": name, "environment": environment()}
    doc["restic"] = restic_version(find_restic())
    log(doc["restic"])
    cache = ainode.ensure_node(seed, scale)
    stats = ainode.node_stats(cache)
    work = WORK_DIR / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    mib = stats["bytes"] / MiB
    log(f"node: {mib:.0f} MiB in {stats['files']} files; warmed {warm(cache):.0f} MiB")
    doc["node"] = {"seed": seed, "scale": scale, **stats}
    return doc, cache, work


def warm(root: Path) -> float:
    """Read every file once (page cache); return MiB read."""
    n = 0
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while block := f.read(8 * MiB):
                    n += len(block)
    return n / MiB


# --------------------------------------------------------------------------- the agent


class AmberNode:
    """One ``amber-agent`` state directory, driven through the CLI."""

    def __init__(self, state: Path, node: str = "edge-01", vault: str = "bench") -> None:
        self.state, self.node, self.vault = state, node, vault
        self.bin = tool("amber-agent")

    @property
    def config(self) -> Path:
        return self.state / "agent.toml"

    def argv(self, *args: str) -> list[str]:
        return [self.bin, "--config", str(self.config), *args]

    def init(self, *, vault_key: Path | None = None, enroll: Path | None = None) -> None:
        if self.state.exists():
            shutil.rmtree(self.state)
        cmd = [self.bin, "init", "--dir", str(self.state), "--node", self.node]
        cmd += ["--vault", self.vault]
        if vault_key is not None:
            cmd += ["--vault-key", str(vault_key)]
        if enroll is not None:
            cmd += ["--enroll", str(enroll)]
        run_timed(cmd)

    def add_source(self, name: str, kind: str, path: Path) -> None:
        run_timed(self.argv("source", "add", name, "--kind", kind, "--path", str(path)))

    def add_node_sources(self, root: Path, only: Sequence[str] | None = None) -> None:
        for name, (kind, rel) in SOURCES.items():
            if only is None or name in only:
                self.add_source(name, kind, root / rel)

    def checkpoint(self) -> tuple[Run, dict[str, Any]]:
        run = run_timed(self.argv("checkpoint", "--json"))
        return run, json.loads(run.stdout.strip().splitlines()[-1])

    def sync(self) -> tuple[Run, dict[str, Any]]:
        run = run_timed(self.argv("sync", "--once", "--json"))
        return run, json.loads(run.stdout.strip().splitlines()[-1])

    def status(self) -> dict[str, Any]:
        return json.loads(run_timed(self.argv("status", "--json")).stdout)

    def held_bytes(self) -> int:
        return int(self.status()["journal_bytes"])

    def journal_file_bytes(self) -> int:
        """On disk: journal.db (and its WAL) plus the pack files."""
        files = [p for p in self.state.glob("journal.db*") if p.name != "journal.db-shm"]
        return sum(p.stat().st_size for p in [*files, *self.state.glob("packs/*.pack")])

    def restore_argv(self, target: Path) -> list[str]:
        return self.argv("restore", "latest", "--to", str(target))


# --------------------------------------------------------------------------- checks


def tree_digests(root: Path) -> dict[str, tuple[int, str]]:
    """(size, BLAKE3) of every regular file under ``root``, except SQLite's -wal and -shm
    files (a read-only connection, Amber's backup copy or our check, leaves them)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name.endswith(("-wal", "-shm")):
            continue
        if p.is_file() and not p.is_symlink():
            h = blake3.blake3()
            with open(p, "rb") as f:
                while block := f.read(8 * MiB):
                    h.update(block)
            out[p.relative_to(root).as_posix()] = (p.stat().st_size, h.hexdigest())
    return out


def db_fingerprint(path: Path) -> tuple[str, int, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        n = con.execute("SELECT count(*) FROM messages").fetchone()[0]
        e = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    finally:
        con.close()
    return ok, n, e


def check_restore(source: Path, restored: Path) -> str:
    """'ok', or what differs. The SQLite database is compared by content (Amber restores
    the online-backup copy, whose header may differ from the live file's)."""
    want, got = tree_digests(source), tree_digests(restored)
    db = SOURCES["memory"][1]
    want.pop(db, None)
    got_db = got.pop(db, None)
    if want != got:
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        diff = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:3]
        return f"differs: missing {missing} extra {extra} changed {diff}"
    if got_db is None:
        return "differs: no database restored"
    a, b = db_fingerprint(source / db), db_fingerprint(restored / db)
    return "ok" if a == b else f"database differs: {a} != {b}"
