"""Database engines and sessions for requests, jobs and the CLI."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy import JSON, DateTime, Engine, Table, TypeDecorator, create_engine, event, insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.settings import get_settings

T = TypeVar("T")
_async_engines: dict[tuple[str, int], AsyncEngine] = {}
_makers: dict[tuple[str, int], async_sessionmaker[AsyncSession]] = {}
"""Per database and event loop: an asyncpg connection belongs to the loop that opened it (a
service process has one loop; a test or CLI step running beside an app in a thread has two)."""


def _loop() -> int:
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return 0


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def async_url(url: str) -> str:
    """The same database addressed through its asyncio driver."""
    u = make_url(url)
    driver = "aiosqlite" if u.get_backend_name() == "sqlite" else "asyncpg"
    return u.set(drivername=f"{u.get_backend_name()}+{driver}").render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The same database addressed through its blocking driver (migrations, scans)."""
    u = make_url(url)
    driver = "pysqlite" if u.get_backend_name() == "sqlite" else "psycopg"
    return u.set(drivername=f"{u.get_backend_name()}+{driver}").render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _ensure_sqlite_dir(url: str) -> None:
    """The database's folder (0700) and file (0600) exist and are private before SQLite opens
    them; SQLite gives its WAL and shared-memory files the database file's mode."""
    db = make_url(url).database
    if db and db != ":memory:" and not db.startswith("file:"):
        path = Path(db)
        private_path(path.parent, directory=True)
        path.touch(mode=0o600, exist_ok=True)
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            private_path(f)


def private_path(path: Path, directory: bool = False) -> None:
    """Make ``path`` readable by this user only: 0700 folders (created if missing), 0600 files."""
    if directory:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = 0o700 if directory else 0o600
    try:
        if path.exists() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except PermissionError:  # not ours: leave it to its owner
        pass


# NO_JIT: PostgreSQL's JIT compiler is off on our connections. The decision engine's CASE over
# a person's consent (a few hundred nodes) cost 1.7 s of compilation on a 12,000-person count
# that runs in 70 ms without it (PostgreSQL 15, 100,000 profiles).


def get_engine(url: str | None = None) -> AsyncEngine:
    """The process-wide async engine for ``url`` (default: the configured database)."""
    url = url or get_settings().database_url
    key = (url, _loop())
    if key not in _async_engines:
        kwargs: dict[str, Any] = {"hide_parameters": True}  # no bound value in any log or error text
        if is_sqlite(url):
            _ensure_sqlite_dir(url)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
            kwargs["connect_args"] = {"server_settings": {"jit": "off"}}  # see NO_JIT
        engine = create_async_engine(async_url(url), **kwargs)
        if is_sqlite(url):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        _async_engines[key] = engine
    return _async_engines[key]


def create_sync_engine(url: str | None = None, **options: Any) -> Engine:
    """A new blocking engine (caller disposes it); ``options`` go to ``create_engine``."""
    url = url or get_settings().database_url
    kwargs: dict[str, Any] = {"hide_parameters": True, **options}
    if is_sqlite(url):
        _ensure_sqlite_dir(url)
    else:
        kwargs["connect_args"] = {"options": "-c jit=off"}  # see NO_JIT
    engine = create_engine(sync_url(url), **kwargs)
    if is_sqlite(url):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def session_maker(url: str | None = None) -> async_sessionmaker[AsyncSession]:
    url = url or get_settings().database_url
    key = (url, _loop())
    if key not in _makers:
        _makers[key] = async_sessionmaker(get_engine(url), class_=AsyncSession, expire_on_commit=False)
    return _makers[key]


@asynccontextmanager
async def unit_of_work(url: str | None = None) -> AsyncIterator[AsyncSession]:
    """A session committed on success and rolled back on error (jobs, CLI, requests)."""
    async with session_maker(url)() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def dispose_engines() -> None:
    """Close the engines this event loop opened (other loops' engines are theirs to close)."""
    loop = _loop()
    for key in [k for k in _async_engines if k[1] == loop]:
        await _async_engines.pop(key).dispose()
    for key in [k for k in _makers if k[1] == loop]:
        del _makers[key]


def table_of(model: Any) -> Table:
    """The Core table of a SQLModel class, for bulk inserts without ORM objects."""
    table: Table = model.__table__
    return table


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite returns naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


RETRYABLE = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock_detected and serialization_failure: the work can simply run again."""


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE code of a database error, whichever driver raised it."""
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


async def retry_conflicts(session: AsyncSession, work: Callable[[], Awaitable[T]], attempts: int = 8) -> T:
    """Run ``work`` in a savepoint, again when it loses a deadlock or serialization conflict.

    On PostgreSQL a rolled-back savepoint releases the locks taken inside it, so the
    other transaction proceeds and the retry sees its result. SQLite has one writer at a
    time and needs no retry."""
    bind = session.bind
    if bind is None or bind.dialect.name != "postgresql":
        return await work()
    for attempt in range(attempts):
        try:
            async with session.begin_nested():
                return await work()
        except DBAPIError as exc:
            if sqlstate(exc) not in RETRYABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0.005, 0.02) * 2**attempt)
    raise AssertionError("unreachable")


