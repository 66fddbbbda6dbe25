"""Attacks on the ledger (issue 8) and the verifier catching each, naming the entry or tree head.

Each attack is played as someone who can write to the database: they drop or edit
entries, renumber them, recompute every hash (and the tree frontier), delete signed
heads and sometimes the witness file. What catches them is a copy of a signed head
they could not change: the witness file, an export's head lines, or a head an auditor
saved earlier (``--trusted-head``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, text

from app.db import unit_of_work
from app.ledger.heads import make_tree_head
from app.settings import get_settings
from app.vault.keyring import key_material
from audit import merkle
from audit.chain import GENESIS_HASH, Entry, canonical_json, seal
from audit.checkpoint import TreeHead, public_key_bytes
from audit.witness import read_witness
from tests.conftest import Env, run
from tests.helpers import auth, client, make_keys, sync_db
from tests.test_ledger import _append

ROOT = Path(__file__).resolve().parent.parent


def _pub() -> str:
    return base64.b64encode(public_key_bytes(key_material(get_settings()).signing_key.public_key())).decode()


def _audit(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m audit ...`` in a fresh process, with the test's environment (and witness default)."""
    return subprocess.run(
        [sys.executable, "-m", "audit", *args], env=env.environ(), cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _verify_db(env: Env, *args: str, key: bool = True) -> subprocess.CompletedProcess[str]:
    return _audit(env, "verify-db", env.url, *(("--public-key", _pub()) if key else ()), *args)


async def _head() -> TreeHead:
    async with unit_of_work() as session:
        return await make_tree_head(session)


def _witness() -> Path:
    return get_settings().audit_witness


def _save(env: Env, name: str, body: Any) -> str:
    path = env.tmp / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


def _rewrite(conn: Connection, *, drop: int | None = None, edit: int | None = None) -> None:
    """Drop and/or edit an entry, renumber, recompute every hash, the head row and its frontier."""
    rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_entry ORDER BY seq"))]
    conn.execute(text("DELETE FROM audit_entry"))
    prev, seq, frontier = GENESIS_HASH, 0, []
    for row in rows:
        if row["seq"] == drop:
            continue
        data = {**row, "details": json.loads(row["details"]), "seq": seq + 1, "prev_hash": prev}
        if row["seq"] == edit:
            data["action"] = "nothing.happened"
        entry = seal(Entry.from_json(data))
        merkle.push(frontier, seq, bytes.fromhex(entry.entry_hash))
        seq, prev = seq + 1, entry.entry_hash
        conn.execute(
            text(
                "INSERT INTO audit_entry (seq, recorded_at, actor_id, actor_role, action, subject_id, purpose,"
                " legal_basis, request_id, details, prev_hash, entry_hash) VALUES (:seq, :recorded_at, :actor_id,"
                " :actor_role, :action, :subject_id, :purpose, :legal_basis, :request_id, :details, :prev_hash,"
                " :entry_hash)"
            ),
            {**entry.to_json(), "details": canonical_json(entry.details)},
        )
    conn.execute(
        text("UPDATE audit_head SET seq = :s, head_hash = :h, frontier = :f WHERE id = 1"),
        {"s": seq, "h": prev, "f": merkle.encode_frontier(frontier)},
    )


def _insert_head(conn: Connection, head: TreeHead) -> None:
    conn.execute(
        text(
            "INSERT INTO audit_checkpoint (size, origin, head_hash, signed_at, key_id, signature, root_hash)"
            " VALUES (:size, :origin, :head_hash, :signed_at, :key_id, :signature, :root_hash)"
        ),
        head.to_json(),
    )


def _tree(conn: Connection, size: int) -> tuple[str, str]:
    """(root hex, chain hash) of the first ``size`` entries as the database holds them now."""
    rows = conn.execute(text("SELECT entry_hash FROM audit_entry WHERE seq <= :s ORDER BY seq"), {"s": size}).all()
    return merkle.root([bytes.fromhex(r[0]) for r in rows]).hex(), rows[-1][0]


# --- the attacks of the issue ------------------------------------------------------------------


def test_drop_renumber_rehash_and_delete_the_heads_is_caught(env: Env) -> None:
    run(_append(8))
    assert run(_head()).size == 8
    assert _verify_db(env).returncode == 0
    with sync_db() as conn:
        _rewrite(conn, drop=4)
        conn.execute(text("DELETE FROM audit_checkpoint"))

    out = _verify_db(env)  # the witness file still has the head of 8 entries
    assert out.returncode == 1 and "FAILED at tree head 8 (witness)" in out.stdout, out.stdout
    alone = _verify_db(env, "--no-witness")  # and without it: entries no signed head covers
    assert alone.returncode == 1 and "7 entries and no valid signed tree head covers them" in alone.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "app", "audit", "verify"], env=env.environ(), capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 1 and "tree head 8 (witness)" in cli.stdout, cli.stdout


