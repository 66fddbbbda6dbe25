"""``python -m audit verify FILE --public-key KEY``: verify an NDJSON ledger export.

Each line is ``{"kind": "entry", ...}`` or ``{"kind": "checkpoint", ...}``; KEY is the
base64 Ed25519 public key (or a file holding it). Exit status 0 means verified.
Also ``python -m audit verify-db URL --public-key KEY`` reads a database directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from audit.chain import Entry
from audit.checkpoint import Checkpoint, load_public_key
from audit.verify import verify_ledger


def _read_key(value: str | None):  # type: ignore[no-untyped-def]
    if not value:
        return None
    path = Path(value)
    text = path.read_text() if path.exists() else value
    return load_public_key(text)


def read_export(path: Path) -> tuple[Iterator[Entry], list[Checkpoint]]:
    """Entries (streamed) and checkpoints from an NDJSON export."""
    checkpoints: list[Checkpoint] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                if obj.get("kind") == "checkpoint":
                    checkpoints.append(Checkpoint.from_json(obj))

    def entries() -> Iterator[Entry]:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    if obj.get("kind", "entry") == "entry":
                        yield Entry.from_json(obj)

    return entries(), checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_file = sub.add_parser("verify", help="verify an NDJSON export")
    p_file.add_argument("file", type=Path)
    p_file.add_argument("--public-key", help="base64 Ed25519 public key, or a file holding it")
    p_db = sub.add_parser("verify-db", help="verify the ledger in a database (SQLAlchemy URL)")
    p_db.add_argument("url")
    p_db.add_argument("--public-key")
    args = parser.parse_args(argv)

    key = _read_key(args.public_key)
    if args.command == "verify":
        entries, cps = read_export(args.file)
        report = verify_ledger(entries, cps, key)
    else:
        from sqlalchemy import create_engine

        from audit.store import read_all_sync

        engine = create_engine(args.url)
        with engine.connect() as conn:
            entries, cps = read_all_sync(conn)
            report = verify_ledger(entries, cps, key)
        engine.dispose()
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
