"""The hub in a box's own certificate authority and server certificate.

On first start the hub creates, in ``DATA/tls/`` (0700, every file 0600):

- ``ca.key`` / ``ca.pem``: an EC P-256 CA, valid 10 years. Enrolments carry ``ca.pem``;
  agents and the admin CLI trust the hub through it and nothing else.
- ``server.key`` / ``server.pem``: the certificate the embedded nats-server and the
  admin API present, signed by the CA, valid 397 days, naming localhost, 127.0.0.1, ::1,
  this machine's host names and every host of the hub's listen and advertise addresses
  (plus ``[tls] hostnames`` in hub.toml).

Renewal happens at hub start: a server certificate with fewer than 30 days left, or one
that does not name every wanted host, is replaced (same CA, so nodes notice nothing).
See docs/OPERATIONS.md ("Certificates").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amber.protocol.errors import ConfigError
from amber.secretfile import read_secret, write_secret

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)
log = logging.getLogger("amber.hub.tls")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HubTls:
    """Where the hub's TLS files are; the contexts built from them."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def ca_pem(self) -> str:
        return self.ca_file.read_text()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def host_of(address: str) -> str | None:
    """The host of ``tls://h:p``, ``h:p`` or ``[v6]:p``; None for a wildcard."""
    text = address.strip()
    host = urlsplit(text if "://" in text else f"x://{text}").hostname or ""
    return None if host in ("", "0.0.0.0", "::") else host


def wanted_names(extra: Iterable[str]) -> set[str]:
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    names.update(h for h in extra if h)
    return {n.lower() for n in names if n}


def _ip(name: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _names_in(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = {str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
    return dns | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(tls_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Amber hub CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_secret(tls_dir / "ca.key", _key_pem(key))
    write_secret(tls_dir / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    log.info("created the hub's certificate authority in %s", tls_dir)


def _load_ca(tls_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(
            read_secret(tls_dir / "ca.key", what="hub CA key"), None
        )
        cert = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the hub's CA in {tls_dir} cannot be read: {exc}",
            hint="restore ca.key and ca.pem from the hub's backup; a new CA means "
            "re-enrolling every node",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{tls_dir / 'ca.key'} is not an EC private key")
    return key, cert


def _make_server_cert(tls_dir: Path, names: set[str]) -> None:
    ca_key, ca_cert = _load_ca(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    ips = [ip for ip in map(_ip, sorted(names)) if ip is not None]
    dns = [n for n in sorted(names) if _ip(n) is None]
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alt += [x509.IPAddress(ip) for ip in ips]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amber-hub")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_secret(tls_dir / "server.key", _key_pem(key), overwrite=True)
    write_secret(
        tls_dir / "server.pem", cert.public_bytes(serialization.Encoding.PEM), overwrite=True
    )
    log.info("issued the hub's server certificate for %s", ", ".join(sorted(names)))


def server_cert_state(tls_dir: Path, names: set[str]) -> str | None:
    """Why the server certificate must be (re)issued, or None if it is fine."""
    try:
        cert = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
    except (OSError, ValueError):
        return "no server certificate"
    if not (tls_dir / "server.key").exists():
        return "no server key"
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    missing = names - _names_in(cert)
    if missing:
        return f"it does not name {', '.join(sorted(missing))}"
    return None


def ensure_hub_tls(data_dir: Path, hosts: Iterable[str]) -> HubTls:
    """The hub's CA (created once) and a server certificate that is valid for 30 days
    more and names every host in ``hosts`` (reissued otherwise)."""
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (tls_dir / "ca.pem").exists() and not (tls_dir / "ca.key").exists():
        _make_ca(tls_dir)
    names = wanted_names(hosts)
    why = server_cert_state(tls_dir, names)
    if why is not None:
        log.info("renewing the hub's server certificate: %s", why)
        _make_server_cert(tls_dir, names)
    return HubTls(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
