"""Rectification, restriction and objection: requests that change what may be done with a
person's data rather than remove it.

- ``rectify`` corrects one value: the inaccurate value (given, or the one shown) is removed
  wherever the person holds it, the identifier it was replaced (the person's other
  identifiers of the kind stay), and the new value is *pinned* (``precedence.PINNED``): no
  later observation, a CRM import included, replaces it; only another rectification or a
  staff correction does.
- ``restrict`` (GDPR Art. 18) sets the ``restricted`` flag: every decision for a purpose
  that needs a legal ground denies use ("restricted"); storage goes on.
- ``object_to_processing`` (Art. 21) refuses profiling (``profiling_refused``) and, unless
  only profiling is objected to, records a denial for every purpose that is not needed to
  provide the service or meet a legal obligation, so decisions deny them ("denied").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.records import Choice, record_choices, set_flags
from app.errors import InvalidField
from app.identity.service import make_ident, set_identifier
from app.ledger.service import record
from app.profiles.precedence import PINNED, Stamp
from app.profiles.service import (
    Observation,
    VaultContext,
    apply_observations,
    drop_field_value,
    normalize_trait,
    resolve_merged,
    shown_values,
)
from app.vault.service import subject_key

PURPOSE = "legal.compliance.dsr"
LEGAL_BASIS = "legal_obligation"
KEPT_BASES = frozenset({"contract", "legal_obligation"})
"""Purposes on these legal bases stay allowed after an objection (Art. 21 covers legitimate
interest and direct marketing; consent is withdrawn by a consent-withdrawal request)."""


async def rectify(
    session: AsyncSession,
    principal: Principal,
    root_id: str,
    request_id: str,
    name: str,
    value: Any,
    old_value: Any = None,
) -> dict[str, Any]:
    """Correct one trait of the person to ``value`` (replacing ``old_value``, or the value
    shown) and pin it. Returns what was done (no values)."""
    ctx = VaultContext.from_settings()
    root = await resolve_merged(session, root_id)
    rule = ctx.policies.trait(name)
    if value is None:
        raise InvalidField("a rectification gives the correct value (erasure removes one)", field="value")
    source = f"dsr:{request_id}"[:128]
    stamp = Stamp(source, PINNED, datetime.now(UTC))
    done: dict[str, Any] = {"field": name, "dropped": 0, "identifier_replaced": False}
    if rule is None:  # a plain trait: pinned in place
        await apply_observations(session, {}, [Observation(root, name, None, value, stamp)], {})
    else:
        name = rule.name
        new = normalize_trait(rule, value, ctx.region, "value")
        old = normalize_trait(rule, old_value, ctx.region, "old_value") if old_value is not None else None
        if old is None:
            old = (await shown_values(session, ctx, root, [name])).get(name)
        key = await subject_key(session, ctx.keys.master, root)
        if rule.index:
            replaced = make_ident(ctx, rule.index, old) if old is not None else None
            await set_identifier(session, key, root, rule.index, make_ident(ctx, rule.index, new), source, replaced)
            done["identifier_replaced"] = replaced is not None
        if old is not None and old != new:
            done["dropped"] = await drop_field_value(session, ctx, root, name, old)
        observation = Observation(root, name, rule.category, new, stamp)
        await apply_observations(session, {root: key}, [observation], ctx.policies.identity.trait_authority)
    await _record(session, principal, "dsr.rectification", root, request_id, done)
    return done


async def restrict(
    session: AsyncSession, principal: Principal, root_id: str, request_id: str, on: bool = True
) -> dict[str, Any]:
    """Restrict processing of the person (or lift the restriction: ``on`` False)."""
    root = await resolve_merged(session, root_id)
    await set_flags(session, root, {"restricted": on}, f"dsr:{request_id}"[:128])
    done = {"flags": {"restricted": on}}
    await _record(session, principal, "dsr.restriction", root, request_id, done)
    return done


async def object_to_processing(
    session: AsyncSession, principal: Principal, root_id: str, request_id: str, profiling_only: bool = False
) -> dict[str, Any]:
    """The person objects: profiling refused and, unless ``profiling_only``, a denial
    recorded for every purpose not needed for the service or a legal obligation."""
    ctx = VaultContext.from_settings()
    root = await resolve_merged(session, root_id)
    source = f"dsr:{request_id}"[:128]
    await set_flags(session, root, {"profiling_refused": True}, source)
    denied: list[str] = []
    if not profiling_only:
        now = datetime.now(UTC)
        denied = sorted(p for p, spec in ctx.policies.purposes.items() if spec.legal_basis not in KEPT_BASES)
        choices = [Choice(root, p, "denied", "api", source, now, client_id=f"{source}:{p}"[:128]) for p in denied]
        await record_choices(session, choices)
    done = {"flags": {"profiling_refused": True}, "denied": denied}
    await _record(session, principal, "dsr.objection", root, request_id, done)
    return done


async def _record(
    session: AsyncSession, principal: Principal, action: str, root: str, request_id: str, done: dict[str, Any]
) -> None:
    await record(
        session,
        principal,
        action,
        subject_id=root,
        purpose=PURPOSE,
        legal_basis=LEGAL_BASIS,
        details={"request_id": request_id, **done},
    )
