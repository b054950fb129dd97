"""``model_members`` (PostgreSQL): the member versions behind each registered ensemble or router
version, as the model registry describes them, for the dashboards.

Three panels (the ticker dashboard's two document tables and model health's member agreement) pick
the votes of the score a document was counted with; each spelt out the same resolution through
``model_versions`` (an ensemble's ``members``, a router's ensembles' ``members``). Grafana has no
shared SQL, so the database holds it once. ``storage.repository._member_versions`` resolves the
same in Python for the API, which also runs on SQLite; the dashboards are PostgreSQL only.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE VIEW model_members AS
        SELECT m.version, e.member_version
        FROM model_versions AS m
        CROSS JOIN LATERAL json_array_elements_text(m.description->'members') AS e(member_version)
        UNION ALL
        SELECT m.version, e.member_version
        FROM model_versions AS m
        CROSS JOIN LATERAL json_each_text(m.description->'ensembles') AS r(route, version)
        JOIN model_versions AS i ON i.version = r.version
        CROSS JOIN LATERAL json_array_elements_text(i.description->'members') AS e(member_version)
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP VIEW model_members")
