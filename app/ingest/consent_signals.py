"""Consent signals that arrive with events become consent records through the consent
domain's own code: Segment's ``context.consent.categoryPreferences``, RudderStack's
``context.consentManagement`` (mapped to purposes by ``policies/consent_mapping.yaml``) and
the ``Sec-GPC: 1`` header (kept on the device or browser id the event came from)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.consent.records import Choice, record_choices
from app.consent.rules import Rules
from app.identity.service import Ident, Key, mark_gpc


def _segment(prefs: Any, mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Purpose → state from Segment's categoryPreferences (empty means every category refused)."""
    if not isinstance(prefs, dict):
        return {}
    if not prefs:
        return {p: "denied" for purposes in mapping.values() for p in purposes}
    out: dict[str, str] = {}
    for category, allowed in prefs.items():
        for p in mapping.get(str(category), ()):
            if allowed is True and out.get(p) != "denied":
                out[p] = "granted"
            elif allowed is False:
                out[p] = "denied"  # the more restrictive wins when categories map to one purpose
    return out


def _rudderstack(cm: Any, mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    if not isinstance(cm, dict):
        return {}
    out: dict[str, str] = {}
    for key, state in (("allowedConsentIds", "granted"), ("deniedConsentIds", "denied")):
        ids = cm.get(key)
        for cid in ids if isinstance(ids, list) else []:
            for p in mapping.get(str(cid), ()):
                if out.get(p) != "denied":
                    out[p] = state
    return out


def event_choices(
    rules: Rules, source: str, pid: str, message_id: str, context: Mapping[str, Any], at: datetime
) -> list[Choice]:
    """The consent choices one event's context carries, as records for the person it resolved to."""
    found = {
        **_rudderstack(context.get("consentManagement"), rules.mapping.get("rudderstack", {})),
    }
    consent = context.get("consent")
    if isinstance(consent, dict):
        for p, state in _segment(consent.get("categoryPreferences"), rules.mapping.get("segment", {})).items():
            found[p] = "denied" if "denied" in (state, found.get(p)) else state
    return [
        Choice(pid, p, state, "event", source, at, client_id=f"{message_id}#{p}"[:128])
        for p, state in sorted(found.items())
        if p in rules.purposes
    ]


async def record_event_signals(
    session: AsyncSession, choices: list[Choice], gpc_devices: list[Key], at: datetime
) -> None:
    """Store the choices and mark GPC on the devices it came from."""
    if choices:
        await record_choices(session, choices)
    await mark_gpc(session, gpc_devices, at)


def device_keys(idents: list[Ident]) -> list[Key]:
    """The device-level ids (anonymous id, device id) among an event's identifiers."""
    return [i.key for i in idents if i.kind in ("anonymous_id", "device_id")]
