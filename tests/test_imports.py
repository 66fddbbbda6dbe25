"""Batch imports: CLI and HTTP, mapping files, rejects, idempotent re-runs, a crash mid-way."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.db import unit_of_work
from app.errors import IntegrityFailure
from app.imports.jobs import resume_imports, upload_path
from app.imports.models import ImportJob
from app.imports.upload import EncryptedWriter, open_decrypted_text
from app.settings import get_settings
from app.vault.cipher import new_data_key, wrap_key
from app.vault.keyring import key_material
from tests.conftest import Env, run
from tests.helpers import auth, client, live_server, make_keys, sync_db

CUSTOMERS_MAP = """
kind: customers
identifiers: {customer_id: "external:crm_id", email: email, mobile: phone}
traits: {first_name: firstName, tier: loyalty_tier, birthday: {trait: birthday, type: date}}
"""
ORDERS_MAP = """
kind: events
event: Order Completed
id_column: order_id
timestamp_column: ordered_at
identifiers: {phone: phone}
properties: {sku: sku, price: {property: price, type: float}, qty: {property: quantity, type: int}}
"""


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "import", *args],
        env={**env.environ(), "CONSENTRY_DEFAULT_REGION": "CN"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _count(sql: str) -> int:
    with sync_db() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def test_cli_imports_customers_and_orders_with_rejects_and_reruns_store_nothing_twice(env: Env) -> None:
    customers = env.tmp / "customers.csv"
    customers.write_text(
        "customer_id,email,mobile,first_name,tier,birthday\n"
        "C1,li.na@example.cn,138 0013 8000,李娜,gold,1991-04-05\n"
        "C2,tom@example.com,+86 139-0013-9000,Tom,silver,someday\n"
        "C3,,,,bronze,\n"
        "C4,bad-email,,Eve,gold,\n",
        encoding="utf-8",
    )
    orders = env.tmp / "orders.csv"
    orders.write_text(
        "order_id,phone,sku,price,qty,ordered_at\n"
        "O-1,+8613800138000,BB-23,899.00,1,2026-11-01T10:00:00+08:00\n"
        "O-2,13800138000,SOCK-1,29.5,three,2026-11-02T10:00:00+08:00\n",
        encoding="utf-8",
    )
    (env.tmp / "c.yaml").write_text(CUSTOMERS_MAP)
    (env.tmp / "o.yaml").write_text(ORDERS_MAP)

    out = _cli(env, str(customers), "--source", "crm", "--mapping", str(env.tmp / "c.yaml"))
    assert out.returncode == 0, out.stderr
    assert "rows read: 4" in out.stdout and "events stored: 2" in out.stdout and "rows rejected: 2" in out.stdout
    assert "row/s" in out.stderr  # the progress bar
    rejects = list(csv.reader((env.tmp / "customers.csv.rejects.csv").open()))
    assert rejects[0] == ["line", "field", "reason"]
    assert {(r[0], r[1]) for r in rejects[1:]} == {("3", "birthday"), ("5", "traits.email")}
    assert "bad-email" not in (env.tmp / "customers.csv.rejects.csv").read_text()

    out = _cli(env, str(orders), "--source", "shop", "--mapping", str(env.tmp / "o.yaml"))
    assert out.returncode == 0 and "events stored: 1" in out.stdout and "rows rejected: 1" in out.stdout

    again = _cli(env, str(customers), "--source", "crm", "--mapping", str(env.tmp / "c.yaml"))
    assert "events stored: 0" in again.stdout and "duplicates: 2" in again.stdout
    assert _count("SELECT count(*) FROM event") == 3
    assert _count("SELECT count(*) FROM profile WHERE merged_into IS NULL") == 2  # C1 (with order O-1) and C3

    keys = make_keys()
    with client() as c:
        found = c.post("/v1/profiles/lookup", json={"phone": "+86 138 0013 8000"}, headers=auth(keys["compliance"]))
        (profile,) = found.json()["profiles"]
        view = c.get(f"/v1/profiles/{profile['id']}", headers=auth(keys["compliance"])).json()
    assert view["traits"]["firstName"] == "李娜" and view["traits"]["birthday"] == "1991-04-05"
    order = next(e for e in view["recent_events"] if e["type"] == "track")
    assert order["properties"] == {"sku": "BB-23", "price": 899.0, "quantity": 1}
    assert order["timestamp"].startswith("2026-11-01T02:00:00")


def _minor_flags(admin: str, emails: list[str]) -> dict[str, list[str]]:
    """Each person's minor flags (privacy_flag rows), by email."""
    out = {}
    with client() as c:
        for email in emails:
            found = c.post("/v1/profiles/lookup", json={"email": email}, headers=auth(admin)).json()["profiles"]
            with sync_db() as conn:
                q = text("SELECT flag FROM privacy_flag WHERE profile_id = :p ORDER BY flag")
                out[email] = list(conn.execute(q, {"p": found[0]["id"]}).scalars())
    return out


