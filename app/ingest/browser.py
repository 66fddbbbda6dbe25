"""Collecting from web pages: what Segment's analytics.js (``@segment/analytics-next``) asks for.

- ``GET /v1/projects/{writeKey}/settings``: the CDN settings it loads first (``cdnURL`` = this
  service), naming no destination but Consentry.
- ``POST /v1/t|i|p|s|g|a`` (one message, its default delivery) and ``POST /v1/b`` (its
  ``batching`` delivery strategy, also flushed with ``keepalive`` when the page hides, and what a
  ``navigator.sendBeacon`` sends): ``Content-Type: text/plain`` JSON; the write key travels as
  ``Authorization: Basic`` and/or as ``writeKey`` in the body (a beacon carries no header).

Only public write keys (role ``ingest``, trust ``client``) are admitted, and only from the origins
configured for the key's source (``CONSENTRY_BROWSER_ORIGINS="web=https://shop.example …"``): a
page elsewhere holding the public key is refused, including beacons whose answer it never reads.
Messages go through exactly what ``/v1/batch`` does (validation, sealing, client identity rules).
"""

from __future__ import annotations

import base64
import binascii
import os
from functools import lru_cache
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post, route
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from app.access.service import Principal, authenticate
from app.deps import Db
from app.errors import DomainError, InvalidField, NotFound
from app.ingest.inbox import accept_messages
from app.ingest.routes import IngestOut, PayloadTooLarge, _accept, _accepted, _out, read_json
from app.ingest.spec import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES
from app.problems import handle_domain, handle_http
from app.profiles.service import VaultContext

KINDS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias"}
SDK_ONLY_FIELDS = ("writeKey", "_metadata")
"""What analytics.js adds to each message for Segment's own servers; never stored."""
MAX_KEY_LEN = 200
ALLOWED_HEADERS = "Authorization, Content-Type, X-Retry-Count"
PREFLIGHT_MAX_AGE = "600"


class OriginRefused(DomainError):
    status = 403
    title = "Origin not allowed"
    type_slug = "origin-refused"


class WriteKeyRefused(DomainError):
    status = 401
    title = "Write key refused"
    type_slug = "write-key-refused"


@lru_cache(maxsize=8)
def parse_origins(text: str) -> dict[str, frozenset[str]]:
    """``"web=https://a.example web=https://b.example, app=https://c.example"`` -> source -> origins."""
    out: dict[str, set[str]] = {}
    for entry in text.replace(",", " ").split():
        source, sep, origin = entry.partition("=")
        if sep and source and origin:
            out.setdefault(source, set()).add(origin.rstrip("/").lower())
    return {k: frozenset(v) for k, v in out.items()}


def allowed_origins() -> dict[str, frozenset[str]]:
    """``CONSENTRY_BROWSER_ORIGINS`` (read per request: no restart to add a site)."""
    return parse_origins(os.environ.get("CONSENTRY_BROWSER_ORIGINS", ""))


def origin_allowed_somewhere(origin: str) -> bool:
    """Some client source may send from ``origin`` (all a preflight, which carries no key, can check)."""
    return any(origin in origins for origins in allowed_origins().values())


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def request_origin(request: Request[Any, Any, Any]) -> str:
    """The page's origin as the browser sent it; a request without one is no page's."""
    origin = request.headers.get("origin", "").strip().lower()
    if not origin or origin == "null":
        raise OriginRefused("browser collection needs the page's Origin (servers send to /v1/batch)", field="Origin")
    return origin


def check_origin(principal: Principal, origin: str) -> None:
    if origin not in allowed_origins().get(principal.source or principal.name, frozenset()):
        raise OriginRefused("this write key is not used from this origin", field="Origin")


def _basic_key(request: Request[Any, Any, Any]) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode().split(":", 1)[0] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _body_key(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("writeKey"), str):
        return str(data["writeKey"])
    if isinstance(data, dict) and isinstance(data.get("batch"), list):  # a batch's messages each carry it too
        keys = {str(m["writeKey"]) for m in data["batch"] if isinstance(m, dict) and isinstance(m.get("writeKey"), str)}
        if len(keys) == 1:
            return next(iter(keys))
    return None


async def write_key_principal(db: Db, token: str | None) -> Principal:
    """A public write key (ingest, trust client); server and staff keys never work from a page."""
    if not token or len(token) > MAX_KEY_LEN:
        raise WriteKeyRefused("a write key is required", field="writeKey")
    principal = await authenticate(db, token)
    if principal is None:
        raise WriteKeyRefused("the write key is unknown or revoked", field="writeKey")
    if principal.role != "ingest" or principal.trust != "client":
        raise WriteKeyRefused("only a public (client) write key may be used in a web page", field="writeKey")
    return principal


def _strip(message: Any) -> Any:
    if isinstance(message, dict):
        return {k: v for k, v in message.items() if k not in SDK_ONLY_FIELDS}
    return message


