"""Destinations, activation runs, who each run sent to, the files it wrote, dead letters,
schedules and the answers to erasure notices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Destination(SQLModel, table=True):
    """Where activated people go: a webhook, a file, an ad audience, a WeCom group bot or an
    SMS gateway. Its secret (signing key, token, a URL carrying a key) is sealed (``secret``)."""

    __tablename__ = "destination"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=16)
    """``webhook``, ``file``, ``ad_audience``, ``wecom`` or ``sms``."""
    purpose: str = Field(max_length=128)
    """What the data is sent for: every person is decided for this purpose at send time."""
    categories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """Data categories the destination may receive (within the purpose's categories)."""
    cross_border: bool = False
    """Data leaves the country (PIPL Art. 39): people then need separate consent."""
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Non-secret settings: url, format, platform, directory, batch size, retries, minimum size."""
    secret_version: int | None = None
    """The master key version the secret is sealed under."""
    secret: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    owner_key_id: str = Field(max_length=36)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ActivationRun(SQLModel, table=True):
    """One send of people to a destination: a segment run (manual or scheduled) or a journey's send."""

    __tablename__ = "activation_run"
    __table_args__ = (Index("ix_activation_run_status", "status", "heartbeat_at"),)

    id: str = Field(primary_key=True, max_length=36)
    destination_id: str = Field(max_length=36, index=True)
    segment_id: str | None = Field(default=None, max_length=36)
    purpose: str = Field(max_length=128)
    trigger: str = Field(max_length=16)
    """``manual``, ``schedule`` or ``journey``."""
    reason: str | None = Field(default=None, max_length=200)
    """Why a journey sent (its name and step); no personal data."""
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    status: str = Field(max_length=16)
    """``queued``, ``running``, ``done``, ``failed`` or ``refused``."""
    refusal: str | None = Field(default=None, max_length=300)
    actor_key_id: str = Field(max_length=36)
    actor_role: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    total: int = 0
    sent: int = 0
    failed: int = 0
    excluded: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Counts by reason (the decision engine's reasons, plus missing contact data)."""
    policy_version: str | None = Field(default=None, max_length=64)
    merkle_root: str | None = Field(default=None, max_length=64)
    """RFC 9162 root over the recipients' leaves (``activation_leaves``)."""
    ledger_seq: int | None = None
    owner: str | None = Field(default=None, max_length=32)
    """The process carrying the run out (a random token): only it writes the run's recipients."""
    heartbeat_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When that process last showed it was alive: a run silent for long is taken over."""
    attempts: int = 0
    """How many times the run was taken (1 when it ran at once; more when it was resumed)."""


class ActivationLeaves(SQLModel, table=True):
    """The Merkle leaves of a run, concatenated (32 bytes each, in recipient order). A leaf
    hashes the run, the person and a random salt kept only in the person's recipient row,
    so once the row is erased the leaf tells nothing and the others' proofs still hold."""

    __tablename__ = "activation_leaves"

    run_id: str = Field(primary_key=True, max_length=36)
    leaves: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ActivationRecipient(SQLModel, table=True):
    """A person a run sent to (or tried to): personal data, kept so an access request can
    prove where the person's data went and an erasure can tell each destination."""

    __tablename__ = "activation_recipient"
    __table_args__ = (Index("ix_activation_recipient_profile", "profile_id"),)

    run_id: str = Field(primary_key=True, max_length=36)
    origin_id: str = Field(primary_key=True, max_length=36)
    """The profile id sent (never changes)."""
    profile_id: str = Field(max_length=36)
    """The person the row belongs to now."""
    destination_id: str = Field(max_length=36)
    leaf_index: int
    salt: str = Field(max_length=32)
    fields: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """Names of the fields sent (never their values)."""
    status: str = Field(max_length=8)
    """``sent``, ``failed`` (dead letter) or ``pending``."""
    batch: int = 0
    file_id: str | None = Field(default=None, max_length=36)
    line: int | None = None
    """The person's line in ``file_id`` (1 = first after any header)."""
    sent_at: datetime = Field(sa_type=UtcDateTime)


class ActivationFile(SQLModel, table=True):
    """A file a run wrote (holding personal data): where it is, so erasure can find it."""

    __tablename__ = "activation_file"

    id: str = Field(primary_key=True, max_length=36)
    run_id: str = Field(max_length=36, index=True)
    destination_id: str = Field(max_length=36)
    path: str = Field(max_length=1000)
    format: str = Field(max_length=16)
    rows: int
    created_at: datetime = Field(sa_type=UtcDateTime)
    erased_lines: int = 0


class DeadLetter(SQLModel, table=True):
    """A batch a destination kept refusing after every retry (no person in it: the
    recipients' rows say who, with status ``failed``)."""

    __tablename__ = "activation_dead_letter"

    id: str = Field(primary_key=True, max_length=36)
    run_id: str = Field(max_length=36, index=True)
    destination_id: str = Field(max_length=36, index=True)
    batch: int
    people: int
    attempts: int
    last_status: int | None = None
    last_error: str = Field(max_length=300)
    created_at: datetime = Field(sa_type=UtcDateTime)


class ActivationSchedule(SQLModel, table=True):
    """A segment sent to a destination on a cron schedule (exactly once per due time)."""

    __tablename__ = "activation_schedule"

    id: str = Field(primary_key=True, max_length=36)
    segment_id: str = Field(max_length=36)
    destination_id: str = Field(max_length=36)
    cron: str = Field(max_length=100)
    """Five-field crontab, UTC."""
    owner_key_id: str = Field(max_length=36)
    owner_role: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
    last_slot: datetime | None = Field(default=None, sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ErasureNotice(SQLModel, table=True):
    """A deletion notice sent to a destination for an erasure request, and its answer. Names
    no person (the request does): it survives the erasure as its proof."""

    __tablename__ = "activation_erasure_notice"

    id: str = Field(primary_key=True, max_length=36)
    request_id: str = Field(max_length=64, index=True)
    destination_id: str = Field(max_length=36)
    runs: int
    outcome: str = Field(max_length=16)
    """``acknowledged``, ``failed``, ``erased`` (lines removed from files) or ``unsupported``."""
    status_code: int | None = None
    detail: str = Field(max_length=300)
    sent_at: datetime = Field(sa_type=UtcDateTime)
