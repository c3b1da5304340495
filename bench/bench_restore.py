"""Restores from the hub against restic's restore from S3 (issue 5's targets).

In one run, on the generated AI node (``ainode.py``; the cache is read only, part (b)
mutates a copy):

(a) **empty-node restore**: an original node checkpoints the whole node and ``sync
    --once`` to a hub in a box (``amber-hub serve``, embedded nats-server, local
    store), another to a hub whose store is a SeaweedFS S3 gateway
    (``tests/support/servers.py``), and restic backs the same paths up to the same SeaweedFS
    (another bucket). Then, per round, a *fresh* node (``amber-agent init --dir NEW
    --node N --vault V --vault-key K --enroll FILE``: a replacement machine with the
    vault key and the enrolment, and nothing else) runs ``restore ID --to DIR``, which
    fetches every chunk from the hub; restic runs ``restore latest --target DIR`` with
    an empty cache directory, from S3. Throughput is restored source MiB per wall-clock
    second of the restore command (``init`` is timed apart). Targets: Amber from the
    hub in a box, and Amber from the S3 hub, each at least 1.5x restic's S3 restore.
    Rounds alternate the order of the three restores; the best round of each is kept
    and every round is in the JSON. The first round of each is checked against the
    source (every file's BLAKE3; the database by integrity_check and row counts).
(b) **staged restore onto a node that still holds most data**: a node with no journal
    chunk cache (``[journal] cache_bytes = 0``, so the journal keeps no chunk blobs
    once the hub has them) checkpoints a copy of the node and syncs to the hub in a
    box; the copy is then ``mutate()``d (~1 % of the big model, 1,000 rows, 2 MiB of
    log, 5 prompts). The node's daemon (``amber-agent run``, ``[hub] sync_interval =
    1``) then executes a plan that restores the *original* checkpoint in place
    (``amber-hub restore plan --nodes N --point ID`` + ``restore start``), polled with
    ``restore status --json`` until the node is ``healthy``. Reported: the chunks the
    node fetched from the hub and reused from its local files (the plan's ``detail``),
    the bytes the hub sent it (every byte on the wire hub -> node during the restore,
    counted by a TCP proxy, ``tests/support/faultproxy.py``), and the *changed* chunks: those
    of the original checkpoint that the mutated data does not contain (from the
    manifests of the original checkpoint and of the safety checkpoint the restore
    took of the mutated data). Target: fetched at most 1.1x changed. The restored
    node is checked against the original afterwards.

Page caches are not dropped (every figure is warm; the hub's objects were just
written). SeaweedFS, the hubs and the agent share the machine's cores. "other CPU" is
CPU time the rest of the machine used during a timed command (/proc/stat), and the
1-minute load average is recorded with every result.

    .venv/bin/python bench/bench_restore.py          # ~1 GiB node
    .venv/bin/python bench/bench_restore.py --quick  # 1/8 scale
    .venv/bin/python bench/bench_restore.py --json > restore.json   # table on stderr

Everything is written under ``bench/.work/bench_restore/`` (removed at the start of a
run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
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
    check_restore,
    finish,
    fmt_bytes,
    hub_process,
    log,
    open_bench,
    precompile,
    print_table,
    run_timed,
    tool,
    tree_cpu,
    verdicts,
    via_proxy,
)
from restic import Restic, parse_backup_summary

from amber.agent.config import load_config, save_config
from amber.protocol.keys import VaultKeys
from amber.protocol.records import decode_checkpoint, decode_manifest
from amber.secretfile import read_secret
from tests.support.servers import SeaweedS3  # importable once harness put the repo on sys.path

VAULT = "bench"
TARGETS = {
    "box_vs_restic_s3": (">=", 1.5),
    "s3_vs_restic_s3": (">=", 1.5),
    "inplace_fetched_vs_changed": ("<=", 1.1),
}
DETAIL_RE = re.compile(r"(\d+) chunk\(s\) fetched from the hub, (\d+) reused from local files")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


class Servers:
    """The long-running processes a restore leans on, to charge their CPU to it."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def snapshot(self) -> dict[str, float]:
        return {name: tree_cpu(pid) for name, pid in self.pids.items()}

    def delta(self, before: dict[str, float]) -> dict[str, float]:
        after = self.snapshot()
        return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


