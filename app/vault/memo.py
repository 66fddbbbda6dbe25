"""Results memoised for the length of one unit of work (a processor's group of events):
the same identifiers repeat across a group's events, and their blind indexes, suppression
hashes and parsed phone numbers are pure functions of the value. Nothing outlives the
scope: the values are forgotten when it ends, never kept across groups."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_scope: ContextVar[dict[str, dict[Any, Any]] | None] = ContextVar("consentry_memo", default=None)


@contextmanager
def memo_scope() -> Iterator[None]:
    """Memoise within (nested scopes share the outer one)."""
    if _scope.get() is not None:
        yield
        return
    token = _scope.set({})
    try:
        yield
    finally:
        _scope.reset(token)


def memo(name: str) -> dict[Any, Any] | None:
    """The scope's table for ``name``; None outside a scope (compute every time)."""
    tables = _scope.get()
    if tables is None:
        return None
    table = tables.get(name)
    if table is None:
        table = tables[name] = {}
    return table
