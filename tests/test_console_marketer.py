"""The marketer's console: the segment builder (form <-> tree, live count, masked sample,
overlap, saving), the size-over-time chart, activation and journeys pages, role refusals."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from app.access.service import authenticate
from app.console import marketer_builder as builder
from app.console.marketer_chart import points_of, size_chart
from app.console.marketer_segments import draft_overlap
from app.db import unit_of_work
from app.errors import InvalidField
from app.settings import get_settings
from tests.conftest import Env, run
from tests.console_helpers import post_form, sign_in
from tests.helpers import MARKETING, auth, client, grant_marketing, make_keys
from tests.test_segments import SHOES, _ago, _born, _person, _shop

HOOPS = {"all": [SHOES, {"age": {"between": [18, 30]}}]}


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    """Counts shown exactly (threshold 0) to every role."""
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    get_settings.cache_clear()
    return env


def hoops_form() -> dict[str, str]:
    """The basketball-shoes 18-30 segment as the builder's form holds it."""
    return {
        "t.kind": "all",
        "t.0.kind": "event",
        "t.0.name": "Order Completed",
        "t.0.wprop": "category",
        "t.0.wop": "eq",
        "t.0.wvalue": "basketball shoes",
        "t.0.count_op": "gte",
        "t.0.count": "1",
        "t.0.within": "90",
        "t.1.kind": "age",
        "t.1.low": "18",
        "t.1.high": "30",
    }


# --- the builder's form ----------------------------------------------------------------------


def test_the_form_describes_the_basketball_shoes_segment() -> None:
    assert builder.to_tree(builder.read_form(hoops_form())) == HOOPS


def test_a_saved_tree_loads_into_the_form_and_back() -> None:
    trees: list[dict[str, Any]] = [
        HOOPS,
        {"any": [{"trait": "plan", "in": ["pro", "plus"]}, {"not": {"consent": MARKETING, "state": "withdrawn"}}]},
        {"all": [{"computed": "churn_risk", "gte": 70}, {"not": {"all": [{"tag": "lifecycle.active"}]}}]},
        {"all": [{"event": "Order Completed", "count": {"gte": 3}, "within": {"days": 30}}, {"age": {"gte": 21}}]},
        {"trait": "zip", "eq": "10115"},  # a number-like string stays a string
    ]
    for tree in trees:
        fields = builder.fields_of(builder.from_tree(tree))
        assert builder.to_tree(builder.read_form(fields)) == tree


def test_what_the_form_cannot_show_is_kept_as_json() -> None:
    funnel = {"funnel": [{"event": "Product Added"}, {"event": "Order Completed"}], "within": {"days": 7}}
    box = builder.from_tree({"all": [funnel, {"trait": "plan", "eq": "pro"}]})
    assert [c.kind for c in box.children] == ["json", "trait"]
    assert builder.to_tree(builder.read_form(builder.fields_of(box))) == {
        "all": [funnel, {"trait": "plan", "eq": "pro"}]
    }


def test_edits_add_remove_group_and_negate_conditions() -> None:
    box = builder.read_form(hoops_form())
    box = builder.edit(box, "add:t:consent")
    box = builder.edit(box, "group:t.1")
    box = builder.edit(box, "not:t.1")
    fields = builder.fields_of(box)
    assert fields["t.2.kind"] == "consent" and fields["t.1.kind"] == "all" and fields["t.1.not"] == "1"
    fields["t.2.purpose"] = MARKETING
    tree = builder.to_tree(builder.read_form(fields))
    assert tree == {
        "all": [SHOES, {"not": {"all": [{"age": {"between": [18, 30]}}]}}, {"consent": MARKETING, "state": "granted"}]
    }
    box = builder.edit(builder.read_form(fields), "remove:t.1")
    assert builder.to_tree(box) == {"all": [SHOES, {"consent": MARKETING, "state": "granted"}]}


