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
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import ainode
from ainode import DEFAULT_SEED, QUICK_SCALE, SOURCES, WORK_DIR, MiB
from datagen import write_model_file
from harness import (
    AmberNode,
    Run,
    check_restore,
    environment,
    finish,
    fmt_bytes,
    log,
    precompile,
    print_table,
    run_timed,
    tree_digests,
    verdicts,
)
from restic import Restic, find_restic, parse_backup_summary, restic_version

TARGETS = {
    "checkpoint_throughput_ratio": (">=", 2.5),
    "incremental_bytes_ratio": ("<=", 0.5),
    "restore_throughput_ratio": (">=", 1.0),
    "peak_rss_mib": ("<", 200.0),
}


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
    doc["targets"] = verdicts(TARGETS, results)
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
    return finish(doc, args.json)


if __name__ == "__main__":
    sys.exit(main())
