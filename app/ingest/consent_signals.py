"""Consent signals that arrive with events become consent records through the consent
domain's own code: Segment's ``context.consent.categoryPreferences``, RudderStack's
``context.consentManagement``, an IAB TCF v2.2 string in ``context.tcf`` and a GPP string in
``context.gpp`` (decoded strictly; mapped to purposes by ``policies/consent_mapping.yaml``),
and the ``Sec-GPC: 1`` header (kept on the device or browser id the event came from)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.consent.records import Choice, record_choices
from app.consent.rules import Rules
from app.consent.signals import GppConsent, GppRejection, TcfConsent, TcfRejection, decode_gpp, decode_tcf
from app.identity.service import Ident, Key, mark_gpc


def _keep(found: dict[str, str], purpose: str, state: str) -> None:
    """Record a state for a purpose; when signals disagree the more restrictive wins."""
    found[purpose] = "denied" if "denied" in (state, found.get(purpose)) else state


def _segment(prefs: Any, mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Purpose → state from Segment's categoryPreferences (empty means every category refused)."""
    if not isinstance(prefs, dict):
        return {}
    if not prefs:
        return {p: "denied" for purposes in mapping.values() for p in purposes}
    out: dict[str, str] = {}
    for category, allowed in prefs.items():
        for p in mapping.get(str(category), ()):
            if isinstance(allowed, bool):
                _keep(out, p, "granted" if allowed else "denied")
    return out


def _rudderstack(cm: Any, mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    if not isinstance(cm, dict):
        return {}
    out: dict[str, str] = {}
    for key, state in (("allowedConsentIds", "granted"), ("deniedConsentIds", "denied")):
        ids = cm.get(key)
        for cid in ids if isinstance(ids, list) else []:
            for p in mapping.get(str(cid), ()):
                _keep(out, p, state)
    return out


def decode_consent_strings(context: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The TCF and GPP strings an event carries, decoded strictly once: (decoded by key,
    None), or ({}, (field, reason)) when one is truncated, garbled or below TCF 2.2 — the
    event is then refused."""
    decoded: dict[str, Any] = {}
    for key, decode in (("tcf", decode_tcf), ("gpp", decode_gpp)):
        value = context.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return {}, (f"context.{key}", "must be a string")
        result = decode(value)
        if isinstance(result, TcfRejection | GppRejection):
            return {}, (f"context.{key}", result.reason)
        decoded[key] = result
    return decoded, None


def _tcf(decoded: Any, mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    if not isinstance(decoded, TcfConsent):
        return {}
    out: dict[str, str] = {}
    for tcf_id, purposes in mapping.items():
        state = "granted" if int(tcf_id) in decoded.purposes_consent else "denied"
        for p in purposes:
            _keep(out, p, state)
    return out


def _gpp(decoded: Any, mapping: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    if not isinstance(decoded, GppConsent):
        return {}
    return {p: "denied" for flag, purposes in mapping.items() if getattr(decoded, flag, False) for p in purposes}


def event_choices(
    rules: Rules,
    source: str,
    pid: str,
    message_id: str,
    context: Mapping[str, Any],
    decoded: Mapping[str, Any],
    at: datetime,
) -> list[Choice]:
    """The consent choices one event's context carries (``decoded``: its TCF/GPP strings, from
    ``decode_consent_strings``), as records for the person it resolved to."""
    consent = context.get("consent")
    prefs = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    found: dict[str, str] = {}
    for signals in (
        _rudderstack(context.get("consentManagement"), rules.mapping.get("rudderstack", {})),
        _segment(prefs, rules.mapping.get("segment", {})),
        _tcf(decoded.get("tcf"), rules.mapping.get("tcf", {})),
        _gpp(decoded.get("gpp"), rules.mapping.get("gpp", {})),
    ):
        for p, state in signals.items():
            _keep(found, p, state)
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
