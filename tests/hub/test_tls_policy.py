"""In-process checks of the TLS policy: plaintext URLs are refused on both sides unless
configured explicitly, and the hub's server certificate renews itself at start (same CA).
Threat rows: docs/SECURITY.md, "Encrypted links"."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from amber.agent.hublink import tls_options
from amber.hub import tls as hubtls
from amber.hub.config import HubConfig
from amber.hub.server import Hub
from amber.protocol.enrolment import Enrolment
from amber.protocol.errors import ConfigError


def enrolment(*servers: str, ca: str = "") -> Enrolment:
    return Enrolment("v", "n", servers, "node.v.n", "pw", "_INBOX_v.n", ca=ca, version=1)


def test_agent_refuses_a_plaintext_enrolment_unless_allowed() -> None:
    """An old (v1) enrolment names nats:// servers: the password would go in clear."""
    old = enrolment("nats://hub.example.net:4222")
    with pytest.raises(ConfigError, match="in clear") as err:
        tls_options(old, insecure_plaintext=False)
    assert "node rotate" in err.value.hint and "insecure_plaintext" in err.value.hint
    assert tls_options(old, insecure_plaintext=True)["tls_handshake_first"] is False
    assert tls_options(enrolment("tls://hub.example.net:4222"), False)["tls"] is not None


def test_hub_refuses_to_issue_plaintext_enrolments_unless_allowed(tmp_path: Path) -> None:
    hub = Hub(HubConfig(data_dir=tmp_path, nats_advertise="nats://hub.example.net:4222"))
    with pytest.raises(ConfigError, match="in clear"):
        hub._check_tls_urls(hub.advertised_nats(), "nats.advertise")
    hub.cfg.insecure_plaintext = True
    hub._check_tls_urls(hub.advertised_nats(), "nats.advertise")
    hub._check_tls_urls(["tls://hub.example.net:4222"], "nats.advertise")


def test_hub_tls_files_are_private_and_name_the_advertised_hosts(tmp_path: Path) -> None:
    cfg = HubConfig(data_dir=tmp_path, nats_advertise="tls://hub.example.net:4222")
    hub = Hub(cfg)
    for f in (tmp_path / "tls").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    cert = x509.load_pem_x509_certificate(hub.tls.cert_file.read_bytes())
    names = hubtls._names_in(cert)
    assert {"hub.example.net", "127.0.0.1", "localhost"} <= names


def test_server_certificate_renews_at_start_under_the_same_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = hubtls.ensure_hub_tls(tmp_path, [])
    ca, cert = first.ca_file.read_bytes(), first.cert_file.read_bytes()
    assert hubtls.ensure_hub_tls(tmp_path, []).cert_file.read_bytes() == cert  # still fine
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=hubtls.SERVER_DAYS - 20)
    monkeypatch.setattr(hubtls, "_now", lambda: later)
    renewed = hubtls.ensure_hub_tls(tmp_path, [])
    assert renewed.ca_file.read_bytes() == ca and renewed.cert_file.read_bytes() != cert
    new = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
    assert new.not_valid_after_utc > later + dt.timedelta(days=300)
    moved = hubtls.ensure_hub_tls(tmp_path, ["new-name.example.net"])  # a new host name
    assert "new-name.example.net" in hubtls._names_in(
        x509.load_pem_x509_certificate(moved.cert_file.read_bytes())
    )
