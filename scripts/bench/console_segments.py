"""The marketer's segment builder: how long the count takes to refresh through the console,
against the JSON preview API on the same tree, measured in the same run.

    .venv/bin/python scripts/bench/console_segments.py [--people 1000000] [--repeat 7]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench_h4 | --sqlite-file /tmp/seg_h4.db]

The database (a PostgreSQL database named ``bench*``, or a SQLite file; by default a new
SQLite file) is migrated; when it does not hold ``--people`` profiles it is filled with the
segments benchmark's population (``scripts/bench/segments.py``: 3% of people bought
basketball shoes in the last 90 days, about 10 events a person). A copy of the shared 1M
dataset (``createdb -T bench_seg bench_h4``) is used as it is (a marketer key and the
previews' ledger entries are added to it).

In process, through Litestar's test client, signed in to the console as a marketer, the
basketball-shoes tree (``segments.py``'s ``TREE``) is counted ``--repeat`` times each,
alternating (and alternating which of the two goes first):
  console   ``POST /console/marketer/builder/count`` with the builder's form of the tree (what
            htmx sends after an edit): the preview, rendered as the count panel's HTML;
  baseline  ``POST /v1/segments/preview`` with the same tree, purpose and sample size (JSON).
Both run the segments service's preview (counts by reason, a sample of 5, a ledger entry);
the sample's masked views are stubbed on both sides (the generated people have no keys).
Printed: median and p95 of each, the ratio, the target (the console's count ≤ 1.5 s) and the
machine load. No assertion: a shared machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from scripts.bench.segments import TREE, populate, populated  # noqa: E402

M = "marketing.advertising.first_party.targeted"
TARGET_S = 1.5


def _environment(args: argparse.Namespace, tmp: Path) -> str:
    if args.database_url:
        if not args.database_url.rsplit("/", 1)[-1].startswith("bench"):
            raise SystemExit("--database-url must name a database called bench*")
        url = str(args.database_url)
    else:
        url = f"sqlite:///{args.sqlite_file or tmp / 'console-segments.db'}"
    os.environ.update(
        CONSENTRY_DATABASE_URL=url,
        CONSENTRY_KEY_DIR=str(tmp / "keys"),
        CONSENTRY_SCHEDULER="0",
        CONSENTRY_RATE_LIMIT="off",
        CONSENTRY_LOG_LEVEL="WARNING",
        CONSENTRY_INGEST_PROCESSOR="0",
        CONSENTRY_AUDIT_WITNESS=str(tmp / "audit-witness.jsonl"),
    )
    return url


async def _marketer_key() -> str:
    from app.access.service import create_api_key
    from app.db import dispose_engines, unit_of_work

    async with unit_of_work() as session:
        _, token = await create_api_key(session, "marketer", "bench-console-marketer")
    await dispose_engines()
    return token


def _stub_views() -> None:
    """The sample's people as ids only, on both sides (the generated people have no keys)."""
    from app.segments import service

    async def ids_only(_s: Any, _p: Any, ids: list[str], _purpose: str) -> list[dict[str, Any]]:
        return [{"id": i, "traits": {}} for i in ids]

    service.views = ids_only  # type: ignore[assignment]


def _form() -> dict[str, str]:
    from app.console import marketer_builder as builder

    fields = builder.fields_of(builder.from_tree(TREE))
    assert builder.to_tree(builder.read_form(fields)) == TREE, "the builder's form must describe the same tree"
    return {**fields, "purpose": M}


def _timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    r = call()
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return elapsed, r


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(prog="console_segments.py")
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--sqlite-file", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-segments-"))
    url = _environment(args, tmp)
    from litestar.testing import TestClient

    from app.main import create_app
    from app.migrate import upgrade

    upgrade(url)
    if not populated(args.people):
        started = time.perf_counter()
        populate(args.people, args.events, url.startswith("postgresql"))
        print(f"{args.people:,} people generated in {time.perf_counter() - started:.0f} s")
    token = asyncio.run(_marketer_key())
    _stub_views()
    form = _form()
    times: dict[str, list[float]] = {"console": [], "baseline": []}
    with TestClient(app=create_app(), timeout=600) as c:
        page = c.get("/console/sign-in").text
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        signed = c.post(
            "/console/sign-in", data={"api_key": token, "_csrf_token": csrf.group(1)}, follow_redirects=False
        )
        assert signed.status_code == 303, signed.text
        body = {"tree": TREE, "purpose": M, "sample": 5}
        headers = {"Authorization": f"Bearer {token}"}
        calls = {
            "console": lambda: c.post(
                "/console/marketer/builder/count",
                data={**form, "_csrf_token": csrf.group(1)},
                headers={"HX-Request": "true"},
            ),
            "baseline": lambda: c.post("/v1/segments/preview", json=body, headers=headers),
        }
        _, shown = _timed(calls["console"])  # warm both
        _, api = _timed(calls["baseline"])
        total = re.search(r'id="count-total">([^<]*)<', shown.text)
        print(f"counts: console total {total.group(1) if total else '?'}; API {api.json()['total']} total, "
              f"{api.json()['usable']} usable, denied {api.json()['denied']}")  # fmt: skip
        for n in range(args.repeat):  # alternating, and which goes first too
            for name in sorted(calls, reverse=n % 2 == 1):
                times[name].append(_timed(calls[name])[0])
    db = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    load = os.getloadavg()
    print(f"Segment count refresh on {db}, {args.people:,} people, {args.repeat} calls each, alternating")
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for name, label in (("console", "console count (HTML)"), ("baseline", "baseline preview (JSON)")):
        xs = times[name]
        print(f"{label:<26} median {statistics.median(xs):6.2f} s  p95 {_pct(xs, 0.95):6.2f} s")
    med = statistics.median(times["console"])
    print(f"console / baseline (medians): {med / statistics.median(times['baseline']):.2f}x   "
          f"(target <= {TARGET_S} s: {'met' if med <= TARGET_S else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
