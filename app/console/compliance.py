"""The compliance officer's pages: the request queue (filters, deadline colours, bulk actions,
staff intake) and a request's page (timeline, verification, per-store checklist with retry,
extension, audited reveal, access package and certificate downloads). Every action calls the
DSR services with the signed-in principal, as the API does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath
from litestar.response import File, Redirect, Response, Template

from app.access.service import Principal
from app.console import compliance_view as view
from app.console.core import Form
from app.console.render import page
from app.deps import Caller, Db
from app.dsr import fulfil, lifecycle, views
from app.dsr.access_package import open_package
from app.dsr.certificate import certificate_of
from app.dsr.channel import read_outbox
from app.dsr.intake import Intake, check_intake, receive, resend_codes, verify_code
from app.dsr.policy import DsrPolicy, load_policy
from app.dsr.sealing import request_key
from app.errors import DomainError, InvalidField, NotFound
from app.profiles.service import VaultContext
from app.settings import get_settings

BASE = "/console/compliance/requests"
IDENTIFIER_FIELDS = ("email", "phone", "name", "user_id")
BULK_LIMIT = 1000


def _policy() -> DsrPolicy:
    return load_policy(get_settings().policy_dir)


def _to(request_id: str) -> Redirect:
    return Redirect(f"{BASE}/{request_id}", status_code=303)


def _queue_context(q: view.QueueFilter) -> dict[str, Any]:
    return {
        "filter": q,
        "kinds": views.KINDS,
        "regulations": views.REGULATIONS,
        "statuses": view.STATUSES,
        "dues": tuple(view.DUE_CHOICES),
        "actions": view.BULK_ACTIONS,
    }


async def _bulk(db: Db, principal: Principal, q: view.QueueFilter, action: str, reason: str | None) -> list[Any]:
    """One action on every request the filter matches (up to ``BULK_LIMIT``); each is changed or
    refused on its own."""
    f = view.lifecycle_filter(q, datetime.now(UTC))
    out = []
    for r in await lifecycle.list_requests(db, f, BULK_LIMIT):
        try:
            async with db.begin_nested():
                if action == "wait":
                    await lifecycle.wait(db, principal, r, reason)
                elif action == "resume":
                    await lifecycle.resume(db, principal, r, reason)
                else:
                    await lifecycle.set_status(db, principal, r, action, reason)
            out.append({"id": r.id, "ok": True, "status": r.status, "detail": ""})
        except DomainError as exc:
            await db.refresh(r)
            out.append({"id": r.id, "ok": False, "status": r.status, "detail": exc.detail})
    return out


def _identifiers(data: dict[str, str]) -> dict[str, str]:
    return {k: data[k].strip() for k in IDENTIFIER_FIELDS if data.get(k, "").strip()}


class ComplianceController(Controller):
    path = "/compliance/requests"
    include_in_schema = False

    @get("/", name="console.requests")
    async def queue(self, request: Request[Any, Any, Any], db: Db) -> Template:
        """The queue: soonest deadline first; unverified requests hidden unless asked for."""
        q = view.parse_filter(request.query_params)
        rows, total = await view.queue(db, q)
        return page(request, "compliance/queue.html", rows=rows, total=total, **_queue_context(q))

    @post("/bulk", status_code=200)
    async def bulk(
        self, request: Request[Any, Any, Any], data: Annotated[dict[str, str], Form], db: Db, principal: Caller
    ) -> Template:
        """Apply one action to every request the filter matches; the page lists each outcome."""
        q = view.parse_filter(data)
        action = data.get("action", "")
        if action not in view.BULK_ACTIONS:
            raise InvalidField(f"must be one of {', '.join(view.BULK_ACTIONS)}", field="action")
        results = await _bulk(db, principal, q, action, view.clean_reason(data.get("reason")))
        rows, total = await view.queue(db, q)
        context = _queue_context(q)
        return page(request, "compliance/queue.html", rows=rows, total=total, results=results, **context)

    @post("/search", status_code=200)
    async def search(
        self, request: Request[Any, Any, Any], data: Annotated[dict[str, str], Form], db: Db, principal: Caller
    ) -> Template:
        """The requests about the person an email or phone belongs to (posted: no personal data in
        the URL); audited."""
        rows = await view.search(db, principal, data.get("query", ""))
        context = _queue_context(view.QueueFilter())
        return page(request, "compliance/queue.html", rows=rows, total=len(rows), searched=True, **context)

    @post("/intake", status_code=303)
    async def intake(self, data: Annotated[dict[str, str], Form], db: Db, principal: Caller) -> Redirect:
        """A request that arrived by mail or phone, entered by staff (verified by code unless a
        note says how identity was checked)."""
        note = view.clean_reason(data.get("verification_note"))
        checked = check_intake(
            Intake(
                data.get("kind", ""),
                data.get("regulation", ""),
                _identifiers(data),
                data.get("jurisdiction") or None,
                data.get("scope") or None,
                data.get("field") or None,
                None,
                data.get("skip_verification") != "1",
                note,
            ),
            staff=True,
        )
        got = await receive(db, VaultContext.from_settings(), _policy(), principal, checked)
        return _to(got.request.id)

    @get("/{request_id:str}")
    async def detail(
        self, request: Request[Any, Any, Any], request_id: FromPath[str], db: Db, principal: Caller
    ) -> Template:
        """A request's page (the view is audited)."""
        return page(request, "compliance/request.html", v=await view.request_view(db, principal, request_id))

    @post("/{request_id:str}/status", status_code=303)
    async def set_status(
        self, request_id: FromPath[str], data: Annotated[dict[str, str], Form], db: Db, principal: Caller
    ) -> Redirect:
        """In progress, completed, denied (with a reason), wait for the requester, or resume."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        action, reason = data.get("status", ""), view.clean_reason(data.get("reason"))
        if action == "wait":
            await lifecycle.wait(db, principal, r, reason)
        elif action == "resume":
            await lifecycle.resume(db, principal, r, reason)
        else:
            await lifecycle.set_status(db, principal, r, action, reason)
        return _to(r.id)

    @post("/{request_id:str}/extend", status_code=303)
    async def extend(
        self, request_id: FromPath[str], data: Annotated[dict[str, str], Form], db: Db, principal: Caller
    ) -> Redirect:
        """The regulation's one extension, with a reason (the notice goes out with it)."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await lifecycle.extend(db, principal, _policy(), r, view.clean_reason(data.get("reason"), required=True) or "")
        return _to(r.id)

    @post("/{request_id:str}/codes", status_code=303)
    async def resend(self, request_id: FromPath[str], db: Db, principal: Caller) -> Redirect:
        """New codes for the requester (the old ones stop working)."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await resend_codes(db, VaultContext.from_settings(), _policy(), principal, r)
        return _to(r.id)

    @post("/{request_id:str}/outbox", status_code=200)
    async def outbox(
        self, request: Request[Any, Any, Any], request_id: FromPath[str], db: Db, principal: Caller
    ) -> Template:
        """The demo channel's messages to the requester (codes, package links, notices), shown
        once: reading delivers them. Audited as the API's outbox read."""
        r = await lifecycle.load_request(db, request_id)
        messages = await read_outbox(db, await request_key(db, r), r.id)
        await lifecycle.audit(db, principal, "dsr.outbox_read", r, [r.subject_id], {"messages": len(messages)})
        v = await view.request_view(db, principal, request_id)
        return page(request, "compliance/request.html", v=v, outbox=view.outbox_view(messages))

    @post("/{request_id:str}/verify", status_code=303)
    async def verify(self, request_id: FromPath[str], data: Annotated[dict[str, str], Form], db: Db) -> Redirect:
        """The code the requester read out (by phone or mail), entered for them."""
        r = await verify_code(db, VaultContext.from_settings(), _policy(), request_id, data.get("code", "").strip())
        return _to(r.id)

    @post("/{request_id:str}/run", status_code=303)
    async def run(self, request_id: FromPath[str], db: Db, principal: Caller) -> Redirect:
        """Carry the request out, one step per store; completes it when every step is done."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await fulfil.run(db, principal, r)
        return _to(r.id)

    @post("/{request_id:str}/steps/{store:str}/retry", status_code=303)
    async def retry(self, request_id: FromPath[str], store: FromPath[str], db: Db, principal: Caller) -> Redirect:
        """Run one store's failed step again on its own."""
        r = await lifecycle.load_request(db, request_id, lock=True)
        await fulfil.retry(db, principal, r, store)
        return _to(r.id)

    @post("/{request_id:str}/reveal", status_code=200)
    async def reveal(
        self,
        request: Request[Any, Any, Any],
        request_id: FromPath[str],
        data: Annotated[dict[str, str], Form],
        db: Db,
        principal: Caller,
    ) -> Template:
        """One masked identifier in clear, for a reason that goes to the ledger."""
        name = data.get("field", "")
        value = await view.reveal(db, principal, request_id, name, data.get("reason", ""))
        return page(request, "compliance/_revealed.html", name=name, value=value)

    @get("/{request_id:str}/certificate")
    async def certificate(self, request_id: FromPath[str], db: Db) -> Response[bytes]:
        """The signed completion certificate, as a JSON file (once the request is completed)."""
        r = await lifecycle.load_request(db, request_id)
        found = await certificate_of(db, request_id) if r.status == "completed" else None
        if found is None:
            raise NotFound("this request has no certificate (yet)", field="request_id")
        body = json.dumps(found, indent=2, sort_keys=True).encode()
        disposition = f'attachment; filename="certificate-{request_id}.json"'
        return Response(body, media_type="application/json", headers={"content-disposition": disposition})

    @post("/{request_id:str}/package", status_code=200)
    async def package(
        self, request_id: FromPath[str], data: Annotated[dict[str, str], Form], db: Db, principal: Caller
    ) -> File:
        """The access package its link leads to (the token is posted, never in a URL); audited."""
        r = await lifecycle.load_request(db, request_id)
        path = await open_package(db, data.get("token", ""))
        if not path.name.startswith(f"{r.id}-"):
            raise NotFound("no package of this request for this link", field="token")
        await lifecycle.audit(db, principal, "dsr.package_downloaded", r, [r.subject_id], {})
        return File(path, filename=f"access-package-{r.id}.zip", media_type="application/zip")
