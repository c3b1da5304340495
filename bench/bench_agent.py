"""Amber's agent against restic on the generated 1 GiB AI node (issue 3's targets).

In one run, on one machine, on the same bytes (``ainode.py``; the tree is copied out of
its cache so it can be mutated):

1. **full checkpoint throughput**: ``amber-agent checkpoint`` into a new journal against
   ``restic backup`` into a new local repository, source MiB per wall-clock second
   (process start to exit). Target: Amber at least 2.5x restic.
2. **incremental size**: after ``ainode.mutate()`` (~1 % of a model rewritten in 4
   regions, 1,000 rows inserted, 2 MiB appended to a log, 5 prompts edited), the bytes
   the second checkpoint adds to the journal (growth of its held bytes: chunk blobs
   plus manifest/checkpoint records) against the growth of restic's repository on disk.
   Target: Amber at most 0.5x restic.
3. **restore throughput**: the whole (mutated) node into an empty directory, Amber's
   ``restore latest --to`` against ``restic restore latest --target``. Both restores
   are checked against the source afterwards (outside the timing). Target: Amber at
   least 1x restic.
4. **peak RSS** of ``amber-agent checkpoint`` on one 2 GiB model file (``ru_maxrss`` of
   the child, from ``wait4``). Target: under 200 MiB. restic's figure on the same
   file is given for context.

Page caches cannot be dropped without root tricks that would disturb the other users
of the machine, so every measurement is made warm: the node is read once by each
tool before anything is timed (a discarded warm-up round), and the measured rounds
alternate which tool goes first. ``--runs`` rounds (default 2) are measured; the
table shows the best round of each tool and the JSON every round.
The "other CPU" column is CPU time the rest of the machine (other processes, not the
measured one) used meanwhile, from /proc/stat: a large figure means a noisy row.

    .venv/bin/python bench/bench_agent.py            # 1 GiB node, 2.5-4 minutes on 2 cores
    .venv/bin/python bench/bench_agent.py --quick    # 1/8 scale, 256 MiB RSS file, ~1 minute
    .venv/bin/python bench/bench_agent.py --json > agent.json   # table on stderr

Everything is written under ``bench/.work/bench_agent/`` (removed at the start of a run).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ainode
import blake3
from ainode import DEFAULT_SEED, QUICK_SCALE, SOURCES, WORK_DIR, MiB
from datagen import write_model_file
from restic import Restic, find_restic, parse_backup_summary, restic_version

TARGETS = {
    "checkpoint_throughput_ratio": (">=", 2.5),
    "incremental_bytes_ratio": ("<=", 0.5),
    "restore_throughput_ratio": (">=", 1.0),
    "peak_rss_mib": ("<", 200.0),
}


# --------------------------------------------------------------------------- measuring


def machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (fields + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


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
        busy0, own0 = machine_busy(), _own_cpu()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env, cwd=cwd)
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy1, own1 = machine_busy(), _own_cpu()
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


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def tool(name: str) -> str:
    """A console script of this venv (next to the interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"cannot find {name}: run the bench with the project's venv (.venv/bin/python)")
    return found


# --------------------------------------------------------------------------- Amber


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


# --------------------------------------------------------------------------- reporting