def test_dropping_only_the_later_head_is_caught_by_the_witness(env: Env) -> None:
    run(_append(5))
    run(_head())
    run(_append(5, "later"))
    run(_head())
    with sync_db() as conn:  # drop entry 8, rehash, keep head 5 (still valid), delete head 10
        _rewrite(conn, drop=8)
        conn.execute(text("DELETE FROM audit_checkpoint WHERE size = 10"))
    assert _verify_db(env, "--no-witness").returncode == 0  # on its own the database looks fine
    out = _verify_db(env)
    assert out.returncode == 1 and "tree head 10 (witness)" in out.stdout, out.stdout


def test_a_witnessed_head_deleted_from_the_database_is_a_failure(env: Env) -> None:
    run(_append(3))
    run(_head())
    run(_append(3, "more"))
    run(_head())
    with sync_db() as conn:
        conn.execute(text("DELETE FROM audit_checkpoint WHERE size = 3"))
    out = _verify_db(env)
    assert out.returncode == 1, out.stdout
    assert "FAILED at tree head 3 (witness): is in the witness file but no longer in the database" in out.stdout


def test_export_with_its_head_lines_stripped_fails(env: Env) -> None:
    run(_append(5))
    run(_head())
    export = env.tmp / "ledger.ndjson"
    made = subprocess.run(
        [sys.executable, "-m", "app", "audit", "export", "--file", str(export)], env=env.environ(), timeout=120
    )
    assert made.returncode == 0
    lines = export.read_text().splitlines()
    assert sum(json.loads(line)["kind"] == "tree_head" for line in lines) == 1
    assert _audit(env, "verify", str(export), "--public-key", _pub()).returncode == 0

    entries = [json.loads(line) for line in lines if json.loads(line)["kind"] == "entry"]
    stripped = _save(env, "stripped.ndjson", "".join(json.dumps(e) + "\n" for e in entries))
    out = _audit(env, "verify", stripped, "--public-key", _pub(), "--no-witness")
    assert out.returncode == 1 and "5 entries and no valid signed tree head covers them" in out.stdout, out.stdout

    # stripped and rewritten (entry 2 edited, later hashes recomputed): the witness names the head
    prev = GENESIS_HASH
    for e in entries:
        data = {**e, "prev_hash": prev}
        if e["seq"] == 2:
            data["action"] = "nothing.happened"
        e.update(seal(Entry.from_json(data)).to_json())
        prev = e["entry_hash"]
    forged = _save(env, "forged.ndjson", "".join(json.dumps({"kind": "entry", **e}) + "\n" for e in entries))
    out = _audit(env, "verify", forged, "--public-key", _pub())
    assert out.returncode == 1 and "FAILED at tree head 5 (witness)" in out.stdout, out.stdout


def test_rewrite_after_the_last_database_head_is_caught_by_the_witness(env: Env) -> None:
    run(_append(5))
    run(_head())
    run(_append(5, "later"))
    run(_head())  # head 10 reached the witness file
    with sync_db() as conn:
        conn.execute(text("DELETE FROM audit_checkpoint WHERE size = 10"))
        _rewrite(conn, edit=8)
    assert _verify_db(env, "--no-witness").returncode == 0  # head 5 still matches; entries 6-10 unsigned
    out = _verify_db(env)
    assert out.returncode == 1, out.stdout
    assert "FAILED at tree head 10 (witness): recomputed Merkle root differs" in out.stdout


