"""Retention through the personal-data inventory: expiry by data category, texts with their
vault, unclassified fields only, dry runs, inactive profiles queued once, the ledger entry
and the CLI report (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from app.consent.rules import load_rules
from app.db import table_of, unit_of_work
from app.ingest.models import Event
from app.jobs.scheduler import product_jobs
from app.profiles.models import Profile, ProfileField
from app.retention.models import ErasureQueue
from app.retention.service import RetentionReport, run_retention
from app.settings import get_settings
from app.texts.models import TextRecord, TextVaultEntry
from audit.store import audit_entry
from tests.conftest import Env, run
from tests.helpers import sync_db

NOW = datetime(2031, 6, 1, tzinfo=UTC)
EVENT, TEXT, VAULT = table_of(Event), table_of(TextRecord), table_of(TextVaultEntry)
PROFILE, FIELD, QUEUE = table_of(Profile), table_of(ProfileField), table_of(ErasureQueue)


def ago(days: int, now: datetime = NOW) -> datetime:
    return now - timedelta(days=days)


def profile(created_days_ago: int, merged_into: str | None = None, now: datetime = NOW) -> str:
    pid = str(uuid.uuid4())
    with sync_db() as db:
        at = ago(created_days_ago, now)
        db.execute(
            insert(PROFILE).values(
                id=pid, created_at=at, updated_at=at, traits={}, trait_sources={}, merged_into=merged_into
            )
        )
    return pid


def event(pid: str, days_ago: int, now: datetime = NOW) -> str:
    eid = str(uuid.uuid4())
    with sync_db() as db:
        at = ago(days_ago, now)
        db.execute(
            insert(EVENT).values(
                id=eid,
                profile_id=pid,
                origin_id=pid,
                source="test",
                message_id=eid,
                type="track",
                name="Viewed",
                occurred_at=at,
                received_at=at,
                properties={},
                traits={},
                key_version=1,
                sealed=b"sealed",
            )
        )
    return eid


def text(pid: str, days_ago: int, vaulted: int) -> str:
    tid = str(uuid.uuid4())
    with sync_db() as db:
        at = ago(days_ago)
        db.execute(
            insert(TEXT).values(
                id=tid,
                profile_id=pid,
                origin_id=pid,
                source="test",
                channel="support",
                language="en",
                redacted="mail <EMAIL_ADDRESS_1>",
                entity_counts={},
                occurred_at=at,
                received_at=at,
            )
        )
        for i in range(vaulted):
            db.execute(
                insert(VAULT).values(
                    text_id=tid,
                    placeholder=f"<EMAIL_ADDRESS_{i + 1}>",
                    profile_id=pid,
                    origin_id=pid,
                    entity_type="EMAIL_ADDRESS",
                    key_version=1,
                    sealed=b"sealed",
                )
            )
    return tid


def personal_field(pid: str, name: str, category: str, days_ago: int) -> None:
    with sync_db() as db:
        db.execute(
            insert(FIELD).values(
                origin_id=pid,
                name=name,
                profile_id=pid,
                category=category,
                key_version=1,
                ciphertext=b"sealed",
                updated_at=ago(days_ago),
                source="test",
                trust="server",
            )
        )


def retention(now: datetime = NOW, dry_run: bool = False) -> RetentionReport:
    async def go() -> RetentionReport:
        async with unit_of_work() as session:
            return await run_retention(session, now, dry_run)

    return run(go())


def ids(table: Any, column: str = "id") -> set[str]:
    with sync_db() as db:
        return set(db.execute(select(table.c[column])).scalars())


def count(table: Any) -> int:
    with sync_db() as db:
        return int(db.execute(select(func.count()).select_from(table)).scalar() or 0)


def ledger_runs() -> list[dict[str, Any]]:
    with sync_db() as db:
        q = select(audit_entry.c.details, audit_entry.c.actor_id).where(audit_entry.c.action == "retention.run")
        rows = db.execute(q.order_by(audit_entry.c.seq)).all()
    assert all(r.actor_id == "system" for r in rows)
    return [json.loads(r.details) for r in rows]


def test_events_older_than_their_period_are_deleted_newer_kept(env: Env) -> None:
    pid = profile(10)
    old, edge, new = event(pid, 731), event(pid, 729), event(pid, 5)
    report = retention()
    assert ids(EVENT) == {edge, new}
    assert old not in ids(EVENT)
    assert report.removed["event"] == 1
    assert report.by_category["user.behavior"] == 1
    assert report.cutoffs["user.behavior"] == ago(730)


def test_texts_and_their_vault_entries_expire_together(env: Env) -> None:
    pid = profile(10)
    old = text(pid, 400, vaulted=2)
    new = text(pid, 30, vaulted=1)
    report = retention()
    assert ids(TEXT) == {new}
    assert ids(VAULT, "text_id") == {new}
    assert old not in ids(VAULT, "text_id")
    assert report.removed["text_record"] == 1 and report.removed["text_vault"] == 2
    assert report.by_category["user.content"] == 3


def test_unclassified_fields_expire_and_classified_fields_stay(env: Env) -> None:
    pid = profile(10)
    personal_field(pid, "shoe_size", "user.unknown", 100)
    personal_field(pid, "nickname", "user.unknown.custom", 100)
    personal_field(pid, "favourite", "user.unknown", 30)
    personal_field(pid, "email", "user.contact.email", 1000)
    personal_field(pid, "notes", "user.unknownish", 1000)  # a sibling name, not a sub-category
    report = retention()
    assert ids(FIELD, "name") == {"favourite", "email", "notes"}
    assert report.removed["profile_field"] == 2
    assert report.by_category["user.unknown"] == 2


def test_a_dry_run_deletes_nothing_and_reports_the_same_counts(env: Env) -> None:
    pid = profile(2000)
    event(pid, 1200)
    text(pid, 1200, vaulted=1)
    personal_field(pid, "shoe_size", "user.unknown", 100)
    before = {t.name: count(t) for t in (EVENT, TEXT, VAULT, FIELD, QUEUE)}
    dry = retention(dry_run=True)
    assert {t.name: count(t) for t in (EVENT, TEXT, VAULT, FIELD, QUEUE)} == before
    assert dry.queued == [pid]
    real = retention()
    assert real.removed == dry.removed
    assert real.by_category == dry.by_category
    assert real.queued == dry.queued
    removed = {table: n for table, n in dry.removed.items() if n}  # other expiring tables report 0
    assert removed == {"event": 1, "text_record": 1, "text_vault": 1, "profile_field": 1}
    assert count(EVENT) == count(TEXT) == count(VAULT) == count(FIELD) == 0
    assert ids(QUEUE, "profile_id") == {pid}


def test_inactive_profiles_are_queued_once(env: Env) -> None:
    idle = profile(2000)
    active = profile(2000)
    event(active, 100)
    young = profile(10)
    merged = profile(2000, merged_into=idle)
    texting = profile(2000)
    text(texting, 200, vaulted=0)
    first = retention()
    assert first.queued == [idle]
    assert ids(QUEUE, "profile_id") == {idle}
    assert {young, merged, active, texting}.isdisjoint(ids(QUEUE, "profile_id"))
    second = retention(NOW + timedelta(days=1))
    assert second.queued == []
    with sync_db() as db:
        rows = db.execute(select(QUEUE)).all()
    assert len(rows) == 1 and rows[0].reason == "inactive" and rows[0].queued_at == NOW


def test_activity_whose_events_expired_still_counts(env: Env) -> None:
    """Events are kept 730 days, a person is inactive after 1,095: once their last event has
    expired, its time is remembered, not forgotten."""
    pid = profile(2000)
    event(pid, 800)
    assert retention().queued == []
    assert count(EVENT) == 0
    assert retention(NOW + timedelta(days=100)).queued == []  # last seen 900 days ago
    assert retention(NOW + timedelta(days=400)).queued == [pid]  # last seen 1,200 days ago


def test_the_ledger_has_one_entry_per_run_with_counts_and_policy_version(env: Env) -> None:
    pid = profile(2000)
    event(pid, 800)
    event(pid, 10)
    retention(dry_run=True)
    retention()
    runs = ledger_runs()
    assert len(runs) == 2
    version = load_rules(get_settings().policy_dir).version
    for entry, dry in zip(runs, (True, False), strict=True):
        assert entry["dry_run"] is dry
        assert entry["policy_version"] == version
        assert entry["removed"]["event"] == 1
        assert entry["by_category"]["user.behavior"] == 1
        assert entry["queued_for_erasure"] == 0
        assert entry["cutoffs"]["user.behavior"] == ago(730).isoformat()


def cli(env: Env, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app", "retention", "run", *args],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_prints_the_report(env: Env) -> None:
    now = datetime.now(UTC)
    pid = profile(2000, now=now)
    event(pid, 800, now=now)
    event(pid, 10, now=now)
    out = cli(env, "--dry-run")
    version = load_rules(get_settings().policy_dir).version
    assert "retention dry run at" in out and f"policy version {version}" in out
    assert "user.behavior" in out and "would remove 1" in out
    assert "event" in out and "inactive profiles would queue for erasure: 0" in out
    assert count(EVENT) == 2
    out = cli(env)
    assert "retention run at" in out and "removed 1" in out
    assert "inactive profiles queued for erasure: 0" in out
    assert count(EVENT) == 1
    assert len(ledger_runs()) == 2


def test_the_daily_job_is_registered() -> None:
    spec = next(s for s in product_jobs() if s.id == "retention.apply")
    assert spec.interval_s == 86_400
