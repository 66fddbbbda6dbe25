"""The ``consentry`` command: serve, migrate, demo data, keys, audit, scheduler."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from app.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    processor = None
    if args.workers > 1 and get_settings().ingest_processor == "process":
        # one processor for the service, not one per worker process: on SQLite several would
        # prepare the same groups and all but one throw their work away (see inbox.hold)
        from app.ingest.processor import ChildProcessor

        processor = ChildProcessor()
        processor.start()
        os.environ["CONSENTRY_INGEST_PROCESSOR"] = "off"
    try:
        _run_uvicorn(uvicorn, args)
    finally:
        if processor is not None:
            asyncio.run(processor.stop())
    return 0


def _run_uvicorn(uvicorn: Any, args: argparse.Namespace) -> None:
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        workers=args.workers,
    )


def _db(args: argparse.Namespace) -> int:
    from app.migrate import downgrade, upgrade

    upgrade() if args.action == "upgrade" else downgrade(revision=args.revision)
    print(f"database {args.action} done", file=sys.stderr)
    return 0


async def _keys_create(role: str, name: str, source: str | None, trust: str | None) -> str:
    from app.access.service import SYSTEM, create_api_key, identity_secret
    from app.db import unit_of_work
    from app.ledger.service import record
    from app.vault.keyring import key_material

    async with unit_of_work() as session:
        key, token = await create_api_key(session, role, name, source, trust)
        await record(session, SYSTEM, "api_key.create", details={"key_id": key.id, "role": role, "trust": key.trust})
    if role == "ingest":
        secret = identity_secret(key_material(get_settings()).index_key, key.id)
        print(f"trust: {key.trust}; identity-verification secret (for context.userHash): {secret}", file=sys.stderr)
    return token


async def _keys_rotate() -> int:
    from app.access.service import SYSTEM
    from app.db import unit_of_work
    from app.ledger.service import record
    from app.vault.keyring import key_material
    from app.vault.service import rewrap_batch

    ring = key_material(get_settings()).master
    version = ring.add_version()
    total = 0
    while True:
        async with unit_of_work() as session:
            n = await rewrap_batch(session, ring)
        total += n
        if n == 0:
            break
    async with unit_of_work() as session:
        await record(session, SYSTEM, "keys.rotate", details={"master_version": version, "rewrapped": total})
    print(f"master key version {version} active; {total} data keys re-wrapped", file=sys.stderr)
    return 0


def _keys(args: argparse.Namespace) -> int:
    if args.action == "create":
        print(asyncio.run(_keys_create(args.role, args.name, args.source, args.trust)))
        return 0
    if args.action == "rotate":
        return asyncio.run(_keys_rotate())
    return asyncio.run(_keys_list_or_revoke(args))


async def _keys_list_or_revoke(args: argparse.Namespace) -> int:
    from app.access.service import list_api_keys, revoke_api_key
    from app.db import unit_of_work

    async with unit_of_work() as session:
        if args.action == "revoke":
            await revoke_api_key(session, args.key_id)
            print(f"revoked {args.key_id}", file=sys.stderr)
            return 0
        for k in await list_api_keys(session):
            state = "revoked" if k.revoked_at else "active"
            trust = k.trust if k.role == "ingest" else "-"
            print(f"{k.id}\t{k.role}\t{k.name}\t{k.source or '-'}\t{trust}\t{state}")
    return 0


async def _audit(args: argparse.Namespace) -> int:
    import base64

    from app.db import unit_of_work
    from app.ledger.heads import make_tree_head
    from app.vault.keyring import key_material
    from audit import store
    from audit.__main__ import InputError, read_heads_file
    from audit.checkpoint import public_key_bytes
    from audit.verify import verify_ledger
    from audit.witness import WitnessError, read_witness

    s = get_settings()
    signing = key_material(s).signing_key
    if args.action == "public-key":
        print(base64.b64encode(public_key_bytes(signing.public_key())).decode())
        return 0
    if args.action in ("checkpoint", "tree-head"):
        async with unit_of_work() as session:
            head = await make_tree_head(session)
        print(json.dumps(head.to_json()))
        return 0
    if args.action == "export":
        async with unit_of_work() as session:
            out = open(args.file, "w", encoding="utf-8") if args.file else sys.stdout  # noqa: SIM115
            async for line in store.export_lines(session):
                out.write(line)
            if out is not sys.stdout:
                out.close()
        return 0
    # verify: the witness file first, then the heads, then the entries (each covers the one before)
    witness_path = Path(args.witness) if args.witness else s.audit_witness
    witness = None
    note = "witness file not read (--no-witness)" if args.no_witness else None
    try:
        if not args.no_witness:
            if witness_path.exists():
                witness = read_witness(witness_path)
            elif args.witness:
                raise InputError(f"witness file {witness_path} does not exist")
            else:
                note = f"no witness file at {witness_path}: heads kept outside the database were not checked"
        trusted = [h for f in args.trusted_head or () for h in read_heads_file(Path(f))]
    except (InputError, WitnessError, OSError) as exc:
        print(f"FAILED: {exc}")
        return 1
    async with unit_of_work() as session:
        heads = await store.list_checkpoints(session)
        entries = [e async for e in store.stream_entries(session)]
        subjects = await store.subject_lists(session)
    report = verify_ledger(
        entries,
        heads,
        signing.public_key(),
        subjects=subjects,
        witness=witness,
        trusted=trusted,
        require_signed_tail=args.require_signed_tail,
        source="database",
    )
    for warning in ([note] if note else []) + report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


async def _scheduler(args: argparse.Namespace) -> int:
    from app.jobs.scheduler import build_scheduler, product_jobs

    scheduler = build_scheduler(product_jobs())
    scheduler.start()
    try:
        await asyncio.sleep(args.seconds if args.seconds else 10**9)
    finally:
        scheduler.shutdown(wait=False)
    return 0


CHILD_NICE = 10
"""How much the service's processor child (``worker --parent``) lowers its CPU priority: on a
machine whose cores the service and its processor share, requests are answered first while
the processor takes the CPU they leave (SQLite, processor waiting for the store lock before
the spool: 14,200 -> 21,600 events/s accepted; it slows processing on a loaded machine)."""


def _worker_defaults(args: argparse.Namespace) -> argparse.Namespace:
    if args.parent is not None:  # first: even after kill -9 of the service, nothing goes on writing
        from app.ingest.followers import die_with

        die_with(args.parent)
    if args.nice is None:
        args.nice = CHILD_NICE if args.parent is not None else 0
    return args


async def _worker(args: argparse.Namespace) -> int:
    """Process the ingest inbox in the foreground (several may run: they share the queue);
    ``--followers-only``: run the outbox followers alone (the service's second child)."""
    from app.ingest.followers import FollowerLoop, inbox_behind
    from app.ingest.inbox import move_spool
    from app.ingest.processor import Processor
    from app.process import tune_garbage_collector
    from app.segments.jobs import apply_outbox_job

    tune_garbage_collector()
    if args.nice:  # the service's own processor: its requests come first, the inbox absorbs a burst
        os.nice(args.nice)
    if args.followers_only:
        await FollowerLoop([apply_outbox_job], behind=inbox_behind).run(parent=args.parent)
        return 0
    await move_spool()  # batches a stopped service left in its accept spool (SQLite)
    followers: list[Callable[[], Awaitable[Any]]] = [] if args.no_followers else [apply_outbox_job]
    if args.parent is None:  # (the service moves its own spool)
        followers.insert(0, move_spool)
    processor = Processor(idle=args.idle, followers=followers)
    await processor.run(stop_when_empty=args.once, parent=args.parent)
    return 0


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.imports.mapping import load_mapping
    from app.imports.service import (
        count_lines,
        detect_format,
        file_sha256,
        import_principal,
        open_text,
        run_import,
    )
    from app.process import tune_garbage_collector

    tune_garbage_collector()

    path = Path(args.file)
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    mapping = load_mapping(Path(args.mapping) if args.mapping else None)
    fmt = args.format or detect_format(path.name)
    rejects_path = Path(args.rejects or f"{path}.rejects.csv")
    total = max(count_lines(path) - (1 if fmt == "csv" else 0), 0)
    with (
        tqdm(total=total, unit="row", unit_scale=True, file=sys.stderr, disable=args.quiet) as bar,
        open_text(path) as stream,
        rejects_path.open("w", encoding="utf-8", newline="") as rejects,
    ):
        summary = asyncio.run(
            run_import(
                stream, fmt, mapping, import_principal(args.source), file_sha256(path), rejects, args.chunk, bar.update
            )
        )
    for line in summary.lines():
        print(line)
    print(f"rejects: {rejects_path}" if summary.rows_rejected else "rejects: none")
    return 0


def _pii_scan(args: argparse.Namespace) -> int:
    """Count PII entities per type over a whole export (every string cell of CSV/NDJSON/JSON, or lines of text)."""
    from collections import Counter

    from tqdm import tqdm

    from app.imports.service import count_lines, detect_format, open_text, read_rows
    from app.pii.engine import pii_engine

    path = Path(args.file)
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    engine = pii_engine()
    counts: Counter[str] = Counter()
    texts_with_pii = total = 0
    fmt = args.format or ("text" if path.suffix in (".txt", ".log") else detect_format(path.name))

    def texts() -> Iterator[str]:
        with open_text(path) as stream:
            if fmt == "text":
                yield from (line.rstrip("\n") for line in stream if line.strip())
                return
            for _line, row in read_rows(stream, fmt):
                for value in (row or {}).values():
                    if isinstance(value, str) and value.strip():
                        yield value

    with tqdm(total=count_lines(path), unit="line", file=sys.stderr, disable=args.quiet) as bar:
        batch: list[str] = []
        for t in texts():
            batch.append(t)
            if len(batch) >= 256:
                found = engine.analyze_many(batch)
                counts.update(f.entity_type for fs in found for f in fs)
                texts_with_pii += sum(1 for fs in found if fs)
                total += len(batch)
                bar.update(len(batch) if fmt == "text" else 0)
                batch = []
        if batch:
            found = engine.analyze_many(batch)
            counts.update(f.entity_type for fs in found for f in fs)
            texts_with_pii += sum(1 for fs in found if fs)
            total += len(batch)
        bar.update(bar.total - bar.n)
    print(f"model: {engine.model}")
    print(f"values scanned: {total}, with personal data: {texts_with_pii}")
    for entity, n in counts.most_common():
        print(f"{entity:<16} {n}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import load_demo

    keys = asyncio.run(load_demo(args.count, Path(args.keys_file) if args.keys_file else None))
    for role, token in keys.items():
        print(f"{role:<11} {token}")
    return 0


async def _policy_diff(old_dir: Path, new_dir: Path) -> int:
    from app.consent.rules import load_rules
    from app.db import unit_of_work
    from app.decisions.service import policy_diff

    old, new = load_rules(old_dir.resolve()), load_rules(new_dir.resolve())
    async with unit_of_work() as session:
        changes = await policy_diff(session, old, new)
    print(f"policy {old.version} -> {new.version}")
    print(f"{'purpose':<48} {'newly allowed':>14} {'newly denied':>13}")
    for c in changes:
        print(f"{c.purpose:<48} {c.newly_allowed:>14} {c.newly_denied:>13}")
    return 0


def _policy(args: argparse.Namespace) -> int:
    """Validate the policy files (``check``), print their version (``version``), or show how
    many people a change would newly allow or deny per purpose (``diff OLD NEW``)."""
    from app.consent.check import check_policies
    from app.consent.rules import policy_version
    from app.dsr.policy import check_dsr_policy
    from app.tags.taxonomy import check_tags_policy
    from app.traits.catalog import check_traits_policy

    if args.action == "diff":
        if len(args.dirs) != 2:
            print("usage: consentry policy diff OLD_DIR NEW_DIR", file=sys.stderr)
            return 2
        for d in args.dirs:
            if problems := check_policies(Path(d)):
                for problem in problems:
                    print(problem)
                return 1
        return asyncio.run(_policy_diff(Path(args.dirs[0]), Path(args.dirs[1])))
    policy_dir = Path(args.dir) if args.dir else get_settings().policy_dir
    if args.action == "version":
        print(policy_version(policy_dir))
        return 0
    problems = check_policies(policy_dir) + check_dsr_policy(policy_dir) + check_traits_policy(policy_dir)
    problems += check_tags_policy(policy_dir)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {policy_dir}", file=sys.stderr)
        return 1
    print(f"OK: policy version {policy_version(policy_dir)}")
    return 0


async def _retention(args: argparse.Namespace) -> int:
    """Apply ``policies/retention.yaml`` now (``--dry-run``: count only) and print the report."""
    from datetime import UTC, datetime

    from app.db import unit_of_work
    from app.retention.service import run_retention

    async with unit_of_work() as session:
        report = await run_retention(session, datetime.now(UTC), dry_run=args.dry_run)
    for line in report.lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="consentry", description="Consentry customer data platform")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=_serve)

    d = sub.add_parser("db", help="migrate the database")
    d.add_argument("action", choices=["upgrade", "downgrade"])
    d.add_argument("--revision", default="base")
    d.set_defaults(func=_db)

    k = sub.add_parser("keys", help="API keys and master-key rotation")
    ks = k.add_subparsers(dest="action", required=True)
    kc = ks.add_parser("create", help="create an API key; prints it as the only line on stdout")
    kc.add_argument("--role", required=True)
    kc.add_argument("--name", required=True)
    kc.add_argument("--source", help="source name for ingest keys (default: the name)")
    kc.add_argument(
        "--trust",
        choices=("client", "server"),
        help="ingest keys: client (default; a public write key in a page or app) or server (a backend's secret key)",
    )
    ks.add_parser("list")
    kr = ks.add_parser("revoke")
    kr.add_argument("key_id")
    ks.add_parser("rotate", help="new master key version; re-wrap every data key (no downtime)")
    k.set_defaults(func=_keys)

    a = sub.add_parser("audit", help="the audit ledger")
    a.add_argument("action", choices=["verify", "export", "tree-head", "checkpoint", "public-key"])
    a.add_argument("--file", help="export: write here instead of stdout")
    a.add_argument("--witness", help="verify: witness file (default: CONSENTRY_AUDIT_WITNESS)")
    a.add_argument("--no-witness", action="store_true", help="verify: do not read the witness file")
    a.add_argument("--trusted-head", action="append", help="verify: a tree head kept earlier (repeatable)")
    a.add_argument("--require-signed-tail", action="store_true", help="verify: fail on entries after the newest head")
    a.set_defaults(func=lambda ns: asyncio.run(_audit(ns)))

    sc = sub.add_parser("scheduler", help="run the periodic jobs in the foreground")
    sc.add_argument("--seconds", type=float, default=0, help="stop after this long (0: forever)")
    sc.set_defaults(func=lambda ns: asyncio.run(_scheduler(ns)))

    wk = sub.add_parser("worker", help="process the ingest inbox (run beside services started with INGEST_PROCESSOR=0)")
    wk.add_argument("--once", action="store_true", help="stop when the inbox is empty")
    wk.add_argument("--idle", type=float, default=0.2, help="seconds between polls of an empty inbox")
    wk.add_argument("--parent", type=int, help="stop when this process is gone (the service that started it)")
    only = wk.add_mutually_exclusive_group()
    only.add_argument(
        "--no-followers", action="store_true", help="only process the inbox (another process runs the followers)"
    )
    only.add_argument(
        "--followers-only", action="store_true", help="only apply the outbox to segments (no inbox processing)"
    )
    wk.add_argument(
        "--nice",
        type=int,
        help=f"lower this process's CPU priority by this much (default {CHILD_NICE} with --parent, else 0)",
    )
    wk.set_defaults(func=lambda ns: asyncio.run(_worker(_worker_defaults(ns))))

    im = sub.add_parser("import", help="import a CSV, NDJSON or JSON export (idempotent)")
    im.add_argument("file")
    im.add_argument("--source", required=True, help="source name (crm, shop, pos…)")
    im.add_argument("--mapping", help="YAML mapping of columns to identifiers, traits and properties")
    im.add_argument("--format", choices=["csv", "ndjson", "json"])
    im.add_argument("--rejects", help="where to write rejected rows (default FILE.rejects.csv)")
    im.add_argument("--chunk", type=int, default=1000, help="rows per transaction")
    im.add_argument("--quiet", action="store_true", help="no progress bar")
    im.set_defaults(func=_import)

    pii = sub.add_parser("pii", help="personal data in free text")
    pii.add_argument("action", choices=["scan"])
    pii.add_argument("file")
    pii.add_argument("--format", choices=["csv", "ndjson", "json", "text"])
    pii.add_argument("--quiet", action="store_true")
    pii.set_defaults(func=_pii_scan)

    dm = sub.add_parser("demo", help="load synthetic demo customers and print a key per role")
    dm.add_argument("action", choices=["load"])
    dm.add_argument("--count", type=int, default=40)
    dm.add_argument("--keys-file", help="also write the keys here (mode 0600)")
    dm.set_defaults(func=_demo)

    po = sub.add_parser("policy", help="the policy files: check them, or print their version")
    po.add_argument("action", choices=["check", "version", "diff"])
    po.add_argument("dirs", nargs="*", help="diff: OLD_DIR NEW_DIR")
    po.add_argument("--dir", help="policy directory (default: CONSENTRY_POLICY_DIR)")
    po.set_defaults(func=_policy)

    rt = sub.add_parser("retention", help="apply policies/retention.yaml through the personal-data inventory")
    rt.add_argument("action", choices=["run"])
    rt.add_argument("--dry-run", action="store_true", help="count what would be removed and queued; change nothing")
    rt.set_defaults(func=lambda ns: asyncio.run(_retention(ns)))
    return p


def main(argv: list[str] | None = None) -> int:
    from app.logs import configure_logging

    args = build_parser().parse_args(argv)
    if args.command != "serve":
        configure_logging(get_settings(), stream=sys.stderr)
    result: Any = args.func(args)
    return int(result or 0)