def test_a_half_filled_condition_names_its_form_field_not_its_value() -> None:
    form = hoops_form() | {"t.1.low": "eighteen-ish"}
    with pytest.raises(InvalidField) as bad:
        builder.to_tree(builder.read_form(form))
    assert bad.value.field == "t.1.low" and "eighteen" not in str(bad.value.detail)
    with pytest.raises(InvalidField) as empty:
        builder.to_tree(builder.read_form(hoops_form() | {"t.0.name": " "}))
    assert empty.value.field == "t.0.name"
    with pytest.raises(InvalidField) as group:
        builder.to_tree(builder.read_form({"t.kind": "any"}))
    assert group.value.field == "t.kind"
    for act in ("add:t.0:trait", "remove:t.9", "explode:t", "add:t:rocket", "add:x.1:trait"):
        with pytest.raises(InvalidField) as wrong:
            builder.edit(builder.read_form(hoops_form()), act)
        assert wrong.value.field == "act"


def test_typed_values_follow_the_operator() -> None:
    def tree(op: str, value: str) -> dict[str, Any]:
        return builder.to_tree(builder.read_form({"t.kind": "trait", "t.name": "plan", "t.op": op, "t.value": value}))

    assert tree("eq", "42") == {"trait": "plan", "eq": 42}
    assert tree("eq", '"42"') == {"trait": "plan", "eq": "42"}
    assert tree("eq", "true") == {"trait": "plan", "eq": True}
    assert tree("in", "pro, plus") == {"trait": "plan", "in": ["pro", "plus"]}
    assert tree("between", "1, 2.5") == {"trait": "plan", "between": [1, 2.5]}
    assert tree("exists", "false") == {"trait": "plan", "exists": False}
    with pytest.raises(InvalidField) as bad:
        tree("gte", "many")
    assert bad.value.field == "t.value"


# --- the size chart -------------------------------------------------------------------------


LABELS = {"members": "Members", "usable": "Usable", "empty": "No refresh yet", "masked": "fewer than 10"}


def test_the_size_chart_draws_both_series_and_breaks_at_masked_counts() -> None:
    rows = [
        {"at": "2026-11-20T10:00:00+00:00", "members": 120, "usable": 80},
        {"at": "2026-11-01T10:00:00+00:00", "members": 100, "usable": 60},
        {"at": "2026-11-10T10:00:00+00:00", "members": 110, "usable": "<10"},
    ]
    svg = str(size_chart(points_of(rows), LABELS, "Hoops <18-30> over time"))
    assert svg.count("<polyline") == 1  # members: one line; usable: two single points around the masked one
    assert "Usable 2026-11-10 10:00: fewer than 10" in svg
    assert "Members 2026-11-01 10:00: 100" in svg and "Usable 2026-11-20 10:00: 80" in svg
    assert "Hoops &lt;18-30&gt; over time" in svg and "<script" not in svg and "style=" not in svg
    assert ">200<" in svg  # the axis rounds 120 up to 200
    assert "No refresh yet" in str(size_chart([], LABELS, "t"))


# --- overlap through the segments service ---------------------------------------------------


