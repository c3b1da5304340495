"""Prometheus metrics of both daemons, scraped over HTTP from real processes.

A hub in a box (``serve --metrics-listen 127.0.0.1:0``) and an enrolled agent daemon
(``[metrics] listen = "127.0.0.1:0"``, a hot tier checkpointed every second) run as
subprocesses; the bound metrics URLs are read from DATA/hub.json and STATE/agent.json.
After a checkpoint and a sync, both endpoints must report values that fit what happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from amber.agent.config import TierPolicy, load_config, parse_config, save_config
from amber.hub.config import load_hub_config
from amber.protocol.errors import ConfigError
from tests.support.hub import HubProcess
from tests.support.node import Agent, agent_argv
from tests.support.procs import spawn, stop_proc, wait_until

VAULT, NODE = "fleet", "edge-1"


# --------------------------------------------------------------------------- helpers


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


METRICS = ("--metrics-listen", "127.0.0.1:0")


@contextlib.contextmanager
def hub_process(data: Path, *options: str) -> Iterator[HubProcess]:
    """A hub in a box serving metrics on a free port (``options`` before ``serve``)."""
    hub = HubProcess(data, options=options, serve_options=METRICS)
    try:
        yield hub.start()
    finally:
        hub.cleanup()


@contextlib.contextmanager
def agent_daemon(config: Path, log: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn(agent_argv(*extra, "--config", config, "run"), log)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> int:
    return stop_proc(proc, grace=20)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape_until(url: str, name: str, **labels: str) -> dict[Any, float]:
    """Scrape until the sample ``name{labels}`` exists and is non-zero; that scrape."""

    def check() -> dict[Any, float] | None:
        s = scrape(url)
        return s if value(s, name, **labels) else None

    return wait_until(f"{name}{labels} at {url}", check, 60)


def agent_metrics_url(state: Path, agent: subprocess.Popen[bytes]) -> str:
    """The metrics URL the running daemon wrote into STATE/agent.json."""

    def check() -> str | None:
        assert agent.poll() is None, "the agent daemon exited"
        info = read_json(state / "agent.json")
        return info.get("metrics_url") if info.get("pid") == agent.pid else None

    return wait_until("the agent's metrics URL", check, 60)


# --------------------------------------------------------------------------- tests


@pytest.mark.servers
def test_agent_and_hub_metrics_over_http(tmp_path: Path) -> None:
    hub_data = tmp_path / "hub"
    started = time.time()
    with hub_process(hub_data) as hub:
        hub_url = hub.runtime["metrics_url"]
        assert hub_url.startswith("http://127.0.0.1:") and hub_url.endswith("/metrics")
        assert not hub_url.endswith(":0/metrics")
        before = scrape(hub_url)
        assert value(before, "amber_hub_ingested_bytes_total") == 0
        for state in ("draft", "running", "halted", "done", "aborted"):
            assert value(before, "amber_hub_restore_plans", state=state) == 0
        for state in ("queued", "fetching", "verifying", "swapped", "healthy", "failed"):
            assert value(before, "amber_hub_restore_nodes", state=state) == 0
        assert value(before, "amber_hub_restore_nodes", state="rolled_back") == 0
        assert value(before, "amber_hub_store_errors_total") == 0

        enrol = tmp_path / "edge-1.enrol"
        hub.enrol(NODE, VAULT, enrol)
        state, data = tmp_path / "state", tmp_path / "data"
        (data / "prompts").mkdir(parents=True)
        blob = os.urandom(300_000)
        (data / "prompts" / "a.bin").write_bytes(blob)
        (data / "prompts" / "copy-of-a.bin").write_bytes(blob)  # deduplicated at checkpoint
        (data / "prompts" / "system.txt").write_text("be careful\n" * 100)
        node = Agent.init(state, NODE, VAULT, enroll=enrol)
        node.add("prompts", "files", data / "prompts", "--tier", "hot")
        config = node.config
        cfg = load_config(config)
        tiers = {**cfg.tiers, "hot": TierPolicy(interval=1, rpo=120)}
        save_config(
            dataclasses.replace(
                cfg, tiers=tiers, metrics_listen="127.0.0.1:0", hub={"sync_interval": 1}
            )
        )
        assert load_config(config).metrics_listen == "127.0.0.1:0"  # survives save/load

        with agent_daemon(config, tmp_path / "agent.stderr") as agent:
            url = agent_metrics_url(state, agent)
            assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")
            assert url in (tmp_path / "agent.stderr").read_text()  # the bound port is logged

            def synced() -> dict[Any, float] | None:
                s = scrape(url)
                done = (value(s, "amber_uploaded_bytes_total") or 0) > 0 and value(
                    s, "amber_journal_backlog_bytes"
                ) == 0
                return s if done else None

            a = wait_until("a checkpoint synced to the hub", synced, 60)
            last = value(a, "amber_source_last_checkpoint_timestamp_seconds", source="prompts")
            assert last is not None and started < last <= time.time()
            age = value(a, "amber_source_checkpoint_age_seconds", source="prompts")
            assert age is not None and 0 <= age < 60
            assert value(a, "amber_source_rpo_seconds", source="prompts") == 120
            assert value(a, "amber_source_rpo_breached", source="prompts") == 0
            assert (value(a, "amber_checkpoints_total", kind="regular") or 0) >= 1
            assert value(a, "amber_checkpoint_failures_total") == 0
            assert value(a, "amber_sync_errors_total") == 0
            assert (value(a, "amber_uploaded_chunks_total") or 0) >= 3
            assert (value(a, "amber_uploaded_bytes_total") or 0) > 300_000
            assert (value(a, "amber_dedup_chunks_total") or 0) >= 1  # the copy of a.bin
            assert (value(a, "amber_journal_bytes") or 0) > 0
            assert value(a, "amber_agent_info", node=NODE, vault=VAULT, version=_version()) == 1

            h = scrape_until(
                hub_url, "amber_hub_node_last_checkpoint_timestamp_seconds", vault=VAULT, node=NODE
            )
            assert (value(h, "amber_hub_ingested_bytes_total") or 0) > 300_000
            assert (value(h, "amber_hub_ingested_chunks_total") or 0) >= 3
            assert (value(h, "amber_hub_ingested_records_total") or 0) >= 2  # manifest + cp
            seen = value(h, "amber_hub_node_last_seen_timestamp_seconds", vault=VAULT, node=NODE)
            assert seen is not None and started < seen <= time.time() + 1
            cp_time = value(
                h, "amber_hub_node_last_checkpoint_timestamp_seconds", vault=VAULT, node=NODE
            )
            assert cp_time is not None and started < cp_time <= time.time()
            assert value(h, "amber_hub_store_errors_total") == 0
            assert not [k for k in h if k[0] == "amber_hub_rejected_messages_total"]
            # The agent's upload counters match what the hub stored (nothing else sent).
            assert value(a, "amber_uploaded_bytes_total") == value(
                h, "amber_hub_ingested_bytes_total"
            )
            assert stop(agent) == 0
        assert not (state / "agent.json").exists()  # removed on a clean stop
        # A staged restore planned (a dry run) shows as a draft plan.
        hub.ok("restore", "plan", "--vault", VAULT, "--nodes", NODE, "--point", "latest")
        assert value(scrape(hub_url), "amber_hub_restore_plans", state="draft") == 1
        assert hub.running


@pytest.mark.servers
def test_rpo_breach_and_age_at_scrape(tmp_path: Path) -> None:
    """Without a hub: a source never checkpointed is in breach; once checkpointed, its
    age grows between scrapes with no new checkpoint."""
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("x" * 1000)
    node = Agent.init(state, NODE, VAULT)
    for name, tier in (("slow", "cold"), ("fast", "hot")):
        node.add(name, "files", data, "--tier", tier)
    config = node.config
    cfg = load_config(config)
    # hot: every second; cold: once a day (not due before the first day passes)
    tiers = {
        **cfg.tiers,
        "hot": TierPolicy(interval=1, rpo=3600),
        "cold": TierPolicy(interval=86400, rpo=2),
    }
    save_config(dataclasses.replace(cfg, tiers=tiers, metrics_listen="127.0.0.1:0"))
    with agent_daemon(config, tmp_path / "agent.stderr") as agent:
        url = agent_metrics_url(state, agent)
        first = scrape_until(url, "amber_source_last_checkpoint_timestamp_seconds", source="fast")
        # Both sources are in the first checkpoint (all due at start): cold's RPO is 2 s.
        assert value(first, "amber_source_rpo_seconds", source="slow") == 2
        time.sleep(3.5)
        later = scrape(url)
        assert value(later, "amber_source_rpo_breached", source="slow") == 1
        assert (value(later, "amber_source_checkpoint_age_seconds", source="slow") or 0) > 2
        assert value(later, "amber_source_rpo_breached", source="fast") == 0
        assert value(later, "amber_sync_errors_total") == 0  # not enrolled: no sync at all
        assert stop(agent) == 0


def test_metrics_config_options(tmp_path: Path) -> None:
    base = {"agent": {"node": "n1", "vault": "v1", "state_dir": "."}}
    cfg = parse_config(base, tmp_path / "agent.toml")
    assert cfg.metrics_listen is None  # disabled by default
    cfg = parse_config({**base, "metrics": {"listen": "127.0.0.1:9464"}}, tmp_path / "a.toml")
    assert cfg.metrics_listen == "127.0.0.1:9464"
    with pytest.raises(ConfigError):
        parse_config({**base, "metrics": {"listen": "9464"}}, tmp_path / "a.toml")
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text('[metrics]\nlisten = "127.0.0.1:9465"\n')
    assert load_hub_config(hub_toml, str(tmp_path / "d")).metrics_listen == "127.0.0.1:9465"
    assert load_hub_config(None, str(tmp_path / "d")).metrics_listen is None


def _version() -> str:
    from amber import __version__

    return __version__


@pytest.mark.servers
def test_busy_metrics_port_is_a_config_error(tmp_path: Path) -> None:
    """A taken port stops either daemon with the config exit code and a hint, no traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        state = tmp_path / "state"
        node = Agent.init(state, NODE, VAULT)
        node.configure(metrics_listen=busy)
        agent = node.proc("run", timeout=60)
        assert agent.code == 3, agent.err
        assert "metrics.listen" in agent.err and "hint:" in agent.err
        assert "Traceback" not in agent.err
        assert not (state / "agent.json").exists()
        box = HubProcess(tmp_path / "hub")
        try:
            hub = box.admin_proc(
                *("serve", "--nats-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
                *("--metrics-listen", busy),
            )
        finally:
            box.cleanup()
        assert hub.code == 3, hub.err
        assert "metrics.listen" in hub.err and "Traceback" not in hub.err
