"""Checkpoint, sync and restore of a `files` source of many small files (a dataset).

A source of ``--files`` files of 0-2 KiB (default 1,000,000; 1,000 per directory) is
generated once into ``bench/.work/manyfiles/data-<N>`` and reused; a run's
state is under ``bench/.work/manyfiles/run-<N>``. Then, as real
processes:

1. ``amber-hub serve`` (embedded nats-server, local store) starts;
2. a node (``amber-agent init --enroll``) checkpoints the source, then ``sync --once``;
3. a replacement machine (same vault key and enrolment, fresh journal) restores the
   checkpoint from the hub (every manifest part and chunk fetched over NATS), and the
   restored tree is compared with the source (sizes and BLAKE3).

Reported: wall time and peak RSS of each agent command (``wait4`` rusage of the
child) and the hub process's peak RSS (``VmHWM`` from /proc, read before it stops;
the embedded nats-server is a separate process and reported apart). Target: peak RSS
under 300 MiB for the agent and the hub.

    .venv/bin/python bench/bench_manyfiles.py                    # 1M files; long
    .venv/bin/python bench/bench_manyfiles.py --files 100000     # ~1/10 scale
    .venv/bin/python bench/bench_manyfiles.py --quick            # 20,000 files
    .venv/bin/python bench/bench_manyfiles.py --json > many.json  # table on stderr
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ainode import WORK_DIR
from bench_agent import AmberNode, Run, run_timed, tool, tree_digests
from bench_sync import HubProcess

TARGET_RSS_MIB = 300.0
PER_DIR = 1000
MAX_SIZE = 2048


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def generate(root: Path, files: int, seed: int) -> Path:
    """``files`` files of 0..MAX_SIZE random bytes, PER_DIR per directory (made once)."""
    done = root.with_name(root.name + ".complete")
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i // PER_DIR:05d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}.bin").write_bytes(rng.randbytes(rng.randint(0, MAX_SIZE)))
    done.write_text(f"{files} files, seed {seed}\n")
    return root


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size of a running process (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def nats_pid(hub_pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{hub_pid}/task/{hub_pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def row(step: str, run: Run) -> dict[str, Any]:
    return {"step": step, "wall_s": round(run.wall_s, 1), "peak_rss_mib": round(run.maxrss_mib)}


def bench(files: int, seed: int) -> dict[str, Any]:
    data = generate(WORK_DIR / "manyfiles" / f"data-{files}", files, seed)
    log(f"source ready: {files} files under {data}")
    work = WORK_DIR / "manyfiles" / f"run-{files}"  # removed at the start of a run
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    key = work / "vault.key"
    run_timed([tool("amber-agent"), "keygen", "--out", str(key)])
    hub = HubProcess(work / "hub").start()
    assert hub.proc is not None
    rows: list[dict[str, Any]] = []
    try:
        enrolment = hub.add_node("edge-01", work / "node.enrol.json")
        node = AmberNode(work / "node")
        node.init(vault_key=key, enroll=enrolment)
        node.add_source("dataset", "files", data)
        run, cp = node.checkpoint()
        rows.append(row("checkpoint", run))
        log(f"checkpoint: {run.wall_s:.1f} s, peak RSS {run.maxrss_mib:.0f} MiB")
        run, stats = node.sync()
        rows.append(row("sync --once", run))
        log(f"sync: {run.wall_s:.1f} s, peak RSS {run.maxrss_mib:.0f} MiB, {stats}")
        fresh = AmberNode(work / "replacement")
        fresh.init(vault_key=key, enroll=enrolment)
        target = work / "restored"
        run = run_timed(fresh.argv("restore", cp["id"], "--to", str(target)))
        rows.append(row("restore (from the hub)", run))
        log(f"restore: {run.wall_s:.1f} s, peak RSS {run.maxrss_mib:.0f} MiB")
        same = tree_digests(target / "dataset") == tree_digests(data)
        hub_rss = vm_hwm_mib(hub.proc.pid)
        npid = nats_pid(hub.proc.pid)
        nats_rss = vm_hwm_mib(npid) if npid else None
    finally:
        hub.stop()
    agent_peak = max(r["peak_rss_mib"] for r in rows)
    return {
        "files": files,
        "seed": seed,
        "steps": rows,
        "hub_peak_rss_mib": None if hub_rss is None else round(hub_rss),
        "nats_peak_rss_mib": None if nats_rss is None else round(nats_rss),
        "restored_identical": same,
        "agent_target": "PASS" if agent_peak < TARGET_RSS_MIB else "MISS",
        "hub_target": "PASS" if hub_rss is not None and hub_rss < TARGET_RSS_MIB else "MISS",
    }


def print_table(res: dict[str, Any]) -> None:
    out = sys.stderr
    print(f"\n{res['files']:,} files of 0-{MAX_SIZE} bytes (seed {res['seed']})", file=out)
    print(f"{'step':<24} {'wall s':>8} {'peak RSS MiB':>13}", file=out)
    for r in res["steps"]:
        print(f"{r['step']:<24} {r['wall_s']:>8} {r['peak_rss_mib']:>13}", file=out)
    print(f"{'hub process':<24} {'':>8} {res['hub_peak_rss_mib']!s:>13}", file=out)
    print(f"{'nats-server':<24} {'':>8} {res['nats_peak_rss_mib']!s:>13}", file=out)
    print(
        f"restored identical: {res['restored_identical']}; agent < {TARGET_RSS_MIB:.0f} MiB: "
        f"{res['agent_target']}; hub < {TARGET_RSS_MIB:.0f} MiB: {res['hub_target']}",
        file=out,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 files (a smoke run)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = ap.parse_args()
    res = bench(20_000 if args.quick else args.files, args.seed)
    print_table(res)
    if args.json:
        print(json.dumps(res, indent=2))
    return 0 if res["restored_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
