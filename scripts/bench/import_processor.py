"""Processing of imported customer rows alone (issue 9): accept a customers CSV with
``consentry import`` (processing patched out), then time draining the inbox in a fresh
process, for a baseline tree and this one, alternating, on a fresh SQLite database each time.

    .venv/bin/python scripts/bench/import_processor.py --baseline-tree /work/bench-base
    .venv/bin/python scripts/bench/import_processor.py --rows 50000 --profile /tmp/imp.txt
    .venv/bin/python scripts/bench/import_processor.py --same-rows --baseline-tree /tmp/base

The file is ``write_csv`` of ``scripts/bench/ingest.py`` (customer id, email, phone, first
name, tier; each customer about twice) with the mapping ``import_bench`` uses; ``--wide``
adds a birthday (one customer in 50 a child), a last name, a street address and a city. The drain is
``scripts/bench/ingest_processor.py --drain`` (one worker, no outbox followers): printed
rows/s (wall) and CPU µs a row; ``--profile FILE`` as there (FILE.txt: pyinstrument).
``--same-rows`` drains copies of one accepted inbox with both trees under fixed randomness
and compares every table."""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from scripts.bench.ingest import (  # noqa: E402
    RESULT,
    BenchError,
    _result,
    check_tree,
    import_tree,
    run,
    tree_environ,
    write_csv,
)
from scripts.bench.ingest_processor import SKIP_COLUMNS, compare_drains  # noqa: E402

SKIP_COLUMNS["field_sighting"] = {"at"}  # set from the clock (an unknown trait's sightings, --wide)
SKIP_COLUMNS["privacy_flag"] = {"set_at"}  # likewise (a child's minor flags, --wide)

SCRIPT = Path(__file__).resolve()
PROCESSOR = SCRIPT.with_name("ingest_processor.py")
MAPPING = (
    'identifiers: {customer_id: "external:crm_id", email: email, phone: phone}\n'
    "traits: {first_name: firstName, tier: loyalty_tier}\n"
)
WIDE_MAPPING = (
    'identifiers: {customer_id: "external:crm_id", email: email, phone: phone}\n'
    "traits: {first_name: firstName, last_name: lastName, birthday: birthday, street: address,"
    " city: city, tier: loyalty_tier}\n"
)


