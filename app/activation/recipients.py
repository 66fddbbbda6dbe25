"""Where a person's data went, with Merkle proofs, and telling destinations to erase it.

For the access request: ``recipients_of`` lists every run that sent the person, with the
leaf (and the salt to recompute it), the run's Merkle root, the ledger entry and an RFC 9162
inclusion proof. For the erasure: ``notify_erasure`` sends each webhook destination that
received the person a signed deletion notice, removes the person's lines from written files,
and records every answer (``activation_erasure_notice`` names no one; the request does).
Call it before the inventory's ``forget`` removes the recipient rows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.activation import delivery, egress
from app.activation.destinations import dumps, get_destination
from app.activation.models import ActivationFile, ActivationLeaves, ActivationRecipient, ActivationRun, ErasureNotice
from app.db import table_of
from app.inventory import Person, person_clause
from app.ledger.service import record
from audit.merkle import inclusion_proof

NOTICE_PURPOSE = "legal.compliance.dsr"


async def _rows(session: AsyncSession, person: Person) -> list[Any]:
    r = table_of(ActivationRecipient)
    q = select(r).where(person_clause(r, person)).order_by(r.c.sent_at, r.c.run_id)
    return list((await session.execute(q)).all())


def _leaves(blob: bytes) -> list[bytes]:
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]


async def recipients_of(session: AsyncSession, person: Person) -> list[dict[str, Any]]:
    """Every send of the person: run, destination, when, which fields (names), status and,
    for people sent, the proof that they are among the run's recipients (leaf = RFC 9162
    leaf hash of ``{"person","run","salt"}`` as sorted compact JSON)."""
    out = []
    for row in await _rows(session, person):
        run = await session.get(ActivationRun, row.run_id)
        dest = await get_destination(session, row.destination_id, retired=True)
        item: dict[str, Any] = {
            "run_id": row.run_id,
            "destination_id": dest.id,
            "destination": dest.name,
            "kind": dest.kind,
            "purpose": dest.purpose,
            "cross_border": dest.cross_border,
            "sent_at": row.sent_at.isoformat(),
            "status": row.status,
            "fields": row.fields,
            "ledger_seq": run.ledger_seq if run else None,
        }
        stored = await session.get(ActivationLeaves, row.run_id)
        if row.status == "sent" and stored is not None and row.leaf_index >= 0:
            leaves = _leaves(stored.leaves)
            item["proof"] = {
                "leaf": {"person": row.origin_id, "run": row.run_id, "salt": row.salt},
                "leaf_hash": leaves[row.leaf_index].hex(),
                "leaf_index": row.leaf_index,
                "tree_size": len(leaves),
                "root": run.merkle_root if run else None,
                "path": [h.hex() for h in inclusion_proof(leaves, row.leaf_index)],
            }
        out.append(item)
    return out


async def notify_erasure(
    session: AsyncSession, principal: Principal, person: Person, request_id: str
) -> list[dict[str, Any]]:
    """Tell every destination that received the person to erase them, and record each
    answer: webhooks and SMS gateways get a deletion notice (webhooks signed, same retries),
    files lose the person's lines, a WeCom chat cannot take a message back (``unsupported``)."""
    by_dest: dict[str, list[Any]] = defaultdict(list)
    for row in await _rows(session, person):
        if row.status == "sent":
            by_dest[row.destination_id].append(row)
    out = []
    for dest_id, rows in sorted(by_dest.items()):
        dest = await get_destination(session, dest_id, retired=True)
        if dest.kind in ("file", "ad_audience"):
            outcome, status, detail = await _erase_lines(session, rows)
        elif dest.kind == "wecom":
            outcome, status, detail = "unsupported", None, "a group-bot message cannot be recalled"
        elif dest.deleted_at is not None or dest.secret is None:
            outcome, status, detail = "failed", None, "the destination was retired"
        else:
            outcome, status, detail = await _send_notice(dest, rows, request_id)
        notice = ErasureNotice(
            id=str(uuid.uuid4()),
            request_id=request_id[:64],
            destination_id=dest.id,
            runs=len({r.run_id for r in rows}),
            outcome=outcome,
            status_code=status,
            detail=detail[:300],
            sent_at=datetime.now(UTC),
        )
        session.add(notice)
        out.append({k: getattr(notice, k) for k in ("destination_id", "runs", "outcome", "status_code", "detail")})
    await record(
        session,
        principal,
        "activation.erasure_notice",
        subject_id=person.root,
        purpose=NOTICE_PURPOSE,
        legal_basis="legal_obligation",
        details={"request_id": request_id[:64], "notices": [{**o} for o in out]},
    )
    return out


async def _send_notice(dest: Any, rows: list[Any], request_id: str) -> tuple[str, int | None, str]:
    from app.activation.destinations import secret_of
    from app.activation.service import person_ref

    body = dumps(
        {
            "type": "erasure.request",
            "request_id": request_id,
            "destination_id": dest.id,
            "person": person_ref(dest.id, rows[0].origin_id),
            "runs": sorted({r.run_id for r in rows}),
        }
    )
    async with egress.client(1) as client:
        result = await delivery.post(
            client, dest, body, delivery.message_id("erasure", request_id, dest.id), secret_of(dest)
        )
    if result.ok:
        return "acknowledged", result.status, "the destination accepted the deletion notice"
    return "failed", result.status, result.error or "no answer"


async def _erase_lines(session: AsyncSession, rows: list[Any]) -> tuple[str, int | None, str]:
    """Remove the person's lines from each file they are in; the lines after move up one."""
    r = table_of(ActivationRecipient)
    removed = 0
    for row in rows:
        if row.file_id is None or row.line is None:
            continue
        f = await session.get(ActivationFile, row.file_id)
        if f is None:
            continue
        n = delivery.drop_lines(Path(f.path), f.format, {row.line})
        removed += n
        f.erased_lines += n
        if n:
            await session.execute(update(r).where(r.c.file_id == f.id, r.c.line > row.line).values(line=r.c.line - 1))
    return "erased", None, f"{removed} line(s) removed from written files"
