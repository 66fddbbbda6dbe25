"""The ledger as an RFC 9162 (Certificate Transparency v2) Merkle tree.

Leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right); the leaf
of entry ``seq`` is its canonical JSON, so its leaf hash is the entry's ``entry_hash``.

A *frontier* (compact range) is the list of roots of the perfect subtrees a tree of
``size`` leaves splits into, largest first (one per set bit of ``size``). Appending a
leaf merges equal-sized subtrees (amortised one node hash per leaf) and the root is a
fold of the frontier, so the service keeps the frontier beside the chain head and never
re-reads old leaves to sign a tree head.

Proofs (generation and checking) follow RFC 9162 sections 2.1.3 and 2.1.4.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the root of the empty tree."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def push(frontier: list[bytes], size: int, leaf: bytes) -> None:
    """Append the leaf hash ``leaf`` to a tree of ``size`` leaves (``frontier`` in place)."""
    node = leaf
    while size & 1:
        node = node_hash(frontier.pop(), node)
        size >>= 1
    frontier.append(node)


def root_of_frontier(frontier: Sequence[bytes]) -> bytes:
    """MTH of the tree whose frontier is given."""
    if not frontier:
        return EMPTY_ROOT
    acc = frontier[-1]
    for node in reversed(frontier[:-1]):
        acc = node_hash(node, acc)
    return acc


def encode_frontier(frontier: Sequence[bytes]) -> str:
    return "".join(node.hex() for node in frontier)


def decode_frontier(text: str | None) -> list[bytes]:
    text = text or ""
    return [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]


def frontier_of(leaves: Iterable[bytes]) -> tuple[int, list[bytes]]:
    """(size, frontier) of a tree built from leaf hashes."""
    frontier: list[bytes] = []
    size = 0
    for leaf in leaves:
        push(frontier, size, leaf)
        size += 1
    return size, frontier


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the given leaf hashes."""
    return root_of_frontier(frontier_of(leaves)[1])


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]): the audit path of leaf ``index`` (0-based) in the first ``size`` leaves."""
    size = len(leaves) if size is None else size
    if not 0 <= index < size <= len(leaves):
        raise ValueError("leaf index outside the tree")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, lo, lo + k), root(leaves[lo + k : hi])]
        return [*path(m - k, lo + k, hi), root(leaves[lo : lo + k])]

    return path(index, 0, size)


def consistency_proof(leaves: Sequence[bytes], first: int, second: int | None = None) -> list[bytes]:
    """PROOF(first, D[second]): shows the tree of ``first`` leaves is a prefix of that of ``second``."""
    second = len(leaves) if second is None else second
    if not 0 <= first <= second <= len(leaves):
        raise ValueError("tree sizes out of range")
    if first in (0, second):
        return []

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [root(leaves[lo:hi])]
        k = _split(n)
        if m <= k:
            return [*subproof(m, lo, lo + k, whole), root(leaves[lo + k : hi])]
        return [*subproof(m - k, lo + k, hi, False), root(leaves[lo : lo + k])]

    return subproof(first, 0, second, True)


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` in the tree ``root_hash``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: does ``proof`` show the tree (first, first_root) is a prefix of (second, second_root)?"""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the old root is itself a node
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
