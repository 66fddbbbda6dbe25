"""PII in free text: detection (English, Chinese, mixed), redaction, the vault, linking, erasure."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from app.pii.checksums import luhn_valid, resident_id_valid, uscc_valid
from app.pii.classify import classify_field
from app.pii.engine import PiiEngine, pii_engine
from app.pii.redact import redact, restore
from tests.conftest import Env
from tests.helpers import auth, client, grant_marketing, make_keys, sync_db

RESIDENT_ID = "11010519491231002X"  # a published sample with a valid check character
USCC = "91350100M000100Y43"
UNIONPAY = "6217000010001234569"  # Luhn-valid

EN_CHAT = (
    "Hi, this is Sarah Connor. My card 4111 1111 1111 1111 was charged twice; call me on "
    "+44 20 7946 0958 or write to sarah.connor@example.co.uk. Ship to 42 Wallaby Way, Sydney. "
    "IBAN GB82WEST12345698765432, my IP was 203.0.113.42"
)
ZH_CHAT = (
    f"你好，我叫王小明，手机13812345678，邮箱wang.xm@example.cn，身份证{RESIDENT_ID}，"
    f"银行卡号{UNIONPAY}，护照E12345678，微信 wxm_2024，QQ 123456789，"
    "地址：浙江省杭州市西湖区文三路90号，公司信用代码" + USCC
)


def _found(text_: str) -> set[tuple[str, str]]:
    return {(f.entity_type, f.text) for f in pii_engine().analyze(text_)}


def test_english_chat_entities() -> None:
    found = _found(EN_CHAT)
    expected = {
        ("PERSON", "Sarah Connor"),
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("PHONE_NUMBER", "+44 20 7946 0958"),
        ("EMAIL_ADDRESS", "sarah.connor@example.co.uk"),
        ("STREET_ADDRESS", "42 Wallaby Way"),
        ("IBAN_CODE", "GB82WEST12345698765432"),
        ("IP_ADDRESS", "203.0.113.42"),
    }
    assert expected <= found, expected - found
    assert ("LOCATION", "Sydney") in found


def test_chinese_chat_entities_with_checksums() -> None:
    found = _found(ZH_CHAT)
    expected = {
        ("PERSON", "王小明"),
        ("CN_MOBILE", "13812345678"),
        ("EMAIL_ADDRESS", "wang.xm@example.cn"),
        ("CN_RESIDENT_ID", RESIDENT_ID),
        ("CN_BANK_CARD", UNIONPAY),
        ("CN_PASSPORT", "E12345678"),
        ("WECHAT_ID", "wxm_2024"),
        ("QQ_NUMBER", "123456789"),
        ("STREET_ADDRESS", "浙江省杭州市西湖区文三路90号"),
        ("CN_USCC", USCC),
    }
    assert found == expected, (expected - found, found - expected)


def test_invalid_checksums_and_missing_context_are_not_reported() -> None:
    bad_id = RESIDENT_ID[:-1] + "5"
    bad_card = UNIONPAY[:-1] + "0"
    bad_uscc = USCC[:-1] + "1"
    assert not resident_id_valid(bad_id) and not luhn_valid(bad_card) and not uscc_valid(bad_uscc)
    found = {e for e, _ in _found(f"身份证{bad_id}，卡号{bad_card}，代码{bad_uscc}，订单号E12345678，编号123456789")}
    assert not found & {"CN_RESIDENT_ID", "CN_BANK_CARD", "CN_USCC", "CN_PASSPORT", "QQ_NUMBER"}, found


def test_mixed_language_message_and_mobile_with_country_code() -> None:
    found = _found("Order 订单 shipped! 联系人：李娜 +86 139-1234-5678, lina@example.com")
    assert {("PERSON", "李娜"), ("CN_MOBILE", "+86 139-1234-5678"), ("EMAIL_ADDRESS", "lina@example.com")} <= found


def test_redaction_uses_stable_typed_placeholders() -> None:
    text_ = "mail a@example.com, again a@example.com, or b@example.com"
    redacted, values = redact(text_, pii_engine().analyze(text_))
    assert redacted == "mail <EMAIL_ADDRESS_1>, again <EMAIL_ADDRESS_1>, or <EMAIL_ADDRESS_2>"
    assert restore(redacted, {v.placeholder: v.value for v in values}) == text_


def test_missing_ner_model_falls_back_to_patterns(tmp_path: Path) -> None:
    engine = PiiEngine("no_such_model_pkg", tmp_path)
    assert engine.has_ner is False and engine.model == "patterns-only"
    found = {(f.entity_type, f.text) for f in engine.analyze("John Smith, john@example.com")}
    assert found == {("EMAIL_ADDRESS", "john@example.com")}


@pytest.mark.parametrize(
    ("name", "samples", "category"),
    [
        ("email", [], "user.contact.email"),
        ("手机", [], "user.contact.phone_number"),
        ("身份证号", [], "user.government_id"),
        ("notes", ["x@y.com", "z@y.com"], "user.contact.email"),
        ("ref", [RESIDENT_ID], "user.government_id"),
        ("sku", ["BB-23"], None),
        ("product_name", [], None),
        ("contact", ["13812345678"], "user.contact.phone_number"),
    ],
)
def test_field_classifier(name: str, samples: list[str], category: str | None) -> None:
    assert classify_field(name, samples) == category


def test_texts_are_stored_redacted_restored_for_compliance_and_gone_after_shredding(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        r = c.post(
            "/v1/texts",
            json={
                "texts": [
                    {"text": ZH_CHAT, "channel": "chat", "author": {"user_id": "wx-user-1"}},
                    {"text": EN_CHAT, "channel": "social"},
                ]
            },
            auth=(keys["ingest"], ""),
        )
        assert r.status_code == 201, r.text
        zh, en = r.json()
        assert "<CN_RESIDENT_ID_1>" in zh["redacted"] and RESIDENT_ID not in zh["redacted"]
        assert "profile_id" not in zh  # the ingest key learns nobody's profile
        for mentioned in ({"phone": "+86 138 1234 5678"}, {"email": "sarah.connor@example.co.uk"}):
            # identifiers a text mentions stay in its vault: they link nobody
            assert c.post("/v1/profiles/lookup", json=mentioned, headers=auth(keys["admin"])).json()["profiles"] == []
        author = c.post(
            "/v1/profiles/lookup", json={"kind": "user_id", "value": "wx-user-1"}, headers=auth(keys["admin"])
        )
        plain = c.get(f"/v1/texts/{zh['id']}", headers=auth(keys["compliance"])).json()
        zh["profile_id"] = plain["profile_id"]
        assert [p["id"] for p in author.json()["profiles"]] == [zh["profile_id"]]
        assert plain["text"] == ZH_CHAT and plain["reveal"] == "plain"
        refused = c.get(f"/v1/texts/{zh['id']}", headers=auth(keys["marketer"]))
        assert refused.status_code == 403  # no consent to marketing: a marketer reads none of it
        grant_marketing(c, keys["compliance"], zh["profile_id"])
        masked = c.get(f"/v1/texts/{zh['id']}", headers=auth(keys["marketer"])).json()
        assert masked["text"] == zh["redacted"] and "13812345678" not in masked["text"]

        scan = c.post("/v1/pii/scan", json={"text": "call 13812345678"}, headers=auth(keys["compliance"])).json()
        assert scan["results"][0]["language"] == "en"
        assert scan["results"][0]["entities"][0]["type"] in {"CN_MOBILE", "PHONE_NUMBER"}

    with sync_db() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM text_record")) for v in row)
        vault = conn.execute(
            text("SELECT count(*) FROM text_vault WHERE profile_id = :p"), {"p": zh["profile_id"]}
        ).scalar()
    for value in (RESIDENT_ID, UNIONPAY, "13812345678", "wang.xm@example.cn", "王小明", "sarah.connor", "4111 1111"):
        assert value not in stored
    assert vault == 10

    from app.db import unit_of_work
    from app.vault.service import shred_subject_key
    from tests.conftest import run

    async def shred() -> None:
        async with unit_of_work() as session:
            await shred_subject_key(session, zh["profile_id"])

    run(shred())
    with client() as c:
        gone = c.get(f"/v1/texts/{zh['id']}", headers=auth(keys["compliance"]))
        assert gone.status_code == 410
        still = c.get(f"/v1/texts/{en['id']}", headers=auth(keys["compliance"]))
        assert still.json()["text"] == EN_CHAT


def test_texts_follow_their_author_through_a_merge(env: Env) -> None:
    keys = make_keys()
    with client() as c:
        w = (keys["ingest"], "")
        c.post("/v1/identify", json={"userId": "acct-9", "traits": {"email": "nine@example.com"}}, auth=w)
        t = c.post(
            "/v1/texts",
            json={
                "text": "my card 4111 1111 1111 1111 is blocked",
                "channel": "ticket",
                "author": {"anonymous_id": "chat-visitor-9"},
            },
            auth=w,
        ).json()[0]
        t["profile_id"] = c.get(f"/v1/texts/{t['id']}", headers=auth(keys["compliance"])).json()["profile_id"]
        # the visitor turns out to be the account holder: the younger (visitor) profile merges into the account
        c.post("/v1/alias", json={"previousId": "chat-visitor-9", "userId": "acct-9"}, auth=w)
        survivor = c.post(
            "/v1/profiles/lookup", json={"kind": "user_id", "value": "acct-9"}, headers=auth(keys["admin"])
        ).json()["profiles"][0]["id"]
        assert survivor != t["profile_id"]
        read = c.get(f"/v1/texts/{t['id']}", headers=auth(keys["compliance"]))
        assert read.status_code == 200, read.text
        assert read.json()["profile_id"] == survivor
        assert read.json()["text"] == "my card 4111 1111 1111 1111 is blocked"
    with sync_db() as conn:
        left = conn.execute(text("SELECT count(*) FROM text_vault WHERE profile_id = :p"), {"p": t["profile_id"]})
        assert left.scalar() == 0
