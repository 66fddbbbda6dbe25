"""Unmodified official SDKs (Segment, RudderStack) against a real Consentry server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Env
from tests.helpers import auth, grant_marketing, live_server, make_keys


@pytest.fixture
def server(env: Env) -> Iterator[tuple[str, dict[str, str]]]:
    keys = make_keys()
    with live_server(env.environ()) as base:
        yield base, keys


def _find(base: str, key: str, **lookup: str) -> list[dict[str, Any]]:
    r = httpx.post(f"{base}/v1/profiles/lookup", json=lookup, headers=auth(key), timeout=30)
    assert r.status_code == 200, r.text
    profiles: list[dict[str, Any]] = r.json()["profiles"]
    return profiles


def _timeline(base: str, key: str, pid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/v1/profiles/{pid}/events", headers=auth(key), params={"limit": 100}, timeout=30)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def test_segment_sdk_anonymous_browsing_then_login_is_one_profile_with_full_history(
    server: tuple[str, dict[str, str]],
) -> None:
    import segment.analytics as segment

    base, keys = server
    errors: list[Any] = []
    client = segment.Client(
        write_key=keys["ingest"], host=base, sync_mode=True, max_retries=1, on_error=lambda e, batch: errors.append(e)
    )
    anon = "anon-7f3a"
    client.page(anonymous_id=anon, name="Home", properties={"path": "/"})
    client.track(anonymous_id=anon, event="Product Viewed", properties={"sku": "BB-23", "category": "basketball shoes"})
    client.identify(
        user_id="user-42",
        anonymous_id=anon,
        traits={"email": "Jordan.Lee@Example.com", "firstName": "Jordan", "plan": "pro"},
    )
    client.track(user_id="user-42", event="Order Completed", properties={"revenue": 129.0, "currency": "USD"})
    client.flush()
    assert not errors

    found = _find(base, keys["compliance"], email="jordan.lee@example.com")
    assert len(found) == 1
    pid = found[0]["id"]
    assert found[0]["traits"]["firstName"] == "Jordan" and found[0]["traits"]["plan"] == "pro"
    assert [p["id"] for p in _find(base, keys["compliance"], kind="anonymous_id", value=anon)] == [pid]
    events = _timeline(base, keys["compliance"], pid)
    assert sorted(e["type"] for e in events) == ["identify", "page", "track", "track"]
    viewed = next(e for e in events if e["name"] == "Product Viewed")
    assert viewed["properties"]["category"] == "basketball shoes" and viewed["anonymousId"] == anon
    assert viewed["context"]["library"]["name"] == "analytics-python"

    full = httpx.get(f"{base}/v1/profiles/{pid}", headers=auth(keys["compliance"]), timeout=30).json()
    kinds = sorted(i["kind"] for i in full["identities"])
    assert kinds == ["anonymous_id", "email", "user_id"]
    assert full["summary"]["events"] == 4 and full["summary"]["tracked"]["Order Completed"] == 1
    assert full["sources"]["email"]["source"] == "test-source"
    grant_marketing(httpx.Client(base_url=base, timeout=30), keys["compliance"], pid)
    masked = httpx.get(f"{base}/v1/profiles/{pid}", headers=auth(keys["marketer"]), timeout=30).json()
    assert masked["traits"]["email"] == "j***@example.com"
    assert all("anonymousId" not in e and "context" not in e for e in masked["recent_events"])


def test_rudderstack_sdk_gzip_batches_alias_and_replays(server: tuple[str, dict[str, str]]) -> None:
    from rudderstack.analytics.client import Client

    base, keys = server
    errors: list[Any] = []
    client = Client(
        write_key=keys["ingest"],
        host=base,
        sync_mode=True,
        max_retries=1,
        gzip=True,
        on_error=lambda e, batch: errors.append(e),
    )
    client.identify(user_id="r-1", traits={"email": "mei@example.cn", "name": "王美"}, message_id="m-1")
    client.alias(previous_id="device-cookie-9", user_id="r-1", message_id="m-2")
    client.track(anonymous_id="device-cookie-9", event="Cart Viewed", message_id="m-3")
    client.track(user_id="r-1", event="Cart Viewed", message_id="m-3")  # replay of m-3: stored once
    client.flush()
    assert not errors

    found = _find(base, keys["admin"], kind="user_id", value="r-1")
    assert len(found) == 1 and found[0]["traits"]["name"] == "王美"
    events = _timeline(base, keys["admin"], found[0]["id"])
    assert sorted(e["type"] for e in events) == ["alias", "identify", "track"]
    cart = next(e for e in events if e["type"] == "track")
    assert cart["anonymousId"] == "device-cookie-9"
