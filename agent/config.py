"""agent.toml: what the agent protects, where its state lives, and its policies.

Read with :mod:`tomllib`; written by :func:`dump_config` (a small, fixed layout,
so no TOML writer dependency). Every option is listed in
packaging/agent.toml.sample.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from amber.protocol.errors import AmberError, ConfigError
from amber.protocol.records import SOURCE_KINDS, TIERS
from amber.protocol.wire import check_name

DEFAULT_CONFIG = "/etc/amber/agent.toml"
CONFIG_ENV = "AMBER_AGENT_CONFIG"
MiB = 1024 * 1024
DURATION_RE = re.compile(r"^(\d+)\s*([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class TierPolicy:
    """How often a tier is checkpointed and the recovery point objective it must meet."""

    interval: int  # seconds between scheduled checkpoints
    rpo: int  # seconds: a source older than this is in breach


DEFAULT_TIERS = {
    "hot": TierPolicy(interval=300, rpo=900),
    "warm": TierPolicy(interval=3600, rpo=4 * 3600),
    "cold": TierPolicy(interval=86400, rpo=2 * 86400),
}


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    path: Path
    tier: str = "warm"
    lineage: dict[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckConfig:
    """``[checks.NAME]``: a program a restore order may name (run with no shell)."""

    name: str
    argv: tuple[str, ...]
    timeout: int = 300  # seconds

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class AgentConfig:
    path: Path  # the agent.toml this was read from
    state_dir: Path
    node: str
    vault: str
    vault_key_file: Path
    signing_key_file: Path
    journal_max_bytes: int = 8 * 1024 * MiB
    journal_cache_bytes: int = 512 * MiB
    busy_timeout: float = 10.0
    compression_level: int = 1  # zstd; 1 compresses weights as well as 3, much faster
    workers: int = 2
    sources: tuple[SourceConfig, ...] = ()
    tiers: dict[str, TierPolicy] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    hub: dict[str, Any] = field(default_factory=dict)
    hooks: dict[str, str] = field(default_factory=dict)  # pre_restore, post_restore
    checks: dict[str, CheckConfig] = field(default_factory=dict)  # [checks.NAME]
    metrics_listen: str | None = None  # [metrics] listen = "host:port"; None: no metrics

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.db"

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(
            f"no source named {name!r} (configured: {known})",
            hint="add it with 'amber-agent source add' or fix the name",
        )

    def with_source(self, src: SourceConfig) -> AgentConfig:
        if any(s.name == src.name for s in self.sources):
            raise ConfigError(f"a source named {src.name!r} already exists")
        return replace(self, sources=(*self.sources, src))

    def without_source(self, name: str) -> AgentConfig:
        self.source(name)
        return replace(self, sources=tuple(s for s in self.sources if s.name != name))


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def parse_duration(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = DURATION_RE.match(str(value).strip())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"{what}: {value!r} is not a duration like 30s, 5m, 2h or 1d")
    return int(m.group(1)) * UNITS[m.group(2)]


def parse_size(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.match(r"^(\d+)\s*([KMGT]i?B?)?$", str(value).strip(), re.I)
    if not m:
        raise ConfigError(f"{what}: {value!r} is not a size like 512MiB or 8GiB")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * 1024 ** "_KMGT".index(unit or "_")


def make_source(raw: dict[str, Any], base: Path) -> SourceConfig:
    where = f"source {raw.get('name', '?')!r}"
    try:
        name = check_name(str(raw["name"]), "source")
        kind, path = str(raw["kind"]), Path(os.path.expanduser(str(raw["path"])))
    except KeyError as exc:
        raise ConfigError(f"{where}: missing {exc.args[0]!r}") from None
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    tier = str(raw.get("tier", "warm"))
    if tier not in TIERS:
        raise ConfigError(f"{where}: tier must be one of {', '.join(TIERS)}, not {tier!r}")
    lineage = raw.get("lineage", {})
    if not isinstance(lineage, dict):
        raise ConfigError(f'{where}: lineage must be a table of key = "value"')
    return SourceConfig(
        name=name,
        kind=kind,
        path=path if path.is_absolute() else (base / path),
        tier=tier,
        lineage={str(k): str(v) for k, v in lineage.items()},
        exclude=tuple(str(x) for x in raw.get("exclude", ())),
    )


def load_config(path: Path) -> AgentConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"agent configuration {path} does not exist",
            hint=f"run 'amber-agent init' or pass --config (or set {CONFIG_ENV})",
        ) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read agent configuration {path}: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> AgentConfig:
    agent = raw.get("agent", {})
    base = path.parent
    try:
        state_dir = base / str(agent["state_dir"])
        node = check_name(str(agent["node"]), "node")
        vault = check_name(str(agent["vault"]), "vault")
    except KeyError as exc:
        raise ConfigError(f"{path}: [agent] lacks {exc.args[0]!r}") from None
    journal = raw.get("journal", {})
    tiers = dict(DEFAULT_TIERS)
    for name, t in raw.get("tiers", {}).items():
        if name not in TIERS:
            raise ConfigError(f"{path}: unknown tier {name!r}")
        tiers[name] = TierPolicy(
            interval=parse_duration(t.get("interval", tiers[name].interval), f"tiers.{name}"),
            rpo=parse_duration(t.get("rpo", tiers[name].rpo), f"tiers.{name}.rpo"),
        )
    sources = tuple(make_source(s, base) for s in raw.get("source", []))
    if len({s.name for s in sources}) != len(sources):
        raise ConfigError(f"{path}: two sources share a name")
    return AgentConfig(
        path=path,
        state_dir=state_dir,
        node=node,
        vault=vault,
        vault_key_file=state_dir / str(agent.get("vault_key", "vault.key")),
        signing_key_file=state_dir / str(agent.get("signing_key", "node.key")),
        journal_max_bytes=parse_size(journal.get("max_bytes", 8 << 30), "journal.max_bytes"),
        journal_cache_bytes=parse_size(journal.get("cache_bytes", 512 * MiB), "journal.cache"),
        busy_timeout=float(agent.get("busy_timeout", 10.0)),
        compression_level=int(agent.get("compression_level", 1)),
        workers=max(1, int(agent.get("workers", os.cpu_count() or 2))),
        sources=sources,
        tiers=tiers,
        hub=_hub_options(raw.get("hub", {})),
        hooks=_hooks(raw.get("hooks", {}), path),
        checks=_checks(raw.get("checks", {}), path),
        metrics_listen=_listen(raw.get("metrics", {}).get("listen"), "metrics.listen"),
    )


def _listen(value: Any, what: str) -> str | None:
    """A "host:port" to serve on (port 0: any free port), or None."""
    if value is None or value == "":
        return None
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what}: {value!r} is not host:port (e.g. 127.0.0.1:9464)")
    return str(value)


def _hooks(raw: Any, path: Path) -> dict[str, str]:
    """[hooks]: shell commands run around a restore that swaps sources in place."""
    known = {"pre_restore", "post_restore"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ConfigError(f"{path}: [hooks] takes only {', '.join(sorted(known))}")
    return {str(k): str(v) for k, v in raw.items()}


def _checks(raw: Any, path: Path) -> dict[str, CheckConfig]:
    """[checks.NAME]: command (an argv string split like a shell would, or a list; never
    run through a shell) and timeout (a duration, default 5m)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [checks] must hold tables like [checks.smoke]")
    out = {}
    for name, table in raw.items():
        where = f"{path}: [checks.{name}]"
        try:
            check_name(str(name), "check")
        except AmberError as exc:
            raise ConfigError(f"{where}: {exc}", hint=exc.hint) from None
        if not isinstance(table, dict) or set(table) - {"command", "timeout"}:
            raise ConfigError(f"{where} takes only command and timeout")
        out[str(name)] = CheckConfig(
            name=str(name),
            argv=_argv(table.get("command"), where),
            timeout=parse_duration(table.get("timeout", 300), f"checks.{name}.timeout"),
        )
    return out


