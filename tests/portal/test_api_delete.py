"""DELETE on studies, series and instances over the API (portal/api/deletion.py):
the delete permission, 204, rows and files gone, one audit event."""

import pytest
from django.contrib.auth.models import Permission
from pydicom.uid import generate_uid
from rest_framework.test import APIClient

from dicomnodes.models import Instance, Series, Study
from pacs_site.models import AuditEvent
from portal.tokens import create_token
from tests.support.api import archived

pytestmark = [pytest.mark.archive, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def a_study(data_dir, tmp_path):
    """Two series of one study: series 1 with two images, series 2 with one."""
    study_uid, first, second = generate_uid(), generate_uid(), generate_uid()
    rows = [
        archived(tmp_path, study_uid=study_uid, series_uid=first, instance_number=1),
        archived(tmp_path, study_uid=study_uid, series_uid=first, instance_number=2),
        archived(tmp_path, study_uid=study_uid, series_uid=second, series_number=2),
    ]
    return rows


@pytest.fixture
def a_deleter(django_user_model):
    """Staff who may view and delete studies, nothing else."""
    user = django_user_model.objects.create_user("deleter", password=None, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_study", "delete_study"]))
    client = APIClient()
    client.force_login(user)
    return client


def test_deleting_a_study_takes_its_rows_and_files(an_api_admin, a_study):
    study = a_study[0].series.study

    response = an_api_admin.delete(f"/api/studies/{study.pk}/?reason=wrong%20patient")

    assert response.status_code == 204
    assert not Study.objects.exists() and not Instance.objects.exists()
    assert not any(row.path.exists() for row in a_study)
    event = AuditEvent.objects.get(action="delete")
    assert (event.actor, event.study_instance_uid) == ("apiadmin", study.study_instance_uid)
    assert event.details["reason"] == "wrong patient"
    assert an_api_admin.get(f"/api/studies/{study.pk}/").status_code == 404


def test_deleting_a_series_keeps_the_rest_of_the_study_counted(an_api_admin, a_study):
    response = an_api_admin.delete(f"/api/series/{a_study[2].series_id}/")

    assert response.status_code == 204
    study = Study.objects.get()
    assert (study.num_series, study.num_instances) == (1, 2)
    assert an_api_admin.get(f"/api/studies/{study.pk}/").json()["num_instances"] == 2
    assert not a_study[2].path.exists() and a_study[0].path.exists()


def test_deleting_an_instance(an_api_admin, a_study):
    response = an_api_admin.delete(f"/api/instances/{a_study[0].pk}/")

    assert response.status_code == 204
    assert Series.objects.get(pk=a_study[0].series_id).num_instances == 1
    assert not a_study[0].path.exists()


def test_deleting_needs_the_delete_permission_of_that_model(a_reader, a_deleter, a_study):
    study = a_study[0].series.study
    assert a_reader.delete(f"/api/studies/{study.pk}/").status_code == 403
    assert a_deleter.delete(f"/api/series/{a_study[2].series_id}/").status_code == 403
    assert Instance.objects.count() == 3 and all(row.path.exists() for row in a_study)
    assert not AuditEvent.objects.filter(action="delete").exists()

    assert a_deleter.delete(f"/api/studies/{study.pk}/").status_code == 204
    assert not Study.objects.exists()


def test_strangers_cannot_delete(anonymous, a_staff_member, a_study):
    study = a_study[0].series.study
    assert anonymous.delete(f"/api/studies/{study.pk}/").status_code in (401, 403)
    assert a_staff_member.delete(f"/api/studies/{study.pk}/").status_code == 403
    assert Study.objects.exists()


def test_dicomweb_and_the_patient_link_see_the_deletion_at_once(an_api_admin, a_study):
    study = a_study[0].series.study
    uid = study.study_instance_uid
    link = create_token(study)
    before = an_api_admin.get(f"/dicomweb/studies?StudyInstanceUID={uid}")
    assert before.status_code == 200 and len(before.json()) == 1
    assert an_api_admin.get(f"/dicomweb/t/{link.clear}/studies/{uid}/metadata").status_code == 200

    assert an_api_admin.delete(f"/api/studies/{study.pk}/").status_code == 204

    assert an_api_admin.get(f"/dicomweb/studies?StudyInstanceUID={uid}").status_code == 204  # no match
    assert an_api_admin.get(f"/dicomweb/studies/{uid}/metadata").status_code == 404
    assert an_api_admin.get(f"/dicomweb/studies/{uid}").status_code == 404
    assert an_api_admin.get(f"/dicomweb/t/{link.clear}/studies/{uid}/metadata").status_code == 404
    assert an_api_admin.get(f"/token?{link.clear}").status_code == 404
