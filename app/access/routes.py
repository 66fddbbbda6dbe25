"""HTTP API for API keys (admin only)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from app.access.models import ApiKey
from app.access.service import create_api_key, identity_secret, list_api_keys, revoke_api_key
from app.deps import Caller, Db
from app.ledger.service import record
from app.settings import get_settings
from app.vault.keyring import key_material


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    name: str
    source: str | None = None
    trust: str | None = None
    """Ingest keys only: ``client`` (default; a public write key in a web page or app) or
    ``server`` (a secret key of a backend, CRM or shop). See policies/identity.yaml."""


class KeyOut(msgspec.Struct):
    id: str
    role: str
    name: str
    source: str | None
    trust: str
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = None
    """The secret, shown once on creation only."""
    identity_secret: str | None = None
    """Ingest keys, on creation only: your backend signs each user id with it (hex
    HMAC-SHA256) and the page sends it as ``context.userHash``; a client event carrying a
    valid one counts as a server source for that user (identity verification)."""


def _out(k: ApiKey, token: str | None = None, identity_secret: str | None = None) -> KeyOut:
    return KeyOut(k.id, k.role, k.name, k.source, k.trust, k.created_at, k.revoked_at, token, identity_secret)


class ApiKeyController(Controller):
    path = "/v1/keys"
    tags = ["access"]
    opt = {"roles": ("admin",)}

    @post("/", operation_id="createApiKey", status_code=201)
    async def create(self, data: JSONBody[KeyCreate], db: Db, principal: Caller) -> KeyOut:
        """Create an API key for a role; ingest keys are a source's write key."""
        key, token = await create_api_key(db, data.role, data.name, data.source, data.trust)
        await record(db, principal, "api_key.create", details={"key_id": key.id, "role": key.role, "trust": key.trust})
        secret = identity_secret(key_material(get_settings()).index_key, key.id) if key.role == "ingest" else None
        return _out(key, token, secret)

    @get("/", operation_id="listApiKeys")
    async def list(self, db: Db) -> list[KeyOut]:
        return [_out(k) for k in await list_api_keys(db)]

    @delete("/{key_id:str}", operation_id="revokeApiKey", status_code=200)
    async def revoke(self, key_id: FromPath[str], db: Db, principal: Caller) -> KeyOut:
        key = await revoke_api_key(db, key_id)
        await record(db, principal, "api_key.revoke", details={"key_id": key.id})
        return _out(key)