def test_rewrite_after_the_last_head_is_caught_by_a_trusted_head(env: Env) -> None:
    keys = make_keys()
    run(_append(5))
    run(_head())
    run(_append(5, "later"))
    with client() as c:
        assert c.post("/v1/audit/tree-heads", headers=auth(keys["auditor"])).status_code == 201
        saved = c.get("/v1/audit/tree-head", headers=auth(keys["auditor"])).text  # kept by the auditor
    size = json.loads(saved)["size"]
    trusted = _save(env, "trusted.json", saved)
    assert _verify_db(env, "--trusted-head", trusted).returncode == 0

    with sync_db() as conn:  # the attacker also removes the witness file they can reach
        conn.execute(text("DELETE FROM audit_checkpoint WHERE size > 5"))
        _rewrite(conn, edit=8)
    _witness().unlink()
    out = _verify_db(env)
    assert out.returncode == 0 and f"{size - 5} unsigned entries" in out.stdout  # looks fine, tail unsigned
    tail = _verify_db(env, "--require-signed-tail")
    assert tail.returncode == 1 and "FAILED at entry 6" in tail.stdout and "unsigned" in tail.stdout
    out = _verify_db(env, "--trusted-head", trusted)
    assert out.returncode == 1, out.stdout
    assert f"FAILED at trusted tree head {size}: the ledger's tree at size {size} differs" in out.stdout

    with sync_db() as conn:  # cut short below the trusted head instead
        conn.execute(text("DELETE FROM audit_entry WHERE seq > 8"))
        conn.execute(text("UPDATE audit_head SET seq = 8, head_hash = :h"), {"h": _tree(conn, 8)[1]})
    out = _verify_db(env, "--trusted-head", trusted)
    assert out.returncode == 1 and "is shorter than this trusted head" in out.stdout, out.stdout


def test_head_signed_by_another_key_fails_and_no_key_is_a_failure(env: Env) -> None:
    run(_append(5))
    with sync_db() as conn:
        root, chain = _tree(conn, 5)
        forged = TreeHead.sign("consentry", 5, chain, "2026-01-01T00:00:00.000000Z", Ed25519PrivateKey.generate(), root)
        _insert_head(conn, forged)
    no_key = _verify_db(env, key=False)
    assert no_key.returncode == 1 and "no public key given" in no_key.stdout, no_key.stdout
    out = _verify_db(env)
    assert out.returncode == 1 and "FAILED at tree head 5 (database): signed by another key" in out.stdout

    # the real key's id on a signature made by another key
    real = key_material(get_settings()).signing_key
    honest = TreeHead.sign("consentry", 5, chain, "2026-01-01T00:00:00.000000Z", real, root)
    other = TreeHead.sign("consentry", 5, chain, "2026-01-01T00:00:00.000000Z", Ed25519PrivateKey.generate(), root)
    with sync_db() as conn:
        conn.execute(text("DELETE FROM audit_checkpoint"))
        _insert_head(conn, TreeHead(**{**honest.to_json(), "signature": other.signature}))
    out = _verify_db(env)
    assert out.returncode == 1 and "FAILED at tree head 5 (database): signature does not verify" in out.stdout


def test_a_fork_is_caught_by_the_trusted_head_and_its_consistency_proof_fails(env: Env) -> None:
    keys = make_keys()
    run(_append(6))
    with client() as c:
        old = c.post("/v1/audit/tree-heads", headers=auth(keys["auditor"])).json()
    trusted = _save(env, "old-head.json", old)
    # the operator, who holds the signing key, rewrites entry 3 and signs the new history
    with sync_db() as conn:
        conn.execute(text("DELETE FROM audit_checkpoint"))
        _rewrite(conn, edit=3)
    _witness().unlink()
    run(_append(4, "after-fork"))
    with client() as c:
        new = c.post("/v1/audit/tree-heads", headers=auth(keys["auditor"])).json()
        proof = c.get(
            "/v1/audit/consistency", params={"from": old["size"], "to": new["size"]}, headers=auth(keys["auditor"])
        ).json()
    assert _verify_db(env).returncode == 0  # every head the forked ledger has is valid
    out = _verify_db(env, "--trusted-head", trusted)
    assert out.returncode == 1 and f"FAILED at trusted tree head {old['size']}" in out.stdout, out.stdout
    assert "forked" in out.stdout

    check = _audit(
        env, "consistency", trusted, _save(env, "new.json", new), _save(env, "p.json", proof), "--public-key", _pub()
    )
    assert check.returncode == 1 and f"not consistent with tree head {old['size']}" in check.stdout, check.stdout
    old_root, new_root = bytes.fromhex(old["root_hash"]), bytes.fromhex(new["root_hash"])
    hashes = [bytes.fromhex(h) for h in proof["proof"]]
    assert not merkle.verify_consistency(old["size"], new["size"], old_root, new_root, hashes)


# --- tree heads, proofs and the API ------------------------------------------------------------


