"""Real-browser fixtures: Debian's chromium driven by Playwright against a live Consentry.

Registered from ``tests/conftest.py`` (``pytest_plugins``). What a browser test gets:

- ``live_server``: ``python -m app serve`` (uvicorn) on a free port, one per session, on a
  database of its own for this run (SQLite: a copy of the migrated template; PostgreSQL:
  ``<run's database>_browser``, migrated from empty), with one API key per role in
  ``live_server.keys``; the data is shared by every browser test of the session.
- ``chromium`` (one per session) and ``page`` (a fresh context per test: its own cookies).
- ``signed_in(role)``: a new page signed in as ``role`` through the console's sign-in page.
- ``screenshot(page, name)``: a full-page PNG under ``SCREENSHOT_DIR``.
- ``assert_accessible(page, name)``: axe-core (vendored) finds no serious or critical violation.
- ``test_site``: the test's own static server for pages under ``tests/browser/vendor/`` (the
  origin the live server admits for browser collection) and a second, foreign origin.

Playwright's sync API marks its event loop as running in the main thread for as long as the
browser lives, so ``asyncio.run`` (``tests.conftest.run``) fails inside a browser test: use
``off_loop(fn, ...)`` there. Tests that use no browser get the loop cleared around them.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import PG_URL, Env

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).resolve().parent / "vendor"
AXE = VENDOR / "axe.min.js"
SCREENSHOT_DIR = ROOT / "test-artifacts" / "screenshots" / ("postgresql" if PG_URL else "sqlite")
"""Where screenshots go (git-ignored), one folder per database leg."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_FIXTURES = {"chromium", "page", "signed_in", "browser_context"}
SERIOUS = ("serious", "critical")
_PW_LOOP: dict[str, Any] = {}
"""The event loop Playwright's sync API runs (kept to restore it around browser tests)."""


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a worker thread (for ``asyncio.run`` and ``tests.conftest.run`` inside a browser test)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real browser (chromium) against a live server")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("browser")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    _loop_for(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    _loop_for(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _loop_for(item)  # (the browser's own finalizer takes the loop back when the session ends)
    return (yield)


def _loop_for(item: pytest.Item | None) -> None:
    """Playwright's loop is the thread's running loop in browser tests, and no loop elsewhere."""
    loop = _PW_LOOP.get("loop")
    if loop is None or loop.is_closed():
        return
    browser = item is None or item.get_closest_marker("browser") is not None
    asyncio.events._set_running_loop(loop if browser else None)


# --- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright, one per session. Missing chromium fails, loudly."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed (apt-get install chromium): the browser tests cannot run", False)
    pw = sync_playwright().start()
    _PW_LOOP["loop"] = asyncio.events._get_running_loop()
    browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        _loop_for(None)
        browser.close()
        pw.stop()
        _PW_LOOP.clear()


@dataclass
class OutsideRequests:
    """Requests a page tried to make beyond this machine (refused; a test fails on any)."""

    urls: list[str] = field(default_factory=list)


