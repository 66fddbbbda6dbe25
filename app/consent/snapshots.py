"""Every policy version that was ever in force, and from when, so a decision can be replayed
under the rules of its day (``GET /v1/decisions/explain?at=…``).

At start-up the service stores the policy files under their version (a content hash) once,
and records an activation whenever the version in force changes. Policy files hold no
personal data.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.consent.models import PolicyActivation, PolicySnapshot
from app.consent.rules import POLICY_FILES, Rules, load_rules, policy_version
from app.db import private_path, table_of


async def remember_policy(session: AsyncSession, policy_dir: Path, now: datetime | None = None) -> str:
    """Store this policy version's files (once) and, if another version was in force, record
    that this one is from now on. Returns the version."""
    version = policy_version(policy_dir)
    snap = table_of(PolicySnapshot)
    files = {
        name: (policy_dir / name).read_text(encoding="utf-8") for name in POLICY_FILES if (policy_dir / name).exists()
    }
    dialect = session.get_bind().dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(snap).on_conflict_do_nothing()
    now = now or datetime.now(UTC)
    await session.execute(stmt.values(version=version, files=json.dumps(files, ensure_ascii=False), stored_at=now))
    act = table_of(PolicyActivation)
    last = (
        await session.execute(select(act.c.version).order_by(act.c.active_from.desc(), act.c.id.desc()).limit(1))
    ).scalar()
    if last != version:
        await session.execute(insert(act).values(version=version, active_from=now))
    return version


async def rules_at(session: AsyncSession, at: datetime) -> Rules | None:
    """The rules in force at ``at`` (None: no version was recorded as in force then)."""
    act, snap = table_of(PolicyActivation), table_of(PolicySnapshot)
    q = (
        select(snap.c.version, snap.c.files)
        .join(act, act.c.version == snap.c.version)
        .where(act.c.active_from <= at)
        .order_by(act.c.active_from.desc(), act.c.id.desc())
        .limit(1)
    )
    row = (await session.execute(q)).first()
    if row is None:
        return None
    return load_rules(_materialised(row.version, json.loads(row.files)))


def _materialised(version: str, files: dict[str, str]) -> Path:
    """The snapshot's files in a private folder (load_rules reads a folder and caches by it)."""
    folder = Path(tempfile.gettempdir()) / f"consentry-policy-{version}"
    private_path(folder, directory=True)
    for name, text in files.items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    if policy_version(folder) != version:
        raise ValueError(f"stored policy {version} does not hash to its version")
    return folder
