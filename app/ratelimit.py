"""Rate limits per API key: Litestar's rate-limit middleware with a fixed-window counter kept
in a store every service process shares (Redis when ``CONSENTRY_REDIS_URL`` is set).

Requests are counted per key (the key id and a digest of the whole token, so a guessed key id
with a wrong secret cannot spend someone else's allowance); requests without a key are counted
per client address. Over the limit: 429 with ``Retry-After`` and a problem document.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal, cast

import anyio
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import DURATION_VALUES, RateLimitConfig, RateLimitMiddleware
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.types import Receive, Scope, Send

from app.access.guards import token_from_headers
from app.settings import Settings

STORE_NAME = "rate_limit"
Unit = Literal["second", "minute", "hour", "day"]


def parse_rate(text: str) -> tuple[Unit, int] | None:
    """``"6000/minute"`` → ("minute", 6000); ``"0"``, ``"off"`` or empty → no limit."""
    text = text.strip().lower()
    if text in ("", "0", "off", "none"):
        return None
    count, _, unit = text.partition("/")
    if unit not in DURATION_VALUES or not count.strip().isdigit() or int(count) <= 0:
        raise ValueError(f"CONSENTRY_RATE_LIMIT must look like 6000/minute (second, minute, hour, day), not {text!r}")
    return cast(Unit, unit), int(count)


def caller_identity(request: Any) -> str:
    """Whom a request is counted against: its API key, else its client address."""
    token = token_from_headers(request)
    if token:
        key_id = token.strip().split("_", 2)[1] if token.count("_") >= 2 else "-"
        return f"key:{key_id[:32]}:{hashlib.sha256(token.encode('utf-8', 'replace')).hexdigest()[:16]}"
    return "addr:" + (request.client.host if request.client else "unknown")


class KeyRateLimitMiddleware(RateLimitMiddleware):
    """A fixed window counted with one number per caller (atomic ``INCR`` on Redis), instead of
    the stock middleware's list of timestamps; 429s carry ``Retry-After``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request = app.request_class(scope)
        store = self.config.get_store_from_app(app)
        key = self.cache_key_from_request(request)
        window = DURATION_VALUES[self.unit]
        count, reset = await self._hit(store, key, window)
        remaining = max(0, self.max_requests - count)
        wait = max(1, reset - int(time.time()))
        headers = {
            self.config.rate_limit_policy_header_key: f"{self.max_requests}; w={window}",
            self.config.rate_limit_limit_header_key: str(self.max_requests),
            self.config.rate_limit_remaining_header_key: str(remaining),
            self.config.rate_limit_reset_header_key: str(wait),
        }
        if count > self.max_requests:
            raise TooManyRequestsException(
                detail=f"more than {self.max_requests} requests a {self.unit} for this key; retry in {wait} s",
                headers={**headers, "Retry-After": str(wait)},
            )
        if self.config.set_rate_limit_headers:

            async def send_wrapper(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message.setdefault("headers", [])
                    out = MutableScopeHeaders(message)
                    for name, value in headers.items():
                        out[name] = value
                await send(message)

            await self.app(scope, receive, send_wrapper)
            return
        await self.app(scope, receive, send)

    async def _hit(self, store: Store, key: str, window: int) -> tuple[int, int]:
        return await count_hit(store, key, window, self._lock)


async def count_hit(store: Store, key: str, window: int, lock: anyio.Lock) -> tuple[int, int]:
    """Count one request in a fixed window of ``window`` seconds; returns the count in the
    current window and when it ends (epoch s). Atomic: ``INCR`` and ``EXPIRE`` in one Redis
    transaction, or, in a process's own memory, under ``lock`` (one per app and counter)."""
    now = int(time.time())
    redis = getattr(store, "_redis", None)
    make_key = getattr(store, "_make_key", None)
    if redis is not None and make_key is not None:  # RedisStore: atomic across processes
        name = make_key(key)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, window, nx=True)
            pipe.ttl(name)
            count, _, ttl = await pipe.execute()
        return int(count), now + (int(ttl) if int(ttl) > 0 else window)
    async with lock:
        raw = await store.get(key)
        count, reset = 0, now + window
        if raw:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            old_count, _, old_reset = text.partition(":")
            if int(old_reset) > now:
                count, reset = int(old_count), int(old_reset)
        count += 1
        await store.set(key, f"{count}:{reset}", expires_in=max(1, reset - now))
        return count, reset


def rate_limit_store(settings: Settings) -> Store:
    """Redis (shared by every process) when ``CONSENTRY_REDIS_URL`` is set, else this process's memory."""
    if settings.redis_url:
        from litestar.stores.redis import RedisStore

        return RedisStore.with_client(url=settings.redis_url, namespace="consentry:ratelimit")
    return MemoryStore()


def rate_limit_middleware(settings: Settings) -> list[DefineMiddleware]:
    """The middleware for the configured limit (none when the limit is off)."""
    rate = parse_rate(settings.rate_limit)
    if rate is None:
        return []
    config = RateLimitConfig(
        rate_limit=rate,
        exclude=["^/health$", "^/docs"],
        identifier_for_request=caller_identity,
        middleware_class=KeyRateLimitMiddleware,
        store=STORE_NAME,
    )
    return [config.middleware]


__all__ = ["STORE_NAME", "caller_identity", "count_hit", "parse_rate", "rate_limit_middleware", "rate_limit_store"]