def test_consistency_and_inclusion_proofs_between_two_heads_verify(env: Env) -> None:
    keys = make_keys()
    run(_append(5))
    h = auth(keys["auditor"])
    with client() as c:
        first = c.post("/v1/audit/tree-heads", headers=h).json()
    run(_append(8, "more"))
    with client() as c:
        second = c.post("/v1/audit/tree-heads", headers=h).json()
        proof = c.get("/v1/audit/consistency", params={"from": first["size"], "to": second["size"]}, headers=h)
        inclusion = c.get("/v1/audit/inclusion", params={"seq": 3, "size": second["size"]}, headers=h)
        backwards = c.get("/v1/audit/consistency", params={"from": 9, "to": 4}, headers=h)
        beyond = c.get("/v1/audit/consistency", params={"from": 1, "to": 10_000}, headers=h)
        not_auditor = c.get("/v1/audit/tree-head", headers=auth(keys["marketer"]))
    assert proof.status_code == 200 and inclusion.status_code == 200
    body = proof.json()
    assert body["first_root"] == first["root_hash"] and body["second_root"] == second["root_hash"]
    hashes = [bytes.fromhex(x) for x in body["proof"]]
    assert hashes and merkle.verify_consistency(
        first["size"], second["size"], bytes.fromhex(first["root_hash"]), bytes.fromhex(second["root_hash"]), hashes
    )
    assert not merkle.verify_consistency(  # the same proof does not join other roots
        first["size"], second["size"], bytes(32), bytes.fromhex(second["root_hash"]), hashes
    )
    check = _audit(
        env,
        "consistency",
        _save(env, "a.json", first),
        _save(env, "b.json", second),
        _save(env, "p.json", body),
        "--public-key",
        _pub(),
    )
    assert check.returncode == 0 and check.stdout.startswith("OK"), check.stdout

    inc = inclusion.json()
    with sync_db() as conn:
        leaf = conn.execute(text("SELECT entry_hash FROM audit_entry WHERE seq = 3")).scalar_one()
    assert inc["leaf_hash"] == leaf and inc["root_hash"] == second["root_hash"]
    path = [bytes.fromhex(x) for x in inc["proof"]]
    assert merkle.verify_inclusion(2, second["size"], bytes.fromhex(leaf), path, bytes.fromhex(second["root_hash"]))

    assert backwards.status_code == 422 and backwards.headers["content-type"].startswith("application/problem+json")
    assert beyond.status_code == 422
    assert not_auditor.status_code == 403


def test_tree_head_endpoint_and_witness_file(env: Env) -> None:
    keys = make_keys()
    h = auth(keys["auditor"])
    with client() as c:
        assert c.get("/v1/audit/tree-head", headers=h).status_code == 404
    run(_append(4))
    with client() as c:
        made = c.post("/v1/audit/checkpoints", headers=h)
        again = c.post("/v1/audit/checkpoints", headers=h)  # same size: the same head, not a 409
        newest = c.get("/v1/audit/tree-head", headers=h).json()
        verify = c.get("/v1/audit/verify", headers=h).json()
    assert made.status_code == 201 and again.status_code == 201
    assert made.json() == again.json() == newest
    with sync_db() as conn:
        size = conn.execute(text("SELECT seq FROM audit_head")).scalar_one()
        root, chain = _tree(conn, size)
    assert newest["size"] == size and newest["root_hash"] == root and newest["head_hash"] == chain
    witness = _witness()
    assert witness.parent == (env.sqlite_path.parent if env.sqlite_path else env.key_dir.parent)
    assert [h.to_json() for h in read_witness(witness)] == [newest]  # made once, witnessed once
    assert verify["ok"] and verify["witness"] == "read" and verify["newest_signed"] == size


def test_concurrent_tree_head_requests_agree_and_never_conflict(env: Env) -> None:
    run(_append(3))

    async def many() -> list[TreeHead]:
        return list(await asyncio.gather(*(_head() for _ in range(8))))

    heads = run(many())
    assert len({h.signature for h in heads}) == 1 and heads[0].size == 3
    assert len(read_witness(_witness())) == 1