def test_imported_birthdays_set_and_clear_minor_flags_as_each_persons_last_row_says(env: Env) -> None:
    """Children are flagged and adults are not; a person twice in one file ends as their later
    row says (a teen then an adult, an adult then a child); a flagged child imported again as
    an adult loses the flags."""
    today = datetime.now(UTC).date()

    def born(years: int) -> str:
        return today.replace(year=today.year - years, day=min(today.day, 28)).isoformat()

    first = env.tmp / "first.csv"
    rows = [("kid", 10), ("adult", 30), ("teen", 15), ("teen", 40), ("grown", 40), ("grown", 12)]
    first.write_text("customer_id,email,birthday\n" + "".join(f"{n},{n}@example.com,{born(age)}\n" for n, age in rows))
    second = env.tmp / "second.csv"
    second.write_text(f"customer_id,email,birthday\nkid,kid@example.com,{born(30)}\n")
    (env.tmp / "c.yaml").write_text(CUSTOMERS_MAP)
    admin = make_keys()["admin"]
    emails = [f"{n}@example.com" for n in ("kid", "adult", "teen", "grown")]
    out = _cli(env, str(first), "--source", "crm", "--mapping", str(env.tmp / "c.yaml"))
    assert out.returncode == 0 and "events stored: 6" in out.stdout, out.stdout + out.stderr
    both = ["minor_under_14", "minor_under_16"]
    assert _minor_flags(admin, emails) == {emails[0]: both, emails[1]: [], emails[2]: [], emails[3]: both}
    out = _cli(env, str(second), "--source", "crm", "--mapping", str(env.tmp / "c.yaml"))
    assert out.returncode == 0 and "events stored: 1" in out.stdout, out.stdout + out.stderr
    assert _minor_flags(admin, emails[:1]) == {emails[0]: []}