SERVERS = Servers()


# --------------------------------------------------------------------------- (a) empty node


@dataclasses.dataclass
class Origin:
    """A node that checkpointed the AI node and synced it to one hub."""

    hub: HubProcess
    node: str
    enrolment: Path
    checkpoint: str  # hex id
    result: dict[str, Any]


def make_origin(hub: HubProcess, work: Path, name: str, root: Path, key: Path) -> Origin:
    enr = hub.enrol(name, VAULT, work / f"{name}.enrolment.json")
    node = AmberNode(work / f"origin-{name}", node=name, vault=VAULT)
    node.init(vault_key=key, enroll=enr)
    node.add_node_sources(root)
    ck, ck_res = node.checkpoint()
    sy, sy_res = node.sync()
    log(
        f"origin {name}: checkpoint {ck.wall_s:.1f} s, sync {sy.wall_s:.1f} s "
        f"({fmt_bytes(sy_res['bytes_sent'])} sent)"
    )
    shutil.rmtree(node.state)  # the hub holds it now; a fresh node restores from there
    res = {"checkpoint": {"run": ck.summary(), "res": ck_res}, "sync": {"run": sy.summary()}}
    res["sync"]["res"] = sy_res
    return Origin(hub, name, enr, ck_res["id"], res)


def amber_empty_restore(
    o: Origin,
    work: Path,
    key: Path,
    tag: str,
    total: int,
    keep: bool,
    profile: Path | None = None,
    profile_idle: bool = False,
) -> dict[str, Any]:
    """A fresh node (init with the vault key and the enrolment), then restore --to.
    With ``profile``, py-spy samples the agent and the hub meanwhile (raw stacks; on-CPU
    samples only, unless ``profile_idle``)."""
    fresh = AmberNode(work / f"fresh-{tag}", node=o.node, vault=VAULT)
    t0 = time.perf_counter()
    fresh.init(vault_key=key, enroll=o.enrolment)
    init_s = time.perf_counter() - t0
    target = work / f"restore-{tag}"
    shutil.rmtree(target, ignore_errors=True)
    argv = fresh.argv("restore", o.checkpoint, "--to", str(target))
    hub_spy = None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        spy = [tool("py-spy"), "record", "--threads", "--rate", "200"]
        spy += ["--format", "raw", "--nonblocking", *(["--idle"] if profile_idle else [])]
        argv = [*spy, "-o", str(profile / f"agent-{tag}.txt"), "--", *argv]
        assert o.hub.proc is not None
        hub_spy = subprocess.Popen(
            [*spy, "-o", str(profile / f"hub-{tag}.txt"), "--pid", str(o.hub.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
    load0, cpu0 = load1(), SERVERS.snapshot()
    try:
        run = run_timed(argv)
    finally:
        if hub_spy is not None:
            hub_spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            hub_spy.wait(timeout=60)
    res = restore_result(f"amber restore {tag}", run, total, (load0, cpu0), target, keep)
    res["init_s"] = init_s
    shutil.rmtree(fresh.state)
    if not keep:
        shutil.rmtree(target, ignore_errors=True)
    return res


def restore_result(
    what: str,
    run: Run,
    total: int,
    before: tuple[float, dict[str, float]],
    target: Path,
    keep: bool,
) -> dict[str, Any]:
    """One timed restore into an empty directory: throughput, the load and the servers'
    CPU meanwhile (``before``: load and servers' CPU at its start); logged."""
    load0, cpu0 = before
    res = {
        "mib_s": total / MiB / run.wall_s,
        "run": run.summary(),
        "servers_cpu_s": SERVERS.delta(cpu0),
        "load1_start": load0,
        "load1_end": load1(),
        "target": target if keep else None,
    }
    log(
        f"{what}: {run.wall_s:.1f} s = {res['mib_s']:.0f} MiB/s ({run.cpu_s:.1f} CPU s, "
        f"other {run.other_cpu_s or 0:.1f} s, load {res['load1_end']}; "
        f"servers {res['servers_cpu_s']})"
    )
    return res


def restic_empty_restore(
    repo: str, keys: tuple[str, str], work: Path, tag: str, total: int, keep: bool
) -> dict[str, Any]:
    """``restic restore latest`` into an empty directory, with an empty cache."""
    r = Restic(repo, work / f"restic-{tag}", s3_keys=keys)
    target = work / f"restore-{tag}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    load0, cpu0 = load1(), SERVERS.snapshot()
    run = run_timed(r.restore_argv("latest", target), env=r.env())
    res = restore_result(f"restic restore {tag}", run, total, (load0, cpu0), target, keep)
    shutil.rmtree(r.cache.parent, ignore_errors=True)
    if not keep:
        shutil.rmtree(target, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- (b) in place


def journal_rows(state: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    con = sqlite3.connect(f"file:{state / 'journal.db'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def checkpoint_chunks(state: Path, keys: VaultKeys, cp_id: bytes) -> dict[str, dict[bytes, int]]:
    """Per source: chunk id -> plaintext length, from the journal's records."""
    records = dict(journal_rows(state, "SELECT id, data FROM records"))
    cp = decode_checkpoint(records[cp_id], keys, trusted=None)
    out: dict[str, dict[bytes, int]] = {}
    for name, mid in cp.manifests.items():
        m = decode_manifest(records[mid], keys, trusted=None)
        ids: dict[bytes, int] = {}
        for e in m.entries:
            for cid, n in e.chunks:
                ids[cid] = n
        out[name] = ids
    return out


def inplace_restore(
    hub: HubProcess, work: Path, cache: Path, key: Path, seed: int, poll: float = 0.2
) -> dict[str, Any]:
    name = "edge-inplace"
    data = ainode.working_copy(cache, work / "node-inplace")
    enr = hub.enrol(name, VAULT, work / f"{name}.enrolment.json")
    node = AmberNode(work / f"state-{name}", node=name, vault=VAULT)
    node.init(vault_key=key, enroll=enr)
    node.add_node_sources(data)
    cfg = load_config(node.config)
    save_config(
        dataclasses.replace(cfg, journal_cache_bytes=0, hub={**cfg.hub, "sync_interval": 1})
    )
    ck, ck_res = node.checkpoint()
    sy, sy_res = node.sync()
    original = ck_res["id"]
    log(
        f"in place: checkpoint {ck.wall_s:.1f} s, sync {sy.wall_s:.1f} s; journal holds "
        f"{fmt_bytes(node.held_bytes())} of chunk blobs after sync"
    )
    time.sleep(2.1)  # the mutation's mtimes must clear the racy window of the last scan
    changes = ainode.mutate(data, seed)
    log(f"mutated: {json.dumps(changes)[:160]}")

    proxy = ThreadedProxy(hub.nats_port)
    daemon: subprocess.Popen[bytes] | None = None
    dlog = open(work / f"{name}.daemon.log", "ab")
    try:
        run_timed(node.argv("enroll", str(via_proxy(enr, proxy.port))))
        daemon = subprocess.Popen(
            node.argv("run"), stdout=dlog, stderr=subprocess.STDOUT, start_new_session=True
        )
        hub_bin = tool("amber-hub")
        base = [hub_bin, "--data", str(hub.data), "restore"]
        plan = json.loads(
            run_timed(
                [*base, "plan", "--vault", VAULT, "--nodes", name, "--point", original, "--json"]
            ).stdout
        )
        time.sleep(2.0)  # the daemon connects and subscribes to its command stream
        up0, down0 = proxy.counts()
        load0 = load1()
        t0 = time.perf_counter()
        run_timed([*base, "start", plan["id"]])
        states: list[tuple[float, str]] = []
        while True:
            st = json.loads(run_timed([*base, "status", plan["id"], "--json"]).stdout)
            n = st["nodes"][0]
            if not states or states[-1][1] != n["state"]:
                states.append((round(time.perf_counter() - t0, 2), n["state"]))
            if n["state"] in ("healthy", "failed", "rolled_back"):
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited {daemon.returncode}; see its log")
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError(f"restore plan still {n['state']} after 30 minutes")
            time.sleep(poll)
        wall = time.perf_counter() - t0
        up1, down1 = proxy.counts()
        load_end = load1()
    finally:
        if daemon is not None and daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait()
        dlog.close()
        proxy.close()
    if n["state"] != "healthy":
        raise RuntimeError(f"in-place restore ended {n['state']}: {n['detail']}")
    m = DETAIL_RE.search(n["detail"] or "")
    fetched, reused = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    log(f"in place: {n['state']} in {wall:.1f} s: {n['detail']}")

    # what changed: chunks of the original checkpoint the mutated data does not hold
    keys = VaultKeys.from_file_bytes(read_secret(node.state / "vault.key"))
    safety = bytes.fromhex(n["safety"]) if n.get("safety") else None
    if safety is None:
        rows = journal_rows(node.state, "SELECT id FROM checkpoints WHERE kind = 'safety'")
        safety = rows[-1][0]
    orig = checkpoint_chunks(node.state, keys, bytes.fromhex(original))
    now = checkpoint_chunks(node.state, keys, safety)
    stored = dict(journal_rows(node.state, "SELECT id, stored FROM chunks"))
    now_all = {c for ids in now.values() for c in ids}
    per_source: dict[str, Any] = {}
    all_orig: dict[bytes, int] = {}
    changed: set[bytes] = set()
    not_local: set[bytes] = set()  # what the executor cannot read from the live files
    for src, ids in orig.items():
        all_orig.update(ids)
        ch = {c for c in ids if c not in now_all}
        changed |= ch
        kind = SOURCES[src][0] if src in SOURCES else "?"
        unindexed = kind in ("sqlite", "state")  # LocalChunks skips backup-copy kinds
        miss = set(ids) if unindexed else ch
        not_local |= miss
        per_source[src] = {
            "kind": kind,
            "chunks": len(ids),
            "bytes": sum(ids.values()),
            "changed_chunks": len(ch),
            "changed_bytes": sum(ids[c] for c in ch),
            "not_readable_locally": len(miss),
        }
    check = check_restore(cache, data)
    res = {
        "checkpoint": original,
        "changes": changes,
        "origin": {"checkpoint": {"run": ck.summary(), "res": ck_res}, "sync": sy_res},
        "wall_s": wall,
        "states": states,
        "detail": n["detail"],
        "fetched_chunks": fetched,
        "reused_chunks": reused,
        "total_chunks": len(all_orig),
        "total_refs": n.get("total"),
        "total_bytes": sum(all_orig.values()),
        "changed_chunks": len(changed),
        "changed_bytes": sum(all_orig[c] for c in changed),
        "changed_stored_bytes": sum(stored.get(c, 0) for c in changed),
        "expected_fetch_chunks": len(not_local),
        "expected_fetch_stored_bytes": sum(stored.get(c, 0) for c in not_local),
        "wire_down_bytes": down1 - down0,
        "wire_up_bytes": up1 - up0,
        "per_source": per_source,
        "check": check,
        "load1_start": load0,
        "load1_end": load_end,
    }
    res["ratio"] = fetched / max(1, len(changed)) if fetched is not None else None
    log(
        f"in place: fetched {fetched}, reused {reused}, changed {len(changed)} of "
        f"{len(all_orig)} chunks; {fmt_bytes(down1 - down0)} hub -> node; check {check}"
    )
    return res


# --------------------------------------------------------------------------- main


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r["mib_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1/8-scale node")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--scale", type=float, default=None, help="node size factor (default 1)")
    p.add_argument("--runs", type=int, default=2, help="empty-node rounds (default 2)")
    p.add_argument("--skip-inplace", action="store_true", help="only part (a)")
    p.add_argument("--keep", action="store_true", help="leave hubs' data and logs in .work")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the timed rounds, one more Amber restore per hub under py-spy (agent "
        "and hub, raw folded stacks in DIR; not counted in the results)",
    )
    p.add_argument(
        "--profile-idle",
        action="store_true",
        help="with --profile: sample waiting threads too (wall-clock view, py-spy --idle)",
    )
    p.add_argument("--json", action="store_true", help="JSON to stdout, table to stderr")
    args = p.parse_args(argv)
    precompile()
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    out = sys.stderr if args.json else sys.stdout

    doc, cache, work = open_bench("bench_restore", args.seed, scale)
    env0, rversion, stats = doc["environment"], doc["restic"], doc["node"]
    total = stats["bytes"]
    paths = [cache / rel for _kind, rel in SOURCES.values()]

    hubs: list[HubProcess] = []
    s3 = SeaweedS3(work / "seaweed")
    try:
        key = work / "vault.key"
        run_timed([tool("amber-agent"), "keygen", "--out", str(key)])
        box = hub_process(work / "hub-box")
        hubs.append(box.start())
        assert box.proc is not None
        SERVERS.pids["hub-box"] = box.proc.pid  # with its nats-server, a child
        o_box = make_origin(box, work, "edge-box", cache, key)

        t0 = time.perf_counter()
        s3.start()
        log(f"SeaweedFS S3 up in {time.perf_counter() - t0:.1f} s")
        assert s3.pid is not None
        SERVERS.pids["weed"] = s3.pid
        s3_env = dict(
            os.environ, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key
        )
        bucket = s3.make_bucket("amber-hub", object_lock=True)
        url = f"s3://{bucket}/hub?endpoint={s3.endpoint_url}&region={s3.region}"
        hub3 = hub_process(work / "hub-s3", url, s3_env)
        hubs.append(hub3.start())
        assert hub3.proc is not None
        SERVERS.pids["hub-s3"] = hub3.proc.pid
        o_s3 = make_origin(hub3, work, "edge-s3", cache, key)

        rbucket = s3.make_bucket("restic")
        repo = f"s3:{s3.endpoint_url}/{rbucket}"
        s3_keys = (s3.access_key, s3.secret_key)
        r = Restic(repo, work / "restic-backup", s3_keys=s3_keys)
        r.init()
        rb = run_timed(r.backup_argv(paths), env=r.env())
        rsum = parse_backup_summary(rb.stdout)
        log(f"restic backup to S3: {rb.wall_s:.1f} s")
        doc["origins"] = {"box": o_box.result, "s3": o_s3.result}
        doc["restic_backup"] = {"run": rb.summary(), "summary": rsum}

        # (a) empty-node restores, rounds rotating the order of the three
        runs: dict[str, list[dict[str, Any]]] = {"box": [], "s3": [], "restic": []}
        checks: dict[str, str] = {}
        order = ["box", "s3", "restic"]
        for i in range(args.runs):
            for which in order[i % 3 :] + order[: i % 3]:
                keep = i == 0
                tag = f"{which}-r{i}"
                if which == "restic":
                    res = restic_empty_restore(repo, s3_keys, work, tag, total, keep)
                else:
                    o = o_box if which == "box" else o_s3
                    res = amber_empty_restore(o, work, key, tag, total, keep)
                if keep:
                    target = res.pop("target")
                    if which == "restic":
                        target = target / cache.relative_to(cache.anchor)
                    checks[which] = check_restore(cache, target)
                    shutil.rmtree(work / f"restore-{tag}", ignore_errors=True)
                    log(f"{which} restore check: {checks[which]}")
                else:
                    res.pop("target")
                runs[which].append(res)
        empty = {k: {"best": best(v), "runs": v, "check": checks[k]} for k, v in runs.items()}
        rbest = empty["restic"]["best"]["mib_s"]
        empty["box"]["ratio"] = empty["box"]["best"]["mib_s"] / rbest
        empty["s3"]["ratio"] = empty["s3"]["best"]["mib_s"] / rbest
        doc["empty_node"] = empty

        if args.profile is not None:  # one more restore per hub, under py-spy
            for which, o in (("box", o_box), ("s3", o_s3)):
                amber_empty_restore(
                    o,
                    work,
                    key,
                    f"{which}-py-spy",
                    total,
                    False,
                    profile=args.profile,
                    profile_idle=args.profile_idle,
                )

        # (b) staged in-place restore onto the mutated node
        if not args.skip_inplace:
            doc["in_place"] = inplace_restore(box, work, cache, key, args.seed)
    finally:
        for h in hubs:
            h.cleanup()
        s3.kill()
    if not args.keep:
        for sub in ("seaweed", "hub-box", "hub-s3", "node-inplace", "state-edge-inplace"):
            shutil.rmtree(work / sub, ignore_errors=True)

    # --- verdicts and the table
    ok = all(v == "ok" for v in checks.values())
    results: dict[str, float | None] = {
        "box_vs_restic_s3": empty["box"]["ratio"] if ok else None,
        "s3_vs_restic_s3": empty["s3"]["ratio"] if ok else None,
    }
    ip = doc.get("in_place")
    if ip is not None:
        results["inplace_fetched_vs_changed"] = ip["ratio"] if ip["check"] == "ok" else None
    doc["targets"] = verdicts(TARGETS, results)
    doc["environment"]["loadavg_end"] = os.getloadavg()

    t = doc["targets"]
    rrow = empty["restic"]["best"]
    rows = [["metric", "Amber", "restic", "ratio", "target", "verdict", "load 1m"]]
    for which, label in (("box", "hub in a box"), ("s3", "hub on S3")):
        a = empty[which]["best"]
        rows.append(
            [
                f"empty-node restore, {label} vs restic S3, MiB/s",
                f"{a['mib_s']:.0f}",
                f"{rrow['mib_s']:.0f}",
                f"{empty[which]['ratio']:.2f}x",
                ">= 1.5x",
                t[f"{which}_vs_restic_s3"]["verdict"],
                f"{a['load1_end']:.2f} / {rrow['load1_end']:.2f}",
            ]
        )
    if ip is not None:
        rows.append(
            [
                "in-place staged restore: chunks fetched vs changed",
                f"{ip['fetched_chunks']}",
                f"changed {ip['changed_chunks']}",
                f"{ip['ratio']:.2f}x" if ip["ratio"] is not None else "?",
                "<= 1.1x",
                t["inplace_fetched_vs_changed"]["verdict"],
                f"{ip['load1_end']:.2f}",
            ]
        )
        rows.append(
            [
                "  same, bytes: hub -> node on the wire vs changed (stored)",
                fmt_bytes(ip["wire_down_bytes"]),
                fmt_bytes(ip["changed_stored_bytes"]),
                f"{ip['wire_down_bytes'] / max(1, ip['changed_stored_bytes']):.2f}x",
                "",
                "",
                "",
            ]
        )
    print(
        f"\nAmber restore vs {rversion.split(' compiled')[0]} on the AI node (seed {args.seed}, "
        f"scale {scale:g}: {total / MiB:,.0f} MiB in {stats['files']} files), "
        f"{env0['cpus']} CPUs, best of {args.runs} rounds",
        file=out,
    )
    print_table(rows, out)
    print(file=out)
    for which, label in (
        ("box", "hub in a box"),
        ("s3", "hub on S3   "),
        ("restic", "restic S3   "),
    ):
        e = empty[which]
        walls = ", ".join(
            f"{x['run']['wall_s']:.1f} s ({x['run']['cpu_s']:.1f} CPU s, other "
            f"{x['run']['other_cpu_s'] or 0:.1f} s of which "
            + " ".join(f"{k} {v:.1f}" for k, v in x["servers_cpu_s"].items() if v >= 0.05)
            + f", load {x['load1_end']:.2f})"
            for x in e["runs"]
        )
        init = f"; init {min(x['init_s'] for x in e['runs']):.1f} s" if which != "restic" else ""
        print(f"{label}: {walls}{init}; check {e['check']}", file=out)
    if ip is not None:
        print(
            f"in place: {ip['wall_s']:.1f} s from 'restore start' to healthy "
            f"(states {' -> '.join(f'{s}@{x}s' for x, s in ip['states'])}); "
            f"{ip['fetched_chunks']} fetched + {ip['reused_chunks']} reused of "
            f"{ip['total_chunks']} distinct chunks ({fmt_bytes(ip['total_bytes'])}); "
            f"changed {ip['changed_chunks']} ({fmt_bytes(ip['changed_bytes'])} plain); "
            f"check {ip['check']}",
            file=out,
        )
        for src, s in ip["per_source"].items():
            print(
                f"  {src:<8} ({s['kind']}): {s['chunks']} chunks, {s['changed_chunks']} changed "
                f"({fmt_bytes(s['changed_bytes'])}), {s['not_readable_locally']} not readable "
                "from the live files",
                file=out,
            )
        print(
            f"  expected from the hub (changed, plus every chunk of sources the executor does "
            f"not read locally): {ip['expected_fetch_chunks']} chunks, "
            f"{fmt_bytes(ip['expected_fetch_stored_bytes'])} stored",
            file=out,
        )
    print(
        f"load average (1 min) at start {env0['loadavg_start'][0]:.2f}, end "
        f"{doc['environment']['loadavg_end'][0]:.2f}",
        file=out,
    )
    return finish(doc, args.json)


if __name__ == "__main__":
    sys.exit(main())
