"""``insert_rows``, the processor's bulk write: a group's rows (COPY on PostgreSQL from
``COPY_ROWS`` rows) are stored with the same values as a few rows (one INSERT per row), and
a conflict is the same SQLAlchemy error, with its SQLSTATE, whichever way was taken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db import COPY_ROWS, insert_rows, sqlstate, table_of, unit_of_work
from app.ingest.models import Event
from tests.conftest import Env, run

AT = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


def _rows(n: int, tag: str) -> list[dict[str, Any]]:
    paris = timezone(timedelta(hours=1))
    return [
        {
            "id": f"{tag}-{i}",
            "profile_id": f"p-{i % 5}",
            "origin_id": f"p-{i % 5}",
            "source": "crm",
            "message_id": f"{tag}-m-{i}",
            "type": "track",
            "name": None if i % 2 else "Order Completed",
            "occurred_at": AT.astimezone(paris) + timedelta(seconds=i),  # stored as UTC
            "received_at": AT.replace(tzinfo=None),  # naive: read as UTC
            "properties": {"revenue": i, "sku": f"S{i}", "nested": {"ok": True}},
            "traits": {},
            "key_version": 1,
            "sealed": bytes([i % 256]) * 3,
        }
        for i in range(n)
    ]


def _stored(tag: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        t = table_of(Event)
        async with unit_of_work() as s:
            rows = (await s.execute(select(t).where(t.c.id.like(f"{tag}-%")))).all()
        return sorted((dict(r._mapping) for r in rows), key=lambda r: int(r["id"].split("-")[1]))

    return run(go())


def _insert(rows: list[dict[str, Any]]) -> None:
    async def go() -> None:
        async with unit_of_work() as s:
            await s.execute(select(1))  # the transaction is open, as in the processor
            await insert_rows(s, table_of(Event), rows)

    run(go())


def test_bulk_rows_store_the_same_values_as_single_rows(env: Env) -> None:
    many, few = _rows(COPY_ROWS + 50, "bulk"), _rows(3, "few")
    _insert(many)
    _insert(few)
    bulk, single = _stored("bulk"), _stored("few")
    assert len(bulk) == len(many) and len(single) == 3
    for stored in (bulk[:3], single):
        for i, row in enumerate(stored):
            assert row["occurred_at"] == AT + timedelta(seconds=i)
            assert row["received_at"] == AT
            assert row["properties"] == {"revenue": i, "sku": f"S{i}", "nested": {"ok": True}}
            assert row["name"] == (None if i % 2 else "Order Completed")
            assert bytes(row["sealed"]) == bytes([i]) * 3
    assert [{k: v for k, v in r.items() if k not in ("id", "message_id")} for r in bulk[:3]] == [
        {k: v for k, v in r.items() if k not in ("id", "message_id")} for r in single
    ]


def test_times_repeated_across_rows_and_columns_are_stored_as_given(env: Env) -> None:
    """A statement converts each distinct time once (shared by its time columns): the same
    instant written in another zone, naive (read as UTC) or aware, and a time a microsecond
    apart each keep their own value."""
    tokyo = timezone(timedelta(hours=9))
    times = [AT, AT.astimezone(tokyo), AT.replace(tzinfo=None), AT + timedelta(microseconds=1), AT]
    rows = _rows(len(times), "times")
    for row, at in zip(rows, times, strict=True):
        row["occurred_at"], row["received_at"] = at, times[-1 - rows.index(row)]
    _insert(rows)
    stored = _stored("times")
    expected = [AT, AT, AT, AT + timedelta(microseconds=1), AT]
    assert [r["occurred_at"] for r in stored] == expected
    assert [r["received_at"] for r in stored] == expected[::-1]


@pytest.mark.parametrize("n", [3, COPY_ROWS + 10])
def test_a_conflicting_bulk_write_is_an_integrity_error_and_stores_nothing(env: Env, n: int) -> None:
    _insert(_rows(1, f"dup{n}"))
    rows = _rows(n, f"dup{n}")  # its first row's id is taken
    with pytest.raises(IntegrityError) as caught:
        _insert(rows)
    if not env.url.startswith("sqlite"):
        assert sqlstate(caught.value) == "23505"  # unique_violation, as an INSERT reports it
    assert len(_stored(f"dup{n}")) == 1
