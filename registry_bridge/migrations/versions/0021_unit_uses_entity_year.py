"""A surrender's entity, scheme and year as columns of ``unit_uses``, with an index.

Every surrender's checks count the entity's earlier surrenders for the year (the offset
limits), and under an abandoned migration the years it surrendered for in each scheme;
the migration plan counts what it surrendered per year. Each of them read every
surrender ever recorded, of every entity, and parsed its ``detail`` to find the
entity's: a cost that grew with the whole scheme's history on every surrender. The
three keys now sit beside ``detail`` and are sought through
``ix_unit_uses_entity_year``. Existing surrenders get them from their ``detail``;
retirements keep them empty.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-28
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_PAGE = 1000
"""Surrenders filled in per statement (bounds the memory a large history takes)."""

_uses = sa.table(
    "unit_uses",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("detail", sa.Text),
    sa.column("entity_id", sa.String),
    sa.column("jurisdiction", sa.String),
    sa.column("compliance_year", sa.Integer),
)


def upgrade() -> None:
    with op.batch_alter_table("unit_uses") as table:
        table.add_column(sa.Column("entity_id", sa.String(128), nullable=True))
        table.add_column(sa.Column("jurisdiction", sa.String(32), nullable=True))
        table.add_column(sa.Column("compliance_year", sa.Integer(), nullable=True))
    connection = op.get_bind()
    after = ""
    while True:
        page = connection.execute(
            sa.select(_uses.c.id, _uses.c.detail)
            .where(_uses.c.kind == "surrender", _uses.c.id > after)
            .order_by(_uses.c.id)
            .limit(_PAGE)
        ).all()
        if not page:
            break
        keys = []
        for use_id, detail in page:
            request = json.loads(detail)["request"]
            keys.append(
                {
                    "use_id": use_id,
                    "entity_id": request["entity_id"],
                    "jurisdiction": request["jurisdiction"],
                    "compliance_year": request["compliance_year"],
                }
            )
        connection.execute(
            sa.update(_uses)
            .where(_uses.c.id == sa.bindparam("use_id"))
            .values(
                entity_id=sa.bindparam("entity_id"),
                jurisdiction=sa.bindparam("jurisdiction"),
                compliance_year=sa.bindparam("compliance_year"),
            ),
            keys,
        )
        after = page[-1][0]
    op.create_index(
        "ix_unit_uses_entity_year", "unit_uses", ["entity_id", "jurisdiction", "compliance_year"]
    )


def downgrade() -> None:
    op.drop_index("ix_unit_uses_entity_year", table_name="unit_uses")
    with op.batch_alter_table("unit_uses") as table:
        table.drop_column("compliance_year")
        table.drop_column("jurisdiction")
        table.drop_column("entity_id")
