"""Destinations: what each kind needs, its declared purpose and categories, its sealed secret.

A secret (a Standard Webhooks signing key, a gateway token, a WeCom bot URL with its key)
is sealed with the vault's blob key for ``destination-secret``, bound to the destination's
id, and is never returned by the API: a view says only whether one is set.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from standardwebhooks.webhooks import Webhook

from app.access.service import Principal
from app.activation import egress
from app.activation.audiences import MIN_AUDIENCE, PLATFORMS
from app.activation.models import Destination
from app.consent.gate import authorize
from app.decisions.service import current_rules
from app.errors import InvalidField, NotFound, PolicyDenied
from app.inventory import within
from app.ledger.service import record
from app.settings import get_settings
from app.vault.blobs import open_blob, seal_blob
from app.vault.keyring import key_material

KINDS = ("webhook", "file", "ad_audience", "wecom", "sms")
SECRET_PURPOSE = "destination-secret"
_DIRECTORY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONTACT = {"ad_audience": "user.contact", "sms": "user.contact.phone_number"}
"""The contact data a kind sends: its categories must cover it (or part of it)."""


@dataclass(frozen=True)
class DestinationIn:
    name: str
    kind: str
    purpose: str
    categories: list[str]
    cross_border: bool
    config: dict[str, Any]
    secret: str | None


def _int(config: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidField(f"expects a whole number from {low} to {high}", field=f"config.{key}")
    return value


def _number(config: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidField(f"expects a number from {low} to {high}", field=f"config.{key}")
    return float(value)


def _url(value: Any, field: str) -> str:
    parts = urlsplit(value) if isinstance(value, str) and len(value) <= 2000 else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField("expects an http(s) URL", field=field)
    return str(value)


def _choice(config: dict[str, Any], key: str, options: tuple[str, ...], default: str | None = None) -> str:
    value = config.get(key, default)
    if value not in options:
        raise InvalidField(f"must be one of {', '.join(options)}", field=f"config.{key}")
    return str(value)


def clean_config(kind: str, config: dict[str, Any], secret: str | None, has_secret: bool) -> dict[str, Any]:
    """The kind's settings, checked (422 naming ``config.<key>``); unknown keys refused."""
    delivery = {
        "batch_size": _int(config, "batch_size", 20 if kind == "wecom" else 500, 1, 1000),
        "max_attempts": _int(config, "max_attempts", 5, 1, 10),
        "backoff_s": _number(config, "backoff_s", 1.0, 0, 60),
        "timeout_s": _number(config, "timeout_s", 10.0, 0.1, 60),
    }
    out: dict[str, Any]
    if kind == "webhook":
        out = {"url": _url(config.get("url"), "config.url"), **delivery}
        _need_secret(secret, has_secret)
        if secret is not None:
            _signing_key(secret)
    elif kind in ("file", "ad_audience"):
        directory = config.get("directory", "default")
        if not isinstance(directory, str) or not _DIRECTORY.match(directory):
            raise InvalidField("expects a folder name (letters, digits, - and _)", field="config.directory")
        out = {"directory": directory}
        if kind == "file":
            out["format"] = _choice(config, "format", ("csv", "ndjson"), "csv")
        else:
            out["platform"] = _choice(config, "platform", PLATFORMS)
            out["min_audience"] = _int(config, "min_audience", MIN_AUDIENCE, 1, 10_000_000)
    elif kind == "wecom":
        out = {"msgtype": _choice(config, "msgtype", ("text", "markdown"), "markdown"), **delivery}
        _need_secret(secret, has_secret)
        if secret is not None:
            _url(secret, "secret")
    else:
        text = config.get("text")
        if not isinstance(text, str) or not 0 < len(text) <= 500:
            raise InvalidField("expects the message text, 1 to 500 characters", field="config.text")
        out = {"url": _url(config.get("url"), "config.url"), "text": text, **delivery}
    unknown = sorted(set(config) - set(out))
    if unknown:
        raise InvalidField("is not a setting of this kind of destination", field=f"config.{unknown[0]}")
    return out


def _signing_key(secret: str) -> None:
    """A Standard Webhooks key: ``whsec_`` and 24 to 64 bytes in strict base64."""
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True) if secret.startswith("whsec_") else b""
    except binascii.Error:
        raw = b""
    if not 24 <= len(raw) <= 64:
        raise InvalidField("expects a Standard Webhooks key (whsec_ and 24 to 64 bytes in base64)", field="secret")
    Webhook(secret)


def _need_secret(secret: str | None, has_secret: bool) -> None:
    if secret is None and not has_secret:
        raise InvalidField("is required for this kind of destination", field="secret")


def check_declaration(data: DestinationIn) -> None:
    """Kind, purpose and categories: the purpose is in policy and may receive every category."""
    if data.kind not in KINDS:
        raise InvalidField(f"must be one of {', '.join(KINDS)}", field="kind")
    if not data.name.strip() or len(data.name) > 200 or not data.name.isprintable():
        raise InvalidField("expects a name of 1 to 200 printable characters", field="name")
    rules = current_rules()
    use = rules.purposes.get(data.purpose)
    if use is None:
        raise InvalidField("is not a purpose in policies/purposes.yaml", field="purpose")
    if not data.categories or len(data.categories) > 50:
        raise InvalidField("expects 1 to 50 data categories", field="categories")
    for n, category in enumerate(data.categories):
        if not isinstance(category, str) or not use.may_receive(category):
            raise InvalidField("is not a category this purpose may receive", field=f"categories[{n}]")
    needs = CONTACT.get(data.kind)
    if needs and not any(within(c, needs) or within(needs, c) for c in data.categories):
        raise InvalidField("must include the contact data this kind sends", field="categories")
    if data.secret is not None and not 0 < len(data.secret) <= 2000:
        raise InvalidField("expects 1 to 2000 characters", field="secret")