def write_wide_csv(path: Path, rows: int) -> None:
    """``write_csv``'s customers with more personal traits (a birthday, a last name, an address)."""
    rng = random.Random(5)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "email", "phone", "first_name", "last_name", "birthday", "street", "city", "tier"])
        for _ in range(rows):
            p = rng.randrange(rows // 2 or 1)
            year = 2015 if p % 50 == 0 else 1950 + p % 55  # one in 50 a child (minor flags)
            born = f"{year}-{1 + p % 12:02d}-{1 + p % 28:02d}"
            street = f"{1 + p % 400} Market Street"
            city, tier = rng.choice(["Oakland", "Berkeley"]), rng.choice(["gold", "silver"])
            w.writerow(
                [f"C{p}", f"c{p}@example.com", f"+1415{p:07d}", f"Name{p}", f"Last{p % 997}", born, street, city, tier]
            )


def accept_main(tree: str, csv_path: str, mapping: str) -> None:
    """``consentry import`` of the file with the inbox left unprocessed (the command's own
    accepting workers; the processing loop patched out)."""
    import_tree(Path(tree).resolve())
    import app.imports.service as imports
    from app.cli import main as cli
    from app.ingest.processor import Outcome

    async def nothing(*_a: object, **_k: object) -> Outcome:
        return Outcome()

    imports.process_next = nothing  # type: ignore[assignment]
    os.environ["CONSENTRY_INGEST_PROCESSOR"] = "off"
    argv = ["import", csv_path, "--source", "crm", "--mapping", mapping, "--quiet"]
    print(RESULT, cli(argv))


def accepted(tree: Path, environ: dict[str, str], tmp: Path, csv_file: Path, wide: bool) -> None:
    run("consentry db upgrade", [sys.executable, "-m", "app", "db", "upgrade"], environ, tree)
    mapping = tmp / "map.yaml"
    mapping.write_text(WIDE_MAPPING if wide else MAPPING)
    path = tmp / "customers.csv"
    path.symlink_to(csv_file)
    run("accepting", [sys.executable, str(SCRIPT), "--accept", str(tree), str(path), str(mapping)], environ, tree)


def measure(
    tree: Path, environ: dict[str, str], tmp: Path, csv_file: Path, wide: bool, profile: str
) -> dict[str, float]:
    accepted(tree, environ, tmp, csv_file, wide)
    go = tmp / "go"
    go.touch()
    out = json.loads(
        _result(run("drain", [sys.executable, str(PROCESSOR), "--drain", str(tree), str(go), profile], environ, tree))
    )
    wall = out["end"] - out["start"]
    return {
        "rows": out["events"],
        "rate": out["events"] / wall,
        "cpu_us": out["cpu"] / out["events"] * 1e6,
        "wall": wall,
    }


def same_rows(trees: list[Path], csv_file: Path, wide: bool) -> None:
    """Accept the file once, then drain copies with each tree and compare (``compare_drains``)."""
    work = Path(tempfile.mkdtemp(prefix="consentry-import-rows-"))
    try:
        environ = tree_environ(trees[0], work, "", work / "nlp")
        accepted(trees[0], environ, work, csv_file, wide)
        compare_drains(trees, work, "rows processed")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--accept":
        accept_main(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="CSV rows (default 100,000)")
    parser.add_argument("--wide", action="store_true", help="more personal traits a row (birthday, address)")
    parser.add_argument("--baseline-tree", type=Path, help="checkout of the baseline commit to compare against")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the tree measured as current (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default="", help="profile this tree's first drain (FILE.txt: pyinstrument)")
    parser.add_argument("--same-rows", action="store_true", help="compare the stored rows of both trees instead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="consentry-bench-import-"))
    csv_file = work / "customers.csv"
    (write_wide_csv if args.wide else write_csv)(csv_file, args.rows)
    try:
        if args.same_rows:
            if args.baseline_tree is None:
                parser.error("--same-rows needs --baseline-tree")
            same_rows([args.baseline_tree.resolve(), args.tree.resolve()], csv_file, args.wide)
            return
        sides: list[tuple[str, Path]] = [("current", args.tree.resolve())]
        if args.baseline_tree is not None:
            sides.insert(0, ("baseline", args.baseline_tree.resolve()))
        for name, tree in sides:
            print(f"{name}: {check_tree(tree)}")
        figures: dict[str, list[dict[str, float]]] = {name: [] for name, _t in sides}
        for r in range(args.rounds):
            for name, tree in sides:
                tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
                environ = tree_environ(tree, tmp, "", work / f"nlp-{name}")
                profile = args.profile if (args.profile and name == "current" and r == 0) else ""
                try:
                    f = measure(tree, environ, tmp, csv_file, args.wide, profile)
                except BenchError as e:
                    print(f"  round {r + 1} {name}: FAILED {e}")
                    continue
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                figures[name].append(f)
                print(
                    f"  round {r + 1} {name}: {f['rows']:,.0f} rows in {f['wall']:.2f} s, {f['rate']:,.0f} rows/s, "
                    f"{f['cpu_us']:.0f} µs CPU/row (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
        print(f"\nmedians (SQLite, {args.rows:,} rows{', wide' if args.wide else ''}):")
        for name, runs in figures.items():
            if runs:
                rate = statistics.median(x["rate"] for x in runs)
                cpu = statistics.median(x["cpu_us"] for x in runs)
                print(f"  {name:9} {rate:>9,.0f} rows/s  {cpu:>6.0f} µs CPU/row  ({len(runs)} runs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
