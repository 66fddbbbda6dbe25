"""The event table as other domains' queries read it (segments, computed traits, journeys):
the table itself and typed reads of its JSON columns, the same SQLAlchemy Core on SQLite and
PostgreSQL.

A typed read yields the key's value only when it has the asked JSON type (else NULL), so a
string ``"5"`` never equals the number 5 on either database. Text reads take an explicit
collation: ``CODE_POINT`` compares and orders by code point on both databases (``COLLATE
"C"`` on PostgreSQL; SQLite's default is already binary), ``DATABASE`` keeps the database's
collation (equality is the same for both; only ordering can differ, so callers that order
wrap the value in ``code_point``).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import JSON, Boolean, Float, Integer, String, Table, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

Collation = Literal["code_point", "database"]
CODE_POINT: Collation = "code_point"
DATABASE: Collation = "database"


def events_table() -> Table:
    """The event table, as the ingestion domain declares it in the inventory (read only
    outside ingestion)."""
    from app.ingest.holder import HOLDER

    return next(t for t in HOLDER.tables if t.name == "event")


class _Read(FunctionElement[Any]):
    """A typed read of one top-level key of a JSON column: (column, key, SQLite path)."""

    inherit_cache = True

    def __init__(self, column: Any, key: str) -> None:
        super().__init__(column, literal(key, String()), literal(f'$."{key}"', String()))


class _text(_Read):
    """The key's value when it is a string, in the database's collation."""

    type = String()
    inherit_cache = True


class code_point(FunctionElement[str]):
    """A string compared and ordered by code point (``COLLATE "C"`` on PostgreSQL)."""

    type = String()
    inherit_cache = True


def json_text(column: Any, key: str, collation: Collation) -> Any:
    """The key's value when it is a string (else NULL), in the given collation."""
    read = _text(column, key)
    return code_point(read) if collation == CODE_POINT else read


class json_number(_Read):
    """The key's value when it is a number (else NULL)."""

    type = Float()
    inherit_cache = True


class json_scalar(_Read):
    """The key's value when it is a string or a number, kept as a JSON value (else NULL)."""

    type = JSON()
    inherit_cache = True


class json_bool(_Read):
    """The key's value when it is a boolean, as 1 or 0 (else NULL)."""

    type = Integer()
    inherit_cache = True


class json_present(_Read):
    """The key is there with a value other than JSON null."""

    type = Boolean()
    inherit_cache = True


class element_text(_Read):
    """The key's string value in an element of ``json_each``/``json_array_elements`` (an
    object), by code point; NULL for any other element."""

    type = String()
    inherit_cache = True


class json_has(FunctionElement[bool]):
    """A JSON list under the key holds the value (a string, by code point, or a number)."""

    type = Boolean()
    inherit_cache = True

    def __init__(self, column: Any, key: str, value: str | float) -> None:
        kind = String() if isinstance(value, str) else Float()
        super().__init__(column, literal(key, String()), literal(f'$."{key}"', String()), literal(value, kind))


class epoch(FunctionElement[int]):
    """Whole seconds since 1970 of a time column."""

    type = Integer()
    inherit_cache = True


def _parts(el: Any, compiler: Any, skip: int | None = None, **kw: Any) -> list[str]:
    """The rendered arguments, ``skip`` left out (rendering a bind registers it in the statement)."""
    return [("" if n == skip else compiler.process(c, **kw)) for n, c in enumerate(el.clauses)]


def _sqlite(el: Any, compiler: Any, kinds: str, then: str, **kw: Any) -> str:
    c, _k, p = _parts(el, compiler, 1, **kw)
    return f"(CASE WHEN json_type({c}, {p}) IN {kinds} THEN {then.format(c=c, p=p)} END)"


def _pg(el: Any, compiler: Any, kinds: str, then: str, **kw: Any) -> str:
    c, k, _p = _parts(el, compiler, 2, **kw)
    k = f"CAST({k} AS TEXT)"
    return f"(CASE WHEN json_typeof({c} -> {k}) IN {kinds} THEN {then.format(c=c, k=k)} END)"


@compiles(_text, "sqlite")
def _text_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    return _sqlite(el, compiler, "('text')", "json_extract({c}, {p})", **kw)


@compiles(_text, "postgresql")
def _text_pg(el: Any, compiler: Any, **kw: Any) -> str:
    return _pg(el, compiler, "('string')", "{c} ->> {k}", **kw)


@compiles(code_point, "sqlite")
def _code_point_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _parts(el, compiler, **kw)
    return str(x)


