"""TLS client contexts shared by the agent (NATS) and the admin CLI (HTTPS).

A peer is trusted through the CA it was given (an enrolment's ``ca``, the hub's
``DATA/tls/ca.pem``, ``--ca FILE``) or, without one, the system's trust store; host
names are always checked and TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl

from amber.protocol.errors import ConfigError, HubUnavailableError


def client_context(ca_pem: str | None = None, *, source: str = "the CA") -> ssl.SSLContext:
    """A verifying client context trusting ``ca_pem`` only (system roots when None)."""
    try:
        ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{source} is not a PEM certificate: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def untrusted_peer(where: str, exc: BaseException, fix: str) -> HubUnavailableError:
    """The error for a peer whose certificate does not verify: never a retryable blip."""
    reason = getattr(exc, "verify_message", None) or str(exc)
    return HubUnavailableError(
        f"the hub at {where} presented a certificate this side does not trust ({reason}); "
        "nothing was sent",
        hint=fix,
    )


def find_verify_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind ``exc`` (wrapped or chained), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        reason = getattr(exc, "reason", None)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return reason
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
