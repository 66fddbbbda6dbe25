"""The Merkle tree of ``audit/`` against RFC 6962/9162 reference values, and its proof checkers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoint import TreeHead
from audit.witness import WitnessError, append_head, read_witness

# The inputs and roots of the Certificate Transparency reference tests (sizes 0..8).
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")] + [
    bytes.fromhex("606162636465666768696a6b6c6d6e6f")
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
HASHES = [merkle.leaf_hash(d) for d in LEAVES]


def test_roots_match_the_reference_tree_heads_built_incrementally() -> None:
    frontier: list[bytes] = []
    assert merkle.root_of_frontier(frontier).hex() == ROOTS[0]
    for size, leaf in enumerate(HASHES):
        merkle.push(frontier, size, leaf)
        text = merkle.encode_frontier(frontier)
        assert merkle.root_of_frontier(merkle.decode_frontier(text)).hex() == ROOTS[size + 1]
        assert merkle.root(HASHES[: size + 1]).hex() == ROOTS[size + 1]


def test_reference_proofs() -> None:
    assert [p.hex()[:8] for p in merkle.inclusion_proof(HASHES, 0, 8)] == ["96a296d2", "5f083f0a", "6b47aaf2"]
    assert [p.hex()[:8] for p in merkle.inclusion_proof(HASHES, 5, 8)] == ["bc1a0643", "ca854ea1", "d37ee418"]
    assert [p.hex()[:8] for p in merkle.consistency_proof(HASHES, 1, 8)] == ["96a296d2", "5f083f0a", "6b47aaf2"]
    assert [p.hex()[:8] for p in merkle.consistency_proof(HASHES, 6, 8)] == ["0ebc5d34", "ca854ea1", "d37ee418"]


def test_every_proof_verifies_and_no_altered_one_does() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(37)]
    for n in range(1, len(leaves) + 1):
        root = merkle.root(leaves[:n])
        for i in range(n):
            path = merkle.inclusion_proof(leaves, i, n)
            assert merkle.verify_inclusion(i, n, leaves[i], path, root)
            assert not merkle.verify_inclusion(i, n, leaves[(i + 1) % len(leaves)], path, root)
        for m in range(n + 1):
            proof = merkle.consistency_proof(leaves, m, n)
            old = merkle.root(leaves[:m])
            assert merkle.verify_consistency(m, n, old, root, proof), (m, n)
            if proof:
                assert not merkle.verify_consistency(m, n, old, root, proof[:-1])
                assert not merkle.verify_consistency(m, n, old, root, [bytes(32), *proof[1:]])
            if 0 < m < n:
                forked = [*leaves[: m - 1], merkle.leaf_hash(b"forged"), *leaves[m:n]]
                assert not merkle.verify_consistency(m, n, old, merkle.root(forked), proof)


def test_tree_head_signature_covers_every_field() -> None:
    key = Ed25519PrivateKey.generate()
    head = TreeHead.sign("consentry", 8, "ab" * 32, "2026-01-01T00:00:00.000000Z", key, ROOTS[8])
    assert head.signature_valid(key.public_key())
    for name, value in (("size", 7), ("root_hash", ROOTS[7]), ("signed_at", "2027"), ("origin", "x")):
        assert not TreeHead(**{**head.to_json(), name: value}).signature_valid(key.public_key())
    with pytest.raises(ValueError):
        TreeHead.from_json({**head.to_json(), "size": "8"})


def test_witness_file_lines_and_a_malformed_line_named(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "deep" / "witness.jsonl"
    heads = [TreeHead.sign("c", n, "00" * 32, "t", key, ROOTS[n]) for n in (1, 2)]
    for head in heads:
        append_head(path, head)
    assert read_witness(path) == heads
    with path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(WitnessError, match="line 3"):
        read_witness(path)


def test_verifier_needs_no_app_package(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys, audit.__main__, audit.verify, audit.store, audit.merkle, audit.witness;"
        "sys.exit(any(m == 'app' or m.startswith('app.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    empty = tmp_path / "empty.ndjson"
    empty.write_text("")
    no_key = subprocess.run(
        [sys.executable, "-m", "audit", "verify", str(empty), "--no-witness"], cwd=root, capture_output=True, text=True
    )
    assert no_key.returncode == 1 and "no public key" in no_key.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"size": 1}))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "audit",
            "verify",
            str(empty),
            "--no-witness",
            "--trusted-head",
            str(bad),
            "--public-key",
            "A" * 43 + "=",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "is not a signed tree head" in out.stdout
