"""HTTP API for auditors: list, export, sign, prove and verify the ledger (RFC 9162 style)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from app.db import session_maker
from app.deps import Caller, Db
from app.errors import InvalidField, NotFound
from app.inputs import refuse_unknown_params
from app.ledger.heads import make_tree_head
from app.ledger.service import record
from app.settings import get_settings
from app.vault.keyring import key_material
from audit import merkle, store
from audit.checkpoint import TreeHead, public_key_bytes
from audit.checkpoint import key_id as signing_key_id
from audit.verify import verify_ledger
from audit.witness import WitnessError, read_witness

AUDITORS = ("auditor", "admin")
ENTRY_FILTERS = frozenset({"after", "limit", "actor", "action", "subject", "request_id", "since", "until"})


class EntryPage(msgspec.Struct):
    entries: list[dict[str, Any]]
    next_after: int | None
    """Pass as ``after`` to get the next page; null on the last page."""


class VerifyOut(msgspec.Struct):
    ok: bool
    entries: int
    checkpoints: int
    bad_seq: int | None
    reason: str
    summary: str
    bad_head: int | None = None
    """Size of the signed tree head found wrong, if that is what failed."""
    newest_signed: int | None = None
    unsigned: int = 0
    """Entries after the newest signed tree head."""
    witness: str = ""
    """Whether the witness file was read: ``read``, ``missing`` or ``unreadable``."""


class ConsistencyOut(msgspec.Struct):
    first: int
    second: int
    first_root: str
    second_root: str
    proof: list[str]
    """RFC 9162 PROOF(first, D[second]) as hex hashes; check it against roots of heads you trust."""


class InclusionOut(msgspec.Struct):
    seq: int
    size: int
    leaf_hash: str
    root_hash: str
    proof: list[str]
    """RFC 9162 PATH(seq - 1, D[size]) as hex hashes."""


class PublicKeyOut(msgspec.Struct):
    key_id: str
    public_key: str
    algorithm: str = "Ed25519"


def _pubkey() -> PublicKeyOut:
    import base64

    pub = key_material(get_settings()).signing_key.public_key()
    return PublicKeyOut(signing_key_id(pub), base64.b64encode(public_key_bytes(pub)).decode())


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    opt = {"roles": AUDITORS}

    @get("/entries", operation_id="listAuditEntries")
    async def entries(
        self,
        db: Db,
        request: Request[Any, Any, Any],
        after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        subject: FromQuery[str | None] = None,
        request_id: FromQuery[str | None] = None,
        since: Annotated[str | None, QueryParameter(description="ISO time, inclusive")] = None,
        until: Annotated[str | None, QueryParameter(description="ISO time, exclusive")] = None,
    ) -> EntryPage:
        """Entries in sequence order, filtered; page with ``after``. An unknown filter is a 400."""
        refuse_unknown_params(request.query_params, ENTRY_FILTERS)
        rows = await store.list_entries(
            db,
            after_seq=after,
            limit=limit,
            actor_id=actor,
            action=action,
            subject_id=subject,
            request_id=request_id,
            since=since,
            until=until,
        )
        return EntryPage([e.to_json() for e in rows], rows[-1].seq if len(rows) == limit else None)

    @get("/export", operation_id="exportAuditLedger", media_type="application/x-ndjson")
    async def export(self, db: Db, principal: Caller) -> Stream:
        """The whole ledger as NDJSON for ``python -m audit verify``: entries, group subjects, signed heads."""
        await record(db, principal, "audit.export", purpose="audit.review", legal_basis="legal_obligation")
        await db.commit()

        async def lines() -> AsyncIterator[bytes]:
            async with session_maker()() as session:
                async for line in store.export_lines(session):
                    yield line.encode()

        return Stream(lines(), media_type="application/x-ndjson")

    @get("/checkpoints", operation_id="listAuditCheckpoints")
    async def checkpoints(self, db: Db) -> list[dict[str, Any]]:
        return [cp.to_json() for cp in await store.list_checkpoints(db)]

    @post("/checkpoints", operation_id="createAuditCheckpoint", status_code=201)
    async def checkpoint(self, db: Db) -> dict[str, Any]:
        """Sign a tree head over the ledger now; if that size is already signed, that head (never 409)."""
        return (await make_tree_head(db)).to_json()

    @post("/tree-heads", operation_id="createAuditTreeHead", status_code=201)
    async def create_tree_head(self, db: Db) -> dict[str, Any]:
        """Sign a tree head over the ledger now; if that size is already signed, that head (never 409)."""
        return (await make_tree_head(db)).to_json()

    @get("/tree-head", operation_id="getAuditTreeHead")
    async def tree_head(self, db: Db) -> dict[str, Any]:
        """The newest signed tree head. Save the body as it came: ``--trusted-head FILE`` checks it later."""
        head = await store.latest_tree_head(db)
        if head is None:
            raise NotFound("no signed tree head yet")
        return head.to_json()

    @get("/consistency", operation_id="getAuditConsistencyProof")
    async def consistency(
        self,
        db: Db,
        first: Annotated[int, QueryParameter(name="from", ge=0, description="the older tree size")],
        second: Annotated[int, QueryParameter(name="to", ge=0, description="the newer tree size")],
    ) -> ConsistencyOut:
        """RFC 9162 consistency proof that the tree of ``from`` entries is a prefix of that of ``to``."""
        size = (await store.tree_state(db))[0]
        if first > second:
            raise InvalidField("must not be larger than to", field="from")
        if second > size:
            raise InvalidField(f"the ledger holds {size} entries", field="to")
        leaves = await store.leaf_hashes(db, second)
        proof = merkle.consistency_proof(leaves, first, second)
        return ConsistencyOut(
            first, second, merkle.root(leaves[:first]).hex(), merkle.root(leaves).hex(), [p.hex() for p in proof]
        )

    @get("/inclusion", operation_id="getAuditInclusionProof")
    async def inclusion(
        self,
        db: Db,
        seq: Annotated[int, QueryParameter(ge=1, description="the entry")],
        size: Annotated[int, QueryParameter(ge=1, description="the tree size (a signed head's)")],
    ) -> InclusionOut:
        """RFC 9162 inclusion proof of entry ``seq`` in the tree of ``size`` entries."""
        current = (await store.tree_state(db))[0]
        if seq > size:
            raise InvalidField("must not be larger than size", field="seq")
        if size > current:
            raise InvalidField(f"the ledger holds {current} entries", field="size")
        leaves = await store.leaf_hashes(db, size)
        proof = merkle.inclusion_proof(leaves, seq - 1, size)
        return InclusionOut(seq, size, leaves[seq - 1].hex(), merkle.root(leaves).hex(), [p.hex() for p in proof])

    @get("/public-key", operation_id="getAuditPublicKey")
    async def public_key(self) -> PublicKeyOut:
        """The Ed25519 key that checkpoints are signed with (give it to the verifier)."""
        return _pubkey()

    @get("/verify", operation_id="verifyAuditLedger")
    async def verify(self, db: Db) -> VerifyOut:
        """Verify the chain, the Merkle tree and every signed head (database and witness file) on the server."""
        s = get_settings()
        witness: list[TreeHead] | None = None
        state = "missing"
        if s.audit_witness.exists():
            try:
                witness, state = read_witness(s.audit_witness), "read"
            except (OSError, WitnessError):
                state = "unreadable"
        heads = await store.list_checkpoints(db)
        entries = [e async for e in store.stream_entries(db)]
        subjects = await store.subject_lists(db)
        pub = key_material(s).signing_key.public_key()
        report = verify_ledger(entries, heads, pub, witness=witness, source="database", subjects=subjects)
        if state == "unreadable":
            report.ok = False
            report.reason = report.reason or "the witness file is unreadable"
        return VerifyOut(
            report.ok,
            report.entries,
            report.checkpoints,
            report.bad_seq,
            report.reason,
            report.summary() if state != "unreadable" or report.failures else "FAILED: the witness file is unreadable",
            report.bad_head,
            report.newest_signed,
            report.unsigned,
            state,
        )


def _kind(head: TreeHead) -> str:
    return "tree_head" if head.is_tree_head else "checkpoint"
