"""The audit trail of the running web process, driven by the reference
DICOMweb client (dicomweb-client): a STOW-RS store, a QIDO-RS search and a
WADO-RS metadata read are one event each, written by that process, with the
API token's user as the actor.

Persona: `a_stower` (staff who may view and store, by API token)."""

import uuid

import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from pacs_site.audit import Action
from pacs_site.models import AuditEvent
from tests.support.dicomdata import make_ct
from tests.support.dicomweb_site import STORE, running_web, staff_with_token, token_session
from tests.support.processes import wait_until


@pytest.fixture
def site(transactional_db, data_dir, tmp_path):
    with running_web(data_dir, tmp_path / "runpacs.log") as (base, _web):
        yield base


def test_stow_qido_and_wado_through_the_web_process_are_one_event_each(site, tmp_path, django_user_model):
    _, key = staff_with_token(django_user_model, "stower", codenames=STORE)
    client = DICOMwebClient(f"{site}/dicomweb", session=token_session(key))
    ds = pydicom.dcmread(make_ct(tmp_path / f"{uuid.uuid4().hex}.dcm", patient_id="STOW1"))
    study = str(ds.StudyInstanceUID)

    client.store_instances([ds])
    assert [r["0020000D"]["Value"][0] for r in client.search_for_studies(search_filters={"PatientID": "STOW1"})] == [
        study
    ]
    assert len(client.retrieve_study_metadata(study)) == 1

    actions = [Action.WEB_STORE, Action.QUERY, Action.WEB_READ]
    wait_until(lambda: AuditEvent.objects.filter(action__in=actions).count() == 3, 10, message="three events")
    stored, query, read = AuditEvent.objects.filter(action__in=actions).order_by("id")
    assert [e.action for e in (stored, query, read)] == actions
    assert {(e.actor, e.actor_kind, e.address) for e in (stored, query, read)} == {("stower", "user", "127.0.0.1")}
    assert query.details["keys"] == {}  # PatientID is a patient identifier: off by default
    assert (read.study_instance_uid, read.patient_id, read.details["service"]) == (study, "STOW1", "WADO-RS metadata")