_insert_plans: dict[tuple[str, str, tuple[str, ...]], tuple[str, list[Any]]] = {}


def _insert_plan(table: Table, dialect: Any, names: tuple[str, ...]) -> tuple[str, list[Any]]:
    """The driver's INSERT text and each column's value converter (the type's own bind
    processor, JSON encoded by msgspec), made once per table, dialect and column list."""
    key = (table.name, dialect.name, names)
    plan = _insert_plans.get(key)
    if plan is None:
        if dialect.paramstyle == "qmark":
            marks = ", ".join("?" for _ in names)
        else:  # asyncpg: numeric_dollar
            marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        converters: list[Any] = []
        for name in names:
            column_type = table.c[name].type
            json_type = column_type if isinstance(column_type, JSON) else getattr(column_type, "impl", None)
            if isinstance(json_type, JSON):
                converters.append(_json_null if json_type.none_as_null else _json_text)
            elif isinstance(column_type, UtcDateTime) and dialect.name == "sqlite":
                converters.append(_sqlite_utc(column_type._cached_bind_processor(dialect)))
            else:
                converters.append(column_type._cached_bind_processor(dialect))
        columns = ", ".join(f'"{n}"' for n in names)
        plan = _insert_plans[key] = (f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})', converters)
    return plan


def _sqlite_utc(general: Any) -> Callable[[Any], Any]:
    """``UtcDateTime``'s SQLite bind processing for a ``datetime`` (converted to UTC, then
    SQLite's storage form ``YYYY-MM-DD HH:MM:SS.ffffff``) in one step; anything else goes
    through the type's own processors (same text, half the cost)."""

    def convert(value: Any) -> Any:
        if type(value) is not datetime:
            return general(value)
        if value.tzinfo is not UTC:
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        return value.isoformat(" ", "microseconds")[:26]  # without its "+00:00"

    convert.times = True  # type: ignore[attr-defined]  # equal instants give the same text: memoisable
    return convert


def _per_value(convert: Callable[[Any], Any], done: dict[Any, Any]) -> Callable[[Any], Any]:
    """A time column's converter that converts each distinct value once per statement, ``done``
    shared by its time columns (a group's rows repeat their batch's receipt and event times, a
    new row its creation time); others as they are."""
    if not getattr(convert, "times", False):
        return convert

    def once(value: Any) -> Any:
        found = done.get(value)
        if found is None:
            found = done[value] = convert(value)
        return found

    return once


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()  # None is JSON null, as SQLAlchemy binds it


def _json_null(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


async def insert_rows(session: AsyncSession, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (all with the same keys) in one driver call: each value converted by its
    column type's processor, without SQLAlchemy's per-row parameter handling (which costs more
    than the database's own work for groups of thousands of rows). Rows that leave out a
    column with a Python-side default go through SQLAlchemy as before."""
    if not rows:
        return
    names = tuple(rows[0])
    if any(c.name not in names and (c.default is not None or c.onupdate is not None) for c in table.c):
        await session.execute(insert(table), rows)
        return
    conn = await session.connection()
    sql, converters = _insert_plan(table, conn.dialect, names)
    times: dict[Any, Any] = {}
    converted = [(i, _per_value(convert, times)) for i, convert in enumerate(converters) if convert is not None]
    params = []
    for row in rows:
        values = [row[n] for n in names]
        for i, convert in converted:
            values[i] = convert(values[i])
        params.append(tuple(values))
    if len(params) >= COPY_ROWS and conn.dialect.driver == "asyncpg" and await _copy(conn, table, names, params):
        return
    await conn.exec_driver_sql(sql, params)


COPY_ROWS = 200
"""From this many rows, ``insert_rows`` on PostgreSQL writes with ``COPY`` (binary), which
costs the server and the driver a fraction of an INSERT per row."""


async def _copy(conn: AsyncConnection, table: Table, names: tuple[str, ...], records: list[tuple[Any, ...]]) -> bool:
    """``COPY`` the converted rows into ``table`` in the connection's transaction (the values
    go through the same asyncpg codecs as bound parameters). False: no transaction is open
    yet (COPY would run outside it), the caller inserts as usual. Errors are raised as the
    INSERT's would be (SQLAlchemy ``DBAPIError`` with the SQLSTATE; no values in the text)."""
    raw = await conn.get_raw_connection()
    adapted, driver = raw.dbapi_connection, raw.driver_connection
    if adapted is None or driver is None or getattr(adapted, "_transaction", None) is None:
        return False
    dbapi = conn.dialect.loaded_dbapi
    try:
        try:
            await driver.copy_records_to_table(table.name, records=records, columns=list(names))
        except Exception as exc:
            adapted._handle_exception(exc)  # the driver's error as the dialect's DBAPI error
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            f'COPY "{table.name}"', None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect
        ) from exc
    return True
