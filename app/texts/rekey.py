"""Moving a person's texts to another profile (identity merges), re-encrypting their vault."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.texts.models import TextRecord, TextVaultEntry
from app.vault.cipher import open_field, seal_field
from app.vault.service import DataKey


def vault_field(text_id: str, placeholder: str) -> str:
    """The associated-data name of one vaulted value."""
    return f"text:{text_id}:{placeholder}"


async def move_texts(session: AsyncSession, loser: DataKey, winner: DataKey) -> int:
    """Re-seal the loser's text vault under the winner's key and hand the texts over."""
    rows = list(
        (
            await session.execute(select(TextVaultEntry).where(col(TextVaultEntry.profile_id) == loser.profile_id))
        ).scalars()
    )
    for e in rows:
        name = vault_field(e.text_id, e.placeholder)
        value = open_field(loser.key, loser.profile_id, name, e.key_version, e.sealed)
        await session.delete(e)
        await session.flush()
        session.add(
            TextVaultEntry(
                profile_id=winner.profile_id,
                text_id=e.text_id,
                placeholder=e.placeholder,
                entity_type=e.entity_type,
                key_version=winner.version,
                sealed=seal_field(winner.key, winner.profile_id, name, winner.version, value),
            )
        )
    await session.execute(
        update(TextRecord)
        .where(col(TextRecord.profile_id) == loser.profile_id)
        .values(profile_id=winner.profile_id)
        .execution_options(synchronize_session=False)
    )
    return len(rows)
