"""The auditor's in-browser verification of the ledger against the standalone verifier.

    .venv/bin/python scripts/bench/console_ledger.py [--entries 100000] [--runs 3] [--database-url URL]

A fresh database (a new SQLite file by default; a PostgreSQL URL must name a database called
``bench*``, whose ``public`` schema is dropped and made again), migrated, filled through the
ledger's own writer with ``--entries`` entries (decision denials with reason and policy
version, reads, and ingest groups naming 50 people each) and a signed tree head every 10,000
entries, as the service makes them. Then ``python -m app serve`` on a free port, Debian's
chromium (Playwright) signed in as an auditor on ``/console/auditor/verify``, the newest head
pasted, and the page's verification timed from the click to the verdict (streaming the
entries in, then SHA-256 and Ed25519 with WebCrypto), ``--runs`` times. The baseline, in the
same run on the same database: the standalone verifier, ``python -m audit verify-db`` with
the same trusted head, as a process (start-up included) and its ``verify_ledger`` in process.
Target: 100,000 entries in <= 10 s in the browser. No assertion: a shared machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GROUP = 50
TARGET_S = 10.0


def _prepare(url: str | None, tmp: Path) -> str:
    if url is None:
        (tmp / "data").mkdir()
        return f"sqlite:///{tmp / 'data' / 'consentry.db'}"
    if not url.rsplit("/", 1)[-1].startswith("bench"):
        raise SystemExit("--database-url must name a database called bench*")
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def _record(n: int) -> dict[str, Any]:
    """A mix like a busy ledger's: denials (reason, policy version), reads, ingest groups."""
    if n % 10 == 0:
        people = [f"{(n * 7 + i) % 99991:08x}-0000-4000-8000-{n:012x}" for i in range(GROUP)]
        return {"actor_id": "ingest-web", "actor_role": "ingest", "action": "ingest.batch", "request_id": f"r{n}",
                "details": {"events": GROUP * 3, "source": "web"}, "subject_ids": people}  # fmt: skip
    person = f"{n % 99991:08x}-0000-4000-8000-{n:012x}"
    if n % 3 == 0:
        return {"actor_id": "key-marketing", "actor_role": "marketer", "action": "decision.denied",
                "subject_id": person, "purpose": "marketing.email", "request_id": f"r{n}",
                "details": {"reason": "no consent", "policy_version": "3f9a0c1d", "categories": []}}  # fmt: skip
    return {"actor_id": "key-support", "actor_role": "compliance", "action": "profile.read", "subject_id": person,
            "purpose": "support", "legal_basis": "contract", "request_id": f"r{n}",
            "details": {"fields": 4, "reveal": "plain", "score": 0.75}}  # fmt: skip


async def _fill(entries: int) -> str:
    """Append the entries (a signed head every 10,000 and at the end); returns an auditor key."""
    from app.access.service import create_api_key
    from app.db import unit_of_work
    from app.ledger.heads import make_tree_head
    from audit import store

    async with unit_of_work() as session:
        _, token = await create_api_key(session, "auditor", "bench-auditor")
    done = 0
    while done < entries:
        size = min(2000, entries - done)
        async with unit_of_work() as session:
            await store.append_many(session, [_record(done + i) for i in range(size)])
            done += size
            if done % 10000 == 0 or done == entries:
                await make_tree_head(session)
    return token


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the service did not start; see {log}")