def test_a_mapping_decided_once_builds_the_same_messages_and_refusals_as_row_by_row() -> None:
    from app.errors import InvalidField
    from app.imports.mapping import load_mapping, message_builder, row_to_message

    events = load_mapping(
        text="kind: events\nevent_column: what\ntimestamp_column: at\n"
        "identifiers: {uid: user_id, anon: anonymous_id, dev: device_id, mail: email, crm: 'external:crm_id'}\n"
        "traits: {name: firstName, vip: {trait: vip, type: bool}}\n"
        "properties: {sku: sku, price: {property: price, type: float}, qty: {property: quantity, type: int}}\n"
    )
    customers = load_mapping(text=CUSTOMERS_MAP)
    rows: list[dict[str, Any]] = [
        {
            "uid": " u1 ",
            "anon": "",
            "dev": "d1",
            "mail": "a@b.cn",
            "crm": 7,
            "name": " Li ",
            "vip": "yes",
            "what": "Order",
            "at": "2026-11-01T10:00:00Z",
            "sku": "S",
            "price": "1,299.5",
            "qty": "2",
        },
        {
            "uid": None,
            "anon": "a1",
            "dev": "  ",
            "crm": "C9",
            "name": "",
            "vip": "",
            "what": "X",
            "at": "",
            "sku": None,
            "price": "",
            "qty": None,
            "extra": "ignored",
        },
        {
            "customer_id": "C1",
            "email": " x@y.com ",
            "mobile": "138 0013 8000",
            "first_name": "李娜",
            "tier": "gold",
            "birthday": "1991-04-05",
        },
        {"customer_id": "", "email": None, "mobile": 13800138000, "first_name": 5, "tier": " ", "birthday": None},
        {"price": "cheap", "what": "Y"},
        {"vip": "maybe", "what": "Y"},
        {"birthday": "someday"},
        {"at": "yesterday", "what": "Y"},
        {},
    ]

    def outcome(build: Any, *args: Any) -> Any:
        try:
            return build(*args)
        except InvalidField as exc:
            return ("refused", exc.field, exc.detail)

    for m in (events, customers):
        fast = message_builder(m)
        for row in rows:
            assert outcome(fast, row, "f:1") == outcome(row_to_message, m, row, "f:1")
    assert outcome(message_builder(events), rows[4], "f:1") == ("refused", "price", "is not a valid float")
    assert outcome(message_builder(events), rows[0], "f:1")["context"]["externalIds"] == [{"type": "crm_id", "id": 7}]


def _big_csv(path: Path, rows: int, people: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "first_name", "tier"])
        for i in range(rows):
            w.writerow([f"person{i % people}@example.com", f"P{i % people}", ["gold", "silver"][i % 2]])


