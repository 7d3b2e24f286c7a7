"""The instance table's indexes (models.Instance, migration 0011): the ones
its queries use, and no more, since every commit of the ingest writes each;
the migration drops and restores them without copying the table, on SQLite
and on PostgreSQL."""

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from dicomnodes.models import Instance, Patient, Series, Study

pytestmark = pytest.mark.archive

BEFORE = ("dicomnodes", "0010_tombstones")  # the migration before 0011
# The non-unique indexes the instance table keeps (models.Instance).
KEPT = sorted([("association_id",), ("received_at",), ("series_id", "instance_number"), ("sop_class_uid",)])


def plain_indexes(table="dicomnodes_instance"):
    """The column lists of the table's non-unique indexes, PostgreSQL's
    varchar_pattern_ops twins counted once (and not at all for a unique
    column, whose twin PostgreSQL has beside the unique index)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    unique = {tuple(info["columns"]) for info in constraints.values() if info["unique"]}
    return sorted(
        {
            tuple(info["columns"])
            for info in constraints.values()
            if info["index"] and not (info["unique"] or info["primary_key"] or info["foreign_key"])
        }
        - unique
    )


def make_instances(count):
    patient = Patient.objects.create(patient_id="P1", patient_name="DOE^JANE")
    study = Study.objects.create(study_instance_uid="1.2.3", patient_id="P1", patient_record=patient)
    series = Series.objects.create(series_instance_uid="1.2.3.4", study=study)
    now = timezone.now()
    Instance.objects.bulk_create(
        Instance(
            sop_instance_uid=f"1.2.3.4.{n}",
            series=series,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            instance_number=count - n,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            called_ae="PACS_E" if n % 2 else "PACS",
            received_at=now,
        )
        for n in range(count)
    )
    return series


@pytest.mark.django_db
def test_the_instance_table_keeps_the_indexes_its_queries_use():
    assert plain_indexes() == KEPT


@pytest.mark.django_db
def test_the_instances_of_a_series_are_found_and_ordered_through_the_composite_index():
    series = make_instances(20)
    query = series.instances.order_by("instance_number")
    assert [i.instance_number for i in query] == list(range(1, 21))
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's planner scans a 20-row table whatever the indexes; the plan is SQLite's")
    with connection.cursor() as cursor:
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(row[-1] for row in cursor.fetchall())
    assert "instance_series_number" in plan
    assert "TEMP B-TREE" not in plan  # the order comes from the index, no sort


@pytest.mark.django_db(transaction=True)
def test_the_migration_drops_and_restores_the_single_indexes_and_keeps_the_rows():
    make_instances(5)
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([BEFORE])
        assert plain_indexes() == sorted(
            [
                ("association_id",),
                ("called_ae",),
                ("instance_number",),
                ("received_at",),
                ("series_id",),
                ("sop_class_uid",),
            ]
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM dicomnodes_instance")
            assert cursor.fetchone()[0] == 5
    finally:
        executor = MigrationExecutor(connection)  # a new one reads what is applied now
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert plain_indexes() == KEPT
    assert Instance.objects.count() == 5


def test_the_models_and_the_migrations_agree(db):
    """A model change without its migration would only show on the next
    `migrate` of an installed server."""
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
