"""The transfer runner moved to dicomnodes.transfers.jobs (package layout):
point the one-minute safety-net schedule, and any one-off retry schedule,
at its new path."""

from django.db import migrations

OLD, NEW = "dicomnodes.transfers.run_next", "dicomnodes.transfers.jobs.run_next"


def forward(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.filter(func=OLD).update(func=NEW)


def backward(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.filter(func=NEW).update(func=OLD)


class Migration(migrations.Migration):
    dependencies = [
        ("dicomnodes", "0004_transfer_runner_schedule"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(forward, backward)]
