"""A crafted admin request body (not an object, wrong field types) is a clear usage error
(HTTP 400 with a JSON error naming what is wrong), never a traceback or an HTTP 500."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.support.hub import HubProcess
from tests.support.hubtls import admin_context

BODIES: list[tuple[str, Any]] = [
    ("/api/v1/nodes", []),
    ("/api/v1/nodes", "node"),
    ("/api/v1/nodes", 7),
    ("/api/v1/nodes", {"vault": "v1", "node": "n1", "labels": ["a"]}),
    ("/api/v1/restores", []),
    ("/api/v1/restores", None),
    ("/api/v1/restores", {"vault": "v1", "waves": "all"}),
    ("/api/v1/restores", {"vault": "v1", "nodes": [1, 2]}),
    ("/api/v1/restores", {"vault": "v1", "canary": "1"}),
    ("/api/v1/restores", {"vault": "v1", "selector": ["site"]}),
    ("/api/v1/restores", {"vault": "v1", "rollback_on_failure": 1}),
]


def post(hub: HubProcess, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        hub.admin_url + path,
        headers={"Authorization": f"Bearer {hub.token}", "Content-Type": "application/json"},
        data=json.dumps(body).encode() if body is not None else b"not json",
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=admin_context(hub.data)) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_crafted_body_is_a_usage_error(hub: HubProcess) -> None:
    for path, body in BODIES:  # one hub for all: each answer must leave it serving
        status, answer = post(hub, path, body)
        assert status == 400, (path, body, status, answer)
        assert answer["error"] == "UsageError" and answer["exit_code"] == 2, answer
        assert answer["message"] and answer["hint"], answer
    assert "Traceback" not in hub.output()
