"""A small client of the admin HTTP API for the CLI (standard library only).

The hub and its token are found through ``--data DIR`` on the hub's machine
(DATA/hub.json and DATA/secrets.json), elsewhere through ``--hub URL`` and the
``AMBER_HUB_TOKEN`` environment variable.
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

TOKEN_ENV = "AMBER_HUB_TOKEN"


class AdminClient:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token
        register_secret(token)

    @classmethod
    def locate(cls, hub: str | None, data: str | None) -> AdminClient:
        token = os.environ.get(TOKEN_ENV)
        if hub:
            if not token:
                raise ConfigError(f"--hub needs the admin token in ${TOKEN_ENV}")
            return cls(hub, token)
        data_dir = Path(data or "./amber-hub-data").resolve()
        url = read_runtime(data_dir)["admin_url"]
        return cls(url, token or load_secrets(data_dir).admin_token)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        """The hub named by the global options ``--hub`` and ``--data``."""
        return cls.locate(args.hub, args.data)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
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
