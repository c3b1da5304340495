"""A small client of the admin HTTP API for the CLI (standard library only).

The hub and its token are found through ``--data DIR`` on the hub's machine
(DATA/hub.json and DATA/secrets.json), elsewhere through ``--hub URL`` and the
``AMBER_HUB_TOKEN`` environment variable.

The admin API is HTTPS only. The client trusts the hub's own CA and nothing else:
``--ca FILE`` (or ``$AMBER_HUB_CA``), else the ``ca_file`` hub.json names, else
``DATA/tls/ca.pem``. A ``--hub`` URL without a CA uses the system's trust store (a hub
behind a proxy with a public certificate). A plain ``http://`` URL is refused: the token
would cross the network in clear.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from amber.hub.config import load_secrets, read_runtime
from amber.logs import register_secret
from amber.protocol.errors import (
    ConfigError,
    HubUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    UsageError,
)
from amber.tlsctx import client_context, find_verify_error, untrusted_peer

TOKEN_ENV = "AMBER_HUB_TOKEN"
CA_ENV = "AMBER_HUB_CA"
UNTRUSTED_HINT = (
    "check --ca (or $AMBER_HUB_CA) names this hub's DATA/tls/ca.pem; if it does, "
    "something between you and the hub is impersonating it: do not send the token"
)


class AdminClient:
    def __init__(self, url: str, token: str, ca_file: Path | None = None) -> None:
        self.url, self.token = url.rstrip("/"), token
        register_secret(token)
        if not self.url.startswith("https://"):
            raise ConfigError(
                f"the admin API URL {self.url} is not https://: the token would cross "
                "the network in clear",
                hint="the hub serves its admin API over TLS only; use its https:// URL",
            )
        self.ssl = client_context(_read_ca(ca_file), source=str(ca_file))

    @classmethod
    def locate(cls, hub: str | None, data: str | None, ca: str | None = None) -> AdminClient:
        token = os.environ.get(TOKEN_ENV)
        ca = ca or os.environ.get(CA_ENV)
        if hub:
            if not token:
                raise ConfigError(f"--hub needs the admin token in ${TOKEN_ENV}")
            return cls(hub, token, Path(ca) if ca else None)
        data_dir = Path(data or "./amber-hub-data").resolve()
        info = read_runtime(data_dir)
        ca_file = Path(ca or info.get("ca_file") or data_dir / "tls" / "ca.pem")
        return cls(info["admin_url"], token or load_secrets(data_dir).admin_token, ca_file)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        """The hub named by the global options ``--hub`` and ``--data``."""
        return cls.locate(args.hub, args.data, getattr(args, "ca", None))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                err = None
            if not isinstance(err, dict):
                err = {"message": str(exc)}
            kind = {404: NotFoundError, 400: UsageError, 401: PermissionDeniedError}.get(
                exc.code, ConfigError
            )
            raise kind(err.get("message", str(exc)), hint=err.get("hint")) from None
        except (urllib.error.URLError, OSError) as exc:
            bad_cert = find_verify_error(exc)
            if bad_cert is not None:
                raise untrusted_peer(self.url, bad_cert, UNTRUSTED_HINT) from None
            raise HubUnavailableError(
                f"cannot reach the hub admin API at {self.url}: {exc}"
            ) from None
        except ValueError as exc:  # not JSON: something else answers at that URL
            raise ProtocolError(f"{self.url} did not answer as an Amber hub: {exc}") from None


def quote(part: str) -> str:
    """One path segment of an API URL (a plan id, a name)."""
    return urllib.parse.quote(part, safe="")


def query(**params: str | None) -> str:
    """``?k=v&...`` of the parameters given, or ``""``."""
    given = {k: v for k, v in params.items() if v}
    return "?" + urllib.parse.urlencode(given) if given else ""


def _read_ca(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the hub's CA certificate {path}: {exc.strerror}",
            hint="pass --ca FILE with a copy of the hub's DATA/tls/ca.pem",
        ) from None
