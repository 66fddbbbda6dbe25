"""Signed completion certificates: what a request found and did, per store, signed with
the ledger's Ed25519 key and tied to a signed tree head of the ledger that records it.

For an erasure it states the counts per store, the keys shredded, the suppression entries
added, what was kept and why, the residue scan's result, and when leftover copies
(backups, freed database pages) become undecryptable: they are sealed under data keys
wrapped by master-key versions up to the one active now, and the certificate promises those
versions retired within ``CONSENTRY_MASTER_KEY_RETIRE_DAYS`` (the rotation schedule).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import table_of
from app.dsr.erasure import ErasureReport
from app.dsr.models import DsrCertificate
from app.dsr.residue import ResidueResult
from app.ledger.heads import make_tree_head
from app.settings import get_settings
from app.vault.keyring import key_material
from audit.chain import canonical_json
from audit.checkpoint import key_id

FORMAT = "consentry.dsr-certificate/1"


def undecryptable(now: datetime) -> dict[str, Any]:
    """Which master-key versions leftover copies depend on, and the date they are retired by."""
    s = get_settings()
    ring = key_material(s).master
    active, _ = ring.current()
    return {
        "master_versions": sorted(v for v in ring.keys if v <= active),
        "rotate_now": True,
        "by": (now + timedelta(days=s.master_key_retire_days)).date().isoformat(),
        "why": "backups and freed pages hold the person's data sealed under data keys that were wrapped "
        "by these master-key versions; once they are rotated out and retired, no copy can be opened",
    }


async def issue_certificate(
    session: AsyncSession,
    request_id: str,
    kind: str,
    done: dict[str, Any],
    residue: ResidueResult | None = None,
) -> dict[str, Any]:
    """Sign and store the certificate of a completed request (``done``: what was found and
    done, e.g. ``ErasureReport.to_json()``); returns ``{"body", "signature", "key_id"}``."""
    s = get_settings()
    key = key_material(s).signing_key
    now = datetime.now(UTC)
    head = await make_tree_head(session)
    body = {
        "format": FORMAT,
        "issuer": s.audit_origin,
        "request_id": request_id,
        "kind": kind,
        "issued_at": now.isoformat(),
        "done": done,
        "residue_scan": residue.to_json() if residue is not None else None,
        "ledger": {"size": head.size, "root_hash": head.root_hash, "tree_head_signature": head.signature},
    }
    if kind == "erasure":
        body["undecryptable"] = undecryptable(now)
    text = canonical_json(body)
    signature = base64.b64encode(key.sign(text.encode())).decode()
    kid = key_id(key.public_key())
    t = table_of(DsrCertificate)
    await session.execute(t.delete().where(t.c.request_id == request_id))
    await session.execute(
        t.insert().values(request_id=request_id, issued_at=now, body=text, key_id=kid, signature=signature)
    )
    return {"body": body, "signature": signature, "key_id": kid}


async def erasure_certificate(
    session: AsyncSession, report: ErasureReport, residue: ResidueResult | None
) -> dict[str, Any]:
    """The certificate of an erasure."""
    return await issue_certificate(session, report.request_id, "erasure", report.to_json(), residue)


async def certificate_of(session: AsyncSession, request_id: str) -> dict[str, Any] | None:
    """A stored certificate as issued (body as signed, signature, key id), or None."""
    t = table_of(DsrCertificate)
    row = (await session.execute(select(t).where(t.c.request_id == request_id))).first()
    if row is None:
        return None
    return {"body": row.body, "signature": row.signature, "key_id": row.key_id}


def verify_certificate(body: str, signature: str, public_key: Ed25519PublicKey) -> bool:
    """Does ``signature`` sign this certificate text under the ledger's public key?"""
    try:
        public_key.verify(base64.b64decode(signature, validate=True), body.encode())
    except (InvalidSignature, ValueError):
        return False
    return True