def test_heads_are_made_every_n_entries_in_the_appending_transaction(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTRY_AUDIT_HEAD_EVERY_ENTRIES", "4")
    get_settings.cache_clear()
    run(_append(10))

    async def rolled_back() -> None:
        from app.access.service import SYSTEM
        from app.ledger.service import record_many

        with pytest.raises(RuntimeError):
            async with unit_of_work() as session:
                await record_many(session, SYSTEM, "test.append", [f"s{i}" for i in range(5)])  # crosses 12
                raise RuntimeError("the data change failed")

    run(rolled_back())
    with sync_db() as conn:
        sizes = [r[0] for r in conn.execute(text("SELECT size FROM audit_checkpoint ORDER BY size"))]
    assert sizes == [4, 8]
    assert [h.size for h in read_witness(_witness())] == [4, 8]  # the rolled-back head never left
    out = _verify_db(env)
    assert out.returncode == 0 and "newest signed head covers 8, 2 unsigned entries" in out.stdout, out.stdout


def test_settings_for_tree_heads(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    s = get_settings()
    assert s.audit_head_every_seconds < 60 and s.checkpoint_interval_s == s.audit_head_every_seconds
    assert s.audit_head_every_entries > 0
    monkeypatch.setenv("CONSENTRY_AUDIT_WITNESS", str(env.tmp / "elsewhere" / "w.jsonl"))
    monkeypatch.setenv("CONSENTRY_AUDIT_HEAD_EVERY_SECONDS", "7")
    get_settings.cache_clear()
    s = get_settings()
    assert s.audit_witness == env.tmp / "elsewhere" / "w.jsonl" and s.audit_head_every_seconds == 7
    from app.jobs.scheduler import product_jobs

    assert {j.id: j.interval_s for j in product_jobs()}["audit.checkpoint"] == 7
    run(_append(2))
    run(_head())
    assert [h.size for h in read_witness(env.tmp / "elsewhere" / "w.jsonl")] == [2]


def test_frontier_is_rebuilt_by_the_migration(env: Env) -> None:
    from app.migrate import downgrade, upgrade

    run(_append(7))
    with sync_db() as conn:
        before = conn.execute(text("SELECT frontier FROM audit_head")).scalar_one()
    downgrade(revision="0003")
    upgrade()
    with sync_db() as conn:
        after = conn.execute(text("SELECT frontier FROM audit_head")).scalar_one()
        root, _ = _tree(conn, 7)
    assert after == before and len(after) == 3 * 64  # 7 = 4 + 2 + 1
    assert run(_head()).root_hash == root


def test_a_request_id_that_is_not_a_plain_token_never_reaches_the_ledger(env: Env) -> None:
    from app.request_context import new_request_id

    assert new_request_id("abc\n") != "abc\n"  # a trailing newline is not a plain token
    assert new_request_id("a" * 64) == "a" * 64 and new_request_id("a" * 65) != "a" * 65
    keys = make_keys()
    sent = ["hello world", "x" * 65, "<script>alert(1)</script>", "Ω-id", "ok.id_1-2"]
    with client() as c:
        echoed = [
            c.get("/v1/audit/export", headers={**auth(keys["auditor"]), "X-Request-ID": rid.encode()}).headers[
                "x-request-id"
            ]
            for rid in sent
        ]
    q = "SELECT request_id FROM audit_entry WHERE action = 'audit.export' ORDER BY seq"
    with sync_db() as conn:
        stored = [r[0] for r in conn.execute(text(q))]
    assert stored == echoed and stored[-1] == "ok.id_1-2"
    for rid in stored[:-1]:
        assert rid not in sent and len(rid) <= 64 and rid.isalnum()


def test_a_head_signed_in_a_rolled_back_savepoint_never_reaches_the_witness(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTRY_AUDIT_HEAD_EVERY_ENTRIES", "2")
    get_settings.cache_clear()

    async def work() -> None:
        from app.access.service import SYSTEM
        from app.ledger.service import record

        async with unit_of_work() as session:
            await record(session, SYSTEM, "test.append", subject_id="a")
            with pytest.raises(RuntimeError):
                async with session.begin_nested():
                    await record(session, SYSTEM, "test.append", subject_id="b")  # head 2, rolled back
                    raise RuntimeError("retry")
            await record(session, SYSTEM, "test.append", subject_id="b")  # head 2 again, kept
            await record(session, SYSTEM, "test.append", subject_id="c")

    run(work())
    with sync_db() as conn:
        rows = conn.execute(text("SELECT size, signature FROM audit_checkpoint ORDER BY size")).all()
    assert [r[0] for r in rows] == [2]
    assert [(h.size, h.signature) for h in read_witness(_witness())] == [(2, rows[0][1])]
    assert _verify_db(env).returncode == 0
