"""Delivering people to a destination: signed webhook batches with retries and backoff, WeCom
group-bot messages, SMS-gateway requests, CSV/NDJSON files and hashed ad-audience files.

Every request of a batch carries the same ``webhook-id`` (derived from the run and the
batch), and every person a ``delivery_id`` derived from the run and the person, so a receiver
that saw a batch before (a retry after a lost answer) can drop it: each person arrives once.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from app.activation import audiences, egress
from app.activation.destinations import dumps, export_dir, secret_of
from app.activation.models import Destination
from app.db import private_path

WECOM_LIMIT = {"markdown": 4096, "text": 2048}
"""Bytes of content a WeCom group-bot message may carry, by msgtype."""
CONCURRENT_BATCHES = 4


@dataclass(frozen=True)
class Outbound:
    """One person as a destination receives them."""

    profile_id: str
    ref: str
    """The person's pseudonym at this destination (stable across runs, keyed)."""
    delivery_id: str
    """Idempotency key of this person in this run."""
    fields: dict[str, Any]
    salt: str = ""
    """The salt of the person's leaf in the run's Merkle tree, when drawn ahead (else at recording)."""
    leaf: bytes = b""


@dataclass
class Delivered:
    sent: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    batch_of: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    """Files written: id, path, format, rows."""
    line_of: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Person → (file id, line)."""
    dead: list[dict[str, Any]] = field(default_factory=list)
    """Batches that failed every attempt: batch, people, attempts, last_status, last_error."""


def message_id(*parts: str) -> str:
    return "msg_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Attempted:
    ok: bool
    attempts: int
    status: int | None
    error: str


async def post(client: httpx.AsyncClient, dest: Destination, body: str, msg_id: str, secret: str | None) -> Attempted:
    """POST ``body`` until it is accepted or the destination's attempts run out, waiting
    ``backoff_s``·2ⁿ between attempts. Webhooks are signed per Standard Webhooks; a WeCom
    answer counts only with ``errcode`` 0. A 4xx other than 408/425/429 is not retried."""
    cfg = dest.config
    signer = Webhook(secret) if dest.kind == "webhook" and secret else None
    status, error = None, ""
    attempts = int(cfg.get("max_attempts", 5))
    for n in range(1, attempts + 1):
        headers = {"content-type": "application/json", "webhook-id": msg_id}
        if signer is not None:
            now = datetime.now(UTC)
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = signer.sign(msg_id, now, body)
        elif dest.kind == "sms" and secret:
            headers["authorization"] = f"Bearer {secret}"
        url = secret if dest.kind == "wecom" and secret else str(cfg["url"])
        try:
            r = await client.post(url, content=body.encode(), headers=headers, timeout=float(cfg.get("timeout_s", 10)))
            status = r.status_code
            if 200 <= status < 300 and (dest.kind != "wecom" or _wecom_ok(r)):
                return Attempted(True, n, status, "")
            error = f"HTTP {status}" if dest.kind != "wecom" or status >= 300 else "WeCom errcode not 0"
            if 400 <= status < 500 and status not in (408, 425, 429):
                return Attempted(False, n, status, error)
        except egress.EgressRefused:
            return Attempted(False, n, None, "refused: not a public internet address")
        except httpx.HTTPError as exc:
            status, error = None, type(exc).__name__
        if n < attempts:
            await asyncio.sleep(min(60.0, float(cfg.get("backoff_s", 1.0)) * 2 ** (n - 1)))
    return Attempted(False, attempts, status, error)


def _wecom_ok(r: httpx.Response) -> bool:
    try:
        return bool(r.json().get("errcode") == 0)
    except ValueError:
        return False


def _wecom_line(p: Outbound) -> str:
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(p.fields.items()))
    return f"- {p.ref[:12]} {shown}".rstrip()


def wecom_batches(people: Sequence[Outbound], msgtype: str, size: int) -> list[list[Outbound]]:
    """People grouped so each message stays within WeCom's size limit and the batch size."""
    limit = WECOM_LIMIT[msgtype] - 64
    out: list[list[Outbound]] = []
    current: list[Outbound] = []
    used = 0
    for p in people:
        n = len(_wecom_line(p).encode()) + 1
        if current and (used + n > limit or len(current) >= size):
            out.append(current)
            current, used = [], 0
        current.append(p)
        used += n
    return [*out, current] if current else out


