"""The personal-data inventory and the shape of the domains.

- Every table with a column naming a person is claimed by exactly one holder, the holder
  of the domain whose models define it (one writer per table).
- No import cycle between domains; a domain imports another domain's models only where
  ``MODEL_IMPORTS_ALLOWED`` says so.
"""

from __future__ import annotations

import ast
from collections import Counter, defaultdict
from pathlib import Path

from sqlalchemy import Column, MetaData, String, Table

from app.inventory import PersonalDataHolder, holders, person_columns
from app.schema import METADATA

APP = Path(__file__).resolve().parents[1] / "app"

MODEL_IMPORTS_ALLOWED: set[tuple[str, str]] = {
    ("consent", "access"),  # the policy check validates role names against access.models.ROLES
}
"""(importing domain, domain whose models it imports). Domains call each other's service
functions and holders; add a pair here only with a reason in a comment."""


def _unclaimed(metadata: list[MetaData], claimed: Counter[str]) -> list[str]:
    return sorted(t.name for md in metadata for t in md.sorted_tables if person_columns(t) and claimed[t.name] != 1)


def _claims() -> Counter[str]:
    return Counter(t.name for h in holders() for t in h.tables)


def test_every_table_holding_a_persons_data_is_claimed_by_exactly_one_holder() -> None:
    claimed = _claims()
    assert _unclaimed(METADATA, claimed) == [], "register these tables in their domain's holder.py"
    every = {t.name for md in METADATA for t in md.sorted_tables}
    assert set(claimed) <= every
    for h in holders():
        assert isinstance(h, PersonalDataHolder)


def test_an_unregistered_table_fails_the_inventory() -> None:
    extra = MetaData()
    Table("loyalty_card", extra, Column("profile_id", String(36)), Column("number", String(32)))
    assert _unclaimed([*METADATA, extra], _claims()) == ["loyalty_card"]


def test_each_table_is_claimed_by_the_domain_that_defines_it() -> None:
    for h in holders():
        for t in h.tables:
            model_module = next(
                (m.class_.__module__ for md in METADATA for m in _mappers() if m.local_table is t), None
            )
            if model_module is None:  # Core tables: the ledger's, defined by audit/
                assert h.domain == "ledger" and t.name.startswith("audit_")
                continue
            assert model_module == f"app.{h.domain}.models", (t.name, h.domain)


def _mappers() -> list:  # type: ignore[type-arg]
    from sqlmodel import SQLModel

    return list(SQLModel._sa_registry.mappers)


def _domain(path: Path) -> str | None:
    rel = path.relative_to(APP)
    return rel.parts[0] if len(rel.parts) > 1 else None


def _imports() -> dict[str, set[tuple[str, str]]]:
    """Domain → (imported module, importing file) for every ``app.*`` import, nested ones too."""
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in APP.rglob("*.py"):
        domain = _domain(path)
        if domain is None or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("app."):
                    out[domain].add((name, str(path.relative_to(APP))))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for domain, found in _imports().items():
        for module, _file in found:
            parts = module.split(".")
            target = parts[1]
            if len(parts) > 2 and (APP / target).is_dir() and target != domain:
                graph[domain].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_domains() -> None:
    assert _cycle(_graph()) is None, f"import cycle between domains: {' -> '.join(_cycle(_graph()) or [])}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_domains_import_other_domains_models_only_where_allowed() -> None:
    found = {
        (domain, module.split(".")[1], file)
        for domain, imports in _imports().items()
        for module, file in imports
        if module.endswith(".models") and module.split(".")[1] != domain
    }
    assert {(a, b) for a, b, _f in found} <= MODEL_IMPORTS_ALLOWED, sorted(found)