def test_the_drafts_overlap_with_a_saved_segment_is_counted_by_the_segments_service(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        ids = _shop(c, keys)  # basketball shoes lately: p0, p1, p4, p5
        for uid, years in {"u0": 25, "u1": 40, "u4": 18}.items():
            ids[f"p{uid[1:]}"] = _person(c, keys, uid, {"birthday": _born(years)})
        vip = c.post(
            "/v1/segments",
            json={"name": "VIP", "tree": {"trait": "plan", "in": ["vip", "basic"]}, "purpose": MARKETING},
            headers=auth(keys["marketer"]),
        )
        assert vip.status_code == 201, vip.text

    async def overlap() -> Any:
        async with unit_of_work() as session:
            principal = await authenticate(session, keys["marketer"])
            assert principal is not None
            return await draft_overlap(session, principal, HOOPS, vip.json()["id"], MARKETING)

    got = run(overlap())
    assert (got.name, got.saved, got.both, got.usable_both) == ("VIP", 6, 2, 1)  # p0 (consented), p4 (not)
    with pytest.raises(InvalidField) as gone:
        run(_overlap_with(keys["marketer"], "00000000-0000-4000-8000-000000000000"))
    assert gone.value.field == "overlap"


async def _overlap_with(key: str, segment_id: str) -> Any:
    async with unit_of_work() as session:
        principal = await authenticate(session, key)
        assert principal is not None
        return await draft_overlap(session, principal, HOOPS, segment_id, MARKETING)


# --- the marketing demo ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_marketing_demo_fills_segments_history_runs_and_journeys(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.demo_marketing import WEEKS, load_marketing_demo

    monkeypatch.setenv("CONSENTRY_ACTIVATION_DIR", str(env.tmp / "activation"))
    get_settings.cache_clear()
    keys = make_keys()
    run(load_marketing_demo(keys, shoppers=30))
    run(load_marketing_demo(keys, shoppers=30))  # once only
    with client() as c:
        segs = c.get("/v1/segments", headers=auth(keys["marketer"])).json()
        assert len(segs) == 4
        sizes = c.get(f"/v1/segments/{segs[0]['id']}/sizes", headers=auth(keys["marketer"])).json()
        assert len(sizes) == WEEKS + 2  # saved, a refresh a week, today's
        runs = c.get("/v1/activations", headers=auth(keys["marketer"])).json()
        by_status = {r["status"] for r in runs if r["trigger"] == "manual"}
        assert by_status == {"done", "refused", "failed"}  # the export, the small ad audience, the webhook
        failed = next(r for r in runs if r["status"] == "failed")
        assert failed["dead_letters"]  # the unreachable webhook: a dead letter, nothing waited for
        names = {j["name"]: j["id"] for j in c.get("/v1/journeys", headers=auth(keys["marketer"])).json()}
        sends = c.get(f"/v1/journeys/{names['Welcome']}/sends", headers=auth(keys["marketer"])).json()
        assert {s["outcome"] for s in sends["sends"]} >= {"sent"}


# --- the builder over HTTP ------------------------------------------------------------------


def _hoops_people(c: Any, keys: dict[str, str]) -> dict[str, str]:
    """_shop's people; p0 (25, consented, an email), p4 (18, no consent) are 18-30 and bought
    basketball shoes lately; p1 is 40."""
    ids = _shop(c, keys)
    ids["p0"] = _person(c, keys, "u0", {"birthday": _born(25), "email": "alice.hoops@example.com"})
    ids["p1"] = _person(c, keys, "u1", {"birthday": _born(40)})
    ids["p4"] = _person(c, keys, "u4", {"birthday": _born(18)})
    return ids


def _figure(html: str, name: str) -> str:
    import re

    found = re.search(rf'id="{name}">([^<]*)<', html)
    assert found, html[:2000]
    return found.group(1)


def test_a_tree_edit_returns_the_new_count_with_exclusions_and_a_masked_sample(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        _hoops_people(c, keys)
        token = sign_in(c, keys["marketer"])
        page = c.get("/console/marketer/builder")
        assert page.status_code == 200 and 'hx-post="/console/marketer/builder/count"' in page.text
        form = hoops_form() | {"purpose": MARKETING}
        r = post_form(c, "/console/marketer/builder/count", token, form, headers={"HX-Request": "true"})
        assert r.status_code == 200, r.text
        assert (_figure(r.text, "count-total"), _figure(r.text, "count-usable")) == ("2", "1")
        assert "no consent" in r.text  # p4, excluded by reason
        assert "a***@example.com" in r.text and "alice.hoops" not in r.text  # masked as the API masks it
        zh = post_form(c, "/console/marketer/builder/count", token, form, headers={"Accept-Language": "zh-CN"})
        assert "未同意" in zh.text and "按原因排除" in zh.text  # the reasons in the reader's language

        edited = post_form(c, "/console/marketer/builder/edit", token, form | {"act": "add:t:trait"})
        assert edited.status_code == 200 and edited.headers["HX-Trigger-After-Settle"] == "tree-changed"
        assert 'name="t.2.kind" value="trait"' in edited.text
        narrower = form | {"t.2.kind": "trait", "t.2.name": "plan", "t.2.op": "eq", "t.2.value": "vip"}
        r = post_form(c, "/console/marketer/builder/count", token, narrower)
        assert (_figure(r.text, "count-total"), _figure(r.text, "count-usable")) == ("0", "0")


def test_the_count_says_which_field_to_complete_and_never_echoes_it(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        token = sign_in(c, keys["marketer"])
        r = post_form(c, "/console/marketer/builder/count", token, hoops_form() | {"t.1.low": "<b>secret</b>"})
        assert r.status_code == 200 and "t.1.low" in r.text and "secret" not in r.text
        bad_tree = hoops_form() | {"t.0.wprop": "email"}  # personal: the segments service refuses it
        r = post_form(c, "/console/marketer/builder/count", token, bad_tree)
        assert "personal data" in r.text and "count-total" not in r.text


def test_roles_the_builder_refuses(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        for role in ("auditor", "compliance"):
            c.cookies.clear()
            token = sign_in(c, keys[role])
            assert c.get("/console/marketer/builder").status_code == 403
            assert post_form(c, "/console/marketer/builder/count", token, hoops_form()).status_code == 403
        c.cookies.clear()
        token = sign_in(c, keys["marketer"])  # a purpose the marketer may not use: refused, nothing counted
        r = post_form(c, "/console/marketer/builder/count", token, hoops_form() | {"purpose": "essential.service"})
        assert "is not a purpose this role may use" in r.text and "count-total" not in r.text
        nav = c.get("/console").text
        assert "/console/marketer/builder" in nav and "/console/compliance/requests" not in nav


def test_the_draft_is_saved_then_shown_with_its_size_chart_and_overlap(exact: Env) -> None:
    keys = make_keys()
    with client() as c:
        _hoops_people(c, keys)
        token = sign_in(c, keys["marketer"])
        form = hoops_form() | {"purpose": MARKETING, "name": "Hoops 18-30"}
        r = post_form(c, "/console/marketer/builder/save", token, form, headers={"HX-Request": "true"})
        assert r.status_code == 204, r.text
        target = r.headers["HX-Redirect"]
        seg = c.get(target)
        assert seg.status_code == 200 and "Hoops 18-30" in seg.text and "<svg" in seg.text
        sid = target.rsplit("/", 1)[1]
        saved = c.get(f"/v1/segments/{sid}", headers=auth(keys["marketer"])).json()
        assert saved["tree"] == HOOPS and saved["purpose"] == MARKETING
        edit = c.get(f"/console/marketer/builder/{sid}")
        assert 'name="t.0.wvalue" value="basketball shoes"' in edit.text
        again = post_form(c, "/console/marketer/builder/save", token, form | {"segment_id": sid, "t.1.high": "40"})
        assert again.status_code == 303
        assert c.get(f"/v1/segments/{sid}", headers=auth(keys["marketer"])).json()["version"] == 2
        everyone = post_form(
            c,
            "/console/marketer/builder/save",
            token,
            {
                "t.kind": "trait",
                "t.name": "plan",
                "t.op": "exists",
                "t.value": "true",
                "purpose": MARKETING,
                "name": "Everyone",
            },
        )
        other = everyone.headers["location"].rsplit("/", 1)[1]
        r = post_form(c, f"/console/marketer/segments/{sid}/overlap", token, {"other": other})
        assert r.status_code == 200 and "saved-overlap-figures" in r.text
        o = post_form(
            c, "/console/marketer/builder/overlap", token, hoops_form() | {"purpose": MARKETING, "overlap": other}
        )
        assert "2 of the people matching this draft" in o.text


def test_a_run_started_from_the_page_reports_who_was_sent_and_excluded(
    exact: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_ACTIVATION_DIR", str(exact.tmp / "activation"))
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        _hoops_people(c, keys)
        seg = c.post(
            "/v1/segments", json={"name": "Hoops", "tree": HOOPS, "purpose": MARKETING}, headers=auth(keys["marketer"])
        )
        body = {
            "name": "Export",
            "kind": "file",
            "purpose": MARKETING,
            "categories": ["user.contact.email"],
            "config": {"format": "csv"},
        }
        dest = c.post("/v1/destinations", json=body, headers=auth(keys["marketer"]))
        assert dest.status_code == 201, dest.text
        token = sign_in(c, keys["marketer"])
        assert "Export" in c.get("/console/marketer/activation").text
        r = post_form(
            c,
            "/console/marketer/activation/runs",
            token,
            {"segment_id": seg.json()["id"], "destination_id": dest.json()["id"]},
        )
        assert r.status_code == 303, r.text
        report = c.get(r.headers["location"]).text
        assert _figure(report, "run-sent") == "1" and "no consent" in report and "run-done" in report
        refused = post_form(
            c, "/console/marketer/activation/runs", token, {"segment_id": "", "destination_id": dest.json()["id"]}
        )
        assert refused.status_code == 422 and "segment_id" in refused.text


def test_journeys_and_their_sends_are_listed(exact: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTRY_ACTIVATION_DIR", str(exact.tmp / "activation"))
    get_settings.cache_clear()
    keys = make_keys()
    with client() as c:
        body = {
            "name": "Out",
            "kind": "file",
            "purpose": MARKETING,
            "categories": ["user.contact.email"],
            "config": {"format": "csv"},
        }
        dest = c.post("/v1/destinations", json=body, headers=auth(keys["marketer"])).json()
        j = {"name": "Welcome aboard", "kind": "welcome", "destination_id": dest["id"], "purpose": MARKETING}
        journey = c.post("/v1/journeys", json=j, headers=auth(keys["marketer"]))
        assert journey.status_code == 201, journey.text
        pid = _person(c, keys, "w1", {"email": "w1@example.com"})
        grant_marketing(c, keys["compliance"], pid)
    from app.journeys.service import run_triggers

    run(run_triggers())
    with client() as c:
        sign_in(c, keys["marketer"])
        listing = c.get("/console/marketer/journeys").text
        assert "Welcome aboard" in listing
        sends = c.get(f"/console/marketer/journeys/{journey.json()['id']}").text
        assert "sent: 1" in sends and pid[:8] in sends


# --- in a real browser ----------------------------------------------------------------------


@contextmanager
def webhook_receiver() -> Iterator[list[dict[str, Any]]]:
    """A local webhook receiver (answers 200); yields the people of every batch it received."""
    people: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            people.extend(json.loads(body).get("people", []))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        people.append({"url": f"http://127.0.0.1:{server.server_address[1]}/hook"})
        yield people
    finally:
        server.shutdown()


def _shoppers(api: httpx.Client, keys: dict[str, str], tag: str) -> dict[int, tuple[str, str]]:
    """Fourteen people of this test (plan ``tag``): 0-11 bought basketball shoes ten days ago
    and are 18 to 30, 0-10 and the two others consented to marketing; 12 is 40; 13 bought
    running shoes. Returns n -> (profile id, email)."""
    out = {}
    for n in range(14):
        uid, email = f"mkb-{tag}-{n}", f"hoops{n}.{tag}@example.com"
        traits = {"country": "DE", "plan": tag, "email": email, "birthday": _born(40 if n == 12 else 18 + n)}
        assert (
            api.post("/v1/identify", json={"userId": uid, "traits": traits}, auth=(keys["ingest"], "")).status_code
            == 200
        )
        category = "running shoes" if n == 13 else "basketball shoes"
        order = {"userId": uid, "event": "Order Completed", "properties": {"category": category}, "timestamp": _ago(10)}
        assert api.post("/v1/track", json=order, auth=(keys["ingest"], "")).status_code == 200
        found = api.post("/v1/profiles/lookup", json={"kind": "user_id", "value": uid}, headers=auth(keys["admin"]))
        out[n] = (str(found.json()["profiles"][0]["id"]), email)
        if n != 11:
            grant_marketing(api, keys["compliance"], out[n][0])
    return out


def test_the_marketer_builds_the_hoops_segment_sees_a_withdrawal_and_activates_it(
    signed_in: Any, live_server: Any
) -> None:
    from playwright.sync_api import expect

    from tests.browser.plugin import assert_accessible, screenshot

    tag = f"hoops-{secrets.token_hex(3)}"
    keys = live_server.keys
    with httpx.Client(base_url=live_server.url, timeout=60) as api, webhook_receiver() as received:
        people = _shoppers(api, keys, tag)
        hook = {
            "name": f"CRM webhook {tag}",
            "kind": "webhook",
            "purpose": MARKETING,
            "categories": ["user.contact.email"],
            "config": {"url": received.pop(0)["url"], "max_attempts": 2, "backoff_s": 0},
            "secret": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        assert api.post("/v1/destinations", json=hook, headers=auth(keys["marketer"])).status_code == 201

        page = signed_in("marketer")
        page.goto(f"{live_server.url}/console/marketer/builder")
        page.fill('input[name="t.0.name"]', "Order Completed")
        page.fill('input[name="t.0.wprop"]', "category")
        page.fill('input[name="t.0.wvalue"]', "basketball shoes")
        for kind, first in (("Age", "t.1.low"), ("Trait", "t.2.name")):
            page.click("#n-t > details.cond-add > summary")
            page.click(f"#n-t > details.cond-add button:text-is('{kind}')")
            page.wait_for_selector(f'input[name="{first}"]')
        page.fill('input[name="t.2.name"]', "plan")
        page.fill('input[name="t.2.value"]', tag)
        expect(page.locator("#count-total")).to_have_text("12", timeout=60_000)
        expect(page.locator("#count-usable")).to_have_text("11")
        expect(page.locator("#count-excluded")).to_contain_text("no consent")
        expect(page.locator("#count-sample")).to_contain_text("h***@example.com")
        screenshot(page, "marketer-builder")
        assert_accessible(page, "segment builder")

        withdraw = {"consents": [{"profile_id": people[0][0], "purpose": MARKETING, "state": "withdrawn"}]}
        assert api.post("/v1/consents", json=withdraw, headers=auth(keys["compliance"])).status_code == 201
        page.fill('input[name="t.2.value"]', tag)  # any edit counts again
        expect(page.locator("#count-usable")).to_have_text("10", timeout=60_000)
        expect(page.locator("#count-excluded")).to_contain_text("withdrawn")
        screenshot(page, "marketer-builder-after-withdrawal")

        page.fill("#segment-name", f"Hoops 18-30 {tag}")
        page.click("#save-segment")
        page.get_by_role("heading", name=f"Segment “Hoops 18-30 {tag}”").wait_for(timeout=60_000)
        assert page.locator("figure.chart-box svg").count() == 1
        screenshot(page, "marketer-segment")
        assert_accessible(page, "segment page")

        page.select_option('select[name="destination_id"]', label=f"CRM webhook {tag} (webhook)")
        page.get_by_role("button", name="Send now").click()
        expect(page.locator("#run-status")).to_have_text("done", timeout=60_000)
        expect(page.locator("#run-excluded")).to_contain_text("withdrawn")
        screenshot(page, "marketer-run")
        assert_accessible(page, "run report")

        consented = {email for n, (_pid, email) in people.items() if n not in (0, 11, 12, 13)}
        assert sorted(p["fields"]["email"] for p in received) == sorted(consented)

        for path, name in (
            ("activation", "marketer-activation"),
            ("journeys", "marketer-journeys"),
            ("segments", "marketer-segments"),
        ):
            page.goto(f"{live_server.url}/console/marketer/{path}")
            screenshot(page, name)
            assert_accessible(page, name)