def body_of(dest: Destination, run_id: str, n: int, batch: Sequence[Outbound]) -> str:
    if dest.kind == "wecom":
        kind = str(dest.config.get("msgtype", "markdown"))
        content = "\n".join(_wecom_line(p) for p in batch)
        if kind == "markdown":
            content = f"**Consentry activation** ({len(batch)})\n" + content
        return dumps({"msgtype": kind, kind: {"content": content}})
    if dest.kind == "sms":
        text = str(dest.config["text"])
        return dumps({"messages": [{"id": p.delivery_id, "to": p.fields.get("phone"), "text": text} for p in batch]})
    people = [{"id": p.ref, "delivery_id": p.delivery_id, "fields": p.fields} for p in batch]
    return dumps(
        {
            "type": "activation.batch",
            "run_id": run_id,
            "batch": n,
            "destination_id": dest.id,
            "purpose": dest.purpose,
            "people": people,
        }
    )


def batches_of(dest: Destination, people: Sequence[Outbound], size: int) -> list[list[Outbound]]:
    """People in the destination's batches (WeCom: also within its message size)."""
    if dest.kind == "wecom":
        return wecom_batches(people, str(dest.config.get("msgtype", "markdown")), size)
    return [list(people[i : i + size]) for i in range(0, len(people), size)]


def dead_letter(n: int, people: int, result: Attempted) -> dict[str, Any]:
    """A dead letter's fields for a batch that failed every attempt."""
    return {
        "batch": n,
        "people": people,
        "attempts": result.attempts,
        "last_status": result.status,
        "last_error": result.error,
    }


Progress = Callable[[int, int], Awaitable[None]]
"""Told (people sent, people failed) after each batch."""


async def send_batches(
    dest: Destination, run_id: str, people: Sequence[Outbound], progress: Progress | None = None
) -> Delivered:
    """Webhook, WeCom and SMS: batches in parallel (a few at a time), each retried on its own."""
    batches = batches_of(dest, people, int(dest.config.get("batch_size", 500)))
    secret = secret_of(dest)
    out = Delivered()
    gate = asyncio.Semaphore(CONCURRENT_BATCHES)
    async with egress.client(CONCURRENT_BATCHES) as client:

        async def one(n: int, batch: list[Outbound]) -> None:
            async with gate:
                result = await post(client, dest, body_of(dest, run_id, n, batch), message_id(run_id, str(n)), secret)
            ids = {p.profile_id for p in batch}
            (out.sent if result.ok else out.failed).update(ids)
            out.batch_of.update({pid: n for pid in ids})
            if progress is not None:
                await progress(len(out.sent), len(out.failed))
            if not result.ok:
                out.dead.append(dead_letter(n, len(batch), result))

        await asyncio.gather(*(one(n, b) for n, b in enumerate(batches)))
    return out


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600, its folder private)."""
    private_path(path.parent, directory=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_file(dest: Destination, run_id: str, people: Sequence[Outbound], region: str) -> Delivered:
    """One file per run in the destination's folder (0600), each person on one line after the
    header (CSV) or on its own line (NDJSON); ad audiences hold only the platform's hashes."""
    fmt = "csv" if dest.kind == "ad_audience" else str(dest.config.get("format", "csv"))
    buf = io.StringIO()
    if dest.kind == "ad_audience":
        platform = str(dest.config["platform"])
        columns = audiences.COLUMNS[platform]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for p in people:
            hashed = audiences.hashed_row(platform, p.fields, region)
            w.writerow([hashed.get("email", ""), hashed.get("phone", "")])
    elif fmt == "csv":
        names = sorted({k for p in people for k in p.fields})
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", *names])
        for p in people:
            w.writerow([p.ref, *[cell(p.fields.get(k)) for k in names]])
    else:
        for p in people:
            buf.write(dumps({"id": p.ref, **p.fields}) + "\n")
    file_id = str(uuid.uuid4())
    path = export_dir(dest) / f"{run_id}.{fmt}"
    write_private(path, buf.getvalue())
    out = Delivered(sent={p.profile_id for p in people})
    out.files.append({"id": file_id, "path": str(path), "format": fmt, "rows": len(people)})
    out.line_of = {p.profile_id: (file_id, n) for n, p in enumerate(people, start=1)}
    return out


def cell(value: Any) -> str:
    """A CSV cell on one line (a person is one line: erasure removes it by number)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("\r", " ").replace("\n", " ") if "\r" in text or "\n" in text else text


def drop_lines(path: Path, fmt: str, lines: set[int]) -> int:
    """Remove these person lines (1 = first after a CSV header) from a written file; returns
    how many were removed (0 when the file is gone)."""
    if not path.exists() or not lines:
        return 0
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    head, body = (text[:1], text[1:]) if fmt == "csv" else ([], text)
    kept = [line for n, line in enumerate(body, start=1) if n not in lines]
    write_private(path, "".join(head + kept))
    return len(body) - len(kept)
