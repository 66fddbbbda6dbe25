"""``python -m audit``: verify a ledger export or database, or a consistency proof, standalone.

    python -m audit verify FILE --public-key KEY [--witness W] [--trusted-head H] [--require-signed-tail]
    python -m audit verify-db URL --public-key KEY [same options]
    python -m audit consistency OLD_HEAD NEW_HEAD PROOF --public-key KEY

FILE is an NDJSON export: ``{"kind": "entry", ...}``, ``{"kind": "tree_head", ...}`` (and
``checkpoint`` lines from before tree heads). KEY is the base64 Ed25519 public key or a
file holding it; without it verification fails. The witness file is read by default
(``CONSENTRY_AUDIT_WITNESS``, else beside the SQLite file, else ``<key dir>/..``);
``--trusted-head`` takes the body of ``GET /v1/audit/tree-head`` saved earlier (repeatable).
Exit status 0 means verified.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit import merkle
from audit.chain import Entry
from audit.checkpoint import TreeHead, load_public_key
from audit.verify import VerificationReport, verify_ledger
from audit.witness import WitnessError, default_witness_path, read_witness


class InputError(Exception):
    """An input file is missing or malformed; the message names it (never its contents)."""


def _read_key(value: str | None) -> Ed25519PublicKey | None:
    if not value:
        return None
    path = Path(value)
    text = path.read_text() if path.exists() else value
    try:
        return load_public_key(text)
    except ValueError:
        raise InputError("--public-key is not a base64 Ed25519 public key") from None


def read_export(path: Path) -> tuple[Iterator[Entry], list[TreeHead], list[tuple[int, list[str]]]]:
    """Entries (streamed), signed heads and group entries' subjects from an NDJSON export."""
    heads: list[TreeHead] = []
    subjects: list[tuple[int, list[str]]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                    if obj.get("kind") in ("checkpoint", "tree_head"):
                        heads.append(TreeHead.from_json(obj))
                    elif obj.get("kind") == "subjects":
                        subjects.append((int(obj["seq"]), [str(i) for i in obj["subject_ids"]]))
                except (ValueError, AttributeError, KeyError, TypeError) as exc:
                    raise InputError(f"{path} line {number} is not a ledger line ({exc})") from None

    def entries() -> Iterator[Entry]:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    if obj.get("kind", "entry") == "entry":
                        yield Entry.from_json(obj)

    return entries(), heads, subjects


def read_heads_file(path: Path) -> list[TreeHead]:
    """Tree heads from a file: one JSON object (as ``GET /v1/audit/tree-head`` returns it) or JSON lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise InputError(f"cannot read {path}") from None
    try:
        try:
            return [TreeHead.from_json(json.loads(text))]
        except json.JSONDecodeError:
            return [TreeHead.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise InputError(f"{path} is not a signed tree head ({exc})") from None


def _witness(args: argparse.Namespace, url: str | None) -> tuple[list[TreeHead] | None, str | None]:
    """(heads, warning) from the witness file chosen by the options."""
    if args.no_witness:
        return None, "witness file not read (--no-witness)"
    if args.witness:
        path = Path(args.witness)
        if not path.exists():
            raise InputError(f"witness file {path} does not exist")
    else:
        path = default_witness_path(url)
        if not path.exists():
            return None, f"no witness file at {path}: heads kept outside the ledger were not checked"
    try:
        return read_witness(path), None
    except (OSError, WitnessError) as exc:
        raise InputError(str(exc)) from None


def _verify(args: argparse.Namespace) -> VerificationReport:
    key = _read_key(args.public_key)
    trusted = [h for f in args.trusted_head or () for h in read_heads_file(Path(f))]
    options = {"trusted": trusted, "require_signed_tail": args.require_signed_tail}
    if args.command == "verify":
        witness, note = _witness(args, None)
        entries, heads, subjects = read_export(args.file)
        report = verify_ledger(
            entries, heads, key, witness=witness, snapshot=True, source="export", subjects=subjects, **options
        )
    else:
        from sqlalchemy import create_engine

        from audit.store import read_all_sync, subject_lists_sync

        witness, note = _witness(args, args.url)  # before the database, so every witnessed head is in it
        engine = create_engine(args.url)
        try:
            with engine.connect() as conn:
                entries, heads = read_all_sync(conn)
                subjects = subject_lists_sync(conn)
                report = verify_ledger(
                    entries, heads, key, witness=witness, source="database", subjects=subjects, **options
                )
        finally:
            engine.dispose()
    if note:
        report.warnings.insert(0, note)
    return report


def _consistency(args: argparse.Namespace) -> tuple[bool, str]:
    key = _read_key(args.public_key)
    if key is None:
        return False, "FAILED: no public key given"
    old, new = read_heads_file(Path(args.old_head))[0], read_heads_file(Path(args.new_head))[0]
    for label, head in (("old", old), ("new", new)):
        if head.root_hash is None or not head.signature_valid(key):
            return False, f"FAILED at tree head {head.size} ({label}): signature does not verify"
    try:
        body = json.loads(Path(args.proof).read_text(encoding="utf-8"))
        proof = [bytes.fromhex(h) for h in (body["proof"] if isinstance(body, dict) else body)]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{args.proof} is not a consistency proof") from None
    assert old.root_hash is not None and new.root_hash is not None
    ok = merkle.verify_consistency(
        old.size, new.size, bytes.fromhex(old.root_hash), bytes.fromhex(new.root_hash), proof
    )
    if ok:
        return True, f"OK: tree head {old.size} is a prefix of tree head {new.size}"
    return False, f"FAILED at tree head {new.size}: not consistent with tree head {old.size} (forked or rewritten)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_file = sub.add_parser("verify", help="verify an NDJSON export")
    p_file.add_argument("file", type=Path)
    p_db = sub.add_parser("verify-db", help="verify the ledger in a database (SQLAlchemy URL)")
    p_db.add_argument("url")
    for p in (p_file, p_db):
        p.add_argument("--public-key", help="base64 Ed25519 public key, or a file holding it (required)")
        p.add_argument("--witness", help="witness file of signed tree heads (default: the service's)")
        p.add_argument("--no-witness", action="store_true", help="do not read a witness file")
        p.add_argument("--trusted-head", action="append", help="a tree head kept earlier (GET /v1/audit/tree-head)")
        p.add_argument("--require-signed-tail", action="store_true", help="fail if entries follow the newest head")
    p_cons = sub.add_parser("consistency", help="check a consistency proof between two signed tree heads")
    p_cons.add_argument("old_head")
    p_cons.add_argument("new_head")
    p_cons.add_argument("proof", help="the body of GET /v1/audit/consistency?from=OLD&to=NEW")
    p_cons.add_argument("--public-key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "consistency":
            ok, line = _consistency(args)
            print(line)
            return 0 if ok else 1
        report = _verify(args)
    except InputError as exc:
        print(f"FAILED: {exc}")
        return 1
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
