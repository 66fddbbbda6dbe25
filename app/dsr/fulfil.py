"""Carrying a verified request out, one step per store, on the profiles verified for it.

- erasure: ``erase_subject`` per verified person (every holder's ``forget`` in its own
  savepoint, keys shredded, identifiers suppressed), then the residue scan; a store that
  failed keeps a ``failed`` step with the error's class and is retried alone through
  ``erase_in_store``;
- access and portability: the access package, its download token sent to the requester
  through the channel (never shown to staff);
- rectification, restriction, objection, opt-out, consent withdrawal: the corrections.

When every step is done the request is completed, a signed certificate issued and the
requester told. Profiles not verified (pending, insufficient, unreachable) are never acted on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.records import Choice, record_choices
from app.dsr import lifecycle
from app.dsr.access_package import build_access_package
from app.dsr.certificate import erasure_certificate, issue_certificate
from app.dsr.channel import channel
from app.dsr.corrections import object_to_processing, rectify, restrict
from app.dsr.erasure import erase_in_store, erase_subject, erasure_plan, identifier_values
from app.dsr.intake import verified_profiles
from app.dsr.models import DsrRequest
from app.dsr.residue import residue_scan
from app.dsr.sealing import opened, request_key
from app.dsr.steps import all_done, retry_step, save_step, steps_of
from app.errors import Conflict, InvalidField
from app.inventory import Person
from app.profiles.service import VaultContext, person_of, resolve_many
from app.vault.service import subject_keys

RUNNABLE = ("in_progress", "extended")
KEPT_BASES = frozenset({"contract", "legal_obligation"})


def _store(name: str, n: int) -> str:
    """The step's name: the store, numbered when the request covers several people."""
    return name if n == 0 else f"{name}#{n + 1}"


async def _roots(session: AsyncSession, request: DsrRequest) -> list[str]:
    """The surviving profiles of the verified ones (a merge since verification is followed)."""
    found = await resolve_many(session, await verified_profiles(session, request.id))
    return sorted(set(found.values()))


async def plan(session: AsyncSession, request: DsrRequest) -> list[dict[str, Any]]:
    """The dry run of an erasure: per verified person, the rows each store would remove."""
    return [{"stores": await erasure_plan(session, root)} for root in await _roots(session, request)]


async def run(session: AsyncSession, principal: Principal, request: DsrRequest) -> dict[str, Any]:
    """Carry the request out; returns the steps and, when all are done, the certificate."""
    if request.status not in RUNNABLE:
        raise Conflict(f"a request that is {request.status} is not being worked on", field="status")
    if await steps_of(session, request.id):
        raise Conflict("this request already ran: retry its failed steps", field="status")
    roots = await _roots(session, request)
    if request.kind == "erasure":
        done = await _erase(session, principal, request, roots)
    else:
        done = await _apply(session, principal, request, roots)
    return await finish(session, principal, request, done)


async def _erase(session: AsyncSession, principal: Principal, request: DsrRequest, roots: list[str]) -> dict[str, Any]:
    ring = VaultContext.from_settings().keys.master
    reports, scans = [], []
    for n, root in enumerate(roots):
        person = await person_of(session, root)
        idents = await identifier_values(session, await subject_keys(session, ring, list(person.origins)), person)
        report = await erase_subject(session, principal, root, request.id)  # commits
        for store in sorted({*report.found, *report.failed}):  # a failed store found nothing yet
            if store in report.failed:
                context = {"_root": root, "_origins": list(person.origins), "_domain": store}
                await save_step(
                    session, request.id, _store(store, n), "failed", error_class=report.failed[store], counts=context
                )
            else:
                await save_step(
                    session, request.id, _store(store, n), "done", counts={"removed": report.removed.get(store, 0)}
                )
        scan = await residue_scan(session, idents, person.origins)
        reports.append(report)
        scans.append(scan)
    await session.refresh(request)
    if len(reports) == 1 and await all_done(session, request.id):  # signed only once every store is erased
        return {"certificate": await erasure_certificate(session, reports[0], scans[0])}
    return {"people": [r.to_json() for r in reports], "residue_clean": all(scan.clean for scan in scans)}


ACTIONS: dict[str, str] = {
    "access": "access_package",
    "portability": "access_package",
    "rectification": "profiles",
    "restriction": "consent",
    "objection": "consent",
    "opt_out": "consent",
    "consent_withdrawal": "consent",
}