def test_killing_an_import_midway_and_rerunning_gives_exactly_one_clean_run(env: Env) -> None:
    data = env.tmp / "big.csv"
    rows, people = 3000, 700
    _big_csv(data, rows, people)
    args = [sys.executable, "-m", "app", "import", str(data), "--source", "crm", "--chunk", "100", "--quiet"]
    proc = subprocess.Popen(args, env=env.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count("SELECT count(*) FROM ingested_message") < 500:
        assert proc.poll() is None and time.monotonic() < deadline, "import ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    accepted = _count("SELECT count(*) FROM ingested_message")
    partial = _count("SELECT count(*) FROM event")
    queued = _count("SELECT coalesce(sum(events), 0) FROM ingest_inbox")
    assert 0 < accepted < rows
    assert partial + queued == accepted  # each chunk accepted whole or not at all, and stored whole or not at all

    rerun = subprocess.run(args, env=env.environ(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"duplicates: {accepted}" in rerun.stdout
    assert _count("SELECT count(*) FROM event") == rows
    assert _count("SELECT count(DISTINCT message_id) FROM event") == rows
    assert _count("SELECT count(*) FROM profile WHERE merged_into IS NULL") == people
    assert _count("SELECT count(*) FROM identifier WHERE kind = 'email'") == people


def test_a_file_accepted_by_several_processes_gives_every_reject_in_line_order_and_exact_counts(env: Env) -> None:
    data = env.tmp / "many.csv"
    rows, people = 600, 150
    bad = {i for i in range(rows) if i % 37 == 5}  # spread over most of the 30 chunks
    with data.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "first_name"])
        for i in range(rows):
            w.writerow([f"not-an-address-{i}" if i in bad else f"p{i % people}@example.com", f"P{i % people}"])
    args = [str(data), "--source", "crm", "--chunk", "20", "--quiet"]
    out = _cli(env, *args)
    assert out.returncode == 0, out.stderr
    assert f"rows read: {rows}" in out.stdout and f"rows rejected: {len(bad)}" in out.stdout
    assert f"events stored: {rows - len(bad)}" in out.stdout
    lines = [r[0] for r in list(csv.reader((env.tmp / "many.csv.rejects.csv").open()))[1:]]
    assert lines == [str(i + 2) for i in sorted(bad)]  # the file's line numbers, in order, each once
    assert "not-an-address" not in (env.tmp / "many.csv.rejects.csv").read_text()
    assert _count("SELECT count(*) FROM event") == rows - len(bad)
    assert _count("SELECT count(*) FROM profile WHERE merged_into IS NULL") == people

    again = _cli(env, *args)
    assert "events stored: 0" in again.stdout and f"duplicates: {rows - len(bad)}" in again.stdout
    assert len(list(csv.reader((env.tmp / "many.csv.rejects.csv").open()))) == len(bad) + 1


def _processes_reading(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_after_kill_9_of_an_import_nothing_goes_on_accepting_its_rows(env: Env) -> None:
    data = env.tmp / "killed.csv"
    _big_csv(data, 6000, 900)
    args = [sys.executable, "-m", "app", "import", str(data), "--source", "crm", "--chunk", "50", "--quiet"]
    proc = subprocess.Popen(args, env=env.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count("SELECT count(*) FROM ingested_message") < 300:
        assert proc.poll() is None and time.monotonic() < deadline, "import ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)
    accepted = _count("SELECT count(*) FROM ingested_message")
    time.sleep(1.5)
    assert _count("SELECT count(*) FROM ingested_message") == accepted < 6000
    assert _processes_reading(data) == []


def test_http_upload_is_stored_encrypted_imported_in_the_background_and_pollable(env: Env) -> None:
    keys = make_keys()
    body = (
        "\n".join(
            [
                '{"user_id": "n1", "email": "nina@example.com", "plan": "pro"}',
                '{"user_id": "n2", "email": "nope"}',
                "not json at all",
                '{"user_id": "n3", "phone": "+1 415 555 0199"}',
            ]
        )
        + "\n"
    )
    with client() as c:
        r = c.post(
            "/v1/imports",
            files={"file": ("people.ndjson", body.encode(), "application/x-ndjson")},
            auth=(keys["ingest"], ""),
        )
        assert r.status_code == 202, r.text
        job = r.json()
        for _ in range(100):
            job = c.get(f"/v1/imports/{job['id']}", auth=(keys["ingest"], "")).json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done", job
        assert (job["rows_read"], job["events_stored"], job["rows_rejected"]) == (4, 2, 2)
        rejects = c.get(f"/v1/imports/{job['id']}/rejects", auth=(keys["ingest"], "")).text
        assert rejects.splitlines()[1:] == [
            "2,traits.email,is not a valid email address",
            "3,row,the row could not be parsed",
        ]
        assert not upload_path(job["id"]).exists()  # the upload is gone once imported
        assert (
            c.post("/v1/profiles/lookup", json={"kind": "user_id", "value": "n3"}, headers=auth(keys["admin"])).json()[
                "profiles"
            ][0]["traits"]["phone"]
            == "+14155550199"
        )
        bad = c.post(
            "/v1/imports",
            files={"file": ("x.csv", b"a,b\n1,2\n")},
            data={"mapping": "kind: nonsense"},
            auth=(keys["ingest"], ""),
        )
        assert bad.status_code == 422 and bad.json()["invalid-params"][0]["name"] == "kind"


def test_encrypted_upload_hides_plaintext_and_detects_tampering(env: Env) -> None:
    key, upload_id = new_data_key(), "u-1"
    path = env.tmp / "u.enc"
    writer = EncryptedWriter(path, key, upload_id)
    content = ("email\n" + "".join(f"secret{i}@example.com\n" for i in range(60_000))).encode()
    for i in range(0, len(content), 70_000):
        writer.write(content[i : i + 70_000])
    writer.close()
    assert b"secret1@example.com" not in path.read_bytes()
    with open_decrypted_text(path, key, upload_id) as fh:
        assert fh.read().encode() == content
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated: the last chunk is missing
    with pytest.raises(IntegrityFailure), open_decrypted_text(path, key, upload_id) as fh:
        fh.read()


def test_resume_job_finishes_an_import_whose_runner_died(env: Env) -> None:
    job_id = str(uuid.uuid4())
    ring = key_material(get_settings()).master
    mv, master = ring.current()
    file_key = new_data_key()
    writer = EncryptedWriter(upload_path(job_id), file_key, job_id)
    writer.write(b"email,tier\nrae@example.com,gold\n")
    writer.close()

    async def stale_job() -> None:
        async with unit_of_work() as session:
            session.add(
                ImportJob(
                    id=job_id,
                    source="crm",
                    filename="x.csv",
                    file_sha256="0" * 64,
                    status="running",
                    format="csv",
                    actor_key_id="k",
                    wrapped_key=wrap_key(master, mv, f"import:{job_id}", 1, file_key),
                    master_version=mv,
                    created_at=datetime.now(UTC),
                    heartbeat_at=datetime.now(UTC) - timedelta(hours=1),
                )
            )

    run(stale_job())
    assert run(resume_imports()) == {"imports": {job_id: "done"}}
    assert run(resume_imports()) == {"imports": {}}
    assert _count("SELECT count(*) FROM event") == 1


def _wait(c: Any, key: str, import_id: str) -> dict[str, Any]:
    job: dict[str, Any] = {}
    for _ in range(200):
        job = c.get(f"/v1/imports/{import_id}", auth=(key, "")).json()
        if job.get("status") in ("done", "failed"):
            break
        time.sleep(0.05)
    return job


def _source(c: Any, admin: str, name: str) -> str:
    r = c.post("/v1/keys", json={"role": "ingest", "name": name}, headers=auth(admin))
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def test_malformed_or_oversized_mappings_are_422_naming_the_problem_and_parsed_off_the_event_loop(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = make_keys()
    csv_file = ("x.csv", b"email\na@example.com\n", "text/csv")
    cases = {
        "kind: [unclosed": "mapping",
        "- just\n- a list": "mapping",
        "identifiers: [email, phone]": "identifiers",
        "traits: 42": "traits",
        "identifiers: {email: [1, 2]}": "identifiers.email",
        "traits: {first: {trait: [x], type: string}}": "traits.first.trait",
        "kind: events\nevent: {a: 1}": "event",
        "id_column: [a]": "id_column",
        "a: &x [1]\nb: *x": "mapping",  # aliases are refused (no billion laughs)
        "x: " + "y" * 70_000: "mapping",  # over 64 KB
        "\x00": "mapping",
    }
    on_loop: list[bool] = []  # for each mapping's YAML parse: was an event loop running on that thread?
    import asyncio

    import yaml

    from app.imports.mapping import _NoAliasLoader

    real = yaml.SafeLoader.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self, _NoAliasLoader):  # a policy file, read once and cached per directory
            return real(self, *args, **kwargs)
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(yaml.SafeLoader, "__init__", spy)
    with client() as c:
        for mapping, field in cases.items():
            r = c.post("/v1/imports", files={"file": csv_file}, data={"mapping": mapping}, auth=(keys["ingest"], ""))
            assert r.status_code in (413, 422), (mapping[:40], r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["invalid-params"][0]["name"] == field, (mapping[:40], r.json())
        good = {"mapping": "kind: customers"}
        ok = c.post("/v1/imports", files={"file": csv_file}, data=good, auth=(keys["ingest"], ""))
        assert ok.status_code == 202, ok.text
    assert on_loop and not any(on_loop)  # parsed, and never on the event loop's thread
    assert not list(get_settings().import_dir.glob("*.enc")) or _count("SELECT count(*) FROM import_job") == 1


def test_rejects_escape_cells_a_spreadsheet_would_run_as_formulas(env: Env) -> None:
    keys = make_keys()
    formula = '=HYPERLINK("http://evil.example/","click")'
    mapping = "kind: customers\nidentifiers: {email: email}\ntraits:\n" + "\n".join(
        f"  '{name}': {{trait: t{i}, type: int}}" for i, name in enumerate([formula, "+1+1", "-2", "@SUM(A1)"])
    )
    header = ",".join(['"=HYPERLINK(""http://evil.example/"",""click"")"', "+1+1", "-2", "@SUM(A1)", "email"])
    body = f"{header}\nnot-a-number,x,y,z,a@example.com\n".encode()
    with client() as c:
        r = c.post("/v1/imports", files={"file": ("f.csv", body)}, data={"mapping": mapping}, auth=(keys["ingest"], ""))
        assert r.status_code == 202, r.text
        job = _wait(c, keys["ingest"], r.json()["id"])
        assert job["status"] == "done" and job["rows_rejected"] == 1, job
        text_ = c.get(f"/v1/imports/{job['id']}/rejects", auth=(keys["ingest"], "")).text
    rows = list(csv.reader(text_.splitlines()))
    assert rows[0] == ["line", "field", "reason"]
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell
    assert rows[1][1] == "'" + formula


def test_import_status_and_rejects_belong_to_the_source_that_made_them(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        shop = _source(c, keys["admin"], "shop")
        crm = _source(c, keys["admin"], "crm")
        r = c.post("/v1/imports", files={"file": ("p.csv", b"email\nnope\n")}, auth=(shop, ""))
        assert r.status_code == 202, r.text
        job = _wait(c, shop, r.json()["id"])
        assert job["status"] == "done"
        for path in (f"/v1/imports/{job['id']}", f"/v1/imports/{job['id']}/rejects"):
            assert c.get(path, auth=(shop, "")).status_code == 200
            other = c.get(path, auth=(crm, ""))
            assert other.status_code == 404 and other.headers["content-type"].startswith("application/problem+json")
            assert c.get(path, headers=auth(keys["admin"])).status_code == 200


def test_ingest_keys_never_learn_whether_a_person_already_existed(env: Env) -> None:
    keys = make_keys()
    body = b"email,plan\nknown@example.com,pro\n"
    with client() as c:
        first = c.post("/v1/imports", files={"file": ("a.csv", body)}, auth=(keys["ingest"], ""))
        assert first.status_code == 202
        assert "profiles_created" not in first.json() and "profiles_updated" not in first.json()
        job = _wait(c, keys["ingest"], first.json()["id"])
        assert job["status"] == "done" and job["events_stored"] == 1
        assert "profiles_created" not in job and "profiles_updated" not in job
        admin_view = c.get(f"/v1/imports/{job['id']}", headers=auth(keys["admin"])).json()
        assert admin_view["profiles_created"] == 1 and admin_view["profiles_updated"] == 0


def test_json_imports_are_streamed_rows_before_a_break_are_kept(env: Env) -> None:
    keys = make_keys()
    rows = [{"user_id": f"j{i}", "email": f"j{i}@example.com"} for i in range(5)]
    whole = json.dumps({"data": rows}).encode()
    broken = json.dumps(rows).encode()[:-40]  # cut inside the last row
    deep = json.dumps([rows[0], {"user_id": "deep", "x": json.loads("[" * 200 + "]" * 200)}]).encode()
    with client() as c:
        for name, content, stored, rejected in (
            ("whole.json", whole, 5, 0),
            ("broken.json", broken, 4, 1),
            ("deep.json", deep, 1, 1),  # another file: j0's row is a new message
        ):
            r = c.post("/v1/imports", files={"file": (name, content)}, auth=(keys["ingest"], ""))
            assert r.status_code == 202, r.text
            job = _wait(c, keys["ingest"], r.json()["id"])
            assert job["status"] == "done", job
            assert (job["events_stored"], job["rows_rejected"]) == (stored, rejected), (name, job)


def _open_files_under(folder: Path) -> list[bytes]:
    """What this process holds open under ``folder`` (including unlinked temp files)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            try:
                found.append(Path(f"/proc/self/fd/{fd.name}").read_bytes())
            except OSError:
                found.append(target.encode())
    return found


def test_uploads_never_reach_the_temp_folder_in_plaintext(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from app.imports import upload

    tmp = env.tmp / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    marker = b"plain-marker-4711"
    # ~1.5 MB (over any in-memory spooling threshold); rows without identifiers are rejected cheaply
    content = b"note\n" + b"".join(b"%d-" % i + marker + b"\n" for i in range(70_000))
    seen: list[bytes] = []
    real_write = upload.EncryptedWriter.write

    def watching_write(self: Any, data: bytes) -> None:  # while the upload arrives, look at the temp folder
        seen.extend(_open_files_under(tmp))
        seen.extend(p.read_bytes() for p in tmp.rglob("*") if p.is_file())
        real_write(self, data)

    monkeypatch.setattr(upload.EncryptedWriter, "write", watching_write)
    keys = make_keys()
    with client() as c:
        r = c.post("/v1/imports", files={"file": ("big.csv", content, "text/csv")}, auth=(keys["ingest"], ""))
        assert r.status_code == 202, r.text
        job = _wait(c, keys["ingest"], r.json()["id"])
    assert job["status"] == "done" and job["rows_read"] == 70_000, job
    assert not any(marker in blob for blob in seen)
    assert not any(marker in p.read_bytes() for p in tmp.rglob("*") if p.is_file())


def test_data_files_and_folders_are_private_to_the_service_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    environ = {
        **os.environ,
        "CONSENTRY_DATABASE_URL": f"sqlite:///{data}/consentry.db",
        "CONSENTRY_KEY_DIR": str(data / "keys"),
        "CONSENTRY_IMPORT_DIR": str(data / "imports"),
        "CONSENTRY_SCHEDULER": "0",
    }
    environ.pop("CONSENTRY_LOG_FILE", None)
    old = os.umask(0o022)  # a typical login umask: the service must not depend on it
    try:
        upgrade = [sys.executable, "-m", "app", "db", "upgrade"]
        up = subprocess.run(upgrade, env=environ, capture_output=True, timeout=120)
        assert up.returncode == 0, up.stderr
        made = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "--role", "ingest", "--name", "perm"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        with live_server(environ) as base:
            import httpx

            r = httpx.post(f"{base}/v1/imports", files={"file": ("p.csv", b"email\np@example.com\n")}, auth=(key, ""))
            assert r.status_code == 202, r.text
            for _ in range(100):
                if httpx.get(f"{base}/v1/imports/{r.json()['id']}", auth=(key, "")).json()["status"] == "done":
                    break
                time.sleep(0.05)
            # while the service runs: its folders, database, WAL and shared memory, keys
            for folder in (data, data / "keys", data / "imports"):
                assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
            files = [p for p in data.rglob("*") if p.is_file()]
            assert {"consentry.db", "consentry.db-wal", "consentry.db-shm"} <= {p.name for p in files}
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        os.umask(old)
    writer = EncryptedWriter(data / "imports" / "x.enc", new_data_key(), "x")
    writer.close()
    assert stat.S_IMODE((data / "imports" / "x.enc").stat().st_mode) == 0o600


def test_an_upload_is_imported_with_the_trust_of_the_key_that_sent_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.imports import service

    seen: list[str] = []
    real = service.accept_messages

    async def spy(session: Any, ctx: Any, principal: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(principal.trust)
        return await real(session, ctx, principal, *args, **kwargs)

    monkeypatch.setattr(service, "accept_messages", spy)
    keys = make_keys()
    with client() as c:
        admin = auth(keys["admin"])
        web = c.post("/v1/keys", json={"role": "ingest", "name": "web", "trust": "client"}, headers=admin)
        shop = c.post("/v1/keys", json={"role": "ingest", "name": "shop", "trust": "server"}, headers=admin)
        assert web.status_code == 201 and shop.status_code == 201, (web.text, shop.text)
        for key, trust in ((web.json()["key"], "client"), (shop.json()["key"], "server")):
            r = c.post("/v1/imports", files={"file": ("t.csv", b"email\nt@example.com\n")}, auth=(key, ""))
            assert r.status_code == 202, r.text
            assert _wait(c, key, r.json()["id"])["status"] == "done"
            assert seen[-1] == trust
