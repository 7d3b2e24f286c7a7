"""A daily django-q2 schedule that deletes events older than 30 days."""

from django.db import migrations

NAME = "events: delete those older than 30 days"


def add(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name=NAME, defaults=dict(func="pacs_site.events.prune", schedule_type="D", repeats=-1)
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("pacs_site", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(add, remove)]
