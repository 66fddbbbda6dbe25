"""No key can stall the service: requests per key are rate-limited (429 with Retry-After and a
problem document), free text per request is capped, and PII detection runs off the event loop."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from app.pii.engine import PiiEngine
from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import auth, client, make_keys, sync_db


def _limited(monkeypatch: pytest.MonkeyPatch, rate: str, redis_url: str = "") -> None:
    monkeypatch.setenv("CONSENTRY_RATE_LIMIT", rate)
    monkeypatch.setenv("CONSENTRY_REDIS_URL", redis_url)
    get_settings.cache_clear()


def _track(c: Any, key: str, n: int = 0) -> Any:
    return c.post("/v1/track", json={"userId": f"rl-{n}", "event": "Hit"}, auth=(key, ""))


def _assert_429(r: Any) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["status"] == 429 and body["title"] == "Too many requests"


def test_each_key_gets_its_own_allowance_then_429_with_retry_after(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys()
    _limited(monkeypatch, "3/minute")
    key_id = keys["ingest"].split("_")[1]
    forged = f"csk_{key_id}_not-the-secret"
    with client() as c:
        for _ in range(5):  # a guessed key id with a wrong secret spends only its own allowance
            assert _track(c, forged).status_code in (401, 429)
        for n in range(3):
            r = _track(c, keys["ingest"], n)
            assert r.status_code == 200, r.text
            assert r.headers["RateLimit-Limit"] == "3"
        _assert_429(_track(c, keys["ingest"], 9))
        # another key is not affected, and /health is never limited
        assert c.post("/v1/keys", json={"role": "ingest", "name": "x"}, headers=auth(keys["admin"])).status_code == 201
        for _ in range(10):
            assert c.get("/health").status_code == 200
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM event")).scalar() == 3


def _redis_up() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_with_redis_the_count_is_shared_by_every_process(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys()  # fresh key ids: counters of earlier runs in the shared Redis do not apply
    _limited(monkeypatch, "3/minute", "redis://127.0.0.1:6379/0")
    with client() as one:  # one app instance (one service process) ...
        assert _track(one, keys["ingest"], 1).status_code == 200
        assert _track(one, keys["ingest"], 2).status_code == 200
    with client() as two:  # ... and another one, with memory of its own: the count lives in Redis
        assert _track(two, keys["ingest"], 3).status_code == 200
        _assert_429(_track(two, keys["ingest"], 4))
        assert _track(two, keys["admin"], 5).status_code == 200


def test_the_default_limit_is_generous(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        for n in range(120):
            r = c.get(f"/v1/imports/{uuid.uuid4()}", auth=(keys["ingest"], ""))
            assert r.status_code == 404, (n, r.status_code)
        assert int(r.headers["RateLimit-Limit"]) >= 1000


def test_free_text_per_request_is_capped_and_detection_runs_off_the_event_loop(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = make_keys()
    on_loop: list[bool] = []
    real = PiiEngine.analyze_many

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PiiEngine, "analyze_many", spy)
    big = "word " * 20_001  # 100,005 characters
    with client() as c:
        r = c.post(
            "/v1/texts",
            json={"texts": [{"text": big, "channel": "chat"}, {"text": big, "channel": "chat"}]},
            auth=(keys["ingest"], ""),
        )
        assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert r.json()["invalid-params"][0]["name"] == "texts"
        r = c.post("/v1/pii/scan", json={"texts": [big, big]}, headers=auth(keys["compliance"]))
        assert r.status_code == 413 and r.json()["invalid-params"][0]["name"] == "text"
        assert not on_loop  # refused before any detection ran
        one = {"text": "call me on +1 415 555 0100", "channel": "chat"}
        ok = c.post("/v1/texts", json=one, auth=(keys["ingest"], ""))
        assert ok.status_code == 201, ok.text
        scan = c.post("/v1/pii/scan", json={"text": big[:150_000]}, headers=auth(keys["compliance"]))
        assert scan.status_code == 200, scan.text
    assert on_loop and not any(on_loop)
    with sync_db() as conn:
        assert conn.execute(text("SELECT count(*) FROM text_record")).scalar() == 1
