"""Admin of the archive's life cycle (dicomnodes/lifecycle/admin.py): the
archive settings with the free space, a retention rule's dry run and run,
and protect / unprotect on the patient and study lists."""

import re

import pytest

from dicomnodes.models import Patient, RetentionRule, Study
from pacs_site.models import AuditEvent
from tests.dicomnodes.test_recycling import remaining, study, uids


@pytest.mark.django_db
def test_the_archive_settings_page_shows_the_free_space_now(an_admin, data_dir):
    page = an_admin.get("/admin/dicomnodes/archivesettings/", follow=True).content.decode()
    assert "Disk guard" in page and "Recycling" in page
    assert re.search(r"[0-9.]+ [MG]B free of [0-9.]+ [MG]B, the minimum is [0-9.]+ [MG]B", page)


@pytest.mark.django_db(transaction=True)
def test_the_dry_run_page_lists_what_running_the_rule_deletes(an_admin, data_dir, tmp_path):
    old = [study(tmp_path, days_old=40, modality="CR"), study(tmp_path, days_old=35, modality="CR")]
    other_modality = study(tmp_path, days_old=40, modality="CT")
    recent = study(tmp_path, days_old=3, modality="CR")
    protected = study(tmp_path, days_old=50, modality="CR")
    Study.objects.filter(pk=protected.pk).update(protected=True)
    rule = RetentionRule.objects.create(name="CR after 30 days", older_than_days=30, modality="CR")
    url = f"/admin/dicomnodes/retentionrule/{rule.pk}/preview/"

    page = an_admin.get(url).content.decode()

    listed = sorted(re.findall(r'class="study-uid">([0-9.]+)<', page))
    assert listed == uids(old)
    assert '<span id="preview-count">2</span>' in page

    response = an_admin.post(url)

    assert response.status_code == 302
    assert remaining() == uids([other_modality, recent, protected])
    deleted = AuditEvent.objects.filter(action="delete", actor="rule: CR after 30 days")
    assert sorted(deleted.values_list("study_instance_uid", flat=True)) == listed


@pytest.mark.django_db(transaction=True)
def test_protect_and_unprotect_on_the_study_and_patient_lists(an_admin, data_dir, tmp_path):
    one = study(tmp_path, days_old=1, patient_id="PROT1")
    study(tmp_path, days_old=1, patient_id="OTHER")

    an_admin.post("/admin/dicomnodes/study/", {"action": "protect_selected", "_selected_action": [one.pk]}, follow=True)
    assert list(Study.objects.filter(protected=True)) == [one]
    listed = an_admin.get("/admin/dicomnodes/study/?protected__exact=1").context["cl"].result_list
    assert list(listed) == [one]
    an_admin.post(
        "/admin/dicomnodes/patient/",
        {"action": "protect_selected", "_selected_action": [one.patient_record_id]},
        follow=True,
    )
    assert list(Patient.objects.filter(protected=True).values_list("patient_id", flat=True)) == ["PROT1"]
    an_admin.post(
        "/admin/dicomnodes/study/", {"action": "unprotect_selected", "_selected_action": [one.pk]}, follow=True
    )
    assert not Study.objects.filter(protected=True).exists()

    events = AuditEvent.objects.filter(action="settings", actor="admin").order_by("id")
    assert [(e.patient_id, e.description) for e in events] == [
        ("PROT1", "study protected (recycling and retention rules)"),
        ("PROT1", "patient protected (recycling and retention rules)"),
        ("PROT1", "study unprotected (recycling and retention rules)"),
    ]
