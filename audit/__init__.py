"""Consentry's tamper-evident audit ledger.

A hash chain of entries (each hash covers the previous one) plus Ed25519-signed
checkpoints over the chain head. This package never imports ``app``: an auditor can
run ``python -m audit verify EXPORT.ndjson --public-key KEY`` with only this folder,
``cryptography`` and (for database access) SQLAlchemy installed.
"""

from audit.chain import GENESIS_HASH, Entry, entry_hash
from audit.checkpoint import Checkpoint
from audit.verify import VerificationReport, verify_ledger

__all__ = ["GENESIS_HASH", "Checkpoint", "Entry", "VerificationReport", "entry_hash", "verify_ledger"]
