"""The access (and portability) package: everything held about a person, through the
inventory's ``export``, across every profile merged into them, plus the GDPR Art. 15
information generated from ``policies/``.

The package is a zip in ``CONSENTRY_DSR_EXPORT_DIR``: ``package.json`` (valid against the
published ``access_package.schema.json``, included), one CSV per list of records under
``csv/``, and ``manifest.json`` naming the profile ids it is about (so an erasure finds and
deletes it). It is reached by a random token (only its SHA-256 is stored) until it expires;
``purge_packages`` (a scheduled job) deletes expired files and rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import secrets
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import msgspec
import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.activation.recipients import recipients_of
from app.consent.policy import load_yaml
from app.consent.records import consent_receipt
from app.consent.rules import load_rules
from app.db import private_path, table_of, unit_of_work
from app.dsr.linking import annotate_events
from app.dsr.models import DsrPackage
from app.errors import NotFound
from app.imports.upload import private_dir
from app.inventory import Person, holders
from app.ledger.service import record
from app.profiles.service import VaultContext, person_of, resolve_merged
from app.settings import get_settings
from app.vault.keyring import key_material
from app.vault.service import subject_keys

log = structlog.get_logger("consentry.dsr")
FORMAT = "consentry.access-package/1"
SCHEMA_FILE = Path(__file__).with_name("access_package.schema.json")
PURPOSE = "legal.compliance.dsr"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OTHER = "[another person]"


@dataclass(frozen=True)
class AccessPackage:
    """A package written to the export folder and the one-time view of its download token."""

    request_id: str
    path: Path
    token: str
    expires_at: datetime
    sha256: str
    size: int


def export_dir() -> Path:
    return get_settings().dsr_export_dir


def _json(value: Any) -> Any:
    """JSON for what holders export besides plain values: times as ISO 8601, sealed bytes
    left out (``"[sealed]"``), sets as lists."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "[sealed]"
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


_ENCODER = msgspec.json.Encoder(enc_hook=_json, order="sorted")


def plain(value: Any) -> Any:
    """``value`` with what JSON has no type for as the package writes it: sealed bytes as
    ``"[sealed]"``, times as ISO 8601 (the encoder would write bytes as base64, times its way)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview | datetime | date):
        return _json(value)
    return value


def encode(value: Any) -> bytes:
    """UTF-8 JSON, keys sorted, of a value already ``plain``."""
    return _ENCODER.encode(value)


def dumps(value: Any) -> str:
    return encode(plain(value)).decode()


def _plain_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every store's export made ``plain``, except the events: JSON-native by construction
    (``open_event``), and the bulk of a package (10,000 of them are not walked again)."""
    out: dict[str, Any] = {}
    for domain, parts in data.items():
        if domain == "ingest" and isinstance(parts, dict):
            out[domain] = {k: v if k == "events" else plain(v) for k, v in parts.items()}
        else:
            out[domain] = plain(parts)
    return out


def redact_others(value: Any, mine: Collection[str]) -> Any:
    """Replace every id-looking string that is not one of the person's profile ids."""
    if isinstance(value, str):
        return _UUID.sub(lambda m: m.group(0) if m.group(0) in mine else OTHER, value)
    if isinstance(value, Mapping):
        return {k: redact_others(v, mine) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_others(v, mine) for v in value]
    return value


async def collect(session: AsyncSession, person: Person) -> dict[str, Any]:
    """Every holder's export for the person, decrypted with their keys, JSON-safe; the
    ledger's entries with other people's ids redacted; each event says which of their
    identifiers linked it and whether it came from a shared device."""
    keys = await subject_keys(session, key_material(get_settings()).master, list(person.origins))
    data: dict[str, Any] = {}
    for h in holders():
        exported = await h.export(session, keys, person)
        data[h.domain] = redact_others(exported, person.origins) if h.domain == "ledger" else exported
    events, identifiers = data.get("ingest", {}).get("events"), data.get("identity", {}).get("identifiers", [])
    if events:
        await annotate_events(session, VaultContext.from_settings(), person, events, identifiers)
    return data


