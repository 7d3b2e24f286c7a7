"""The publishing admin: settings, publishers, burn jobs (countdown, cancel,
resubmit) and "Burn to CD/DVD…" on studies.

Personas: an admin (a superuser); a radiographer who may view studies and
add burn jobs, nothing else; a viewer who may only view studies.
"""

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from dicomnodes.models import Study
from publishing.models import BurnJob, JobState, PublishingSettings, Trigger
from tests.support.dicomdata import make_ct_series
from tests.support.publishing import a_publisher, index_files

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore:No directory at")]

STUDIES = reverse("admin:dicomnodes_study_changelist")
JOBS = reverse("admin:publishing_burnjob_changelist")


def a_user_with(client, django_user_model, *codenames):
    user = django_user_model.objects.create_user("radiographer", "", None, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


@pytest.fixture
def a_radiographer(client, django_user_model):
    return a_user_with(client, django_user_model, "view_study", "add_burnjob")


@pytest.fixture
def a_study_viewer(client, django_user_model):
    return a_user_with(client, django_user_model, "view_study")


@pytest.fixture
def a_three_image_study(data_dir, tmp_path):
    instances = index_files(make_ct_series(tmp_path / "series", 3))
    return instances[0].series.study


def test_the_settings_page_shows_the_delay_and_grouping(an_admin):
    response = an_admin.get(reverse("admin:publishing_publishingsettings_changelist"), follow=True)
    assert response.status_code == 200
    assert b"delay_seconds" in response.content and b"grouping" in response.content


def test_a_relative_staging_folder_is_refused(an_admin):
    url = reverse("admin:publishing_publishingsettings_change", args=[PublishingSettings.load().pk])
    response = an_admin.post(url, {"delay_seconds": 120, "grouping": "patient", "staging_folder": "relative/dir"})
    assert b"Give an absolute path." in response.content
    assert PublishingSettings.load().staging_folder == ""


def test_a_publisher_is_added_in_the_admin(an_admin, tmp_path):
    response = an_admin.post(
        reverse("admin:publishing_publisher_add"),
        {
            "name": "Robot 1",
            "kind": "epson",
            "is_default": "on",
            "enabled": "on",
            "job_folder": str(tmp_path),
            "disc_type": "auto",
            "copies": 1,
            "merge_fields": "patient_name disc",
            "encoding": "cp1252",
            "cd_capacity": 734003200,
            "dvd_capacity": 4700000000,
        },
    )
    assert response.status_code == 302, response.content
    response = an_admin.post(
        reverse("admin:publishing_publisher_add"),
        {
            "name": "Bad",
            "kind": "epson",
            "job_folder": str(tmp_path),
            "disc_type": "auto",
            "copies": 1,
            "merge_fields": "patient_name shoe_size",
            "encoding": "klingon",
            "cd_capacity": 1,
            "dvd_capacity": 1,
        },
    )
    assert b"Unknown merge fields: shoe_size" in response.content
    assert b"This folder does not exist here" not in response.content
    assert b"is not a character encoding" in response.content


def test_the_job_list_counts_down_to_the_due_time(an_admin, a_three_image_study):
    job = BurnJob.objects.create(
        kind="epson",
        trigger=Trigger.DELAYED,
        group_key="patient:PAT001",
        state=JobState.COLLECTING,
        due_at=timezone.now() + timedelta(seconds=95),
    )
    job.studies.add(a_three_image_study)
    response = an_admin.get(JOBS)
    assert b"in 0:01:3" in response.content  # 95 s, give or take the request
    assert b"Doe Jane [PAT001]" in response.content


def test_cancel_in_the_admin_cancels_a_collecting_job(an_admin):
    job = BurnJob.objects.create(kind="epson", trigger=Trigger.DELAYED, state=JobState.COLLECTING)
    response = an_admin.post(JOBS, {"action": "cancel_jobs", "_selected_action": [job.pk]}, follow=True)
    assert b"cancelled" in response.content
    assert BurnJob.objects.get().state == JobState.CANCELLED


def test_resubmit_in_the_admin_makes_a_failed_job_due(an_admin):
    job = BurnJob.objects.create(kind="epson", trigger=Trigger.IMMEDIATE, state=JobState.FAILED)
    an_admin.post(JOBS, {"action": "resubmit_jobs", "_selected_action": [job.pk]})
    assert BurnJob.objects.get().state == JobState.DUE


def test_a_radiographer_burns_a_study_after_choosing_the_publisher(a_radiographer, a_three_image_study, tmp_path):
    a_publisher("primera", tmp_path)
    epson = a_publisher("epson", tmp_path)
    assert "Burn to CD/DVD…" in a_radiographer.get(STUDIES).content.decode()
    form = a_radiographer.post(STUDIES, {"action": "burn_to_disc", "_selected_action": [a_three_image_study.pk]})
    assert form.status_code == 200 and b"epson robot" in form.content and b"primera robot" in form.content
    a_radiographer.post(
        STUDIES,
        {
            "action": "burn_to_disc",
            "_selected_action": [a_three_image_study.pk],
            "apply": "Burn",
            "publisher": epson.pk,
        },
    )
    (job,) = BurnJob.objects.all()
    assert (job.trigger, job.publisher, job.state) == (Trigger.MANUAL, epson, JobState.DUE)
    assert job.instances.count() == 3 and list(job.studies.all()) == [a_three_image_study]


def test_two_patients_selected_make_one_job_each(an_admin, a_three_image_study, tmp_path):
    other = index_files(make_ct_series(tmp_path / "other", 1, patient_id="PAT002"))[0].series.study
    publisher = a_publisher("epson", tmp_path)
    an_admin.post(
        STUDIES,
        {
            "action": "burn_to_disc",
            "_selected_action": [a_three_image_study.pk, other.pk],
            "apply": "1",
            "publisher": publisher.pk,
        },
    )
    assert sorted(j.instances.count() for j in BurnJob.objects.all()) == [1, 3]


def test_a_user_without_the_burn_permission_does_not_get_the_action(a_study_viewer, a_three_image_study):
    assert "Burn to CD/DVD" not in a_study_viewer.get(STUDIES).content.decode()
    a_study_viewer.post(STUDIES, {"action": "burn_to_disc", "_selected_action": [a_three_image_study.pk], "apply": "1"})
    assert not BurnJob.objects.exists()


def test_without_a_publisher_the_action_says_so(an_admin, a_three_image_study):
    response = an_admin.post(STUDIES, {"action": "burn_to_disc", "_selected_action": [a_three_image_study.pk]})
    assert b"No enabled publisher is configured" in response.content
    assert Study.objects.count() == 1 and not BurnJob.objects.exists()


def test_the_disc_rows_show_in_the_job_page(an_admin, a_three_image_study, tmp_path):
    from publishing import tasks
    from publishing.triggers import immediate_job

    publisher = a_publisher("epson", tmp_path)
    job = immediate_job("epson", list(a_three_image_study.series.get().instances.all()), publisher=publisher)
    tasks.submit(job.pk)
    disc = job.discs.get()
    response = an_admin.get(reverse("admin:publishing_burnjob_change", args=[job.pk]))
    assert disc.robot_job_id.encode() in response.content
    assert Path(disc.folder).is_dir()


def test_a_job_folder_that_is_not_there_is_refused(an_admin, tmp_path):
    response = an_admin.post(
        reverse("admin:publishing_publisher_add"),
        {
            "name": "R",
            "kind": "primera",
            "job_folder": str(tmp_path / "not-mounted"),
            "disc_type": "auto",
            "copies": 1,
            "merge_fields": "",
            "encoding": "cp1252",
            "cd_capacity": 1,
            "dvd_capacity": 2,
        },
    )
    assert b"This folder does not exist here" in response.content
