"""Consentry's tamper-evident audit ledger.

A hash chain of entries that is also an RFC 9162 Merkle tree (each entry's hash is its
leaf hash), plus Ed25519-signed tree heads that are kept in the database and appended to
a witness file outside it. This package never imports ``app``: an auditor can run
``python -m audit verify EXPORT.ndjson --public-key KEY`` with only this folder,
``cryptography`` and (for database access) SQLAlchemy installed.
"""

from audit.chain import GENESIS_HASH, Entry, entry_hash
from audit.checkpoint import Checkpoint, TreeHead
from audit.verify import VerificationReport, verify_ledger

__all__ = ["GENESIS_HASH", "Checkpoint", "Entry", "TreeHead", "VerificationReport", "entry_hash", "verify_ledger"]
