"""Collecting from the browser: unmodified Segment analytics.js (@segment/analytics-next 1.84.3,
vendored under tests/browser/vendor/) in chromium, with a public write key, sends to Consentry;
and what a page elsewhere holding that public key can and cannot do."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.browser.plugin import LiveServer, TestSite
from tests.conftest import Env
from tests.helpers import auth, client, make_keys

SHOP = "http://shop.example"
OTHER_SITE = "http://other.example"


def _lookup(server: LiveServer, **q: str) -> list[str]:
    r = httpx.post(f"{server.url}/v1/profiles/lookup", json=q, headers=auth(server.keys["admin"]), timeout=30)
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["profiles"]]


def _events(server: LiveServer, pid: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{server.url}/v1/profiles/{pid}/events", headers=auth(server.keys["compliance"]), params={"limit": 100}
    )
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def _eventually(server: LiveServer, **q: str) -> list[str]:
    """Profiles found by ``q``, waiting for a delivery the page does not wait for (keepalive, beacon)."""
    deadline = time.monotonic() + 30
    while not (found := _lookup(server, **q)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def _open_shop(page: Any, site: TestSite, server: LiveServer, batch: int | None = None, foreign: bool = False) -> None:
    """The shop page with analytics.js pointed at ``server`` (set before its scripts run, not in the URL)."""
    config = {"consentry": server.url, "key": server.keys["client"], "batch": batch}
    page.add_init_script(f"window.shopConfig = {json.dumps(config)};")
    page.goto(site.url("shop.html", foreign=foreign))


def test_page_track_and_identify_arrive_and_an_anonymous_visit_then_identify_is_one_profile(
    page: Any, live_server: LiveServer, test_site: TestSite
) -> None:
    member = f"member-{uuid.uuid4().hex[:8]}"
    _open_shop(page, test_site, live_server)
    anon = page.evaluate(
        """async () => {
            const a = await window.shop;
            await a.page("Shop", "Home", {path: "/"});
            await a.track("Product Viewed", {sku: "BB-23", category: "basketball shoes"});
            return a.user().anonymousId();
        }"""
    )
    assert len(_lookup(live_server, kind="anonymous_id", value=anon)) == 1  # stored before the SDK was answered
    page.evaluate(
        "async ([member]) => { await (await window.shop).identify(member, {plan: 'pro', firstName: 'Jordan'}); }",
        [member],
    )
    pid = _lookup(live_server, kind="user_id", value=member)
    assert len(pid) == 1 and _lookup(live_server, kind="anonymous_id", value=anon) == pid
    events = _events(live_server, pid[0])
    assert sorted(e["type"] for e in events) == ["identify", "page", "track"]
    viewed = next(e for e in events if e["type"] == "track")
    assert viewed["name"] == "Product Viewed" and viewed["properties"]["category"] == "basketball shoes"
    assert viewed["anonymousId"] == anon and viewed["context"]["library"]["name"] == "analytics.js"
    assert viewed["context"]["page"]["path"] == "/shop.html"
    assert live_server.keys["client"] not in json.dumps(events)  # the write key is not kept with the events


def test_batching_delivery_sends_on_size_and_when_the_page_is_left(
    page: Any, live_server: LiveServer, test_site: TestSite
) -> None:
    posted: list[str] = []
    page.context.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    _open_shop(page, test_site, live_server, batch=3)
    anon = page.evaluate(
        """async () => {
            const a = await window.shop;
            await a.page("Shop", "Home");
            await a.track("Product Viewed", {category: "basketball shoes"});
            await a.track("Added to Cart", {category: "basketball shoes"});
            return a.user().anonymousId();
        }"""
    )
    (pid,) = _eventually(live_server, kind="anonymous_id", value=anon)
    assert sorted(e["name"] for e in _events(live_server, pid)) == ["Added to Cart", "Home", "Product Viewed"]
    # two more wait in the buffer (size 3, no timer due): leaving the page flushes them (keepalive)
    page.evaluate("async () => { const a = await window.shop; await a.track('Size Chosen', {size: 44}); }")
    page.evaluate("async () => { const a = await window.shop; await a.track('Wishlist Added'); }")
    page.click("#leave")
    page.wait_for_url("**/left.html")
    deadline = time.monotonic() + 30
    while len(_events(live_server, pid)) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_events(live_server, pid)) == 5
    assert {u.rsplit("/", 1)[-1] for u in posted if u.startswith(live_server.url)} == {"b"}


def test_a_send_beacon_batch_is_accepted(page: Any, live_server: LiveServer, test_site: TestSite) -> None:
    anon = f"beacon-{uuid.uuid4().hex[:8]}"
    _open_shop(page, test_site, live_server)
    body = {"writeKey": live_server.keys["client"], "batch": [{"type": "track", "anonymousId": anon, "event": "Left"}]}
    with page.expect_response(lambda r: r.url.endswith("/v1/b")) as answered:
        assert page.evaluate(
            "([url, body]) => navigator.sendBeacon(url, body)", [f"{live_server.url}/v1/b", json.dumps(body)]
        )
    assert answered.value.status == 200
    (pid,) = _lookup(live_server, kind="anonymous_id", value=anon)
    assert [e["name"] for e in _events(live_server, pid)] == ["Left"]


def test_a_page_on_an_origin_not_allowed_is_refused_and_nothing_is_stored(
    page: Any, live_server: LiveServer, test_site: TestSite
) -> None:
    _open_shop(page, test_site, live_server, foreign=True)
    assert page.evaluate("() => window.shop.then(() => 'loaded', () => 'refused')") == "refused"
    anon = f"foreign-{uuid.uuid4().hex[:8]}"
    body = {"writeKey": live_server.keys["client"], "batch": [{"type": "track", "anonymousId": anon, "event": "X"}]}
    with page.expect_response(lambda r: r.url.endswith("/v1/b")) as beacon:  # a beacon needs no preflight
        page.evaluate("([url, body]) => navigator.sendBeacon(url, body)", [f"{live_server.url}/v1/b", json.dumps(body)])
    assert beacon.value.status == 403
    fetched = page.evaluate(
        """async ([url, key, anon]) => {
            try {
                await fetch(url, {method: "POST", headers: {"Content-Type": "text/plain",
                    "Authorization": "Basic " + btoa(key + ":")},
                    body: JSON.stringify({type: "track", anonymousId: anon, event: "X"})});
                return "sent";
            } catch (e) { return "blocked"; }
        }""",
        [f"{live_server.url}/v1/t", live_server.keys["client"], anon],
    )
    assert fetched == "blocked"  # its preflight is refused: the request itself is never sent
    assert _lookup(live_server, kind="anonymous_id", value=anon) == []


# --- the same routes without a browser: what a script holding the public key can do ------------


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.fixture
def keys(env: Env, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("CONSENTRY_BROWSER_ORIGINS", f"test-web={SHOP}, other-web={OTHER_SITE}")
    return make_keys()


def test_settings_name_consentry_and_preflights_answer_only_allowed_origins(keys: dict[str, str]) -> None:
    with client() as c:
        r = c.get(f"/v1/projects/{keys['client']}/settings", headers={"Origin": SHOP})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == SHOP
        segment = r.json()["integrations"]["Segment.io"]
        assert segment["apiHost"] == "testserver.local/v1" and list(r.json()["integrations"]) == ["Segment.io"]
        assert r.json()["remotePlugins"] == [] and r.json()["metrics"]["sampleRate"] == 0
        assert c.get(f"/v1/projects/{keys['client']}/settings", headers={"Origin": OTHER_SITE}).status_code == 403
        assert c.get(f"/v1/projects/{keys['ingest']}/settings", headers={"Origin": SHOP}).status_code == 404
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
        ok = c.options("/v1/b", headers={"Origin": SHOP, **ask})
        assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == SHOP
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        evil = c.options("/v1/b", headers={"Origin": "http://evil.example", **ask})
        assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers


def test_a_public_key_is_refused_from_another_sources_origin_without_an_origin_and_a_server_key_always(
    keys: dict[str, str],
) -> None:
    msg = {"type": "track", "anonymousId": "tab-1", "event": "Viewed"}
    text = {"Content-Type": "text/plain"}
    with client() as c:
        for headers, status in [
            ({"Origin": OTHER_SITE, "Authorization": _basic(keys["client"])}, 403),  # allowed, for other-web only
            ({"Authorization": _basic(keys["client"])}, 403),  # no Origin: a script, not a page
            ({"Origin": "null", "Authorization": _basic(keys["client"])}, 403),
            ({"Origin": SHOP, "Authorization": _basic(keys["ingest"])}, 401),  # a backend's secret key
            ({"Origin": SHOP, "Authorization": _basic(keys["admin"])}, 401),
            ({"Origin": SHOP}, 401),  # no key at all
        ]:
            r = c.post("/v1/t", content=json.dumps(msg), headers={**text, **headers})
            assert r.status_code == status, (headers, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "access-control-allow-origin" not in r.headers
            assert keys["client"] not in r.text and keys["ingest"] not in r.text
        mixed = {"writeKey": keys["client"], **msg}
        r = c.post("/v1/t", content=json.dumps(mixed), headers={**text, "Origin": SHOP, "Authorization": _basic("x")})
        assert r.status_code == 401  # the header and the body name different keys
        lookup = c.post(
            "/v1/profiles/lookup", json={"kind": "anonymous_id", "value": "tab-1"}, headers=auth(keys["admin"])
        )
        assert lookup.json()["profiles"] == []
        bad = c.post("/v1/b", content=b'{"batch": [', headers={**text, "Origin": SHOP})
        assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == SHOP  # the page may read why


def test_a_page_claiming_someone_elses_email_neither_links_nor_rewrites_them(keys: dict[str, str]) -> None:
    with client() as c:
        r = c.post(
            "/v1/identify",
            json={"userId": "vera-1", "traits": {"email": "vera@example.com", "firstName": "Vera"}},
            auth=(keys["ingest"], ""),
        )
        assert r.status_code == 200, r.text
        (victim,) = [
            p["id"]
            for p in c.post(
                "/v1/profiles/lookup", json={"email": "vera@example.com"}, headers=auth(keys["admin"])
            ).json()["profiles"]
        ]
        attack = {
            "type": "identify",
            "anonymousId": "mallory-tab",
            "traits": {"email": "vera@example.com", "firstName": "Mallory"},
        }
        body = json.dumps({"writeKey": keys["client"], "batch": [attack]})
        assert (
            c.post("/v1/b", content=body, headers={"Content-Type": "text/plain", "Origin": SHOP}).json()["accepted"]
            == 1
        )
        view = c.get(f"/v1/profiles/{victim}", headers=auth(keys["compliance"])).json()
        assert view["traits"]["firstName"] == "Vera"
        assert sorted(i["kind"] for i in view["identities"]) == ["email", "user_id"]
        found = c.post(
            "/v1/profiles/lookup", json={"kind": "anonymous_id", "value": "mallory-tab"}, headers=auth(keys["admin"])
        )
        assert [p["id"] for p in found.json()["profiles"]] not in ([], [victim])
