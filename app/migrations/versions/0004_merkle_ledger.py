"""merkle ledger: tree frontier on the head row, Merkle root on signed heads

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

``audit_head.frontier`` keeps the RFC 9162 tree's frontier so tree heads are signed
without re-reading old entries; it is computed here from the existing entries.
``audit_checkpoint.root_hash`` holds the Merkle root of a signed tree head (NULL on the
checkpoints signed before, which the verifier still checks over the chain hash).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from audit import merkle

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.add_column(sa.Column("frontier", sa.Text(), server_default="", nullable=False))
    with op.batch_alter_table("audit_checkpoint", schema=None) as batch_op:
        batch_op.add_column(sa.Column("root_hash", sa.String(length=64), nullable=True))

    conn = op.get_bind()
    seq = conn.execute(sa.text("SELECT seq FROM audit_head WHERE id = 1")).scalar()
    if seq:
        frontier: list[bytes] = []
        size, after = 0, 0
        while True:
            page = "SELECT seq, entry_hash FROM audit_entry WHERE seq > :a AND seq <= :s ORDER BY seq LIMIT 10000"
            rows = conn.execute(sa.text(page), {"a": after, "s": seq}).all()
            if not rows:
                break
            for row in rows:
                merkle.push(frontier, size, bytes.fromhex(row.entry_hash))
                size += 1
            after = int(rows[-1].seq)
        conn.execute(
            sa.text("UPDATE audit_head SET frontier = :f WHERE id = 1"), {"f": merkle.encode_frontier(frontier)}
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoint", schema=None) as batch_op:
        batch_op.drop_column("root_hash")
    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.drop_column("frontier")
