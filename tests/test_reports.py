"""Reports for dashboards: segment size over time, consent rates by purpose and jurisdiction,
reach per purpose, overlap of two segments — aggregates through the decision engine, masked
below the threshold for roles that see masked values."""

from __future__ import annotations

from typing import Any

import pytest

from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import MARKETING, auth, client, make_keys
from tests.test_segments import SHOES, _shop


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch, env: Env) -> Env:
    """Counts shown exactly (threshold 0) to every role."""
    monkeypatch.setenv("CONSENTRY_SEGMENT_MIN_COUNT", "0")
    get_settings.cache_clear()
    return env


def _by_purpose(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["purpose"]: p for p in body["purposes"]}


def test_reach_consent_rates_overlap_and_sizes(exact: Env) -> None:
    keys = make_keys()
    m = auth(keys["marketer"])
    with client() as c:
        _shop(c, keys)  # six people in DE; p0, p1 and p5 consented to marketing; p5 is VIP
        shoes = c.post("/v1/segments", json={"name": "Hoops", "tree": SHOES}, headers=m).json()
        vip = c.post("/v1/segments", json={"name": "VIP", "tree": {"trait": "plan", "eq": "vip"}}, headers=m).json()

        reach = c.get("/v1/reports/reach", headers=m)
        assert reach.status_code == 200, reach.text
        got = _by_purpose(reach.json())[MARKETING]
        assert (got["total"], got["usable"], got["rate"], got["denied"]) == (6, 3, 0.5, {"no consent": 3})
        refused = _by_purpose(reach.json())["legal.compliance.dsr"]
        assert (refused["usable"], refused["denied"]) == (0, {"role may not use purpose": 6})

        rates = c.get("/v1/reports/consent-rates", headers=m)
        assert rates.status_code == 200, rates.text
        marketing = _by_purpose(rates.json())[MARKETING]
        assert (marketing["total"], marketing["usable"], marketing["rate"]) == (6, 3, 0.5)
        [region] = marketing["by_region"]
        assert (region["region"], region["total"], region["usable"]) == ("DE", 6, 3)
        expected = {"jurisdiction": region["jurisdiction"], "total": 6, "usable": 3, "rate": 0.5}
        assert marketing["by_jurisdiction"] == [expected]

        both = c.get(f"/v1/reports/overlap?a={shoes['id']}&b={vip['id']}", headers=m)
        assert both.status_code == 200, both.text
        body = both.json()
        figures = {k: (body[k]["total"], body[k]["usable"]) for k in ("a", "b", "both", "either")}
        assert figures == {"a": (4, 3), "b": (1, 1), "both": (1, 1), "either": (4, 3)}
        assert body["both"]["denied"] == {}

        sizes = c.get(f"/v1/reports/segment-sizes?segment_id={shoes['id']}", headers=m)
        assert sizes.status_code == 200, sizes.text
        now = sizes.json()["now"]
        assert (now["total"], now["usable"], now["denied"]) == (4, 3, {"no consent": 1})
        assert [(p["members"], p["usable"]) for p in sizes.json()["points"]] == [(4, 3)]
        entries = c.get("/v1/audit/entries?limit=500", headers=auth(keys["auditor"])).json()["entries"]
        assert {"report.reach", "report.consent_rates", "report.overlap", "report.segment_sizes"} <= {
            e["action"] for e in entries
        }


def test_small_counts_are_masked_and_bad_input_is_a_problem(env: Env) -> None:
    keys = make_keys()
    m = auth(keys["marketer"])
    with client() as c:
        _shop(c, keys)
        shoes = c.post("/v1/segments", json={"name": "Hoops", "tree": SHOES}, headers=m).json()
        got = _by_purpose(c.get("/v1/reports/reach", headers=m).json())[MARKETING]
        assert (got["total"], got["usable"], got["rate"], got["denied"]) == ("<10", "<10", None, {"no consent": "<10"})
        rates = _by_purpose(c.get("/v1/reports/consent-rates", headers=m).json())[MARKETING]
        assert (rates["total"], rates["rate"], rates["by_region"][0]["usable"]) == ("<10", None, "<10")
        overlap = c.get(f"/v1/reports/overlap?a={shoes['id']}&b={shoes['id']}", headers=m).json()
        assert overlap["both"]["total"] == "<10"

        missing = c.get(f"/v1/reports/overlap?a={shoes['id']}&b=nope-not-there", headers=m)
        assert missing.status_code == 404
        assert missing.json()["invalid-params"][0]["name"] == "b"
        assert "nope-not-there" not in missing.text
        bad = c.get(f"/v1/reports/overlap?a={shoes['id']}&b={shoes['id']}&purpose=x.y", headers=m)
        assert bad.status_code == 422 and bad.json()["invalid-params"][0]["name"] == "purpose"
        assert c.get("/v1/reports/segment-sizes", headers=m).status_code == 400
        denied = c.get(f"/v1/reports/segment-sizes?segment_id={shoes['id']}", headers=auth(keys["compliance"]))
        assert denied.status_code == 403  # compliance may not use the marketing segment's purpose
