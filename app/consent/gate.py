"""The single gate every disclosure of personal data passes.

Segment counts, exports, webhooks, triggers, API reads and writes of personal data all
call ``authorize`` before they touch a person's data. Today it applies purposes and roles from
``policies/purposes.yaml``; per-person consent plugs in here, so no caller changes.
Allowed and denied decisions both go to the ledger; a denial is recorded in its own
transaction (it survives the failed request) and raised as ``PolicyDenied`` (an unknown
purpose as a 422, recorded by hash: the ledger keeps no text a client chose).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.consent.policy import Reveal, load_policies
from app.errors import InvalidField, PolicyDenied
from app.ledger.service import record_detached, record_many
from app.settings import get_settings


@dataclass(frozen=True)
class Decision:
    allowed: bool
    purpose: str
    legal_basis: str | None
    reveal: Reveal
    reason: str


def decide(principal: Principal, purpose: str | None) -> Decision:
    """The policy decision alone (no ledger): may this role use data for this purpose?"""
    policies = load_policies(get_settings().policy_dir)
    pid = purpose or policies.role_defaults.get(principal.role, "")
    spec = policies.purposes.get(pid)
    if spec is None:
        return Decision(False, pid or "unspecified", None, "none", "unknown purpose")
    if principal.role not in spec.roles:
        return Decision(False, pid, spec.legal_basis, "none", f"role '{principal.role}' may not use this purpose")
    return Decision(True, pid, spec.legal_basis, spec.reveal, "allowed by purpose policy")


async def authorize(
    session: AsyncSession,
    principal: Principal,
    action: str,
    subject_ids: Sequence[str],
    purpose: str | None = None,
    details: dict[str, Any] | None = None,
) -> Decision:
    """Decide, record the decision for each subject, and raise ``PolicyDenied`` on a denial.

    ``details`` (no personal data: field names, counts) is added to the ledger entries.
    """
    decision = decide(principal, purpose)
    details = {
        **(details or {}),
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason,
        "reveal": decision.reveal,
    }
    if not decision.allowed:
        await _record_denial(principal, f"{action}.denied", subject_ids, decision, details)
        if decision.reason == "unknown purpose":
            raise InvalidField("is not a purpose in policies/purposes.yaml", field="purpose")
        raise PolicyDenied(f"this purpose is denied: {decision.reason}", field="purpose")
    if subject_ids:
        await record_many(
            session,
            principal,
            action,
            list(subject_ids),
            purpose=decision.purpose,
            legal_basis=decision.legal_basis,
            details=details,
        )
    return decision


def ledger_purpose(decision: Decision) -> str:
    """The purpose as the ledger may hold it: an unknown one (text a client chose) by hash."""
    if decision.reason != "unknown purpose":
        return decision.purpose
    return "unknown:" + hashlib.sha256(decision.purpose.encode()).hexdigest()[:16]


async def _record_denial(
    principal: Principal, action: str, subject_ids: Sequence[str], decision: Decision, details: dict[str, Any]
) -> None:
    """Record a refusal in its own transaction: it survives the failed request, and the
    caller's transaction is never committed for it."""
    items = [(sid, details) for sid in subject_ids] if subject_ids else [(None, details)]
    await record_detached(principal, action, items, purpose=ledger_purpose(decision), legal_basis=decision.legal_basis)
