"""An erasure certificate is signed only for a completed request whose every store step
succeeded: a run with a failed store leaves no certificate to fetch until the retry completes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.helpers import auth, client, fail_consent_forget_once, make_keys
from tests.test_dsr_requests import _person, _verified, _view, policy_dir  # noqa: F401  (fixture)


def test_no_certificate_while_a_store_failed(env: Env, policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    keys = make_keys()
    h, auditor = auth(keys["compliance"]), auth(keys["auditor"])
    fail_consent_forget_once(monkeypatch)
    with client() as c:
        _person(c, keys, 13, email="ana@example.com")
        rid = _verified(c, keys, {"kind": "erasure", "regulation": "GDPR", "identifiers": {"email": "ana@example.com"}})
        first = c.post(f"/v1/dsr/{rid}/run", headers=h).json()
        assert first["complete"] is False and "certificate" not in first
        assert _view(c, keys, rid)["status"] == "in_progress"
        assert c.get(f"/v1/dsr/{rid}/certificate", headers=auditor).status_code == 404

        again = c.post(f"/v1/dsr/{rid}/steps/consent/retry", headers=h)
        assert again.status_code == 200 and again.json()["complete"] is True
        cert = c.get(f"/v1/dsr/{rid}/certificate", headers=auditor)
        assert cert.status_code == 200 and cert.json()["signature"]
        steps = json.loads(cert.json()["body"])["done"]["steps"]
        assert steps and set(steps.values()) == {"done"}
