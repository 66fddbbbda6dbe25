"""The auditor's console: the ledger with filters, the activity report whose numbers link to
their entries, the stream the in-browser verifier reads, and the verifier itself
(``app/console/static/verify.js``) against the standalone one (``audit/verify.py``)."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import random
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from app.db import unit_of_work
from app.ledger.heads import make_tree_head
from audit import merkle, store
from audit.chain import GENESIS_HASH, Entry, canonical_json, seal, subjects_digest
from audit.checkpoint import TreeHead, public_key_bytes
from audit.verify import verify_ledger
from tests.browser.plugin import LiveServer, screenshot
from tests.conftest import Env, run
from tests.console_helpers import csrf_of, post_form, sign_in
from tests.helpers import auth, client, make_keys, sync_db

STATIC = Path(__file__).resolve().parents[1] / "app" / "console" / "static"
LEDGER = "/console/auditor/ledger"
FILTER = "/console/auditor/ledger/filter"
PAGES = (LEDGER, "/console/auditor/ledger/stream", "/console/auditor/verify", "/console/auditor/activity")


# ---- a small ledger written through the ledger's own writer


def _records() -> list[dict[str, Any]]:
    base = {"actor_id": "key-comp", "actor_role": "compliance", "purpose": "support", "legal_basis": "contract"}
    return [
        {**base, "action": "profile.read", "subject_id": "person-a", "request_id": "req-1", "details": {}},
        {**base, "action": "profile.read", "subject_id": "person-b", "request_id": "req-2", "details": {}},
        {
            "actor_id": "key-mkt",
            "actor_role": "marketer",
            "action": "decision.denied",
            "subject_id": "person-a",
            "purpose": "marketing.email",
            "legal_basis": None,
            "request_id": "req-3",
            "details": {"reason": "no consent", "policy_version": "pv-1", "categories": []},
        },
        {
            "actor_id": "key-mkt",
            "actor_role": "marketer",
            "action": "decision.denied",
            "subject_id": "person-b",
            "purpose": "marketing.email",
            "legal_basis": None,
            "request_id": "req-3",
            "details": {"reason": "minor", "policy_version": "pv-1", "categories": []},
        },
        {
            "actor_id": "key-mkt",
            "actor_role": "marketer",
            "action": "decision.denied",
            "subject_id": "person-c",
            "purpose": "marketing.email",
            "legal_basis": None,
            "request_id": "req-4",
            "details": {"reason": "no consent", "policy_version": "pv-2", "note": {"reason": "minor"}},
        },
        {
            "actor_id": "key-ingest",
            "actor_role": "ingest",
            "action": "ingest.batch",
            "subject_id": None,
            "purpose": None,
            "legal_basis": None,
            "request_id": "req-5",
            "details": {"events": 3},
            "subject_ids": ["person-d", "person-a"],
        },
    ]


async def _write_ledger(head: bool = True) -> None:
    async with unit_of_work() as session:
        await store.append_many(session, _records())
        if head:
            await make_tree_head(session)


def _signed_in_auditor() -> Any:
    keys = make_keys()
    cm = client()
    c = cm.__enter__()
    sign_in(c, keys["auditor"])
    return cm, c


def _seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'<tr data-seq="(\d+)"', html)]


def _count(html: str) -> int:
    found = re.search(r'id="ledger-count" data-count="(\d+)"', html)
    assert found, "the ledger page shows no count"
    return int(found.group(1))


def _actions(c: Any, seqs: list[int]) -> dict[int, str]:
    with sync_db() as conn:
        rows = conn.execute(text("SELECT seq, action FROM audit_entry")).all()
    return {int(s): a for s, a in rows if int(s) in seqs}


# ---- HTTP: filters, roles, the stream, the report


def test_the_ledger_is_filtered_by_time_actor_action_request_and_decision(env: Env) -> None:
    run(_write_ledger())
    cm, c = _signed_in_auditor()
    try:
        everything = c.get(LEDGER)
        assert everything.status_code == 200
        all_seqs = _seqs(everything.text)
        assert all_seqs == sorted(all_seqs, reverse=True) and len(all_seqs) == _count(everything.text) >= 6

        denied = c.get(LEDGER, params={"action": "decision.denied"})
        assert _count(denied.text) == 3 and set(_actions(c, _seqs(denied.text)).values()) == {"decision.denied"}
        assert "no consent" in denied.text and "pv-1" in denied.text  # reason and policy version shown

        assert _count(c.get(LEDGER, params={"actor": "key-mkt"}).text) == 3
        assert _count(c.get(LEDGER, params={"actor_role": "compliance"}).text) == 2
        assert _count(c.get(LEDGER, params={"request_id": "req-3"}).text) == 2
        # a reason nested deeper in the details is not the decision's reason
        assert _count(c.get(LEDGER, params={"reason": "minor"}).text) == 1
        assert _count(c.get(LEDGER, params={"reason": "no consent", "policy_version": "pv-2"}).text) == 1

        assert _count(c.get(LEDGER, params={"until": "2000-01-01T00:00"}).text) == 0
        assert _count(c.get(LEDGER, params={"since": "2000-01-01T00:00Z"}).text) == len(all_seqs)
        bad = c.get(LEDGER, params={"since": "yesterday-ish"})
        assert bad.status_code == 422 and "since" in bad.text and "yesterday-ish" not in bad.text
    finally:
        cm.__exit__(None, None, None)


def test_a_subject_is_filtered_through_the_form_never_the_url(env: Env) -> None:
    run(_write_ledger())
    cm, c = _signed_in_auditor()
    try:
        token = csrf_of(c.get(LEDGER).text)
        r = post_form(c, FILTER, token, {"subject": "person-a"})
        assert r.status_code == 200
        # alone (read, denial) and inside the ingest group's subjects
        assert set(_actions(c, _seqs(r.text)).values()) == {"profile.read", "decision.denied", "ingest.batch"}
        assert _count(r.text) == 3
        ignored = c.get(LEDGER, params={"subject": "person-a"})  # a subject in the URL is not used
        assert _count(ignored.text) == _count(c.get(LEDGER).text)
        assert "person-a" not in " ".join(re.findall(r'href="([^"]+)"', r.text))
        assert post_form(c, FILTER, "not-the-token", {"subject": "person-a"}).status_code == 403
    finally:
        cm.__exit__(None, None, None)


def test_only_auditors_open_the_ledger_pages(env: Env) -> None:
    run(_write_ledger())
    keys = make_keys()
    for role, allowed in (("auditor", True), ("admin", True), ("compliance", False), ("marketer", False)):
        with client() as c:
            sign_in(c, keys[role])
            for path in PAGES:
                r = c.get(path, follow_redirects=False)
                assert (r.status_code == 200) is allowed, (role, path, r.status_code)
                if not allowed:
                    assert r.status_code == 403 and "decision.denied" not in r.text
    with client() as c:
        r = c.get("/console/auditor/ledger/stream", follow_redirects=False)
        assert r.status_code in (302, 303) and "decision.denied" not in r.text


def _stream(c: Any) -> list[Any]:
    r = c.get("/console/auditor/ledger/stream")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def test_the_stream_holds_the_whole_ledger_as_the_standalone_verifier_reads_it(env: Env) -> None:
    run(_write_ledger())
    cm, c = _signed_in_auditor()
    try:
        lines = _stream(c)
    finally:
        cm.__exit__(None, None, None)
    meta = lines[0]
    assert meta["kind"] == "meta"
    rows = [row for x in lines if isinstance(x, list) for row in x]  # pages of entries
    heads = [TreeHead.from_json(x) for x in lines if isinstance(x, dict) and x["kind"] == "head"]
    subjects = [tuple(i) for x in lines if isinstance(x, dict) and x["kind"] == "subjects" for i in x["items"]]
    assert [r[0] for r in rows] == list(range(1, meta["size"] + 1))
    assert rows[-1][4] == "audit.export"  # fetching the ledger is itself recorded
    assert subjects and sorted(subjects[0][1]) == ["person-a", "person-d"]
    entries = [Entry.from_json({**dict(zip(_COLUMNS, r, strict=True)), "details": json.loads(r[9])}) for r in rows]
    from audit.checkpoint import load_public_key

    report = verify_ledger(entries, heads, load_public_key(meta["public_key"]), subjects=subjects, source="database")
    assert report.ok, report.summary()


def test_every_number_on_the_activity_report_lists_the_entries_behind_it(env: Env) -> None:
    run(_write_ledger())
    cm, c = _signed_in_auditor()
    try:
        html = c.get("/console/auditor/activity").text
        figures = re.findall(r'<a class="figure" href="([^"]+)" data-count="(\d+)">(\d+)</a>', html)
        assert len(figures) >= 8
        assert any("reason=no+consent" in href and "policy_version=pv-1" in href for href, _, _ in figures)
        for href, count, shown in figures:
            assert count == shown
            listed = c.get(href.replace("&amp;", "&"))
            assert listed.status_code == 200 and _count(listed.text) == int(count), href
        empty = c.get("/console/auditor/activity", params={"until": "2000-01-01T00:00"}).text
        assert 'class="figure"' not in empty
    finally:
        cm.__exit__(None, None, None)


# ---- the JavaScript verifier against the Python one, on the same entries

_COLUMNS = (
    "seq",
    "recorded_at",
    "actor_id",
    "actor_role",
    "action",
    "subject_id",
    "purpose",
    "legal_basis",
    "request_id",
    "details",
    "prev_hash",
    "entry_hash",
)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _row(e: Entry) -> list[Any]:
    return [*(getattr(e, c) for c in _COLUMNS[:9]), canonical_json(e.details), e.prev_hash, e.entry_hash]


def _ledger(n: int, head_at: set[int] | None = None) -> tuple[list[Entry], list[TreeHead], list[tuple[int, list[str]]]]:
    """n entries (every 7th a group entry), a signed head every 10 entries (or at ``head_at``)."""
    entries: list[Entry] = []
    heads: list[TreeHead] = []
    subjects: list[tuple[int, list[str]]] = []
    prev, frontier = GENESIS_HASH, []  # type: ignore[var-annotated]
    for seq in range(1, n + 1):
        details: dict[str, Any] = {"reason": "no consent", "policy_version": "v1", "ratio": 0.5, "n": seq, "名": "中文"}
        if seq % 7 == 0:
            ids = [f"p{seq}-{i}" for i in range(3)]
            details["subjects"] = subjects_digest(ids)
            subjects.append((seq, sorted(ids)))
        e = seal(
            Entry(seq, f"2026-11-26T10:00:{seq % 60:02d}.000000Z", "k1", "compliance", "profile.read", f"p{seq}",
                  "support", "contract", f"r{seq}", details, prev)
        )  # fmt: skip
        entries.append(e)
        prev = e.entry_hash
        merkle.push(frontier, seq - 1, bytes.fromhex(e.entry_hash))
        if (seq in head_at) if head_at is not None else seq % 10 == 0:
            root = merkle.root_of_frontier(frontier).hex()
            heads.append(TreeHead.sign("consentry", seq, e.entry_hash, "2026-11-26T10:01:00.000000Z", KEY, root))
    return entries, heads, subjects


def _cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def case(name: str, entries: list[Entry], heads: list[TreeHead], subjects: Any, **kw: Any) -> None:
        rows = kw.pop("rows", None) or [_row(e) for e in entries]
        report = verify_ledger(entries, heads, KEY.public_key(), subjects=subjects, source="database", **kw)
        out.append(
            {
                "name": name,
                "rows": rows,
                "heads": [h.to_json() for h in heads],
                "witness": None if kw.get("witness") is None else [h.to_json() for h in kw["witness"]],
                "trusted": [h.to_json() for h in kw.get("trusted", [])],
                "subjects": subjects,
                "tail": kw.get("require_signed_tail", False),
                "summary": report.summary(),
            }
        )

    e, h, s = _ledger(40)
    case("intact", e, h, s, witness=h)
    case("unsigned tail refused", e[:45], h[:3], s, require_signed_tail=True)
    edited = list(e)
    edited[16] = Entry(**{**edited[16].to_json(), "action": "profile.export"})
    case("an entry edited", edited, h, s)
    case("an entry removed", e[:16] + e[17:], h, s)
    swapped = list(e)
    swapped[4], swapped[5] = swapped[5], swapped[4]
    case("two entries swapped", swapped, h, s)
    forged = list(h)
    forged[1] = TreeHead(**{**forged[1].to_json(), "size": 21})
    case("a head forged", e, forged, s)
    case("cut short", e[:25], h, s)
    case("a subject added to the index", e, h, [(q, [*ids, "x"] if q == 14 else ids) for q, ids in s])
    case("a head deleted from the database", e, h[:2], s, witness=h)
    other = TreeHead.sign("consentry", 40, e[-1].entry_hash, "t", Ed25519PrivateKey.generate(), "00" * 32)
    case("a head by another key", e, [*h, other], s)
    e2, h2, s2 = _ledger(35)
    fork = seal(Entry(**{**e2[29].to_json(), "action": "forked", "entry_hash": ""}))
    case("history rewritten after a trusted head", [*e2[:29], fork], [], s2[:4], trusted=[h2[2]])
    case("no head at all", e, [], s)
    # the browser hashes the tree chunk by chunk (8,192 entries; 4 here): heads at chunks' edges
    e3, h3, s3 = _ledger(37, {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 37})
    case("heads at every edge", e3, h3, s3)
    rows = [_row(x) for x in e]
    rows[8][9] = '{"n": 9, "ratio": 0.50, "reason": "no consent", "policy_version": "v1", "名": "中文"}'
    case("details stored in another spelling", e, h, s, rows=rows)
    return out


def _json_cases(n: int) -> list[list[str]]:
    rnd = random.Random(14)
    alphabet = 'ab"\\\n\t\x01\x1f\x7f é中文😀\u2028\ufeff/'

    def text_() -> str:
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 5)))

    def number() -> Any:
        return rnd.choice(
            [rnd.randint(-(10**25), 10**25), rnd.uniform(-1e-6, 1e-6), rnd.uniform(-1e20, 1e20), 1e16, 1e15,
             1e-4, 1e-5, -0.0, 0.1, 5e-324, 1.7976931348623157e308, rnd.uniform(-1, 1) * 10 ** rnd.randint(-30, 30)]
        )  # fmt: skip

    def value(depth: int = 0) -> Any:
        k = rnd.random()
        if depth > 3 or k < 0.3:
            return rnd.choice([None, True, False, number(), number(), text_()])
        if k < 0.65:
            return {text_(): value(depth + 1) for _ in range(rnd.randint(0, 4))}
        return [value(depth + 1) for _ in range(rnd.randint(0, 4))]

    texts = [json.dumps(value(), ensure_ascii=rnd.random() < 0.5, indent=rnd.choice([None, 1])) for _ in range(n)]
    texts += ['{"a":1.0,"a":2}', '{"x":1E2,"y":-0,"z":-0.0,"w":1e400,"v":NaN,"u":-Infinity}', '{"😀":1,"\uffff":2}']
    return [[t, canonical_json(json.loads(t))] for t in texts]


@pytest.fixture(scope="module")
def static_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """verify.js served from 127.0.0.1 (a secure context, where WebCrypto exists)."""
    root = tmp_path_factory.mktemp("verify-static")
    shutil.copy(STATIC / "verify.js", root / "verify.js")
    (root / "index.html").write_text("<!doctype html><title>verify.js</title>", encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined,method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


RUN_CASES = """async ({cases, key, chunkLevels}) => {
  const v = await import('/verify.js');
  const out = [];
  for (const c of cases) {
    const report = await v.verifyLedger(c.rows, {
      heads: c.heads.map(v.parseHead), witness: c.witness && c.witness.map(v.parseHead),
      trusted: c.trusted.map(v.parseHead), subjects: c.subjects, publicKey: key,
      source: 'database', requireSignedTail: c.tail, chunkLevels});
    out.push(report.summary());
  }
  return out;
}"""


@pytest.mark.slow
@pytest.mark.browser
def test_the_browser_verifier_says_what_the_python_verifier_says(page: Any, static_site: str) -> None:
    cases = _cases()
    page.goto(static_site + "/index.html")
    key = base64.b64encode(public_key_bytes(KEY.public_key())).decode()
    for chunk_levels in (None, 2):  # as the page hashes (8,192-entry chunks), and in chunks of 4
        got = page.evaluate(RUN_CASES, {"cases": cases, "key": key, "chunkLevels": chunk_levels})
        for case, summary in zip(cases, got, strict=True):
            assert summary == case["summary"], (case["name"], chunk_levels)
        assert sum(s.startswith("FAILED") for s in got) == 11  # every tampering was caught


@pytest.mark.slow
@pytest.mark.browser
def test_the_browser_writes_details_as_python_does(page: Any, static_site: str) -> None:
    cases = _json_cases(1500)
    page.goto(static_site + "/index.html")
    got = page.evaluate(
        "async (cases) => { const v = await import('/verify.js'); return cases.map(([t]) => v.canonicalJson(t)); }",
        cases,
    )
    wrong = [(t, want, g) for (t, want), g in zip(cases, got, strict=True) if want != g]
    assert not wrong, wrong[:3]


# ---- in the console: the auditor verifies, then an entry is tampered with


def _python_verdict(server: LiveServer, head_file: Path, key: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "audit", "verify-db", _sync_url(server.env.url), "--public-key", key,
         "--trusted-head", str(head_file)],
        env=server.env.environ(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return out.stdout.strip()


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


def _verify_in_page(page: Any, head: str) -> tuple[bool, str]:
    page.locator("#trusted-head").fill(head)
    page.locator("#verify-button").click()
    page.wait_for_selector("#ledger-verify[data-ok]", timeout=60_000)
    return page.get_attribute("#ledger-verify", "data-ok") == "true", page.inner_text("#verify-summary")


@pytest.mark.slow
@pytest.mark.browser
def test_the_auditor_verifies_the_ledger_in_the_page_and_sees_a_tampered_entry(
    signed_in: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    import httpx

    api = live_server.url
    auditor = auth(live_server.keys["auditor"])
    page = signed_in("auditor")  # recorded (console.sign_in), then covered by the head the auditor keeps
    httpx.post(f"{api}/v1/audit/tree-heads", headers=auditor).raise_for_status()
    head = httpx.get(f"{api}/v1/audit/tree-head", headers=auditor).text
    key = httpx.get(f"{api}/v1/audit/public-key", headers=auditor).json()["public_key"]
    head_file = tmp_path / "head.json"
    head_file.write_text(head)

    page.goto(api + "/console/auditor/verify")
    page.wait_for_selector("#ledger-verify[data-ready]")
    assert page.input_value("#public-key") == key
    screenshot(page, "auditor-verify-before")
    ok, summary = _verify_in_page(page, head)
    assert ok and summary.startswith("OK: "), summary
    assert summary == _python_verdict(live_server, head_file, key)
    screenshot(page, "auditor-verify-ok")

    with sync_db() as conn:  # tamper with a stored entry directly, as someone with database access could
        seq, original = conn.execute(
            text("SELECT seq, details FROM audit_entry WHERE action = 'console.sign_in' ORDER BY seq DESC LIMIT 1")
        ).one()
        conn.execute(
            text("UPDATE audit_entry SET details = :d WHERE seq = :s"), {"d": '{"key_id":"someone-else"}', "s": seq}
        )
    try:
        ok, summary = _verify_in_page(page, head)
        assert not ok
        assert summary == f"FAILED at entry {seq}: content does not match its hash (edited)"
        assert summary == _python_verdict(live_server, head_file, key)
        assert page.get_attribute("#verify-bad-entry", "href") == f"{LEDGER}?before={seq + 1}"
        screenshot(page, "auditor-verify-tampered")
        page.click("#verify-bad-entry")
        page.wait_for_selector(f'tr[data-seq="{seq}"]')
        assert "someone-else" in page.inner_text(f'tr[data-seq="{seq}"]')
        screenshot(page, "auditor-ledger-tampered-entry")
    finally:  # the live server's ledger is shared by the session's browser tests
        with sync_db() as conn:
            conn.execute(text("UPDATE audit_entry SET details = :d WHERE seq = :s"), {"d": original, "s": seq})
    page.goto(api + "/console/auditor/verify")
    page.wait_for_selector("#ledger-verify[data-ready]")
    ok, summary = _verify_in_page(page, head)
    assert ok, summary


@pytest.mark.slow
@pytest.mark.browser
def test_a_pasted_head_that_is_not_a_tree_head_is_named(signed_in: Any, live_server: LiveServer) -> None:
    page = signed_in("auditor")
    page.goto(live_server.url + "/console/auditor/verify")
    page.wait_for_selector("#ledger-verify[data-ready]")
    ok, summary = _verify_in_page(page, '{"size": "12"}')
    assert not ok
    assert summary == "FAILED: the pasted text is not a signed tree head (size must be a non-negative integer)"
