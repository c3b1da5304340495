"""The admin HTTP API (aiohttp), guarded by a bearer token.

    GET  /api/v1/health                      no token; liveness
    GET  /api/v1/status                      per node: last checkpoint age vs RPO, backlog
    GET  /api/v1/nodes                       enrolled nodes
    POST /api/v1/nodes {vault,node,labels}   enrol a node; returns its enrolment
    POST /api/v1/nodes/V/N/replace           new device: new enrolment, signing key unpinned
    GET  /api/v1/checkpoints?vault=&node=    checkpoints the hub holds

Errors are JSON ``{"error": code, "message": ..., "hint": ...}`` with an HTTP status.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from amber.hub.catalog import Catalog
from amber.hub.coordinator import Coordinator
from amber.hub.ingest import IngestStats
from amber.hub.plans import PlanBook, PlanSpec, PlanState
from amber.protocol.errors import AmberError, NotFoundError, UsageError
from amber.protocol.wire import check_name

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Issue = Callable[..., Awaitable[dict[str, Any]]]


log = logging.getLogger("amber.hub.admin")


@dataclass(frozen=True)
class AdminApi:
    """What the admin API serves from: the hub's parts it reads and the two hub actions
    it triggers (enrol and rotate a node's NATS user)."""

    token: str
    catalog: Catalog
    plans: PlanBook
    coordinator: Coordinator
    ingest_stats: IngestStats
    enrol: Issue  # (vault, node, labels) -> enrolment
    rotate: Issue  # (vault, node) -> enrolment
    replace: Issue  # (vault, node) -> enrolment; the node's signing key unpinned


API_KEY = web.AppKey("api", AdminApi)


def _status_for(exc: AmberError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UsageError):
        return 400
    return 409 if exc.exit_code in (40,) else 400


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.app[API_KEY]
    if request.path != "/api/v1/health":
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api.token.encode()):
            return web.json_response(
                {
                    "error": "unauthorized",
                    "message": "missing or wrong admin token",
                    "hint": "pass the token from DATA/secrets.json (AMBER_HUB_TOKEN)",
                },
                status=401,
            )
    try:
        return await handler(request)
    except AmberError as exc:
        return web.json_response(
            {
                "error": type(exc).__name__,
                "message": str(exc),
                "hint": exc.hint,
                "exit_code": exc.exit_code,
            },
            status=_status_for(exc),
        )
    except web.HTTPException:
        raise
    except Exception:  # a bug: logged with its traceback here, never sent to the client
        log.exception("admin request %s %s failed", request.method, request.path)
        return web.json_response(
            {
                "error": "internal",
                "message": f"the hub failed on {request.method} {request.path}",
                "hint": "see the hub's log for the traceback and report it",
            },
            status=500,
        )