def cdn_settings(write_key: str, api_host: str, protocol: str) -> dict[str, Any]:
    """The settings shape analytics-next reads: Consentry as its only destination, no remote code."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "addBundledMetadata": False,
                "unbundledIntegrations": [],
            }
        },
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "remotePlugins": [],
    }


def _message_operation_id(handler: Any, method: Any, path: list[Any]) -> str:
    """``browserTrack``, ``browserIdentify``…: one operation id per short path."""
    return "browser" + KINDS[str(path[-1])].capitalize()


class BrowserCollectionController(Controller):
    """No ``roles``: the write key is checked here, from the header or the body (beacons)."""

    path = "/v1"
    tags = ["events"]
    opt = {"checks_own_body": True}

    @get("/projects/{write_key:str}/settings", operation_id="browserSettings")
    async def settings(self, request: Request[Any, Any, Any], db: Db, write_key: FromPath[str]) -> Response[Any]:
        """The CDN settings analytics.js loads (``cdnURL`` pointing here), for allowed origins only."""

        async def answer(origin: str) -> Response[Any]:
            try:
                principal = await write_key_principal(db, write_key)
            except WriteKeyRefused as exc:
                raise NotFound("no such write key", field="writeKey") from exc
            check_origin(principal, origin)
            protocol = "https" if origin.startswith("https:") else request.url.scheme  # (no mixed content)
            body = cdn_settings(write_key, f"{request.url.netloc}/v1", protocol)
            return Response(body, headers={**cors_headers(origin), "Cache-Control": "private, max-age=60"})

        return await _answered(request, db, answer)

    @post(["/t", "/i", "/p", "/s", "/g", "/a"], operation_id=_message_operation_id, status_code=200)
    async def message(self, request: Request[Any, Any, Any], db: Db) -> Response[Any]:
        """One message from analytics.js (its default delivery)."""

        async def answer(origin: str) -> Response[Any]:
            data = await read_json(request, MAX_EVENT_BYTES)
            principal = await _principal(request, db, data, origin)
            kind = KINDS[request.url.path.rstrip("/")[-1]]
            accept = accept_messages(
                db, VaultContext.from_settings(), principal, [_strip(data)], expected_type=kind, gpc=_gpc(request)
            )
            result = await _accepted(request, await _accept(db, accept))
            if result.rejected:
                r = result.rejected[0]
                raise InvalidField(r.reason, field=r.field or "body")
            return _response(_out(result), origin)

        return await _answered(request, db, answer)

    @post("/b", operation_id="browserBatch", status_code=200)
    async def batch(self, request: Request[Any, Any, Any], db: Db) -> Response[Any]:
        """A batch from analytics.js's ``batching`` strategy or a ``navigator.sendBeacon``:
        ``{"writeKey", "batch": [...], "sentAt"}``; invalid messages are reported by index."""

        async def answer(origin: str) -> Response[Any]:
            data = await read_json(request, MAX_BATCH_BYTES)
            principal = await _principal(request, db, data, origin)
            if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
                raise InvalidField("must be an array of messages", field="batch")
            if len(data["batch"]) > MAX_BATCH_EVENTS:
                raise PayloadTooLarge(detail=f"more than {MAX_BATCH_EVENTS} messages in one batch")
            defaults = {k: data[k] for k in ("context", "sentAt", "integrations") if k in data}
            messages = [_strip(m) for m in data["batch"]]
            accept = accept_messages(
                db, VaultContext.from_settings(), principal, messages, defaults=defaults, gpc=_gpc(request)
            )
            return _response(_out(await _accepted(request, await _accept(db, accept))), origin)

        return await _answered(request, db, answer)

    @route(
        ["/t", "/i", "/p", "/s", "/g", "/a", "/b", "/projects/{write_key:str}/settings"],
        http_method="OPTIONS",
        include_in_schema=False,
        status_code=200,
    )
    async def allow_preflight(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """CORS preflight: answered for an origin some client source may send from (the key,
        which a preflight does not carry, is checked against the origin on the request itself).
        (Named to sort first: Litestar registers a controller's handlers by name, and an OPTIONS
        handler added to a path after its first handler loses to the automatic one.)"""
        origin = request.headers.get("origin", "").strip().lower()
        if not origin_allowed_somewhere(origin):
            return handle_domain(request, OriginRefused("no source sends from this origin", field="Origin"))
        headers = {
            **cors_headers(origin),
            "Access-Control-Allow-Methods": "GET, POST",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        }
        return Response(None, status_code=204, headers=headers)


async def _principal(request: Request[Any, Any, Any], db: Db, data: Any, origin: str) -> Principal:
    header, body = _basic_key(request), _body_key(data)
    if header and body and header != body:
        raise WriteKeyRefused("the write key in the header and in the body differ", field="writeKey")
    principal = await write_key_principal(db, header or body)
    check_origin(principal, origin)
    return principal


def _gpc(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("sec-gpc") == "1"


def _response(out: IngestOut, origin: str) -> Response[Any]:
    return Response(msgspec.to_builtins(out), status_code=200, headers=cors_headers(origin))


async def _answered(request: Request[Any, Any, Any], db: Db, answer: Any) -> Response[Any]:
    """Run ``answer(origin)``; a refusal becomes a problem document that the page may read only
    when its origin is allowed for the key (nothing of a refused request is kept)."""
    origin = ""
    try:
        origin = request_origin(request)
        response: Response[Any] = await answer(origin)
        return response
    except (DomainError, HTTPException) as exc:
        await db.rollback()
        refused = isinstance(exc, OriginRefused | WriteKeyRefused) or not origin_allowed_somewhere(origin)
        problem = handle_domain(request, exc) if isinstance(exc, DomainError) else handle_http(request, exc)
        if not refused:
            problem.headers.update(cors_headers(origin))
        return problem
