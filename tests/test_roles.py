"""Every endpoint against every role: 401 without a valid key, 403 for a wrong role."""

from __future__ import annotations

import re
import subprocess
import sys

from litestar.routes import HTTPRoute

from app.main import create_app
from tests.conftest import ROLES, Env
from tests.helpers import auth, client, make_keys

PUBLIC = None
ADMIN = {"admin"}
INGEST = {"ingest", "admin"}
EXPECTED: dict[tuple[str, str], set[str] | None] = {
    ("GET", "/health"): PUBLIC,
    ("POST", "/v1/profiles"): {"admin", "compliance"},
    ("PATCH", "/v1/profiles/{profile_id:str}"): {"admin", "compliance"},
    ("POST", "/v1/profiles/{profile_id:str}/unmerge"): ADMIN,
    ("GET", "/v1/profiles/{profile_id:str}"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/profiles/lookup"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/profiles/{profile_id:str}/events"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/profiles/{profile_id:str}/identities"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/profiles/{profile_id:str}/merges"): {"admin", "compliance", "marketer"},
    **{("POST", f"/v1/{t}"): INGEST for t in ("identify", "track", "page", "screen", "group", "alias", "batch")},
    ("GET", "/v1/ingest/status"): ADMIN,
    ("POST", "/v1/ingest/failures/{batch_id:str}/retry"): ADMIN,
    ("POST", "/v1/imports"): INGEST,
    ("GET", "/v1/imports/{import_id:str}"): INGEST,
    ("GET", "/v1/imports/{import_id:str}/rejects"): INGEST,
    ("POST", "/v1/texts"): INGEST,
    ("GET", "/v1/texts/{text_id:str}"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/pii/scan"): {"compliance", "admin"},
    ("POST", "/v1/keys"): ADMIN,
    ("GET", "/v1/keys"): ADMIN,
    ("DELETE", "/v1/keys/{key_id:str}"): ADMIN,
    ("GET", "/v1/audit/entries"): {"auditor", "admin"},
    ("GET", "/v1/audit/export"): {"auditor", "admin"},
    ("GET", "/v1/audit/checkpoints"): {"auditor", "admin"},
    ("POST", "/v1/audit/checkpoints"): {"auditor", "admin"},
    ("GET", "/v1/audit/public-key"): {"auditor", "admin"},
    ("GET", "/v1/audit/verify"): {"auditor", "admin"},
    ("GET", "/v1/audit/tree-head"): {"auditor", "admin"},
    ("POST", "/v1/audit/tree-heads"): {"auditor", "admin"},
    ("GET", "/v1/audit/consistency"): {"auditor", "admin"},
    ("GET", "/v1/audit/inclusion"): {"auditor", "admin"},
    ("GET", "/v1/fields/review"): ADMIN,
    ("POST", "/v1/fields/review"): ADMIN,
    ("POST", "/v1/consents"): {"admin", "compliance"},
    ("GET", "/v1/profiles/{profile_id:str}/consents"): {"admin", "compliance"},
    ("POST", "/v1/decisions"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/consents/{record_id:str}/receipt"): {"admin", "compliance"},
    ("GET", "/v1/decisions/explain"): {"admin", "compliance", "auditor"},
    ("GET", "/v1/jobs"): ADMIN,
    ("GET", "/v1/jobs/runs"): ADMIN,
    ("POST", "/v1/dsr"): PUBLIC,  # the public form; a key makes it the staff intake (compliance, admin)
    ("POST", "/v1/dsr/{request_id:str}/verify"): PUBLIC,
    ("GET", "/v1/dsr"): {"compliance", "admin"},
    ("GET", "/v1/dsr/{request_id:str}"): {"compliance", "admin"},
    ("GET", "/v1/dsr/{request_id:str}/outbox"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/status"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/extend"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/wait"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/resume"): {"compliance", "admin"},
    ("POST", "/v1/dsr/bulk"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/codes"): {"compliance", "admin"},
    ("GET", "/v1/dsr/{request_id:str}/plan"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/run"): {"compliance", "admin"},
    ("POST", "/v1/dsr/{request_id:str}/steps/{store:str}/retry"): {"compliance", "admin"},
    ("GET", "/v1/dsr/{request_id:str}/certificate"): {"compliance", "admin", "auditor"},
    ("POST", "/v1/segments/preview"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/segments"): {"admin", "marketer"},
    ("GET", "/v1/segments"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/segments/{segment_id:str}"): {"admin", "compliance", "marketer"},
    ("PUT", "/v1/segments/{segment_id:str}"): {"admin", "marketer"},
    ("DELETE", "/v1/segments/{segment_id:str}"): {"admin", "marketer"},
    ("GET", "/v1/segments/{segment_id:str}/members"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/segments/{segment_id:str}/sizes"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/reports/segment-sizes"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/reports/consent-rates"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/reports/reach"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/reports/overlap"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/destinations"): {"admin", "marketer"},
    ("GET", "/v1/destinations"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/destinations/{destination_id:str}"): {"admin", "compliance", "marketer"},
    ("PUT", "/v1/destinations/{destination_id:str}"): {"admin", "marketer"},
    ("DELETE", "/v1/destinations/{destination_id:str}"): {"admin", "marketer"},
    ("GET", "/v1/destinations/{destination_id:str}/dead-letters"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/activations"): {"admin", "marketer"},
    ("GET", "/v1/activations"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/activations/{activation_id:str}"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/activation-schedules"): {"admin", "marketer"},
    ("GET", "/v1/activation-schedules"): {"admin", "compliance", "marketer"},
    ("DELETE", "/v1/activation-schedules/{schedule_id:str}"): {"admin", "marketer"},
    ("GET", "/v1/tags"): {"admin", "compliance", "marketer"},
    ("POST", "/v1/tags/{tag:str}/people"): {"admin", "marketer"},
    ("POST", "/v1/journeys"): {"admin", "marketer"},
    ("GET", "/v1/journeys"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/journeys/{journey_id:str}"): {"admin", "compliance", "marketer"},
    ("PUT", "/v1/journeys/{journey_id:str}"): {"admin", "marketer"},
    ("DELETE", "/v1/journeys/{journey_id:str}"): {"admin", "marketer"},
    ("GET", "/v1/journeys/{journey_id:str}/sends"): {"admin", "compliance", "marketer"},
    ("GET", "/v1/traits"): {"admin", "compliance", "marketer", "auditor"},
    ("POST", "/v1/traits/refresh"): ADMIN,
}


BROWSER: set[tuple[str, str]] = {
    ("GET", "/v1/projects/{write_key:str}/settings"),
    *{("POST", f"/v1/{t}") for t in "tipsgab"},
}
"""Browser collection (analytics.js): admitted by a public ``client`` write key from an origin
listed for its source, never by a role (tests/test_browser_sdk.py, test_browser_security.py)."""


def _routes() -> set[tuple[str, str]]:
    found = set()
    for route in create_app().routes:  # console pages: tests/test_console_roles.py
        if not isinstance(route, HTTPRoute) or route.path.startswith(("/docs", "/console")):
            continue
        for method in route.methods:
            if method not in {"HEAD", "OPTIONS"}:
                found.add((method, route.path))
    return found


def test_the_matrix_covers_every_endpoint() -> None:
    assert _routes() == set(EXPECTED) | BROWSER, "add new endpoints to EXPECTED with the roles they admit"


def test_browser_collection_admits_no_staff_or_server_key(env: Env) -> None:
    keys = make_keys()
    origin = {"Origin": "https://shop.example"}
    with client() as c:
        for method, template in sorted(BROWSER):
            for role in (*ROLES, None):
                key = keys[role] if role else "csk_000000000000_nope"
                path = template.replace("{write_key:str}", key)
                body = {"batch": [{"type": "track", "event": "E", "userId": "u"}], "writeKey": key}
                r = c.request(method, path, json=body if method == "POST" else None, headers={**origin, **auth(key)})
                assert r.status_code in {401, 403, 404}, (role, method, template, r.status_code)
                assert r.headers["content-type"].startswith("application/problem+json")
                assert key not in r.text


def test_role_by_endpoint_matrix(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        revoked = c.post("/v1/keys", json={"role": "admin", "name": "old"}, headers=auth(keys["admin"])).json()
        assert c.delete(f"/v1/keys/{revoked['id']}", headers=auth(keys["admin"])).status_code == 200
        for (method, template), allowed in EXPECTED.items():
            path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", template)
            body = {} if method in {"POST", "PATCH"} else None

            def call(headers: dict[str, str], method: str = method, path: str = path, body: object = body):  # type: ignore[no-untyped-def]
                return c.request(method, path, json=body, headers=headers)

            if allowed is None:  # no key needed (a public form may still refuse an empty body)
                assert call({}).status_code not in {401, 403}, (method, template)
                continue
            for headers in ({}, auth("csk_000000000000_nope"), auth(revoked["key"]), {"X-API-Key": "garbage"}):
                r = call(headers)
                assert r.status_code == 401, (method, template, r.status_code)
                assert r.headers["content-type"].startswith("application/problem+json")
            for role in ROLES:
                r = call(auth(keys[role]))
                if role in allowed:
                    assert r.status_code not in {401, 403}, (role, method, template, r.text)
                else:
                    assert r.status_code == 403, (role, method, template, r.status_code)
                    assert r.json()["title"] == "Forbidden" and r.json()["status"] == 403


def test_write_key_works_as_basic_auth_user_name(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/track", json={"userId": "u1", "event": "Viewed"}, auth=(keys["ingest"], ""))
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert c.post("/v1/track", json={"userId": "u1", "event": "Viewed"}, auth=("wrong", "")).status_code == 401


def test_cli_prints_a_new_key_as_the_only_line_on_stdout(env: Env) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "keys", "create", "--role", "marketer", "--name", "crm"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("csk_")
    with client() as c:
        assert c.get("/v1/keys", headers=auth(lines[0])).status_code == 403  # a marketer key, and it works
    bad = subprocess.run(
        [sys.executable, "-m", "app", "keys", "create", "--role", "root", "--name", "x"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and bad.stdout == ""
