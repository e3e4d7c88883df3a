"""Create users table

Revision ID: 1a2b3c4d5e6f
Revises:
Create Date: 2026-11-24 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "1a2b3c4d5e6f"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("chosen_decimal", sa.Numeric(16, 8), nullable=False),
        sa.Column("dob", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("users")