async def _apply(session: AsyncSession, principal: Principal, request: DsrRequest, roots: list[str]) -> dict[str, Any]:
    """One step per person for the other kinds; a failure is kept on its step, not raised."""
    given = await opened(session, request) or {}
    results = []
    for n, root in enumerate(roots):
        store = _store(ACTIONS[request.kind], n)
        context = {"_root": root}
        try:
            async with session.begin_nested():
                result = await act(session, principal, request, given, context)
        except InvalidField:
            raise
        except Exception as exc:  # kept on the step; retried alone
            await save_step(session, request.id, store, "failed", error_class=type(exc).__name__, counts=context)
            continue
        await save_step(session, request.id, store, "done", counts=result)
        results.append(result)
    return {"people": len(roots), "results": results}


async def act(
    session: AsyncSession, principal: Principal, request: DsrRequest, given: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    """The request's action for one person (``context["_root"]``); returns what it did, no values."""
    root, rid, details = context["_root"], request.id, given.get("details") or {}
    if request.kind in ("access", "portability"):
        package = await build_access_package(session, principal, root, rid)
        key = await request_key(session, request)
        if key is not None:
            message = {"token": package.token, "expires_at": package.expires_at.isoformat(), "sha256": package.sha256}
            await channel().deliver(session, key, "access_package", message)
        return {"package_bytes": package.size, "sha256": package.sha256}
    if request.kind == "rectification":
        if "value" not in details:
            raise InvalidField("a rectification needs the correct value in details.value", field="details.value")
        return await rectify(
            session, principal, root, rid, request.field or "", details["value"], details.get("old_value")
        )
    if request.kind == "restriction":
        return await restrict(session, principal, root, rid)
    if request.kind == "objection":
        return await object_to_processing(session, principal, root, rid, profiling_only=request.scope == "profiling")
    return await _choices(session, request, root, details)


async def _choices(session: AsyncSession, request: DsrRequest, root: str, details: dict[str, Any]) -> dict[str, Any]:
    """Opt-out of sale/sharing: a denial for every marketing purpose. Consent withdrawal: the
    purposes named (default: every purpose that rests on consent) withdrawn."""
    purposes = VaultContext.from_settings().policies.purposes
    if request.kind == "opt_out":
        chosen, state = sorted(p for p in purposes if p.startswith("marketing.")), "denied"
    else:
        named = details.get("purposes")
        chosen = (
            sorted(named)
            if isinstance(named, list)
            else sorted(p for p, s in purposes.items() if s.legal_basis == "consent")
        )
        state = "withdrawn"
    unknown = [p for p in chosen if p not in purposes]
    if unknown:
        raise InvalidField("names a purpose not in policies/purposes.yaml", field="details.purposes")
    source, now = f"dsr:{request.id}"[:128], datetime.now(UTC)
    choices = [Choice(root, p, state, "api", source, now, client_id=f"{source}:{p}"[:128]) for p in chosen]
    await record_choices(session, choices)
    return {"state": state, "purposes": chosen}


async def retry(session: AsyncSession, principal: Principal, request: DsrRequest, store: str) -> dict[str, Any]:
    """Run one failed step again; completes the request when it was the last."""
    if request.status not in RUNNABLE:
        raise Conflict(f"a request that is {request.status} is not being worked on", field="status")
    given = await opened(session, request) or {}

    async def again(s: AsyncSession, context: dict[str, Any]) -> dict[str, Any]:
        if request.kind == "erasure":
            person = Person(context["_root"], tuple(context["_origins"]))
            return {"removed": await erase_in_store(s, person, context["_domain"])}
        return await act(s, principal, request, given, context)

    step = await retry_step(session, request.id, store, again)
    await lifecycle.audit(
        session, principal, "dsr.step_retried", request, [None], {"store": store, "step": step.status}
    )
    return await finish(session, principal, request, {"retried": store})


async def finish(
    session: AsyncSession, principal: Principal, request: DsrRequest, done: dict[str, Any]
) -> dict[str, Any]:
    """Complete the request when every step is done (certificate, notice); else report the steps."""
    if not await all_done(session, request.id):
        await lifecycle.audit(session, principal, "dsr.run", request, [None], {"complete": False})
        return {"complete": False, **done}
    certificate = done.get("certificate")
    if certificate is None:
        steps = {s.store: s.status for s in await steps_of(session, request.id)}
        certificate = await issue_certificate(session, request.id, request.kind, {"steps": steps, **done})
    await lifecycle.move(session, principal, request, "completed", "every step done")
    key = await request_key(session, request)
    if key is not None:
        await channel().deliver(
            session, key, "completion", {"kind": request.kind, "closed_at": datetime.now(UTC).isoformat()}
        )
    await lifecycle.audit(session, principal, "dsr.run", request, [None], {"complete": True})
    return {"complete": True, "certificate": certificate, **{k: v for k, v in done.items() if k != "certificate"}}
