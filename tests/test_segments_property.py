"""Property test: for random trees over a random population, the SQL compiler (on this
database: SQLite or PostgreSQL) and the in-memory evaluator choose the same people."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text

from app.consent.models import PrivacyFlag
from app.db import create_sync_engine, table_of
from app.ingest.event_reads import events_table
from app.profiles.models import ProfileField
from app.profiles.service import birth_indexes, population
from app.segments.evaluate import ConsentFact, Fact, Facts, matches
from app.segments.grammar import Parser
from app.segments.models import SegmentMember
from app.segments.sql import Compiler
from app.settings import get_settings
from app.traits.models import TraitValue
from app.vault.keyring import key_material
from tests.conftest import Env

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
M = "marketing.advertising.first_party.targeted"
PURPOSES = frozenset({M, "analytics.reporting"})
SEG = "5e6a0000-0000-4000-8000-000000000001"
TRAITS = ("plan", "amount", "status", "keywords", "created_at")
PROPS = ("category", "price", "filters")
COMPUTED = ("purchase_total", "churn_risk")
"""Computed traits of policies/computed_traits.yaml (churn_risk profiles a person)."""
WORDS = ("", "a", "ab", "pro", "Pro", "b a", "é", "x-1", "1", "2026-05-01", "2026-05-31T10:00:00Z")


def _value(r: random.Random) -> Any:
    kind = r.randrange(8)
    if kind == 0:
        return r.choice(WORDS)
    if kind == 1:
        return r.choice([0, 1, 2, 3.5, -1, 10, 1e3])
    if kind == 2:
        return r.choice([True, False])
    if kind == 3:
        return None
    if kind == 4:
        return [r.choice([*WORDS[:5], 1, 2.0, True]) for _ in range(r.randrange(4))]
    if kind == 5:
        return {"nested": 1}
    return r.choice([f"2026-0{r.randint(1, 9)}-1{r.randint(0, 9)}", "2025-12-31"])


def _bag(r: random.Random, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: _value(r) for k in keys if r.random() < 0.7}


def _population(seed: int) -> tuple[dict[str, Facts], list[dict[str, Any]]]:
    r = random.Random(seed)
    people: dict[str, Facts] = {}
    merged: list[dict[str, Any]] = []
    for n in range(40):
        pid = str(uuid.UUID(int=r.getrandbits(128)))
        events = [
            Fact(
                r.choice("ABC"),
                NOW - timedelta(minutes=r.randrange(0, 60 * 24 * 120), seconds=r.randrange(60)),
                _bag(r, PROPS),
            )
            for _ in range(r.randrange(6))
        ]
        consents = [
            ConsentFact(
                p,
                r.choice(["granted", "denied", "withdrawn"]),
                r.choice([None, NOW - timedelta(days=1), NOW + timedelta(days=9)]),
            )
            for p in PURPOSES
            if r.random() < 0.5
        ]
        born = None
        if r.random() < 0.8:  # many near today's month-day and the age bounds
            month, day = r.choice([(5, 31), (6, 1), (6, 1), (6, 2), (2, 28), (1, 1), (12, 31)])
            born = date(r.randint(1950, 2026), month, day)
            born = born if born <= NOW.date() else None
        segs = frozenset({SEG}) if r.random() < 0.3 else frozenset()
        refused = r.random() < 0.2
        computed = _bag(r, COMPUTED)
        facts = Facts(_bag(r, TRAITS), events, consents, segs, born, computed=computed, profiling_refused=refused)
        if n % 10 == 9:
            merged.append({"id": pid, "facts": facts})  # merged away: never a member
        else:
            people[pid] = facts
    return people, merged


def _store(people: dict[str, Facts], merged: list[dict[str, Any]]) -> None:
    profile, _person, _region, _live = population()
    events = events_table()
    states = table_of_consent_state()
    members = table_of(SegmentMember)
    values = table_of(TraitValue)
    fields = table_of(ProfileField)
    key = key_material(get_settings()).index_key
    survivor = next(iter(people))
    engine = create_sync_engine()
    with engine.begin() as db:
        rows = [(pid, f, None) for pid, f in people.items()] + [(m["id"], m["facts"], survivor) for m in merged]
        for pid, f, into in rows:
            db.execute(
                insert(profile),
                {
                    "id": pid,
                    "created_at": NOW,
                    "updated_at": NOW,
                    "traits": dict(f.traits),
                    "trait_sources": {},
                    "region": "DE",
                    "merged_into": into,
                },
            )
            for e in f.events:
                db.execute(
                    insert(events),
                    {
                        "id": str(uuid.uuid4()),
                        "profile_id": pid,
                        "origin_id": pid,
                        "source": "t",
                        "message_id": str(uuid.uuid4()),
                        "type": "track",
                        "name": e.name,
                        "occurred_at": e.at,
                        "received_at": e.at,
                        "properties": dict(e.properties),
                        "traits": {},
                        "key_version": 1,
                        "sealed": b"x",
                    },
                )
            for c in f.consents:
                db.execute(
                    insert(states),
                    {
                        "origin_id": pid,
                        "purpose": c.purpose,
                        "profile_id": pid,
                        "state": c.state,
                        "method": "form",
                        "decided_at": NOW,
                        "received_at": NOW,
                        "expires_at": c.expires_at,
                        "record_id": str(uuid.uuid4()),
                    },
                )
            if f.birthday is not None:
                row = {
                    "origin_id": pid,
                    "name": "birthday",
                    "profile_id": pid,
                    "category": "user.demographic.date_of_birth",
                    "key_version": 1,
                    "ciphertext": b"x",
                    "updated_at": NOW,
                    "source": "t",
                    "trust": "server",
                }
                db.execute(insert(fields), {**row, **birth_indexes(key, "birthday", f.birthday.isoformat())})
            if SEG in f.segments:
                db.execute(insert(members), {"segment_id": SEG, "profile_id": pid, "entered_at": NOW})
            for name, value in f.computed.items():
                db.execute(insert(values), {"profile_id": pid, "name": name, "value": {"v": value}, "computed_at": NOW})
            if f.profiling_refused:
                flag = {"origin_id": pid, "flag": "profiling_refused", "profile_id": pid, "set_at": NOW}
                db.execute(insert(table_of(PrivacyFlag)), {**flag, "source": "t"})
    engine.dispose()


def table_of_consent_state() -> Any:
    from app.schema import METADATA

    return next(md.tables["consent_state"] for md in METADATA if "consent_state" in md.tables)


scalar = st.one_of(st.sampled_from(WORDS), st.sampled_from([0, 1, 2, 3.5, -1, 10, 1000]), st.booleans())
cmp = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne"]), scalar),
    st.tuples(
        st.sampled_from(["in", "not_in"]),
        st.one_of(
            st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
            st.lists(st.sampled_from([0, 1, 2, 3.5, 10]), min_size=1, max_size=3),
        ),
    ),
    st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), st.sampled_from([0, 1, 2, 3.5, -1, 10])),
    st.tuples(st.just("between"), st.sampled_from([[0, 2], [1, 1], [-5, 100]])),
    st.tuples(st.sampled_from(["contains", "starts_with", "ends_with"]), st.sampled_from([w for w in WORDS if w])),
    st.tuples(st.sampled_from(["before", "after"]), st.sampled_from(["2026-05-01", "2026-03-15", "2025-12-31"])),
    st.tuples(st.just("date_between"), st.sampled_from([["2026-01-01", "2026-05-01"], ["2025-12-31", "2025-12-31"]])),
    st.tuples(st.just("includes"), st.one_of(st.sampled_from(WORDS[:5]), st.sampled_from([1, 2, 2.5]))),
    st.tuples(st.just("exists"), st.booleans()),
)
ops = st.dictionaries(st.just("x"), cmp, min_size=1, max_size=1).map(lambda d: {d["x"][0]: d["x"][1]})
where = st.dictionaries(st.sampled_from(PROPS), ops, max_size=2)
window = st.one_of(
    st.just({}),
    st.builds(lambda d: {"within": {"days": d}}, st.integers(1, 130)),
    st.builds(lambda h: {"within": {"hours": h}}, st.integers(1, 500)),
    st.just({"between": ["2026-03-01", "2026-04-30"]}),
)
count = st.one_of(
    st.just({}),
    st.builds(lambda n: {"count": {"gte": n}}, st.integers(0, 3)),
    st.builds(lambda n: {"count": {"lte": n}}, st.integers(0, 3)),
    st.builds(lambda a, b: {"count": {"between": [a, a + b]}}, st.integers(0, 2), st.integers(0, 2)),
)
leaf = st.one_of(
    st.builds(lambda t, o: {"trait": t, **o}, st.sampled_from(TRAITS), ops),
    st.builds(
        lambda p, s: {"consent": p, "state": s},
        st.sampled_from(sorted(PURPOSES)),
        st.sampled_from(["granted", "denied", "withdrawn", "none"]),
    ),
    st.just({"segment": SEG}),
    st.builds(lambda t, o: {"computed": t, **o}, st.sampled_from(COMPUTED), ops),
    st.just({"birthday": "today"}),
    st.builds(lambda a, b: {"age": {"between": [a, a + b]}}, st.integers(0, 80), st.integers(0, 20)),
    st.builds(lambda a: {"age": {"gte": a}}, st.integers(0, 80)),
    st.builds(lambda n, w, win, c: {"event": n, "where": w, **win, **c}, st.sampled_from("ABC"), where, window, count),
    st.builds(
        lambda steps, d: {"funnel": [{"event": n, "where": w} for n, w in steps], "within": {"days": d}},
        st.lists(st.tuples(st.sampled_from("ABC"), where), min_size=2, max_size=3),
        st.integers(1, 60),
    ),
)
trees = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)


@pytest.fixture
def populated(env: Env) -> dict[str, Facts]:
    people, merged = _population(11)
    _store(people, merged)
    return people


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_sql_and_the_in_memory_evaluator_choose_the_same_people(populated: dict[str, Facts], tree: Any) -> None:
    node = Parser(lambda _name: None, lambda name: name, PURPOSES).parse(tree)
    profile, person, _region, live = population()
    everyone = select(person).where(live, Compiler(person, profile.c.traits, NOW)(node))
    named = sorted(populated)[::3]  # a few named people, as incremental membership asks
    few = select(person).where(live, Compiler(person, profile.c.traits, NOW, few=True)(node), person.in_(named))
    engine = create_sync_engine()
    try:
        with engine.connect() as db:
            got = {str(r) for r in db.execute(everyone).scalars()}
            got_few = {str(r) for r in db.execute(few).scalars()}
    finally:
        engine.dispose()
    expected = {pid for pid, facts in populated.items() if matches(node, facts, NOW)}
    assert got == expected, tree
    assert got_few == expected & set(named), tree


def test_the_population_is_stored_and_trees_tell_people_apart(populated: dict[str, Facts]) -> None:
    engine = create_sync_engine()
    with engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM profile")).scalar() == 40
    engine.dispose()
    trees = ({"event": "A"}, {"trait": "plan", "exists": True}, {"age": {"gte": 30}}, {"consent": M})
    for tree in (*trees, {"computed": "churn_risk", "exists": False}):
        node = Parser(lambda _name: None, lambda name: name, PURPOSES).parse(tree)
        chosen = [pid for pid, facts in populated.items() if matches(node, facts, NOW)]
        assert 0 < len(chosen) < len(populated), tree


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "all",
                        "any",
                        "not",
                        "trait",
                        "event",
                        "where",
                        "count",
                        "within",
                        "funnel",
                        "between",
                        "eq",
                        "in",
                        "days",
                        "gte",
                        "segment",
                        "consent",
                        "state",
                    ]
                ),
                st.text(max_size=5),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(tree=json_values)
def test_any_json_either_parses_or_is_refused_by_path(tree: Any) -> None:
    from app.errors import InvalidField

    try:
        Parser(lambda name: None if name in TRAITS + PROPS else "no", lambda name: name, PURPOSES).parse(tree)
    except InvalidField as exc:
        assert exc.field and exc.field.startswith("tree")