def _argv(command: Any, where: str) -> tuple[str, ...]:
    if isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    elif isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"{where}: command {command!r} does not parse: {exc}") from None
    else:
        raise ConfigError(f'{where} needs command = "/path/to/program args"')
    if not argv or not argv[0]:
        raise ConfigError(f"{where}: command is empty")
    return tuple(argv)


def _hub_options(raw: dict[str, Any]) -> dict[str, Any]:
    """[hub]: bandwidth_limit (bytes/s, e.g. "2MiB"), sync_interval (e.g. "5s"),
    insecure_plaintext (true: accept plaintext nats:// servers; docs/OPERATIONS.md)."""
    out = dict(raw)
    if not isinstance(out.get("insecure_plaintext", False), bool):
        raise ConfigError("hub.insecure_plaintext must be true or false")
    if "bandwidth_limit" in out:
        out["bandwidth_limit"] = parse_size(out["bandwidth_limit"], "hub.bandwidth_limit")
    if "sync_interval" in out:
        out["sync_interval"] = parse_duration(out["sync_interval"], "hub.sync_interval")
    return out


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_str(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    return _toml_str(str(value))


def dump_config(cfg: AgentConfig) -> str:
    """Render ``cfg`` as agent.toml (paths relative to the file where possible)."""
    base = cfg.path.parent

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(base))
        except ValueError:
            return str(p)

    lines = [
        "# Amber agent configuration. Every option: packaging/agent.toml.sample",
        "[agent]",
        f"node = {_toml_str(cfg.node)}",
        f"vault = {_toml_str(cfg.vault)}",
        f"state_dir = {_toml_str(rel(cfg.state_dir))}",
        f"vault_key = {_toml_str(cfg.vault_key_file.name)}",
        f"signing_key = {_toml_str(cfg.signing_key_file.name)}",
        f"busy_timeout = {cfg.busy_timeout}",
        f"compression_level = {cfg.compression_level}",
        f"workers = {cfg.workers}",
        "",
        "[journal]",
        f"max_bytes = {cfg.journal_max_bytes}",
        f"cache_bytes = {cfg.journal_cache_bytes}",
        "",
    ]
    for name, t in cfg.tiers.items():
        lines += [f"[tiers.{name}]", f"interval = {t.interval}", f"rpo = {t.rpo}", ""]
    if cfg.hub:
        lines.append("[hub]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in cfg.hub.items()]
        lines.append("")
    if cfg.hooks:
        lines.append("[hooks]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in cfg.hooks.items()]
        lines.append("")
    for check in cfg.checks.values():
        lines += [
            f"[checks.{check.name}]",
            f"command = {_toml_value(list(check.argv))}",
            f"timeout = {check.timeout}",
            "",
        ]
    if cfg.metrics_listen:
        lines += ["[metrics]", f"listen = {_toml_str(cfg.metrics_listen)}", ""]
    for s in cfg.sources:
        lines += [
            "[[source]]",
            f"name = {_toml_str(s.name)}",
            f"kind = {_toml_str(s.kind)}",
            f"path = {_toml_str(str(s.path))}",
            f"tier = {_toml_str(s.tier)}",
        ]
        if s.exclude:
            lines.append(f"exclude = {_toml_value(list(s.exclude))}")
        if s.lineage:
            lines.append(f"lineage = {_toml_value(s.lineage)}")
        lines.append("")
    return "\n".join(lines)


def save_config(cfg: AgentConfig) -> None:
    tmp = cfg.path.with_name(cfg.path.name + ".tmp")
    tmp.write_text(dump_config(cfg))
    os.replace(tmp, cfg.path)