async def json_object(request: web.Request, what: str) -> dict[str, Any]:
    """The request's body, which must be a JSON object."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UsageError(f"{what} is a JSON object")
    return body


def make_app(api: AdminApi) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024)
    app[API_KEY] = api
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_post("/api/v1/nodes", add_node)
    app.router.add_post("/api/v1/nodes/{vault}/{node}/rotate", rotate_node)
    app.router.add_post("/api/v1/nodes/{vault}/{node}/replace", replace_node)
    app.router.add_get("/api/v1/checkpoints", checkpoints)
    app.router.add_get("/api/v1/restores", restores)
    app.router.add_post("/api/v1/restores", restore_plan)
    app.router.add_get("/api/v1/restores/{plan}", restore_status)
    app.router.add_post("/api/v1/restores/{plan}/start", restore_start)
    app.router.add_post("/api/v1/restores/{plan}/abort", restore_abort)
    return app


def _api(request: web.Request) -> AdminApi:
    return request.app[API_KEY]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def nodes(request: web.Request) -> web.Response:
    api = _api(request)
    rows = await api.catalog.nodes()
    return web.json_response(
        [
            {
                "vault": n.vault,
                "node": n.node,
                "labels": n.labels,
                "created_us": n.created_us,
                "last_seen_us": n.last_seen_us,
                "signer": n.signer.hex() if n.signer else None,
            }
            for n in rows
        ]
    )


async def add_node(request: web.Request) -> web.Response:
    api = _api(request)
    body = await json_object(request, "an enrolment request")
    try:
        vault, node = check_name(str(body["vault"]), "vault"), check_name(str(body["node"]), "node")
    except KeyError as exc:
        raise UsageError(f"enrolment request needs vault and node: {exc}") from None
    labels = body.get("labels", {})
    if not isinstance(labels, dict):
        raise UsageError("an enrolment request's labels are a JSON object of strings")
    labels = {str(k): str(v) for k, v in labels.items()}
    enrolment = await api.enrol(vault, node, labels)
    return web.json_response(enrolment)


async def rotate_node(request: web.Request) -> web.Response:
    vault = check_name(request.match_info["vault"], "vault")
    node = check_name(request.match_info["node"], "node")
    return web.json_response(await _api(request).rotate(vault, node))


async def replace_node(request: web.Request) -> web.Response:
    vault = check_name(request.match_info["vault"], "vault")
    node = check_name(request.match_info["node"], "node")
    return web.json_response(await _api(request).replace(vault, node))


async def checkpoints(request: web.Request) -> web.Response:
    api = _api(request)
    rows = await api.catalog.checkpoints(request.query.get("vault"), request.query.get("node"))
    return web.json_response([r.to_json() for r in rows])


async def status(request: web.Request) -> web.Response:
    api = _api(request)
    now = time.time()
    out = []
    for n in await api.catalog.nodes():
        head = await api.catalog.checkpoints(n.vault, n.node)
        last = head[-1] if head else None
        beat = n.heartbeat or {}
        rpo = int(beat.get("rpo_seconds") or 0)
        age = None if last is None else now - last.time_us / 1e6
        out.append(
            {
                "vault": n.vault,
                "node": n.node,
                "last_seq": last.seq if last else None,
                "last_checkpoint_us": last.time_us if last else None,
                "age_seconds": age,
                "rpo_seconds": rpo or None,
                "rpo_breached": bool(rpo) and (age is None or age > rpo),
                "backlog_bytes": beat.get("backlog_bytes"),
                "backlog_chunks": beat.get("backlog_chunks"),
                "last_seen_us": n.last_seen_us,
                "agent_version": beat.get("agent_version"),
            }
        )
    objects, stored = await api.catalog.object_count()
    stats = api.ingest_stats
    return web.json_response(
        {
            "nodes": out,
            "objects": objects,
            "stored_bytes": stored,
            "ingest": {
                "chunks": stats.chunks,
                "chunk_bytes": stats.chunk_bytes,
                "records": stats.records,
                "duplicates": stats.duplicates,
                "rejected": dict(stats.rejected or {}),
            },
        }
    )


# --- staged restores ------------------------------------------------------------------


async def restores(request: web.Request) -> web.Response:
    return web.json_response([p.to_json() for p in await _api(request).plans.list()])


async def restore_plan(request: web.Request) -> web.Response:
    spec = PlanSpec.from_json(await json_object(request, "a restore plan request"))
    check_name(spec.vault, "vault")
    return web.json_response((await _api(request).plans.create(spec)).to_json())


async def restore_status(request: web.Request) -> web.Response:
    plan = await _api(request).plans.get(request.match_info["plan"])
    return web.json_response(plan.to_json())


async def restore_start(request: web.Request) -> web.Response:
    api = _api(request)
    plan_id = request.match_info["plan"]
    plan = await api.plans.get(plan_id)
    if plan.state != PlanState.DRAFT:
        raise UsageError(f"plan {plan_id} is {plan.state}, not a draft")
    await api.plans.set_state(plan_id, PlanState.RUNNING)
    api.coordinator.wake.set()
    return web.json_response((await api.plans.get(plan_id)).to_json())


async def restore_abort(request: web.Request) -> web.Response:
    api = _api(request)
    plan = await api.coordinator.abort(request.match_info["plan"])
    return web.json_response(plan.to_json())