def verdict(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, bound = TARGETS[name]
    ok = {
        ">=": value >= bound,
        "<=": value <= bound,
        "<": value < bound,
    }[op]
    return "PASS" if ok else "MISS"


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
    root = Path(__file__).resolve().parent.parent
    dirs = [str(root / d) for d in ("agent", "hub", "protocol", "amber_ns")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True)


def big_model(seed: int, size_mib: int) -> Path:
    """A cached single-file model of ``size_mib`` MiB (bf16), in a folder of its own."""
    base = WORK_DIR / "ainode" / f"bigmodel-v{ainode.GEN_VERSION}-seed{seed}-{size_mib}MiB"
    path, marker = base / "model" / "llm-big.bf16.safetensors", base / "done"
    if not marker.exists():
        shutil.rmtree(base, ignore_errors=True)
        print(f"generating a {size_mib} MiB model file ...", file=sys.stderr)
        write_model_file(path, size_mib * MiB, f"{seed}/big", "bf16")
        old = time.time() - 86400
        os.utime(path, (old, old))
        marker.write_text("ok")
    return path.parent


# --------------------------------------------------------------------------- the bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1/8-scale node, 256 MiB RSS file")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--scale", type=float, default=None, help="node size factor (default 1)")
    p.add_argument("--runs", type=int, default=2, help="measured rounds per tool (default 2)")
    p.add_argument("--rss-mib", type=int, default=None, help="model size for RSS (default 2048)")
    p.add_argument("--skip-rss-restic", action="store_true", help="no restic RSS figure")
    p.add_argument("--json", action="store_true", help="JSON to stdout, table to stderr")
    args = p.parse_args(argv)
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    rss_mib = args.rss_mib or (256 if args.quick else 2048)
    out = sys.stderr if args.json else sys.stdout

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    precompile()
    env0 = environment()
    restic_bin = find_restic()
    rversion = restic_version(restic_bin)
    log(rversion)
    cache = ainode.ensure_node(args.seed, scale)
    work = WORK_DIR / "bench_agent"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    node = ainode.working_copy(cache, work / "node")
    stats = ainode.node_stats(cache)
    total = stats["bytes"]
    paths = [node / rel for _kind, rel in SOURCES.values()]
    log(f"node: {total / MiB:.0f} MiB in {stats['files']} files, copied to {node}")

    def amber_full(tag: str) -> tuple[AmberNode, Run, dict[str, Any]]:
        a = AmberNode(work / f"amber-{tag}")
        a.init()
        a.add_node_sources(node)
        run, res = a.checkpoint()
        log(f"amber checkpoint ({tag}): {run.wall_s:.1f} s, {total / MiB / run.wall_s:.0f} MiB/s")
        return a, run, res

    def restic_full(tag: str) -> tuple[Restic, Run, dict[str, Any]]:
        r = Restic(work / f"restic-{tag}", work)
        r.init()
        run = run_timed(r.backup_argv(paths), env=r.env())
        log(f"restic backup ({tag}): {run.wall_s:.1f} s, {total / MiB / run.wall_s:.0f} MiB/s")
        return r, run, parse_backup_summary(run.stdout)

    # 1. full checkpoint: a warm-up round, then alternating measured rounds
    doc: dict[str, Any] = {"bench": "bench_agent", "environment": env0, "restic": rversion}
    doc["node"] = {"seed": args.seed, "scale": scale, **stats}
    warm_a = amber_full("warm")
    warm_r = restic_full("warm")
    shutil.rmtree(warm_a[0].state), shutil.rmtree(warm_r[0].repo)
    amber_runs: list[tuple[AmberNode, Run, dict[str, Any]]] = []
    restic_runs: list[tuple[Restic, Run, dict[str, Any]]] = []
    for i in range(args.runs):
        order = ("amber", "restic") if i % 2 == 0 else ("restic", "amber")
        for which in order:
            if which == "amber":
                if amber_runs:
                    shutil.rmtree(amber_runs[-1][0].state)
                amber_runs.append(amber_full(f"r{i}"))
            else:
                if restic_runs:
                    shutil.rmtree(restic_runs[-1][0].repo)
                restic_runs.append(restic_full(f"r{i}"))
    a_best = min(amber_runs, key=lambda x: x[1].wall_s)[1]
    r_best = min(restic_runs, key=lambda x: x[1].wall_s)[1]
    amber, _a_last, a_res = amber_runs[-1]
    restic, _r_last, r_sum = restic_runs[-1]
    full = {
        "amber": {
            "mib_s": total / MiB / a_best.wall_s,
            "runs": [x[1].summary() for x in amber_runs],
            "warmup": warm_a[1].summary(),
            "checkpoint": a_res,
        },
        "restic": {
            "mib_s": total / MiB / r_best.wall_s,
            "runs": [x[1].summary() for x in restic_runs],
            "warmup": warm_r[1].summary(),
            "summary": r_sum,
        },
    }
    full["ratio"] = full["amber"]["mib_s"] / full["restic"]["mib_s"]
    held0, file0, repo0 = amber.held_bytes(), amber.journal_file_bytes(), restic.repo_size()
    full["amber"]["held_bytes"], full["amber"]["journal_file_bytes"] = held0, file0
    full["restic"]["repo_bytes"] = repo0
    doc["full_checkpoint"] = full

    # 2. incremental after a day of changes
    time.sleep(2.1)  # let the mutation's mtimes clear Amber's racy window of the last scan
    changes = ainode.mutate(node, args.seed)
    log(f"mutated: {json.dumps(changes)[:200]}")
    a_inc, a_inc_res = amber.checkpoint()
    r_inc = run_timed(restic.backup_argv(paths), env=restic.env())
    r_inc_sum = parse_backup_summary(r_inc.stdout)
    held1, file1, repo1 = amber.held_bytes(), amber.journal_file_bytes(), restic.repo_size()
    inc = {
        "changes": changes,
        "amber": {
            "added_bytes": held1 - held0,
            "journal_file_growth": file1 - file0,
            "checkpoint": a_inc_res,
            "run": a_inc.summary(),
        },
        "restic": {
            "added_bytes": repo1 - repo0,
            "data_added": r_inc_sum.get("data_added"),
            "summary": r_inc_sum,
            "run": r_inc.summary(),
        },
    }
    inc["ratio"] = inc["amber"]["added_bytes"] / max(1, inc["restic"]["added_bytes"])
    doc["incremental"] = inc
    log(
        f"incremental: amber +{fmt_bytes(held1 - held0)} ({a_inc.wall_s:.1f} s), "
        f"restic +{fmt_bytes(repo1 - repo0)} ({r_inc.wall_s:.1f} s)"
    )

    # 3. restore of the whole (mutated) node, alternating, then checked
    a_rest: list[Run] = []
    r_rest: list[Run] = []
    for i in range(args.runs + 1):  # round 0 is a warm-up for both
        order = ("amber", "restic") if i % 2 == 0 else ("restic", "amber")
        for which in order:
            target = work / f"restore-{which}"
            shutil.rmtree(target, ignore_errors=True)
            if which == "amber":
                a_rest.append(run_timed(amber.restore_argv(target)))
            else:
                target.mkdir()
                r_rest.append(run_timed(restic.restore_argv("latest", target), env=restic.env()))
            last = (a_rest if which == "amber" else r_rest)[-1]
            log(f"{which} restore ({i}): {last.wall_s:.1f} s")
    a_ok = check_restore(node, work / "restore-amber")
    r_ok = check_restore(node, work / "restore-restic" / node.relative_to(node.anchor))
    # restored bytes: the mutated node
    total_after = sum(s for s, _ in tree_digests(node).values())
    ab, rb = min(a_rest[1:], key=lambda r: r.wall_s), min(r_rest[1:], key=lambda r: r.wall_s)
    rest = {
        "bytes": total_after,
        "amber": {
            "mib_s": total_after / MiB / ab.wall_s,
            "runs": [r.summary() for r in a_rest],
            "check": a_ok,
        },
        "restic": {
            "mib_s": total_after / MiB / rb.wall_s,
            "runs": [r.summary() for r in r_rest],
            "check": r_ok,
        },
    }
    rest["ratio"] = rest["amber"]["mib_s"] / rest["restic"]["mib_s"]
    doc["restore"] = rest
    for which in ("amber", "restic"):
        shutil.rmtree(work / f"restore-{which}", ignore_errors=True)
    shutil.rmtree(amber.state), shutil.rmtree(restic.repo)

    # 4. peak RSS while checkpointing one big model file
    big = big_model(args.seed, rss_mib)
    rss_node = AmberNode(work / "amber-rss")
    rss_node.init()
    rss_node.add_source("bigmodel", "model", big)
    rss_run, rss_res = rss_node.checkpoint()
    log(f"amber RSS run: {rss_run.maxrss_mib:.0f} MiB peak, {rss_run.wall_s:.1f} s")
    shutil.rmtree(rss_node.state)
    rss = {
        "file_mib": rss_mib,
        "amber": {"peak_rss_mib": rss_run.maxrss_mib, "run": rss_run.summary(), "res": rss_res},
    }
    if not args.skip_rss_restic:
        rr = Restic(work / "restic-rss", work)
        rr.init()
        rr_run = run_timed(rr.backup_argv([big]), env=rr.env())
        rss["restic"] = {"peak_rss_mib": rr_run.maxrss_mib, "run": rr_run.summary()}
        shutil.rmtree(rr.repo)
        log(f"restic RSS run: {rr_run.maxrss_mib:.0f} MiB peak, {rr_run.wall_s:.1f} s")
    doc["peak_rss"] = rss
    shutil.rmtree(work / "restic-cache", ignore_errors=True)

    # --- verdicts and the table
    results = {
        "checkpoint_throughput_ratio": full["ratio"],
        "incremental_bytes_ratio": inc["ratio"],
        "restore_throughput_ratio": rest["ratio"] if a_ok == r_ok == "ok" else None,
        "peak_rss_mib": rss["amber"]["peak_rss_mib"],
    }
    doc["targets"] = {
        k: {"value": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}", "verdict": verdict(k, v)}
        for k, v in results.items()
    }
    doc["environment"]["loadavg_end"] = os.getloadavg()

    def other(runs: list[Run]) -> str:
        vals = [r.other_cpu_s for r in runs if r.other_cpu_s is not None]
        return f"{max(vals):.1f}" if vals else "?"

    rows = [["metric", "Amber", "restic", "ratio", "target", "verdict"]]
    t = doc["targets"]
    rows.append(
        [
            "full checkpoint, MiB/s",
            f"{full['amber']['mib_s']:.0f}",
            f"{full['restic']['mib_s']:.0f}",
            f"{full['ratio']:.2f}x",
            ">= 2.5x",
            t["checkpoint_throughput_ratio"]["verdict"],
        ]
    )
    rows.append(
        [
            "incremental, bytes added",
            fmt_bytes(inc["amber"]["added_bytes"]),
            fmt_bytes(inc["restic"]["added_bytes"]),
            f"{inc['ratio']:.2f}x",
            "<= 0.5x",
            t["incremental_bytes_ratio"]["verdict"],
        ]
    )
    rows.append(
        [
            "restore, MiB/s",
            f"{rest['amber']['mib_s']:.0f}",
            f"{rest['restic']['mib_s']:.0f}",
            f"{rest['ratio']:.2f}x",
            ">= 1x",
            t["restore_throughput_ratio"]["verdict"],
        ]
    )
    rows.append(
        [
            f"peak RSS, {rss_mib} MiB model",
            f"{rss['amber']['peak_rss_mib']:.0f} MiB",
            f"{rss['restic']['peak_rss_mib']:.0f} MiB" if "restic" in rss else "-",
            "",
            "< 200 MiB",
            t["peak_rss_mib"]["verdict"],
        ]
    )
    print(
        f"\nAmber vs {rversion.split(' compiled')[0]} on the AI node (seed {args.seed}, scale "
        f"{scale:g}: {total / MiB:,.0f} MiB in {stats['files']} files), {env0['cpus']} CPUs, "
        f"best of {args.runs} warm rounds",
        file=out,
    )
    print_table(rows, out)
    print(
        f"\nfull: Amber {a_best.wall_s:.1f} s ({a_best.cpu_s:.1f} CPU s), restic "
        f"{r_best.wall_s:.1f} s ({r_best.cpu_s:.1f} CPU s); stored: journal "
        f"{fmt_bytes(held0)}, restic repo {fmt_bytes(repo0)}",
        file=out,
    )
    print(
        f"incremental: Amber {a_inc.wall_s:.1f} s (new_bytes {fmt_bytes(a_inc_res['new_bytes'])}, "
        f"journal file +{fmt_bytes(file1 - file0)}), restic {r_inc.wall_s:.1f} s "
        f"(data_added {fmt_bytes(r_inc_sum.get('data_added', 0))})",
        file=out,
    )
    print(
        f"restore: Amber {ab.wall_s:.1f} s ({ab.cpu_s:.1f} CPU s) check {a_ok}; restic "
        f"{rb.wall_s:.1f} s ({rb.cpu_s:.1f} CPU s) check {r_ok}",
        file=out,
    )
    print(
        f"RSS file checkpointed in {rss_run.wall_s:.1f} s ({rss_mib / rss_run.wall_s:.0f} MiB/s)",
        file=out,
    )
    print(
        "other processes' CPU during the runs (max per run, s): checkpoint "
        f"{other([x[1] for x in amber_runs + restic_runs])}, restore {other(a_rest + r_rest)}; "
        f"load average at start {env0['loadavg_start'][0]:.2f}, end "
        f"{doc['environment']['loadavg_end'][0]:.2f}",
        file=out,
    )
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