async def _receipts(session: AsyncSession, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    s = get_settings()
    rules = load_rules(s.policy_dir)
    purposes = load_yaml(s.policy_dir / "purposes.yaml").get("purposes", {})
    descriptions = {k: v.get("description", k) for k, v in purposes.items()}
    out = []
    for r in data.get("consent", {}).get("consent_history", []):
        found = await consent_receipt(session, r["id"], rules, s.audit_origin, descriptions)
        if found is not None:
            out.append(found)
    return out


async def _activations(session: AsyncSession, person: Person) -> dict[str, Any]:
    """Every activation run that sent the person, with the run's Merkle proof that they were in it."""
    return {"available": True, "recipients": await recipients_of(session, person)}


def article15(data: Mapping[str, Any]) -> dict[str, Any]:
    """GDPR Art. 15(1) information from ``policies/``: purposes and legal bases, categories,
    recipients, retention, where the data came from, automated decisions, rights."""
    s = get_settings()
    purposes = load_yaml(s.policy_dir / "purposes.yaml").get("purposes", {})
    retention = load_yaml(s.policy_dir / "retention.yaml")
    sources: set[str] = set()
    for rows in (data.get("ingest", {}).get("events", []), data.get("identity", {}).get("identifiers", [])):
        sources |= {r["source"] for r in rows if r.get("source")}
    sources |= {r["source"] for r in data.get("profiles", {}).get("personal_fields", []) if r.get("source")}
    categories = sorted(
        {r["category"] for r in data.get("profiles", {}).get("personal_fields", []) if r.get("category")}
    )
    profiling = [p for p, spec in purposes.items() if spec.get("profiling")]
    return {
        "controller": s.audit_origin,
        "purposes": [
            {
                "purpose": pid,
                "description": spec.get("description", ""),
                "legal_basis": spec.get("legal_basis"),
                "categories": spec.get("categories", []),
                "profiling": bool(spec.get("profiling")),
            }
            for pid, spec in purposes.items()
        ],
        "categories_held": categories,
        "recipients": {
            "internal_roles": sorted({r for spec in purposes.values() for r in spec.get("roles", [])}),
            "destinations": sorted({str(d) for d in _destinations(data)}),
        },
        "retention": {
            "by_category_days": retention.get("categories", {}),
            "by_purpose_days": retention.get("purposes", {}),
            "inactive_profile_days": retention.get("inactive_profile_days"),
        },
        "sources": sorted(sources),
        "automated_decisions": {
            "profiling_purposes": profiling,
            "logic": "segments select people by rules staff write over their traits and events; "
            "no decision with legal or similarly significant effect is made automatically",
            "refused": "profiling_refused" in data.get("consent", {}).get("privacy_flags", []),
        },
        "rights": [
            "access (Art. 15)",
            "rectification (Art. 16)",
            "erasure (Art. 17)",
            "restriction (Art. 18)",
            "portability (Art. 20)",
            "objection, including to profiling (Art. 21)",
            "complaint to a supervisory authority (Art. 77)",
        ],
    }


def _destinations(data: Mapping[str, Any]) -> list[Any]:
    recipients = data.get("_activations", {}).get("recipients", [])
    return [r.get("destination") for r in recipients if isinstance(r, Mapping) and r.get("destination")]


async def package_body(session: AsyncSession, person: Person, request_id: str) -> dict[str, Any]:
    """The ``package.json`` document (schema ``access_package.schema.json``)."""
    data = await collect(session, person)
    activations = await _activations(session, person)
    receipts = await _receipts(session, data)
    info = article15({**data, "_activations": activations})
    return {
        "format": FORMAT,
        "request_id": request_id,
        "generated_at": datetime.now(UTC).isoformat(),
        "subject": {"profile_id": person.root, "merged_profiles": [o for o in person.origins if o != person.root]},
        "data": _plain_data(data),
        "consent_receipts": plain(receipts),
        "activations": plain(activations),
        "article_15": plain(info),
    }


def _csv_files(body: Mapping[str, Any]) -> dict[str, str]:
    """One CSV per list of records: ``csv/<store>.<list>.csv``, nested values as JSON."""
    out: dict[str, str] = {}
    for domain, parts in body["data"].items():
        for name, rows in parts.items() if isinstance(parts, Mapping) else []:
            if not isinstance(rows, list) or not rows:
                continue
            records = [r if isinstance(r, Mapping) else {"value": r} for r in rows]
            columns = list(dict.fromkeys(chain.from_iterable(records)))  # every key, in order of appearance
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(columns)
            w.writerows(zip(*(_cells([r.get(c) for r in records]) for c in columns), strict=True))
            out[f"csv/{domain}.{name}.csv"] = buf.getvalue()
    return out


def _cells(values: list[Any]) -> list[str]:
    """The CSV cells of one column's ``plain`` values (a column at a time: 10,000 events'
    cells without a call each)."""
    encode_value = _ENCODER.encode
    texts = [v if isinstance(v, str) else "" if v is None else encode_value(v).decode() for v in values]
    return ["'" + t if t[:1] in _FORMULA else t for t in texts]  # never a spreadsheet formula


_FORMULA = frozenset(("=", "+", "-", "@"))


def write_zip(path: Path, body: Mapping[str, Any], origins: Collection[str]) -> None:
    """Write the package (0600, in a 0700 folder)."""
    private_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("manifest.json", json.dumps({"request_id": body["request_id"], "profile_ids": sorted(origins)}))
        z.writestr("package.json", encode(body))  # ``package_body`` made it plain
        z.writestr("access_package.schema.json", SCHEMA_FILE.read_text())
        for name, content in _csv_files(body).items():
            z.writestr(name, content)
    private_path(tmp)
    tmp.replace(path)


async def build_access_package(
    session: AsyncSession, principal: Principal, root_id: str, request_id: str
) -> AccessPackage:
    """Build, write and register the person's package; recorded in the ledger. The token is
    shown once (only its hash is kept); the caller commits."""
    person = await person_of(session, await resolve_merged(session, root_id))
    body = await package_body(session, person, request_id)
    token = secrets.token_urlsafe(32)
    path = export_dir() / f"{request_id}-{secrets.token_hex(8)}.zip"
    write_zip(path, body, person.origins)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    now = datetime.now(UTC)
    expires = now + timedelta(hours=get_settings().dsr_package_hours)
    row = DsrPackage(
        token_hash=token_hash(token),
        request_id=request_id,
        file_name=path.name,
        sha256=digest,
        size=path.stat().st_size,
        created_at=now,
        expires_at=expires,
    )
    session.add(row)
    counts = {d: sum(len(v) for v in parts.values() if isinstance(v, list)) for d, parts in body["data"].items()}
    await record(
        session,
        principal,
        "dsr.access_package",
        subject_id=person.root,
        purpose=PURPOSE,
        legal_basis="legal_obligation",
        details={"request_id": request_id, "profiles": len(person.origins), "records": counts, "sha256": digest},
    )
    await session.flush()
    return AccessPackage(request_id, path, token, expires, digest, row.size)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_package(session: AsyncSession, token: str) -> Path:
    """The package file a download token leads to (404 once expired, purged or unknown); counted."""
    t = table_of(DsrPackage)
    row = (await session.execute(select(t).where(t.c.token_hash == token_hash(token)))).first()
    path = export_dir() / row.file_name if row is not None else None
    if row is None or row.expires_at <= datetime.now(UTC) or path is None or not path.exists():
        raise NotFound("no package for this link (expired or never issued)", field="token")
    await session.execute(update(t).where(t.c.token_hash == row.token_hash).values(downloads=t.c.downloads + 1))
    return path


async def purge_packages(session: AsyncSession, now: datetime | None = None) -> int:
    """Delete expired packages (file and row); the job runs this. Returns packages removed."""
    t = table_of(DsrPackage)
    now = now or datetime.now(UTC)
    rows = (await session.execute(select(t.c.token_hash, t.c.file_name).where(t.c.expires_at <= now))).all()
    for _hash, name in rows:
        (export_dir() / name).unlink(missing_ok=True)
    if rows:
        await session.execute(delete(t).where(t.c.token_hash.in_([r[0] for r in rows])))
    return len(rows)


def package_owners(path: Path) -> list[str]:
    """The profile ids a package file is about (from its manifest; empty if unreadable)."""
    try:
        with zipfile.ZipFile(path) as z:
            return list(json.loads(z.read("manifest.json")).get("profile_ids", []))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []


def delete_packages_of(origins: Collection[str]) -> int:
    """Delete every package about any of these profiles (an erasure); returns files removed.
    Their rows stay until the purge job (they name no one; the link answers 404)."""
    folder = export_dir()
    if not folder.exists():
        return 0
    mine = set(origins)
    removed = 0
    for path in folder.glob("*.zip"):
        if mine & set(package_owners(path)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


async def purge_expired_packages() -> dict[str, Any]:
    """The job: delete every access package whose link expired."""
    async with unit_of_work() as session:
        return {"packages_deleted": await purge_packages(session)}
