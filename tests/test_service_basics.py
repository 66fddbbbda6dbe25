"""Logging scrubber, migrations, demo data, health and problem details for unknown routes."""

from __future__ import annotations

import json
import logging

from sqlalchemy import inspect, text

from app.db import create_sync_engine
from app.logs import scrub_pii, scrub_text
from app.migrate import downgrade, upgrade
from tests.conftest import Env, run
from tests.helpers import auth, client, sync_db


def test_scrubber_masks_pii_in_text_and_fields_but_keeps_ids_and_dates() -> None:
    assert scrub_text("mail a.b@example.co.uk now") == "mail [EMAIL] now"
    assert scrub_text("call +86 138-1234-5678 or (415) 555-0199") == "call [PHONE] or [PHONE]"
    kept = "profile 123e4567-e89b-12d3-a456-426614174000 on 2026-11-25 took 1234 ms"
    assert scrub_text(kept) == kept
    event = scrub_pii(
        None,
        "info",
        {"event": "x", "email": "a@b.co", "traits": {"plan": "pro"}, "details": {"phone": "123", "count": 3}},
    )
    assert event == {
        "event": "x",
        "email": "[REDACTED]",
        "traits": "[REDACTED]",
        "details": {"phone": "[REDACTED]", "count": 3},
    }


def test_log_lines_are_json_with_the_request_id(env: Env) -> None:
    with client() as c:
        c.get("/health", headers={"X-Request-ID": "trace-me-1"})
        logging.getLogger("x").info("done")
    lines = [json.loads(line) for line in env.log_file.read_text().splitlines()]
    access = [entry for entry in lines if entry.get("event") == "request" and entry.get("path") == "/health"]
    assert access and access[0]["request_id"] == "trace-me-1" and access[0]["status"] == 200


def test_migrations_go_down_and_up_again(env: Env) -> None:
    downgrade(revision="base")
    engine = create_sync_engine()
    assert "profile" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade()
    engine = create_sync_engine()
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"profile", "profile_field", "subject_key", "identifier", "audit_entry", "audit_head"} <= names
    with sync_db() as conn:
        assert conn.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar_one() == 0


def test_demo_data_has_english_and_chinese_customers_and_keys_per_role(env: Env) -> None:
    from app.demo import load_demo

    keys = run(load_demo(6, env.tmp / "demo-keys.json"))
    again = run(load_demo(6, env.tmp / "demo-keys.json"))
    assert keys == again and set(keys) == {"admin", "ingest", "marketer", "compliance", "auditor"}
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM profile WHERE merged_into IS NULL")).scalar() == 6
        ids = [r[0] for r in conn.execute(text("SELECT id FROM profile WHERE merged_into IS NULL"))]
    with client() as c:
        views = [c.get(f"/v1/profiles/{pid}", headers=auth(keys["compliance"])).json() for pid in ids]
    names = [v["traits"]["name"] for v in views]
    # each demo customer browsed anonymously, then logged in: one profile with the whole history
    assert all(v["summary"]["by_type"].get("page") == 1 and v["summary"]["events"] >= 3 for v in views)
    assert any(all("\u4e00" <= ch <= "\u9fff" for ch in n) for n in names)  # a Chinese name
    assert any(n.isascii() for n in names)


def test_unknown_route_is_a_problem_document(env: Env) -> None:
    with client() as c:
        r = c.get("/v1/nothing-here")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
        assert c.get("/health").json() == {"status": "ok", "database": "ok"}
        assert c.get("/docs/openapi.json").json()["info"]["title"] == "Consentry"


def test_migrations_match_the_models(env: Env) -> None:
    from alembic import command

    from app.migrate import alembic_config

    command.check(alembic_config())  # raises if a model changed without a migration
