"""Instance keeps five indexes instead of seven (models.Instance says why).

Django would make SQLite copy the whole instance table three times to drop
three indexes (an AlterField per field); an archive of millions of rows
would wait minutes for that.  The model's state changes as usual, but the
database only drops the indexes (found by introspection, so PostgreSQL's
varchar_pattern_ops twins go too) and creates the composite one.
"""

from django.db import migrations, models

FIELDS = ("series", "instance_number", "called_ae")


def _plain_indexes(schema_editor, table, column):
    """Names of the non-unique single-column indexes on table(column)."""
    with schema_editor.connection.cursor() as cursor:
        constraints = schema_editor.connection.introspection.get_constraints(cursor, table)
    return [
        name
        for name, info in constraints.items()
        if info["index"]
        and info["columns"] == [column]
        and not (info["unique"] or info["primary_key"] or info["foreign_key"] or info["check"])
    ]


def drop_single_indexes(apps, schema_editor):
    model = apps.get_model("dicomnodes", "Instance")
    table = model._meta.db_table
    for name in FIELDS:
        column = model._meta.get_field(name).column
        for index in _plain_indexes(schema_editor, table, column):
            schema_editor.execute(schema_editor._delete_index_sql(model, index))


def create_single_indexes(apps, schema_editor):
    model = apps.get_model("dicomnodes", "Instance")
    for name in FIELDS:
        field = model._meta.get_field(name)
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))
        if schema_editor.connection.vendor == "postgresql" and isinstance(field, models.CharField):
            schema_editor.execute(schema_editor._create_like_index_sql(model, field))


class Migration(migrations.Migration):
    dependencies = [
        ("dicomnodes", "0010_tombstones"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="instance",
                    name="called_ae",
                    field=models.CharField(blank=True, max_length=16, verbose_name="called AE"),
                ),
                migrations.AlterField(
                    model_name="instance",
                    name="instance_number",
                    field=models.IntegerField(blank=True, null=True),
                ),
                migrations.AlterField(
                    model_name="instance",
                    name="series",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.deletion.CASCADE,
                        related_name="instances",
                        to="dicomnodes.series",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_single_indexes, create_single_indexes),
            ],
        ),
        migrations.AddIndex(
            model_name="instance",
            index=models.Index(fields=["series", "instance_number"], name="instance_series_number"),
        ),
    ]
