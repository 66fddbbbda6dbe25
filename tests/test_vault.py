"""The encrypted vault: AEAD binding, crypto-shredding, blind indexes."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.errors import IntegrityFailure
from app.vault.blind_index import blind_index
from app.vault.cipher import new_data_key, open_field, seal_field, unwrap_key, wrap_key
from app.vault.normalize import normalize_email, normalize_phone
from tests.conftest import Env
from tests.helpers import auth, client, make_keys, sync_db


def test_ciphertext_is_bound_to_profile_field_and_key_version() -> None:
    dk = new_data_key()
    blob = seal_field(dk, "p1", "email", 1, "a@example.com")
    assert open_field(dk, "p1", "email", 1, blob) == "a@example.com"
    for profile, field, version in [("p2", "email", 1), ("p1", "phone", 1), ("p1", "email", 2)]:
        with pytest.raises(IntegrityFailure):
            open_field(dk, profile, field, version, blob)
    with pytest.raises(IntegrityFailure):
        open_field(new_data_key(), "p1", "email", 1, blob)
    master = new_data_key()
    wrapped = wrap_key(master, 1, "p1", 1, dk)
    assert unwrap_key(master, 1, "p1", 1, wrapped) == dk
    with pytest.raises(IntegrityFailure):
        unwrap_key(master, 1, "p2", 1, wrapped)


def test_blind_index_matches_normal_forms_only_under_the_same_key() -> None:
    k1, k2 = b"1" * 32, b"2" * 32
    a = blind_index(k1, "email", normalize_email(" Bob@Example.COM"))
    assert a == blind_index(k1, "email", normalize_email("bob@example.com"))
    assert a != blind_index(k2, "email", "bob@example.com")
    assert a != blind_index(k1, "phone", "bob@example.com")  # per-kind keys
    assert normalize_phone("138 1234 5678", "CN") == normalize_phone("+86-138-1234-5678", "US") == "+8613812345678"
    assert normalize_phone("(415) 555-0199", "US") == "+14155550199"


def _two_profiles(keys: dict[str, str]) -> tuple[str, str]:
    with client() as c:
        a = c.post(
            "/v1/profiles",
            json={"traits": {"email": "ann@example.com", "phone": "+14155550101"}},
            headers=auth(keys["admin"]),
        ).json()["id"]
        b = c.post(
            "/v1/profiles",
            json={"traits": {"email": "ben@example.com", "phone": "+14155550102"}},
            headers=auth(keys["admin"]),
        ).json()["id"]
    return a, b


def _ciphertext(conn, pid: str, name: str) -> bytes:  # type: ignore[no-untyped-def]
    q = text("SELECT ciphertext FROM profile_field WHERE profile_id = :p AND name = :n")
    return bytes(conn.execute(q, {"p": pid, "n": name}).scalar_one())


def _set_ciphertext(conn, pid: str, name: str, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    q = text("UPDATE profile_field SET ciphertext = :c WHERE profile_id = :p AND name = :n")
    conn.execute(q, {"c": blob, "p": pid, "n": name})


@pytest.mark.parametrize("swap", ["between_profiles", "between_fields"])
def test_swapped_ciphertexts_are_refused_loudly_not_garbled(env: Env, swap: str) -> None:
    keys = make_keys()
    a, b = _two_profiles(keys)
    with sync_db() as conn:
        if swap == "between_profiles":
            ea, eb = _ciphertext(conn, a, "email"), _ciphertext(conn, b, "email")
            _set_ciphertext(conn, a, "email", eb)
            _set_ciphertext(conn, b, "email", ea)
        else:
            ea, pa = _ciphertext(conn, a, "email"), _ciphertext(conn, a, "phone")
            _set_ciphertext(conn, a, "email", pa)
            _set_ciphertext(conn, a, "phone", ea)
    with client() as c:
        r = c.get(f"/v1/profiles/{a}", headers=auth(keys["compliance"]))
        assert r.status_code == 500
        assert r.json()["type"].endswith("integrity-failure")
        assert r.json()["invalid-params"][0]["name"] in {"email", "phone"}
        assert "example.com" not in r.text and "+1415" not in r.text
        if swap == "between_profiles":
            assert c.get(f"/v1/profiles/{b}", headers=auth(keys["compliance"])).status_code == 500
        entries = c.get(
            "/v1/audit/entries", params={"action": "profile.read.integrity_failure"}, headers=auth(keys["auditor"])
        ).json()["entries"]
        assert entries and entries[0]["subject_id"] == a


def test_shredding_a_subject_key_erases_that_subject_only(env: Env) -> None:
    from app.db import unit_of_work
    from app.vault.service import shred_subject_key
    from tests.conftest import run

    keys = make_keys()
    a, b = _two_profiles(keys)

    async def shred() -> bool:
        async with unit_of_work() as session:
            return await shred_subject_key(session, a)

    assert run(shred()) is True
    with client() as c:
        r = c.get(f"/v1/profiles/{a}", headers=auth(keys["compliance"]))
        assert r.status_code == 410 and r.json()["type"].endswith("subject-erased")
        assert (
            c.get(f"/v1/profiles/{b}", headers=auth(keys["compliance"])).json()["traits"]["email"] == "ben@example.com"
        )
        r = c.patch(f"/v1/profiles/{a}", json={"traits": {"email": "ann@example.com"}}, headers=auth(keys["admin"]))
        assert r.status_code == 410
    with sync_db() as conn:  # the ciphertext is still there, but nothing can open it
        assert conn.execute(text("SELECT count(*) FROM profile_field WHERE profile_id = :p"), {"p": a}).scalar() == 2
