"""hub.toml and the hub's data directory.

With no configuration the hub is a hub in a box: its own nats-server, objects in
``DATA/objects``, the catalog in ``DATA/catalog.db``. Every option is listed in
packaging/hub.toml.sample.
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.hub.limits import Limits
from amber.hub.store.layout import DEFAULT_RETENTION_DAYS
from amber.logs import register_secret
from amber.protocol.errors import ConfigError
from amber.protocol.keys import SigningKey
from amber.secretfile import read_secret, write_secret

DEFAULT_DATA = "./amber-hub-data"


@dataclass
class HubConfig:
    data_dir: Path
    nats_url: str | None = None  # external NATS; None = embedded
    nats_user: str | None = None
    nats_password: str | None = None
    nats_listen: str = "0.0.0.0:4222"
    nats_advertise: str | None = None
    nats_ca_file: Path | None = None  # external NATS: the CA its certificate chains to
    insecure_plaintext: bool = False  # [nats] insecure_plaintext: allow nats:// enrolments
    tls_hostnames: tuple[str, ...] = ()  # [tls] hostnames: more names for the server cert
    store_url: str | None = None  # None = DATA/objects
    admin_listen: str = "127.0.0.1:8470"
    ingest_workers: int = 2
    metrics_listen: str | None = None  # [metrics] listen = "host:port"; None: no metrics
    retention: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))
    limits: Limits = field(default_factory=Limits)
    ingest_stream_bytes: int = 16 * 1024**3  # [limits] ingest_stream_bytes
    ingest_node_messages: int = 65_536  # [limits] ingest_node_messages

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.db"

    def store(self) -> str:
        return self.store_url or f"file://{(self.data_dir / 'objects').resolve()}"


def split_hostport(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: {text!r} is not host:port")
    return host, int(port)


def load_hub_config(path: Path | None, data_dir: str | None) -> HubConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"hub configuration {path} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read hub configuration {path}: {exc}") from None
    hub, nats, store = raw.get("hub", {}), raw.get("nats", {}), raw.get("store", {})
    admin, retention = raw.get("admin", {}), raw.get("retention", {})
    metrics, tls = raw.get("metrics", {}), raw.get("tls", {})
    if metrics.get("listen"):
        split_hostport(str(metrics["listen"]), "metrics.listen")
    register_secret(nats.get("password"))
    cfg = HubConfig(
        data_dir=Path(data_dir or hub.get("data_dir", DEFAULT_DATA)).resolve(),
        nats_url=nats.get("url"),
        nats_user=nats.get("user"),
        nats_password=nats.get("password"),
        nats_listen=str(nats.get("listen", "0.0.0.0:4222")),
        nats_advertise=nats.get("advertise"),
        nats_ca_file=Path(nats["ca_file"]) if nats.get("ca_file") else None,
        insecure_plaintext=_flag(nats.get("insecure_plaintext", False), "nats.insecure_plaintext"),
        tls_hostnames=tuple(str(h) for h in tls.get("hostnames", [])),
        store_url=store.get("url"),
        admin_listen=str(admin.get("listen", "127.0.0.1:8470")),
        ingest_workers=int(hub.get("ingest_workers", 2)),
        metrics_listen=str(metrics["listen"]) if metrics.get("listen") else None,
    )
    for tier, days in retention.items():
        cfg.retention[str(tier)] = int(days)
    _load_limits(cfg, raw.get("limits", {}))
    return cfg


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, not {value!r}")
    return value


def _load_limits(cfg: HubConfig, raw: dict[str, Any]) -> None:
    """``[limits]``: what one node may take (hub/limits.py) and the ingest stream's bounds."""
    known = {
        "upload_lease",
        "leases_per_node",
        "bytes_per_day",
        "bytes_held",
        "ingest_stream_bytes",
        "ingest_node_messages",
    }
    for key in set(raw) - known:
        raise ConfigError(f"[limits] has no option {key!r} (known: {', '.join(sorted(known))})")
    d = Limits()
    cfg.limits = Limits(
        upload_lease=float(_count(raw.get("upload_lease", d.upload_lease), "upload_lease")),
        leases_per_node=_count(raw.get("leases_per_node", d.leases_per_node), "leases_per_node"),
        bytes_per_day=parse_size(raw.get("bytes_per_day", d.bytes_per_day), "bytes_per_day"),
        bytes_held=parse_size(raw.get("bytes_held", d.bytes_held), "bytes_held"),
    )
    cfg.ingest_stream_bytes = parse_size(
        raw.get("ingest_stream_bytes", cfg.ingest_stream_bytes), "ingest_stream_bytes"
    )
    cfg.ingest_node_messages = _count(
        raw.get("ingest_node_messages", cfg.ingest_node_messages), "ingest_node_messages"
    )


def _count(value: Any, what: str) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    raise ConfigError(f"[limits] {what}: {value!r} is not a positive number")


def parse_size(value: Any, what: str) -> int:
    """A byte count: an integer, or text like 512MiB, 8GiB, 2TiB."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.match(r"^(\d+)\s*([KMGT]i?B?)?$", str(value).strip(), re.I)
    if not m:
        raise ConfigError(f"[limits] {what}: {value!r} is not a size like 512MiB or 8GiB")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * 1024 ** "_KMGT".index(unit or "_")


@dataclass(frozen=True)
class HubSecrets:
    admin_token: str
    nats_password: str


def load_secrets(data_dir: Path) -> HubSecrets:
    """The admin token and the hub's NATS password, created 0600 on first use."""
    path = data_dir / "secrets.json"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = {
            "admin_token": secrets.token_urlsafe(32),
            "nats_password": secrets.token_urlsafe(24),
        }
        write_secret(path, json.dumps(fresh).encode())
    obj = json.loads(read_secret(path, what="hub secrets"))
    register_secret(obj["admin_token"], obj["nats_password"])
    return HubSecrets(obj["admin_token"], obj["nats_password"])


def load_hub_key(data_dir: Path) -> SigningKey:
    """The hub's Ed25519 key (DATA/hub.key, 0600), created on first use."""
    path = data_dir / "hub.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret(path, SigningKey.generate().to_file_bytes())
    return SigningKey.from_file_bytes(read_secret(path, what="hub signing key"))


def write_runtime(data_dir: Path, info: dict[str, Any]) -> None:
    """DATA/hub.json tells the admin CLI on this machine where the running hub is."""
    tmp = data_dir / "hub.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(data_dir / "hub.json")


def read_runtime(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / "hub.json").read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no running hub found in {data_dir}",
            hint="start it with 'amber-hub serve --data DIR', or pass --hub URL",
        ) from None
