"""indexes for the decision engine's EXISTS probes

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26

A decision (single or over a population) probes, per person, the current consent states by
(person, purpose, state), the privacy flags by (person, flag) and the device ids that sent
GPC: each probe is now answered from an index alone (the GPC one is partial: only ids
that sent the signal).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

GPC = sa.text("gpc_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_consent_state_decision", "consent_state", ["profile_id", "purpose", "state"])
    op.create_index("ix_privacy_flag_decision", "privacy_flag", ["profile_id", "flag"])
    op.create_index("ix_identifier_gpc", "identifier", ["profile_id", "gpc_at"], sqlite_where=GPC, postgresql_where=GPC)


def downgrade() -> None:
    op.drop_index("ix_identifier_gpc", table_name="identifier")
    op.drop_index("ix_privacy_flag_decision", table_name="privacy_flag")
    op.drop_index("ix_consent_state_decision", table_name="consent_state")