@compiles(code_point, "postgresql")
def _code_point_pg(el: Any, compiler: Any, **kw: Any) -> str:
    (x,) = _parts(el, compiler, **kw)
    return f'({x} COLLATE "C")'


@compiles(json_number, "sqlite")
def _number_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    return _sqlite(el, compiler, "('integer', 'real')", "json_extract({c}, {p})", **kw)


@compiles(json_number, "postgresql")
def _number_pg(el: Any, compiler: Any, **kw: Any) -> str:
    return _pg(el, compiler, "('number')", "CAST({c} ->> {k} AS DOUBLE PRECISION)", **kw)


@compiles(json_scalar, "sqlite")
def _scalar_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    return _sqlite(el, compiler, "('text', 'integer', 'real')", "json_extract({c}, {p})", **kw)


@compiles(json_scalar, "postgresql")
def _scalar_pg(el: Any, compiler: Any, **kw: Any) -> str:
    return _pg(el, compiler, "('string', 'number')", "{c} -> {k}", **kw)


@compiles(json_bool, "sqlite")
def _bool_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    c, _k, p = _parts(el, compiler, 1, **kw)
    return f"(CASE json_type({c}, {p}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"


@compiles(json_bool, "postgresql")
def _bool_pg(el: Any, compiler: Any, **kw: Any) -> str:
    return _pg(el, compiler, "('boolean')", "(CASE WHEN {c} ->> {k} = 'true' THEN 1 ELSE 0 END)", **kw)


@compiles(json_present, "sqlite")
def _present_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    c, _k, p = _parts(el, compiler, 1, **kw)
    return f"(COALESCE(json_type({c}, {p}), 'null') <> 'null')"


@compiles(json_present, "postgresql")
def _present_pg(el: Any, compiler: Any, **kw: Any) -> str:
    c, k, _p = _parts(el, compiler, 2, **kw)
    return f"(COALESCE(json_typeof({c} -> CAST({k} AS TEXT)), 'null') <> 'null')"


@compiles(element_text, "sqlite")
def _element_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    c, _k, p = _parts(el, compiler, 1, **kw)
    inner = f"(CASE WHEN json_type({c}, {p}) = 'text' THEN json_extract({c}, {p}) END)"
    return f"(CASE WHEN json_valid({c}) AND json_type({c}) = 'object' THEN {inner} END)"


@compiles(element_text, "postgresql")
def _element_pg(el: Any, compiler: Any, **kw: Any) -> str:
    c, k, _p = _parts(el, compiler, 2, **kw)
    k = f"CAST({k} AS TEXT)"
    inner = f"(CASE WHEN json_typeof({c} -> {k}) = 'string' THEN {c} ->> {k} END)"
    return f"""(CASE WHEN json_typeof({c}) = 'object' THEN {inner} END) COLLATE "C\""""


@compiles(json_has, "sqlite")
def _has_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    c, _k, p, v = _parts(el, compiler, 1, **kw)
    kinds = "('text')" if isinstance(list(el.clauses)[3].type, String) else "('integer', 'real')"
    return (
        f"(COALESCE(json_type({c}, {p}), '') = 'array' AND EXISTS "
        f"(SELECT 1 FROM json_each({c}, {p}) AS je WHERE je.type IN {kinds} AND je.value = {v}))"
    )


@compiles(json_has, "postgresql")
def _has_pg(el: Any, compiler: Any, **kw: Any) -> str:
    c, k, _p, v = _parts(el, compiler, 2, **kw)
    key = f"CAST({k} AS TEXT)"
    if isinstance(list(el.clauses)[3].type, String):
        item = """(CASE WHEN json_typeof(je.v) = 'string' THEN je.v #>> '{}' END) COLLATE "C\""""
    else:
        item = "(CASE WHEN json_typeof(je.v) = 'number' THEN CAST(je.v #>> '{}' AS DOUBLE PRECISION) END)"
    return (
        f"(CASE WHEN json_typeof({c} -> {key}) = 'array' THEN EXISTS "
        f"(SELECT 1 FROM json_array_elements({c} -> {key}) AS je(v) WHERE {item} = {v}) ELSE false END)"
    )


@compiles(epoch, "sqlite")
def _epoch_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    (c,) = _parts(el, compiler, **kw)
    return f"CAST(strftime('%s', {c}) AS INTEGER)"


@compiles(epoch, "postgresql")
def _epoch_pg(el: Any, compiler: Any, **kw: Any) -> str:
    (c,) = _parts(el, compiler, **kw)
    return f"CAST(floor(extract(epoch from {c})) AS BIGINT)"
