"""Deleting from the admin in a real browser (Chromium through Playwright,
against `manage.py runpacs --only web`): the confirmation page says what
goes, then rows and files go, and the patient link answers 404.  Who sees
the action is checked with Django's test client."""

import pytest
from django.contrib.auth.models import Permission, User

from dicomnodes.models import Instance, Patient, Series, Study
from pacs_site.models import AuditEvent
from portal.models import HttpSettings
from portal.tokens import create_token
from tests.support.portal import fetch, start_runpacs_web, store_study, wait_for_web
from tests.support.processes import free_port

PASSWORD = "a long secret passphrase"


@pytest.fixture
def web(transactional_db, data_dir, tmp_path):
    """The web process on a free port; its base URL."""
    port = free_port()
    http = HttpSettings.load()
    http.web_port, http.web_server_name = port, "127.0.0.1"
    http.save()
    process = start_runpacs_web(data_dir, tmp_path / "runpacs.log")
    try:
        wait_for_web(f"http://127.0.0.1:{port}/admin/login/", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def logged_in(browser, base, username):
    page = browser.new_page()
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    return page


def run_action(page, base, model, pks):
    page.goto(f"{base}/admin/dicomnodes/{model}/")
    for pk in pks:
        page.check(f"input[name=_selected_action][value='{pk}']")
    page.select_option("select[name=action]", "delete_with_files")
    page.click("button[name=index]")


@pytest.mark.archive
def test_an_admin_deletes_a_study_after_seeing_what_goes(browser, web, tmp_path, django_user_model):
    django_user_model.objects.create_superuser("admin", "", PASSWORD)
    study = store_study(tmp_path, series=2, per_series=3, patient_id="P1")
    kept = store_study(tmp_path, series=1, per_series=1, patient_id="P2")
    files = [i.path for i in Instance.objects.filter(series__study=study)]
    link = create_token(study)
    page = logged_in(browser, web, "admin")

    run_action(page, web, "study", [study.pk])

    assert page.inner_text("#delete-studies") == "1"
    assert page.inner_text("#delete-series") == "2"
    assert page.inner_text("#delete-instances") == "6"
    assert page.inner_text("#delete-patients") == "1"
    assert "1 open patient links is affected" in page.inner_text(".messagelist")
    assert Study.objects.filter(pk=study.pk).exists()  # asked, not yet done

    page.fill("#id_reason", "sent to the wrong archive")
    page.click("input[type=submit][value^='Yes']")

    assert "Deleted 1 patients, 1 studies, 2 series, 6 instances" in page.inner_text(".messagelist")
    assert list(Study.objects.values_list("pk", flat=True)) == [kept.pk]
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["P2"]
    assert not any(path.exists() for path in files)
    status, _, _ = fetch(f"{web}/token?{link.clear}")
    assert status == 404
    event = AuditEvent.objects.get(action="delete")
    assert (event.actor, event.details["reason"]) == ("admin", "sent to the wrong archive")


@pytest.mark.archive
def test_an_admin_deletes_one_series_and_the_study_list_counts_the_rest(browser, web, tmp_path, django_user_model):
    django_user_model.objects.create_superuser("admin", "", PASSWORD)
    study = store_study(tmp_path, series=2, per_series=2)
    first, second = Series.objects.filter(study=study).order_by("series_number")
    page = logged_in(browser, web, "admin")

    run_action(page, web, "series", [second.pk])
    assert page.inner_text("#delete-studies") == "0"
    assert page.inner_text("#delete-instances") == "2"
    page.click("input[type=submit][value^='Yes']")

    page.wait_for_selector(".messagelist")
    study.refresh_from_db()
    assert (study.num_series, study.num_instances) == (1, 2)
    page.goto(f"{web}/admin/dicomnodes/study/")
    assert page.inner_text(f"tr:has(input[value='{study.pk}']) .field-series_link") == "1 series"


def test_only_users_with_the_delete_permission_see_the_action(client, db, data_dir, tmp_path, django_user_model):
    store_study(tmp_path, series=1, per_series=1)  # an empty list offers no actions
    viewer = django_user_model.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=["view_study", "view_series"]))
    client.force_login(viewer)
    page = client.get("/admin/dicomnodes/study/").content.decode()
    assert "delete_with_files" not in page and "delete_selected" not in page

    viewer.user_permissions.add(Permission.objects.get(codename="delete_study"))
    page = client.get("/admin/dicomnodes/study/").content.decode()
    assert 'value="delete_with_files"' in page and "delete_selected" not in page
    series_page = client.get("/admin/dicomnodes/series/").content.decode()
    assert "delete_with_files" not in series_page


@pytest.mark.archive
def test_patients_and_instances_are_deleted_from_their_lists_too(client, transactional_db, data_dir, tmp_path):
    client.force_login(User.objects.create_superuser("admin", "", PASSWORD))
    one = store_study(tmp_path, series=1, per_series=2, patient_id="P1")
    store_study(tmp_path, series=1, per_series=1, patient_id="P2")
    first, second = Instance.objects.filter(series__study=one).order_by("instance_number")
    action = {"action": "delete_with_files", "_selected_action": [first.pk]}

    asked = client.post("/admin/dicomnodes/instance/", action)
    assert asked.status_code == 200 and asked.context["summary"].instances == 1
    assert asked.context["summary"].partial_studies == 1
    done = client.post("/admin/dicomnodes/instance/", {**action, "post": "yes"}, follow=True)
    assert "Deleted 0 patients, 0 studies, 0 series, 1 instances" in done.content.decode()
    assert Study.objects.get(pk=one.pk).num_instances == 1 and not first.path.exists()

    p2 = Patient.objects.get(patient_id="P2")
    action = {"action": "delete_with_files", "_selected_action": [p2.pk], "post": "yes"}
    client.post("/admin/dicomnodes/patient/", action)
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["P1"]
    assert list(Instance.objects.values_list("pk", flat=True)) == [second.pk]