def _browser_runs(base: str, token: str, head: str, runs: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(base + "/console/sign-in")
        form = page.locator("form[action='/console/sign-in']")
        form.locator("input[name=api_key]").fill(token)
        with page.expect_navigation():
            form.locator("[type=submit]").click()
        for _ in range(runs):
            page.goto(base + "/console/auditor/verify")
            page.wait_for_selector("#ledger-verify[data-ready]")
            page.locator("#trusted-head").fill(head)
            started = time.perf_counter()
            page.locator("#verify-button").click()
            page.wait_for_selector("#ledger-verify[data-ok]", timeout=300_000)
            wall = time.perf_counter() - started
            data = page.evaluate("() => ({...document.getElementById('ledger-verify').dataset})")
            summary = page.inner_text("#verify-summary")
            out.append(
                {"wall": wall, "load": float(data["loadMs"]) / 1000, "check": float(data["checkMs"]) / 1000,
                 "entries": float(data["entries"]), "ok": data["ok"] == "true", "summary": summary}  # type: ignore[dict-item]
            )  # fmt: skip
        browser.close()
    return out


def _python_baseline(env: dict[str, str], url: str, key: str, head_file: Path) -> tuple[float, float, float, str]:
    """(seconds as a process, its CPU seconds, seconds of verify_ledger in process, its verdict)."""
    import resource

    sync_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "audit", "verify-db", sync_url, "--public-key", key, "--trusted-head", str(head_file)],
        env=env, capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    process_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    from sqlalchemy import create_engine

    from audit.__main__ import read_heads_file
    from audit.checkpoint import load_public_key
    from audit.store import read_all_sync, subject_lists_sync
    from audit.verify import verify_ledger

    engine = create_engine(sync_url)
    started = time.perf_counter()
    with engine.connect() as conn:
        entries, heads = read_all_sync(conn)
        subjects = subject_lists_sync(conn)
        report = verify_ledger(
            entries, heads, load_public_key(key), trusted=read_heads_file(head_file), source="database",
            subjects=subjects,
        )  # fmt: skip
    inproc_s = time.perf_counter() - started
    engine.dispose()
    assert report.ok, report.summary()
    return process_s, cpu_s, inproc_s, out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-ledger-"))
    url = _prepare(args.database_url, tmp)
    env = {
        **os.environ,
        "CONSENTRY_DATABASE_URL": url,
        "CONSENTRY_KEY_DIR": str(tmp / "keys"),
        "CONSENTRY_SCHEDULER": "0",
        "CONSENTRY_RATE_LIMIT": "off",
        "CONSENTRY_LOG_LEVEL": "WARNING",
        "CONSENTRY_INGEST_PROCESSOR": "0",
        "CONSENTRY_AUDIT_WITNESS": str(tmp / "audit-witness.jsonl"),
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONSENTRY_")})
    from app.migrate import upgrade

    upgrade(url)
    started = time.perf_counter()
    token = asyncio.run(_fill(args.entries))
    print(f"ledger of {args.entries:,} entries written in {time.perf_counter() - started:.1f} s")

    import httpx

    proc, base = _serve(env, tmp / "server.log")
    try:
        headers = {"Authorization": f"Bearer {token}"}
        head = httpx.get(base + "/v1/audit/tree-head", headers=headers).text
        key = httpx.get(base + "/v1/audit/public-key", headers=headers).json()["public_key"]
        head_file = tmp / "head.json"
        head_file.write_text(head)
        browser = _browser_runs(base, token, head, args.runs)
        process_s, cpu_s, inproc_s, verdict = _python_baseline(env, url, key, head_file)
    finally:
        proc.terminate()
        proc.wait(15)
    db = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    load = os.getloadavg()
    print(f"In-browser ledger verification on {db}, {args.entries:,} entries (+ the export entries each run records)")
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for i, r in enumerate(browser, 1):
        print(
            f"browser run {i}: {r['wall']:6.2f} s click to verdict (stream in {r['load']:.2f} s, "
            f"WebCrypto checks {r['check']:.2f} s), {int(r['entries']):,} entries, {'OK' if r['ok'] else 'FAILED'}"
        )
    walls = [r["wall"] for r in browser]
    median = statistics.median(walls)
    met = "met" if median <= TARGET_S else "NOT met"
    print(f"browser median  {median:6.2f} s   (target <= {TARGET_S:.0f} s: {met})")
    print(
        f"baseline: python -m audit verify-db {process_s:6.2f} s as a process ({cpu_s:.2f} s of CPU), "
        f"{inproc_s:.2f} s in process"
    )
    print(f"browser / baseline process: {median / process_s:.2f}x")
    print(f"python verdict:  {verdict}")
    print(f"browser verdict: {browser[-1]['summary']}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
