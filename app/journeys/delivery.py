"""Where a journey's messages go: a destination of the activation domain.

A journey hands each batch of due people to ``send_to_destination`` (activation), which
decides consent again, filters fields to the destination's categories and delivers (one
activation run per batch, idempotent by key). Journeys see it through the small ``Sender``
interface below; ``use_sender`` swaps the sender in tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.service import Principal
from app.activation.destinations import get_destination
from app.activation.service import SendResult, send_to_destination
from app.errors import InvalidField, NotFound


@dataclass(frozen=True)
class Delivered:
    """What became of a batch: who received it, who was left out (why), who failed."""

    sent: frozenset[str] = frozenset()
    refused: Mapping[str, str] = field(default_factory=dict)
    failed: frozenset[str] = frozenset()


class Sender(Protocol):
    async def __call__(
        self,
        session: AsyncSession,
        principal: Principal,
        destination_id: str,
        profile_ids: Sequence[str],
        purpose: str,
        *,
        reason: str,
        idempotency_key: str,
    ) -> Delivered: ...


_chosen: list[Sender] = []


@contextmanager
def use_sender(sender: Sender) -> Iterator[None]:
    """Send through ``sender`` instead of the activation domain while the block runs."""
    _chosen.append(sender)
    try:
        yield
    finally:
        _chosen.remove(sender)


def current_sender() -> Sender:
    return _chosen[-1] if _chosen else activation_sender


def delivered_from(result: SendResult, asked: Sequence[str]) -> Delivered:
    """Read activation's ``SendResult`` (``sent``, ``excluded`` id → reason, ``failed``, and a
    ``refusal`` of the whole send)."""
    if result.refusal:
        return Delivered(refused={p: str(result.refusal) for p in asked})
    failed = frozenset(str(p) for p in result.failed)
    sent = frozenset(str(p) for p in result.sent) - failed
    return Delivered(sent, {str(k): str(v) for k, v in dict(result.excluded).items()}, failed)


async def check_destination(session: AsyncSession, destination_id: str, purpose: str) -> None:
    """The destination exists and is declared for the journey's purpose (422 naming
    ``destination_id`` otherwise)."""
    try:
        dest = await get_destination(session, destination_id)
    except NotFound:
        raise InvalidField("no destination with this id", field="destination_id") from None
    if dest.purpose != purpose:
        raise InvalidField("the destination is declared for another purpose", field="destination_id")


async def activation_sender(
    session: AsyncSession,
    principal: Principal,
    destination_id: str,
    profile_ids: Sequence[str],
    purpose: str,
    *,
    reason: str,
    idempotency_key: str,
) -> Delivered:
    """Deliver through activation's ``send_to_destination``."""
    result = await send_to_destination(
        session, principal, destination_id, list(profile_ids), purpose, reason=reason, idempotency_key=idempotency_key
    )
    return delivered_from(result, profile_ids)
