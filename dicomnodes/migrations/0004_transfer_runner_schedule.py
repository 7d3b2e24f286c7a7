"""A django-q2 schedule that starts the transfer runner every minute: it
catches jobs whose "kick" task was lost and jobs whose worker died."""

from django.db import migrations

NAME = "transfers: run queued jobs"


def add(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults=dict(func="dicomnodes.transfers.run_next", schedule_type="I", minutes=1, repeats=-1),
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dicomnodes", "0003_transfer_jobs"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(add, remove)]
