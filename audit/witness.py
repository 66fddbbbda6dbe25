"""The witness file: every signed tree head, appended as one JSON line as it is made.

The database is not the only place a tree head lives, so someone who can rewrite the
database (entries *and* its tree heads) is still caught by the copy outside it. Point
``CONSENTRY_AUDIT_WITNESS`` at another disk or host (an NFS mount, a file shipped by a
log forwarder) in production; the default beside the database only survives a
database-only compromise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from audit.checkpoint import TreeHead

FILE_NAME = "audit-witness.jsonl"


class WitnessError(ValueError):
    """A witness line is not a tree head."""


def default_witness_path(database_url: str | None = None, key_dir: str | None = None) -> Path:
    """``CONSENTRY_AUDIT_WITNESS``, else beside the SQLite file, else beside the key folder.

    The same rule as the service's setting, computed from the environment so the
    standalone verifier finds the file the service writes.
    """
    explicit = os.environ.get("CONSENTRY_AUDIT_WITNESS", "")
    if explicit:
        return Path(explicit)
    url = database_url if database_url is not None else os.environ.get("CONSENTRY_DATABASE_URL", "")
    if url.startswith("sqlite") and ":///" in url:
        db = url.split(":///", 1)[1].split("?", 1)[0]
        if db and db != ":memory:":
            return Path(db).parent / FILE_NAME
    if not url:
        return Path("./data") / FILE_NAME
    keys = key_dir if key_dir is not None else os.environ.get("CONSENTRY_KEY_DIR", "./data/keys")
    return Path(keys).parent / FILE_NAME


def append_head(path: Path, head: TreeHead) -> None:
    """Append one head as a JSON line and fsync it (one ``write`` under an exclusive lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({"kind": "tree_head", **head.to_json()}, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_witness(path: Path) -> list[TreeHead]:
    """Every head in the file, in file order; ``WitnessError`` names a malformed line."""
    heads: list[TreeHead] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                heads.append(TreeHead.from_json(obj))
            except ValueError as exc:  # JSONDecodeError is a ValueError
                raise WitnessError(f"witness file line {number} is not a tree head ({exc})") from None
    return heads
