"""Independent verification of a ledger: chain links, hashes, sequence and checkpoints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.chain import GENESIS_HASH, Entry, entry_hash
from audit.checkpoint import Checkpoint


@dataclass
class VerificationReport:
    """Outcome of a verification; ``bad_seq`` names the first entry found wrong."""

    ok: bool
    entries: int
    checkpoints: int
    bad_seq: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.entries} entries, {self.checkpoints} signed checkpoints verified"
        where = f"entry {self.bad_seq}" if self.bad_seq is not None else "ledger"
        return f"FAILED at {where}: {self.reason}"


def verify_ledger(
    entries: Iterable[Entry],
    checkpoints: Iterable[Checkpoint] = (),
    public_key: Ed25519PublicKey | None = None,
) -> VerificationReport:
    """Check entries in the order given, then every checkpoint against them.

    Entries must be numbered 1, 2, 3… with no gap, each ``prev_hash`` equal to the
    previous entry's hash and each ``entry_hash`` equal to the recomputed one.
    With a public key, every checkpoint must carry a valid signature and match the
    entry at its size; a rewritten chain (hashes recomputed) fails here.
    """
    hashes: dict[int, str] = {}
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    for entry in entries:
        count += 1
        if entry.seq != expected_seq:
            if entry.seq > expected_seq:
                reason = f"sequence jumps from {expected_seq - 1} to {entry.seq}: entries removed"
                return VerificationReport(False, count, 0, expected_seq, reason)
            reason = f"out of order: found {entry.seq} where {expected_seq} was expected"
            return VerificationReport(False, count, 0, entry.seq, reason)
        if entry.prev_hash != prev_hash:
            reason = "previous-hash link does not match the entry before it (reordered or removed)"
            return VerificationReport(False, count, 0, entry.seq, reason)
        if entry_hash(entry) != entry.entry_hash:
            return VerificationReport(False, count, 0, entry.seq, "content does not match its hash (edited)")
        hashes[entry.seq] = entry.entry_hash
        prev_hash = entry.entry_hash
        expected_seq += 1

    cps = list(checkpoints)
    report = VerificationReport(True, count, len(cps))
    if cps and public_key is None:
        report.warnings.append("no public key given: checkpoint signatures not checked")
    for cp in sorted(cps, key=lambda c: c.size):
        if public_key is not None and not cp.signature_valid(public_key):
            return VerificationReport(False, count, len(cps), cp.size, "checkpoint signature invalid")
        if cp.size == 0:
            continue
        if cp.size not in hashes:
            reason = f"signed checkpoint covers {cp.size} entries but the ledger ends at {count} (truncated)"
            return VerificationReport(False, count, len(cps), cp.size, reason)
        if hashes[cp.size] != cp.head_hash:
            reason = "chain differs from the signed checkpoint at this entry (history rewritten)"
            return VerificationReport(False, count, len(cps), cp.size, reason)
    return report
