"""Checkpoint + sync to a hub, against restic's S3 backup, and a fleet's network bytes
(issue 4's targets).

In one run, on the generated AI node (``ainode.py``, read-only: nothing is mutated):

1. **hub in a box**: ``amber-hub serve`` with its embedded nats-server and local
   object store; a fresh node checkpoints the whole node, then ``sync --once``. The
   throughput is source MiB per wall-clock second of the two commands together (sync
   only returns once the hub has confirmed every object durable in its store).
2. **hub on S3**: the same, with the hub's store on a SeaweedFS S3 gateway
   (``tests/support/servers.py``'s ``SeaweedS3``; bucket with Object Lock).
3. **restic on S3**: ``restic backup`` of the same paths to the same SeaweedFS, in
   another bucket. Target: Amber's checkpoint+sync to the S3 hub at least 2x restic.
   With ``--runs 2`` or more the S3 runs alternate their order (fresh bucket each).
4. **fleet of 10 nodes holding the same model**: ten nodes of one vault (one vault key
   from ``amber-agent keygen``), each protecting the same ``models/`` folder and its
   own copy of ``prompts/`` with one node-specific file. Every node checkpoints, then:
   - *staggered*: node 1 syncs to an empty hub, then nodes 2..10 one after another;
   - *simultaneous* (``--simultaneous``; on by default only with ``--quick``): all of
     them sync at once to another empty hub (copies of the same journals), as when a
     model rolls out to a fleet at one time.
   Network bytes are the sum of the nodes' ``sync --once --json`` ``bytes_sent`` (chunk
   blobs), and, as a cross-check, every byte on the wire in both directions, counted by
   a TCP proxy (``tests/support/faultproxy.py``) between the agents and NATS. Target: ten nodes
   at most 1.1x one node.

The page cache is warmed by reading the node once before anything is timed. SeaweedFS
runs on the same two cores (about 14 CPU-seconds per GiB ingested), so it taxes Amber
and restic alike. The "other CPU" figures are CPU time other processes took meanwhile.

    .venv/bin/python bench/bench_sync.py          # ~1 GiB node, fleet of 10; ~8 minutes
    .venv/bin/python bench/bench_sync.py --quick  # 1/8 scale, fleet of 4; ~2 minutes
    .venv/bin/python bench/bench_sync.py --json > sync.json   # table on stderr

Everything is written under ``bench/.work/bench_sync/`` (removed at the start of a run).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import ainode
from ainode import DEFAULT_SEED, QUICK_SCALE, SOURCES, MiB
from harness import (
    AmberNode,
    HubProcess,
    Run,
    ThreadedProxy,
    finish,
    fmt_bytes,
    hub_process,
    log,
    open_bench,
    precompile,
    print_table,
    run_timed,
    tool,
    verdict,
    verdicts,
    via_proxy,
)
from restic import Restic, parse_backup_summary

from tests.support.servers import SeaweedS3

TARGETS = {
    "s3_throughput_ratio": (">=", 2.0),
    "fleet_bytes_ratio": ("<=", 1.1),
}
VAULT = "bench"


# --------------------------------------------------------------------------- benches


def amber_to_hub(hub: HubProcess, work: Path, name: str, root: Path, total: int) -> dict[str, Any]:
    enr = hub.enrol(name, VAULT, work / f"{name}.enrolment.json")
    node = AmberNode(work / f"amber-{name}", node=name, vault=VAULT)
    node.init(enroll=enr)
    node.add_node_sources(root)
    ck, ck_res = node.checkpoint()
    sy, sy_res = node.sync()
    wall = ck.wall_s + sy.wall_s
    log(
        f"amber -> {name}: checkpoint {ck.wall_s:.1f} s + sync {sy.wall_s:.1f} s = "
        f"{total / MiB / wall:.0f} MiB/s ({fmt_bytes(sy_res['bytes_sent'])} sent)"
    )
    shutil.rmtree(node.state)
    return {
        "mib_s": total / MiB / wall,
        "wall_s": wall,
        "checkpoint": {"run": ck.summary(), "res": ck_res},
        "sync": {"run": sy.summary(), "res": sy_res},
    }


def restic_s3(s3: SeaweedS3, work: Path, paths: list[Path], total: int, tag: str) -> dict[str, Any]:
    bucket = s3.make_bucket(f"restic-{tag}")
    r = Restic(
        f"s3:{s3.endpoint_url}/{bucket}",
        work / f"restic-{tag}",
        s3_keys=(s3.access_key, s3.secret_key),
    )
    r.init()
    run = run_timed(r.backup_argv(paths), env=r.env())
    summary = parse_backup_summary(run.stdout)
    log(f"restic -> S3 ({tag}): {run.wall_s:.1f} s = {total / MiB / run.wall_s:.0f} MiB/s")
    return {"mib_s": total / MiB / run.wall_s, "run": run.summary(), "summary": summary}


def fleet_nodes(
    work: Path, cache: Path, count: int, key: Path
) -> tuple[list[AmberNode], list[dict[str, Any]]]:
    """``count`` nodes of one vault: the same models/ folder, each its own prompts/."""
    nodes, results = [], []
    for i in range(1, count + 1):
        name = f"fleet-{i:02d}"
        data = work / "fleet-data" / name
        if data.exists():
            shutil.rmtree(data)
        shutil.copytree(cache / "prompts", data / "prompts")
        (data / "prompts" / "node.yaml").write_text(
            f"node: {name}\nsite: plant-{i}\nescalation: oncall-{i}@example.com\n"
        )
        node = AmberNode(work / "fleet" / name, node=name, vault="fleet")
        node.init(vault_key=key)
        node.add_source("models", "model", cache / SOURCES["models"][1])
        node.add_source("prompts", "files", data / "prompts")
        run, res = node.checkpoint()
        results.append({"node": name, "run": run.summary(), "res": res})
        nodes.append(node)
        log(f"{name}: checkpoint {run.wall_s:.1f} s, {fmt_bytes(res['new_bytes'])} new")
    return nodes, results


def enrol_via_proxy(hub: HubProcess, nodes: list[AmberNode], work: Path, tag: str) -> ThreadedProxy:
    """Enrol ``nodes`` at ``hub`` through a new byte-counting proxy to its NATS."""
    proxy = ThreadedProxy(hub.nats_port)
    for n in nodes:
        enr = hub.enrol(n.node, "fleet", work / f"{n.node}.{tag}.json")
        run_timed(n.argv("enroll", str(via_proxy(enr, proxy.port))))
    return proxy


def fleet_sync(hub: HubProcess, nodes: list[AmberNode], work: Path) -> dict[str, Any]:
    """Staggered: node 1 syncs to the empty hub, then the others one after another."""
    proxy = enrol_via_proxy(hub, nodes, work, "enrolment")
    try:
        per_node: list[dict[str, Any]] = []
        wire: list[int] = []
        for n in nodes:
            up0, down0 = proxy.counts()
            run, res = n.sync()
            up1, down1 = proxy.counts()
            wire.append(up1 - up0 + down1 - down0)
            per_node.append({"node": n.node, "wire_bytes": wire[-1], "run": run.summary(), **res})
        one = {"bytes_sent": per_node[0]["bytes_sent"], "wire_bytes": wire[0]}
        total_sent = sum(p["bytes_sent"] for p in per_node)
        return {
            "one": one,
            "all": {"bytes_sent": total_sent, "wire_bytes": sum(wire)},
            "ratio": total_sent / max(1, one["bytes_sent"]),
            "wire_ratio": sum(wire) / max(1, one["wire_bytes"]),
            "others_wall_s": sum(p["run"]["wall_s"] for p in per_node[1:]),
            "per_node": per_node,
        }
    finally:
        proxy.close()


def fleet_simultaneous(hub: HubProcess, nodes: list[AmberNode], work: Path) -> dict[str, Any]:
    """All nodes sync at once to an empty hub; compared with one node alone."""
    proxy = enrol_via_proxy(hub, nodes, work, "enrolment-b")
    try:
        up0, down0 = proxy.counts()
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(len(nodes)) as pool:
            outs = list(pool.map(lambda n: n.sync(), nodes))
        elapsed = time.perf_counter() - t0
        up1, down1 = proxy.counts()
        per_node = [
            {"node": n.node, "run": r.summary(), **s} for n, (r, s) in zip(nodes, outs, strict=True)
        ]
        return {
            "all": {
                "bytes_sent": sum(p["bytes_sent"] for p in per_node),
                "wire_bytes": up1 - up0 + down1 - down0,
            },
            "wall_s": elapsed,
            "per_node": per_node,
        }
    finally:
        proxy.close()


def copy_states(nodes: list[AmberNode], dst: Path) -> list[AmberNode]:
    out = []
    for n in nodes:
        target = ainode.working_copy(n.state, dst / n.node)
        (target / "agent.lock").unlink(missing_ok=True)
        out.append(AmberNode(target, node=n.node, vault=n.vault))
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1/8-scale node")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--scale", type=float, default=None, help="node size factor (default 1)")
    p.add_argument("--runs", type=int, default=1, help="S3 rounds, alternating (default 1)")
    p.add_argument("--fleet", type=int, default=None, help="fleet size (default 10, quick 4)")
    p.add_argument(
        "--simultaneous",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also sync the whole fleet at once to an empty hub (default: only with --quick; "
        "at full scale it pushes ~10x the model through the hub, several minutes)",
    )
    p.add_argument("--json", action="store_true", help="JSON to stdout, table to stderr")
    args = p.parse_args(argv)
    precompile()
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    out = sys.stderr if args.json else sys.stdout
    fleet_size = args.fleet or (4 if args.quick else 10)
    simultaneous = args.quick if args.simultaneous is None else args.simultaneous

    doc, cache, work = open_bench("bench_sync", args.seed, scale)
    env0, rversion, stats = doc["environment"], doc["restic"], doc["node"]
    total = stats["bytes"]
    paths = [cache / rel for _kind, rel in SOURCES.values()]
    hubs: list[HubProcess] = []
    s3 = SeaweedS3(work / "seaweed")
    try:
        # 1. hub in a box
        box = hub_process(work / "hub-box")
        hubs.append(box.start())
        doc["hub_box"] = amber_to_hub(box, work, "edge-box", cache, total)
        box.stop()

        # 2./3. hub on SeaweedFS S3 against restic on the same SeaweedFS
        t0 = time.perf_counter()
        s3.start()
        log(f"SeaweedFS S3 up in {time.perf_counter() - t0:.1f} s at {s3.endpoint_url}")
        s3_env = dict(
            os.environ, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key
        )
        amber_s3: list[dict[str, Any]] = []
        restic_runs: list[dict[str, Any]] = []
        for i in range(args.runs):
            order = ("amber", "restic") if i % 2 == 0 else ("restic", "amber")
            for which in order:
                if which == "restic":
                    restic_runs.append(restic_s3(s3, work, paths, total, f"r{i}"))
                    continue
                bucket = s3.make_bucket(f"amber-hub-r{i}", object_lock=True)
                url = f"s3://{bucket}/hub?endpoint={s3.endpoint_url}&region={s3.region}"
                hub = hub_process(work / f"hub-s3-r{i}", url, s3_env)
                hubs.append(hub.start())
                amber_s3.append(amber_to_hub(hub, work, f"edge-s3-r{i}", cache, total))
                hub.stop()
        a_best = max(amber_s3, key=lambda r: r["mib_s"])
        r_best = max(restic_runs, key=lambda r: r["mib_s"])
        doc["hub_s3"] = {"best": a_best, "runs": amber_s3}
        doc["restic_s3"] = {"best": r_best, "runs": restic_runs}
        doc["s3_ratio"] = a_best["mib_s"] / r_best["mib_s"]
        s3.kill()  # its data is thrown away; a graceful stop takes ~27 s
        shutil.rmtree(work / "seaweed", ignore_errors=True)

        # 4. fleet
        key = work / "fleet.key"
        run_timed([tool("amber-agent"), "keygen", "--out", str(key)])
        nodes, ck = fleet_nodes(work, cache, fleet_size, key)
        copies = copy_states(nodes, work / "fleet-b") if simultaneous else None
        hub_a = hub_process(work / "hub-fleet")
        hubs.append(hub_a.start())
        staggered = fleet_sync(hub_a, nodes, work)
        staggered["checkpoints"] = ck
        hub_a.stop()
        log(
            f"fleet staggered: 1 node {fmt_bytes(staggered['one']['bytes_sent'])}, "
            f"{fleet_size} nodes {fmt_bytes(staggered['all']['bytes_sent'])} "
            f"({staggered['ratio']:.3f}x; wire {staggered['wire_ratio']:.3f}x)"
        )
        doc["fleet"] = {"size": fleet_size, "staggered": staggered}
        for n in nodes:
            shutil.rmtree(n.state)
        if copies is not None:
            hub_b = hub_process(work / "hub-fleet-b")
            hubs.append(hub_b.start())
            sim = fleet_simultaneous(hub_b, copies, work)
            hub_b.stop()
            one = staggered["one"]
            sim["ratio"] = sim["all"]["bytes_sent"] / max(1, one["bytes_sent"])
            sim["wire_ratio"] = sim["all"]["wire_bytes"] / max(1, one["wire_bytes"])
            doc["fleet"]["simultaneous"] = sim
            log(
                f"fleet simultaneous: {fmt_bytes(sim['all']['bytes_sent'])} "
                f"({sim['ratio']:.3f}x; wire {sim['wire_ratio']:.3f}x) in {sim['wall_s']:.1f} s"
            )
            for n in copies:
                shutil.rmtree(n.state)
    finally:
        for h in hubs:
            h.cleanup()
        s3.kill()

    # --- verdicts and the table
    fleet = doc["fleet"]
    results = {
        "s3_throughput_ratio": doc["s3_ratio"],
        "fleet_bytes_ratio": fleet["staggered"]["ratio"],
    }
    doc["targets"] = verdicts(TARGETS, results)
    if "simultaneous" in fleet:
        v = fleet["simultaneous"]["ratio"]
        doc["targets"]["fleet_bytes_ratio_simultaneous"] = {
            "value": v,
            "target": "<= 1.1",
            "verdict": verdict(TARGETS, "fleet_bytes_ratio", v),
        }
    doc["environment"]["loadavg_end"] = os.getloadavg()

    box, a3, r3 = doc["hub_box"], doc["hub_s3"]["best"], doc["restic_s3"]["best"]
    rows = [["metric", "Amber", "restic", "ratio", "target", "verdict"]]
    rows.append(["checkpoint+sync, hub in a box, MiB/s", f"{box['mib_s']:.0f}", "-", "", "", ""])
    rows.append(
        [
            "checkpoint+sync vs backup, S3, MiB/s",
            f"{a3['mib_s']:.0f}",
            f"{r3['mib_s']:.0f}",
            f"{doc['s3_ratio']:.2f}x",
            ">= 2x",
            doc["targets"]["s3_throughput_ratio"]["verdict"],
        ]
    )
    st = fleet["staggered"]
    rows.append(
        [
            f"fleet of {fleet_size}, staggered: bytes sent",
            f"{fmt_bytes(st['all']['bytes_sent'])}",
            f"1 node {fmt_bytes(st['one']['bytes_sent'])}",
            f"{st['ratio']:.3f}x",
            "<= 1.1x",
            doc["targets"]["fleet_bytes_ratio"]["verdict"],
        ]
    )
    rows.append(
        [
            "  same, all bytes on the wire",
            f"{fmt_bytes(st['all']['wire_bytes'])}",
            f"1 node {fmt_bytes(st['one']['wire_bytes'])}",
            f"{st['wire_ratio']:.3f}x",
            "",
            "",
        ]
    )
    if "simultaneous" in fleet:
        sm = fleet["simultaneous"]
        rows.append(
            [
                f"fleet of {fleet_size}, simultaneous: bytes sent",
                f"{fmt_bytes(sm['all']['bytes_sent'])}",
                f"1 node {fmt_bytes(st['one']['bytes_sent'])}",
                f"{sm['ratio']:.3f}x",
                "<= 1.1x",
                doc["targets"]["fleet_bytes_ratio_simultaneous"]["verdict"],
            ]
        )
        rows.append(
            [
                "  same, all bytes on the wire",
                f"{fmt_bytes(sm['all']['wire_bytes'])}",
                f"1 node {fmt_bytes(st['one']['wire_bytes'])}",
                f"{sm['wire_ratio']:.3f}x",
                "",
                "",
            ]
        )
    print(
        f"\nAmber sync vs {rversion.split(' compiled')[0]} on the AI node (seed {args.seed}, "
        f"scale {scale:g}: {total / MiB:,.0f} MiB in {stats['files']} files), "
        f"{env0['cpus']} CPUs",
        file=out,
    )
    print_table(rows, out)

    def phase(r: dict[str, Any]) -> str:
        c, s = r["checkpoint"]["run"], r["sync"]["run"]
        return (
            f"checkpoint {c['wall_s']:.1f} s ({c['cpu_s']:.1f} CPU s) + sync {s['wall_s']:.1f} s "
            f"({s['cpu_s']:.1f} CPU s), {fmt_bytes(r['sync']['res']['bytes_sent'])} sent"
        )

    print(f"\nhub in a box: {phase(box)}", file=out)
    print(f"hub on S3:    {phase(a3)}", file=out)
    rr: Run | dict[str, Any] = r3["run"]
    print(
        f"restic S3:    {rr['wall_s']:.1f} s ({rr['cpu_s']:.1f} CPU s), data_added "
        f"{fmt_bytes(r3['summary'].get('data_added', 0))}",
        file=out,
    )
    others = [
        x["run"]["other_cpu_s"]
        for x in (box["checkpoint"], box["sync"], a3["checkpoint"], a3["sync"], r3)
        if x["run"]["other_cpu_s"] is not None
    ]
    print(
        f"other processes' CPU (incl. hub and SeaweedFS) during the timed commands: "
        f"max {max(others):.1f} s; load average start {env0['loadavg_start'][0]:.2f}, "
        f"end {doc['environment']['loadavg_end'][0]:.2f}",
        file=out,
    )
    return finish(doc, args.json)


if __name__ == "__main__":
    sys.exit(main())
