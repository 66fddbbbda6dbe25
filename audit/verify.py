"""Independent verification of a ledger: chain links, hashes, sequence, Merkle tree and signed heads.

Every signed tree head found anywhere (the ledger's own table or export, the witness
file, a head an auditor saved earlier) must carry a valid signature by the given key
and match the Merkle root recomputed from the entries at its size. A ledger that was
cut short, rewritten (even with every hash recomputed) or forked therefore fails as
soon as one copy of a head made before the change is checked against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit import merkle
from audit.chain import GENESIS_HASH, Entry, entry_hash, subjects_digest
from audit.checkpoint import TreeHead, key_id

LEDGER, WITNESS, TRUSTED = "ledger", "witness", "trusted"


@dataclass
class Failure:
    """One thing found wrong: an entry (``seq``) or a signed tree head (``size``)."""

    reason: str
    seq: int | None = None
    head_size: int | None = None
    source: str = ""

    def where(self) -> str:
        if self.seq is not None:
            return f"entry {self.seq}"
        if self.head_size is not None:
            label = {"trusted": "trusted tree head"}.get(self.source, "tree head")
            origin = f" ({self.source})" if self.source and self.source != TRUSTED else ""
            return f"{label} {self.head_size}{origin}"
        return "ledger"


@dataclass
class VerificationReport:
    """Outcome of a verification; ``bad_seq`` / ``bad_head`` name the first thing found wrong."""

    ok: bool
    entries: int
    checkpoints: int
    bad_seq: int | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    bad_head: int | None = None
    newest_signed: int | None = None
    """Size of the newest verified signed head (None: no head)."""
    unsigned: int = 0
    """Entries after the newest verified signed head."""
    failures: list[Failure] = field(default_factory=list)
    source: str = ""

    @property
    def heads(self) -> int:
        return self.checkpoints

    def summary(self) -> str:
        if self.ok:
            covered = (
                f"newest signed head covers {self.newest_signed}"
                if self.newest_signed is not None
                else "no signed head"
            )
            return (
                f"OK: {self.entries} entries, {self.checkpoints} signed tree heads verified; "
                f"{covered}, {self.unsigned} unsigned entries after it"
            )
        first, *rest = self.failures or [Failure(self.reason, self.bad_seq, self.bad_head)]
        lines = [f"FAILED at {first.where()}: {first.reason}"]
        lines += [f"  also at {f.where()}: {f.reason}" for f in rest[:20]]
        if len(rest) > 20:
            lines.append(f"  and {len(rest) - 20} more failures")
        return "\n".join(lines)


def _fail(report: VerificationReport, failure: Failure) -> VerificationReport:
    report.failures.append(failure)
    if report.ok:
        report.ok = False
        report.bad_seq, report.bad_head, report.reason = failure.seq, failure.head_size, failure.reason
        report.source = failure.source
    return report


def _subject_failures(digests: dict[int, Any], subjects: Iterable[tuple[int, list[str]]]) -> list[Failure]:
    """Group entries whose subject index differs from the digest their entry carries."""
    failures: list[Failure] = []
    seen: set[int] = set()
    for seq, ids in subjects:
        seen.add(seq)
        if seq not in digests:
            failures.append(Failure("the subject index names people for an entry that lists none (added)", seq))
        elif subjects_digest(ids) != digests[seq]:
            failures.append(Failure("its subjects in the index differ from the digest it carries (altered)", seq))
    for seq in sorted(set(digests) - seen):
        if digests[seq].get("count"):
            failures.append(Failure("its subjects are missing from the index (removed)", seq))
    return sorted(failures, key=lambda f: f.seq or 0)


def verify_ledger(
    entries: Iterable[Entry],
    heads: Iterable[TreeHead] = (),
    public_key: Ed25519PublicKey | None = None,
    *,
    witness: Sequence[TreeHead] | None = None,
    trusted: Sequence[TreeHead] = (),
    require_signed_tail: bool = False,
    snapshot: bool = False,
    source: str = LEDGER,
    subjects: Iterable[tuple[int, list[str]]] | None = None,
) -> VerificationReport:
    """Check entries in the order given, then every signed head against the recomputed tree.

    ``heads`` come with the ledger (its table, or the lines of an export); ``witness``
    is the witness file's heads (None: not read); ``trusted`` are heads an auditor kept.
    ``snapshot`` marks an export: witness heads newer than it are not failures, and a
    witness head it lacks is checked against its entries rather than required in it.
    ``source`` names the ledger's heads in messages ("database" or "export").
    ``subjects`` are the group entries' subject lists from the index (None: not checked).
    """
    report = VerificationReport(True, 0, 0)
    if public_key is None:
        return _fail(report, Failure("no public key given: signed tree heads cannot be checked (pass --public-key)"))
    ledger_heads = list(heads)
    labelled = (
        [(source, h) for h in ledger_heads] + [(WITNESS, h) for h in witness or ()] + [(TRUSTED, h) for h in trusted]
    )
    wanted = {h.size for _, h in labelled}
    roots: dict[int, str] = {0: merkle.EMPTY_ROOT.hex()}
    chain: dict[int, str] = {0: GENESIS_HASH}

    frontier: list[bytes] = []
    digests: dict[int, Any] = {}
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    for entry in entries:
        count += 1
        report.entries = count
        if entry.seq != expected_seq:
            if entry.seq > expected_seq:
                reason = f"sequence jumps from {expected_seq - 1} to {entry.seq}: entries removed"
                return _fail(report, Failure(reason, expected_seq))
            reason = f"out of order: found {entry.seq} where {expected_seq} was expected"
            return _fail(report, Failure(reason, entry.seq))
        if entry.prev_hash != prev_hash:
            reason = "previous-hash link does not match the entry before it (reordered or removed)"
            return _fail(report, Failure(reason, entry.seq))
        if entry_hash(entry) != entry.entry_hash:
            return _fail(report, Failure("content does not match its hash (edited)", entry.seq))
        if isinstance(entry.details, dict) and "subjects" in entry.details:
            digests[entry.seq] = entry.details["subjects"]
        merkle.push(frontier, count - 1, bytes.fromhex(entry.entry_hash))
        if count in wanted:
            roots[count] = merkle.root_of_frontier(frontier).hex()
            chain[count] = entry.entry_hash
        prev_hash = entry.entry_hash
        expected_seq += 1

    if subjects is not None:
        for failure in _subject_failures(digests, subjects):
            _fail(report, failure)
    expected_kid = key_id(public_key)
    verified: set[int] = set()
    newer_than_snapshot = 0
    for src, head in sorted(labelled, key=lambda item: (item[1].size, item[0] != TRUSTED)):
        fail = Failure("", head_size=head.size, source=src)
        if head.key_id != expected_kid:
            fail.reason = f"signed by another key (key id {head.key_id}), not the public key given ({expected_kid})"
            _fail(report, fail)
            continue
        if not head.signature_valid(public_key):
            fail.reason = "signature does not verify with the public key (forged or altered head)"
            _fail(report, fail)
            continue
        if head.size > count:
            if src == WITNESS and snapshot:
                newer_than_snapshot += 1
                continue
            if src == TRUSTED:
                fail.reason = f"the ledger ({count} entries) is shorter than this trusted head: entries removed"
            else:
                fail.reason = f"signed head covers {head.size} entries but the ledger ends at {count} (truncated)"
            _fail(report, fail)
            continue
        if head.is_tree_head:
            if roots[head.size] != head.root_hash or chain[head.size] != head.head_hash:
                if src == TRUSTED:
                    fail.reason = (
                        f"the ledger's tree at size {head.size} differs from this trusted head "
                        "(forked or history rewritten)"
                    )
                else:
                    fail.reason = "recomputed Merkle root differs from the signed one (history rewritten)"
                _fail(report, fail)
                continue
        elif chain[head.size] != head.head_hash:
            fail.reason = "chain differs from the signed checkpoint at this entry (history rewritten)"
            _fail(report, fail)
            continue
        verified.add(head.size)

    if witness is not None:
        in_ledger = {h.size for h in ledger_heads}
        missing = sorted({h.size for h in witness} - in_ledger)
        for size in missing:
            if snapshot:
                continue  # checked against the export's entries above, if it reaches that far
            reason = f"is in the witness file but no longer in the {source} (deleted)"
            _fail(report, Failure(reason, head_size=size, source=WITNESS))
        unwitnessed = len(in_ledger - {h.size for h in witness})
        if unwitnessed:
            report.warnings.append(f"{unwitnessed} signed heads of the {source} are not in the witness file")
    if newer_than_snapshot:
        report.warnings.append(f"{newer_than_snapshot} witnessed heads are newer than this export (not checked)")

    report.checkpoints = len(verified)
    newest = max(verified, default=None)
    report.newest_signed = newest
    report.unsigned = count - (newest or 0)
    if count and not newest:
        _fail(report, Failure(f"{count} entries and no valid signed tree head covers them"))
    elif require_signed_tail and report.unsigned:
        reason = f"{report.unsigned} entries after the newest signed tree head ({newest}) are unsigned"
        _fail(report, Failure(reason, (newest or 0) + 1))
    return report