def new_context(chromium: Any, outside: OutsideRequests, **options: Any) -> Any:
    """A browser context whose requests may reach only loopback addresses."""
    context = chromium.new_context(**options)

    def guard(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in {"127.0.0.1", "localhost", "::1"}:
            route.continue_()
        else:
            outside.urls.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    return context


@pytest.fixture
def browser_context(chromium: Any) -> Iterator[Any]:
    outside = OutsideRequests()
    context = new_context(chromium, outside)
    yield context
    context.close()
    assert not outside.urls, f"the page tried to reach beyond this machine: {outside.urls}"


@pytest.fixture
def page(browser_context: Any) -> Any:
    """A new page in a fresh context (no cookies, no storage)."""
    return browser_context.new_page()


# --- the live server ---------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TestSite:
    __test__ = False
    """The test's own static server for pages under ``tests/browser/vendor/``."""

    origin: str
    """Admitted by the live server for browser collection (source ``test-web``)."""
    foreign_origin: str
    """The same pages from an origin the live server does not admit."""

    def url(self, path: str, foreign: bool = False) -> str:
        return f"{self.foreign_origin if foreign else self.origin}/{path.lstrip('/')}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def test_site() -> Iterator[TestSite]:
    servers = []
    for _ in range(2):
        handler = functools.partial(_QuietHandler, directory=str(VENDOR))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    site = TestSite(*(f"http://127.0.0.1:{s.server_address[1]}" for s in servers))
    yield site
    for s in servers:
        s.shutdown()
        s.server_close()


@dataclass
class LiveServer:
    """A running Consentry: its base URL, database and keys (role -> token; ``client`` is a
    public write key of source ``test-web``)."""

    url: str
    env: Env
    keys: dict[str, str]
    log: Path
    environ: dict[str, str] = field(default_factory=dict)
    """The server's environment (``point_at`` gives it to this process)."""


def _browser_database_url(tmp: Path, request: pytest.FixtureRequest, suffix: str = "browser") -> str:
    """A live server's own database: a copy of the migrated SQLite template, or on PostgreSQL
    a database beside the run's (``<name>_<suffix>``), migrated from empty, so the ``env``
    fixture's resets of the run's database never reach the server."""
    if not PG_URL:
        template: Path = request.getfixturevalue("sqlite_template")
        db = tmp / "data" / "consentry.db"
        db.parent.mkdir(parents=True)
        shutil.copy(template, db)
        return f"sqlite:///{db}"
    from sqlalchemy import make_url, text

    from app.db import create_sync_engine
    from app.migrate import upgrade

    base = make_url(PG_URL)
    name = f"{base.database}_{suffix}"
    admin = create_sync_engine(base.set(database="postgres").render_as_string(False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = base.set(database=name).render_as_string(False)
    engine = create_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(url)
    return url


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"the live server did not start:\n{tail}")
        time.sleep(0.2)


def _forget_settings() -> None:
    from app.settings import get_settings
    from app.vault import keyring

    get_settings.cache_clear()
    keyring._loaded.clear()


def point_at(environ: dict[str, str], patch: pytest.MonkeyPatch) -> None:
    """Make this process use a live server's database, keys and folders (settings re-read)."""
    for k, v in environ.items():
        if k.startswith("CONSENTRY_"):
            patch.setenv(k, v)
    _forget_settings()


@contextmanager
def separate_live_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, site: TestSite, name: str = "browser"
) -> Iterator[LiveServer]:
    """Start a live server on a fresh database of its own (``name`` tells PostgreSQL databases
    apart: ``<run's database>_<name>``). ``live_server`` is the session's one; a module that
    needs an isolated database (e.g. the demo data alone) opens another with this."""
    from tests.helpers import make_keys

    tmp = tmp_path_factory.mktemp(name)
    env = Env(
        url=_browser_database_url(tmp, request, name), tmp=tmp, key_dir=tmp / "keys", log_file=tmp / "consentry.log"
    )
    environ = {
        **env.environ(),
        "CONSENTRY_BROWSER_ORIGINS": f"test-web={site.origin}",  # pages of the test site may collect
        "CONSENTRY_ACTIVATION_PRIVATE_NETWORKS": "1",  # destinations may be local receivers (tests only)
        "CONSENTRY_ACTIVATION_DIR": str(tmp / "activation"),
        "CONSENTRY_DSR_EXPORT_DIR": str(tmp / "dsr-exports"),
        "CONSENTRY_IMPORT_DIR": str(tmp / "imports"),
    }
    port = _free_port()
    log = tmp / "server.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    try:
        _wait_healthy(proc, base, log)
        point_at(environ, patch)
        keys = off_loop(make_keys)
        patch.undo()
        _forget_settings()
        yield LiveServer(url=base, env=env, keys=keys, log=log, environ=environ)
    finally:
        patch.undo()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def live_server_session(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, test_site: TestSite
) -> Iterator[LiveServer]:
    """One ``python -m app serve`` (uvicorn) per session, on a free port, with its own database."""
    with separate_live_server(tmp_path_factory, request, test_site) as server:
        yield server


@pytest.fixture
def live_server(live_server_session: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """The session's live server; during the test this process uses its database and keys too
    (``sync_db()``, ``off_loop(run, ...)``). Its data lives for the whole session and is shared
    by every browser test: create what a test needs under names of its own, never assume an
    empty database. Do not combine with the ``env`` fixture (another database)."""
    point_at(live_server_session.environ, monkeypatch)
    yield live_server_session
    _forget_settings()


# --- signing in, screenshots, accessibility ----------------------------------------------

SIGN_IN_PATH = "/console/sign-in"


def sign_in(page: Any, server: LiveServer, role: str) -> Any:
    """Sign ``page`` in as ``role`` through the console's sign-in page (API key -> session cookie)."""
    page.goto(server.url + SIGN_IN_PATH)
    form = page.locator(f"form[action='{SIGN_IN_PATH}']")
    form.locator("input[name=api_key]").fill(server.keys[role])
    with page.expect_navigation():
        form.locator("[type=submit]").click()
    if SIGN_IN_PATH in page.url:
        alert = page.locator("[role=alert]")
        said = alert.first.inner_text() if alert.count() else ""
        raise AssertionError(f"signing in as {role} failed: still on {page.url} ({said})")
    return page


@contextmanager
def signed_in_pages(chromium: Any, server: LiveServer) -> Iterator[Callable[[str], Any]]:
    """``make(role)``: a new page, in a context of its own, signed in to ``server`` as ``role``;
    on exit the contexts close and any request beyond this machine fails the test."""
    contexts: list[tuple[Any, OutsideRequests]] = []

    def make(role: str) -> Any:
        outside = OutsideRequests()
        context = new_context(chromium, outside)
        contexts.append((context, outside))
        return sign_in(context.new_page(), server, role)

    yield make
    for context, outside in contexts:
        context.close()
        assert not outside.urls, f"the page tried to reach beyond this machine: {outside.urls}"


@pytest.fixture
def signed_in(chromium: Any, live_server: LiveServer) -> Iterator[Callable[[str], Any]]:
    """``signed_in(role)``: a new page, in a context of its own, signed in as ``role``."""
    with signed_in_pages(chromium, live_server) as make:
        yield make


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page PNG of ``page`` as ``SCREENSHOT_DIR/<name>.png`` and return its path."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "page"
    path = SCREENSHOT_DIR / f"{safe}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


@functools.cache
def _axe_source() -> str:
    return AXE.read_text(encoding="utf-8")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (injected through DevTools: no CSP exception needed)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    return list(
        page.evaluate(
            """async () => (await window.axe.run(document, {resultTypes: ['violations']})).violations
                .map(v => ({id: v.id, impact: v.impact, help: v.help,
                            targets: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))"""
        )
    )


def assert_accessible(page: Any, name: str) -> None:
    """Fail on any serious or critical axe-core violation, naming each rule and where it is."""
    bad = [v for v in axe_violations(page) if v["impact"] in SERIOUS]
    lines = [f"{v['impact']} {v['id']}: {v['help']} at {v['targets']}" for v in bad]
    assert not bad, f"{name}: accessibility violations:\n" + "\n".join(lines)