def seal_secret(dest: Destination, secret: str) -> None:
    ring = key_material(get_settings()).master
    dest.secret_version, dest.secret = seal_blob(ring, SECRET_PURPOSE, secret.encode(), dest.id.encode())


def secret_of(dest: Destination) -> str | None:
    """The destination's secret, opened (only delivery calls this)."""
    if dest.secret is None or dest.secret_version is None:
        return None
    ring = key_material(get_settings()).master
    return open_blob(ring, SECRET_PURPOSE, dest.secret_version, dest.secret, dest.id.encode()).decode()


def view(dest: Destination) -> dict[str, Any]:
    """A destination as the API shows it: never its secret."""
    return {
        "id": dest.id,
        "name": dest.name,
        "kind": dest.kind,
        "purpose": dest.purpose,
        "categories": dest.categories,
        "cross_border": dest.cross_border,
        "config": dest.config,
        "has_secret": dest.secret is not None,
        "owner_key_id": dest.owner_key_id,
        "created_at": dest.created_at.isoformat(),
        "updated_at": dest.updated_at.isoformat(),
    }


def _details(dest: Destination) -> dict[str, Any]:
    return {
        "destination_id": dest.id,
        "kind": dest.kind,
        "categories": dest.categories,
        "cross_border": dest.cross_border,
    }


async def check_reachable(kind: str, config: dict[str, Any], secret: str | None) -> None:
    """The URLs delivery will connect to are public internet addresses (``egress``; 422 otherwise)."""
    if kind in ("webhook", "sms"):
        await egress.check_url(str(config["url"]), "config.url")
    elif kind == "wecom" and secret is not None:
        await egress.check_url(secret, "secret")


async def create_destination(session: AsyncSession, principal: Principal, data: DestinationIn) -> Destination:
    """Store a destination (the caller's role must be allowed its purpose); recorded."""
    check_declaration(data)
    await authorize(session, principal, "destination.create", [], data.purpose)
    config = clean_config(data.kind, data.config, data.secret, False)
    await check_reachable(data.kind, config, data.secret)
    now = datetime.now(UTC)
    dest = Destination(
        id=str(uuid.uuid4()),
        name=data.name.strip(),
        kind=data.kind,
        purpose=data.purpose,
        categories=list(data.categories),
        cross_border=data.cross_border,
        config=config,
        owner_key_id=principal.key_id,
        created_at=now,
        updated_at=now,
    )
    if data.secret is not None:
        seal_secret(dest, data.secret)
    session.add(dest)
    await session.flush()
    await record(session, principal, "destination.create", purpose=dest.purpose, details=_details(dest))
    return dest


async def update_destination(
    session: AsyncSession, principal: Principal, destination_id: str, data: DestinationIn
) -> Destination:
    """Replace a destination's declaration (owner or admin); without ``secret`` the sealed one stays."""
    dest = await get_destination(session, destination_id)
    _may_change(principal, dest)
    if data.kind != dest.kind:
        raise InvalidField("a destination's kind cannot change", field="kind")
    check_declaration(data)
    await authorize(session, principal, "destination.update", [], data.purpose)
    dest.config = clean_config(dest.kind, data.config, data.secret, dest.secret is not None)
    await check_reachable(dest.kind, dest.config, data.secret)
    dest.name, dest.purpose, dest.categories = data.name.strip(), data.purpose, list(data.categories)
    dest.cross_border, dest.updated_at = data.cross_border, datetime.now(UTC)
    if data.secret is not None:
        seal_secret(dest, data.secret)
    await record(session, principal, "destination.update", purpose=dest.purpose, details=_details(dest))
    return dest


async def delete_destination(session: AsyncSession, principal: Principal, destination_id: str) -> None:
    """Retire a destination: its secret is dropped, its runs and recipients stay (proof)."""
    dest = await get_destination(session, destination_id)
    _may_change(principal, dest)
    dest.deleted_at = dest.updated_at = datetime.now(UTC)
    dest.secret, dest.secret_version = None, None
    await record(session, principal, "destination.delete", purpose=dest.purpose, details={"destination_id": dest.id})


def _may_change(principal: Principal, dest: Destination) -> None:
    if principal.role != "admin" and principal.key_id != dest.owner_key_id:
        raise PolicyDenied("only the destination's owner (or an admin) may change it", field="destination_id")


async def get_destination(session: AsyncSession, destination_id: str, *, retired: bool = False) -> Destination:
    dest = await session.get(Destination, destination_id)
    if dest is None or (dest.deleted_at is not None and not retired):
        raise NotFound("no destination with this id", field="destination_id")
    return dest


async def live_destinations(session: AsyncSession) -> list[Destination]:
    q = select(Destination).where(col(Destination.deleted_at).is_(None)).order_by(col(Destination.created_at))
    return list((await session.execute(q)).scalars())


def export_dir(dest: Destination) -> Path:
    """Where a file or ad-audience destination writes (under ``CONSENTRY_ACTIVATION_DIR``)."""
    return get_settings().activation_dir / str(dest.config.get("directory", "default"))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
