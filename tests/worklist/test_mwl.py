"""Modality Worklist C-FIND in runscp, queried with DCMTK `findscu -W`."""

import time

import pydicom
import pytest

from dicomnodes.models import Peer
from worklist.models import ItemStatus, WorklistItem, WorklistQuery, WorklistSettings

pytestmark = pytest.mark.archive

SCANNER = "SCANNER1"
SPS = "ScheduledProcedureStepSequence[0]"


@pytest.fixture
def worklist(shared_scp):
    """Three open items and a cancelled one; a scanner that may query."""
    common = dict(requested_procedure_id="RP1", scheduled_procedure_step_id="SPS1")
    WorklistItem.objects.create(
        patient_id="P100", patient_name="Müller^Jürgen", patient_birth_date="19600101", patient_sex="M",
        accession_number="ACC100", modality="CT", scheduled_station_ae_title="CTSCAN1",
        scheduled_start_date="20261127", scheduled_start_time="100000", specific_character_set="ISO_IR 100",
        scheduled_procedure_step_description="CT CHEST", scheduled_protocol_code_value="CT123",
        scheduled_protocol_code_scheme="LOCAL", scheduled_protocol_code_meaning="CT chest",
        study_instance_uid="1.2.3.100", **common,
    )  # fmt: skip
    WorklistItem.objects.create(
        patient_id="P200", patient_name="Παπαδόπουλος^Νίκος", accession_number="ACC200", modality="MR",
        scheduled_station_ae_title="MRI1", scheduled_start_date="20261128", scheduled_start_time="083000",
        specific_character_set="ISO_IR 126", study_instance_uid="1.2.3.200", **common,
    )  # fmt: skip
    WorklistItem.objects.create(
        patient_id="P300", patient_name="Smith^Ann", accession_number="ACC300", modality="CT",
        scheduled_station_ae_title="CTSCAN1", scheduled_start_date="20261201", study_instance_uid="1.2.3.300",
        **common,
    )  # fmt: skip
    WorklistItem.objects.create(
        patient_id="P400", patient_name="Gone^Cancelled", accession_number="ACC400", modality="CT",
        scheduled_station_ae_title="CTSCAN1", scheduled_start_date="20261127", status=ItemStatus.CANCELLED,
        **common,
    )  # fmt: skip
    Peer.objects.create(name="scanner", ae_title=SCANNER, host="127.0.0.1", may_query=True, may_store=True)
    shared_scp.wait_until_allowed(SCANNER, "mwl")


def find_worklist(scp, tmp_path, *keys):
    out = tmp_path / f"mwl-{time.monotonic_ns()}"
    out.mkdir()
    base = ["PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", f"{SPS}.Modality",
            f"{SPS}.ScheduledStationAETitle", f"{SPS}.ScheduledProcedureStepStartDate"]  # fmt: skip
    wanted = {k.split("=")[0] for k in keys}
    result = scp.qr(
        "findscu", *keys, *[k for k in base if k not in wanted], calling=SCANNER, root="-W",
        options=["-X", "-od", out],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_by_station_ae_title(shared_scp, worklist, tmp_path):
    answers = find_worklist(shared_scp, tmp_path, f"{SPS}.ScheduledStationAETitle=CTSCAN1")
    assert sorted(a.AccessionNumber for a in answers) == ["ACC100", "ACC300"], "the cancelled item is hidden"
    first = [a for a in answers if a.AccessionNumber == "ACC100"][0]
    sps = first.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepStartDate) == (
        "CT", "CTSCAN1", "20261127",
    )  # fmt: skip
    assert first.StudyInstanceUID == "1.2.3.100"


def test_by_date_range_and_modality(shared_scp, worklist, tmp_path):
    answers = find_worklist(shared_scp, tmp_path, f"{SPS}.ScheduledProcedureStepStartDate=20261127-20261128")
    assert sorted(a.AccessionNumber for a in answers) == ["ACC100", "ACC200"]
    answers = find_worklist(shared_scp, tmp_path, f"{SPS}.Modality=MR")
    assert [a.AccessionNumber for a in answers] == ["ACC200"]


def test_non_latin_names_arrive_intact(shared_scp, worklist, tmp_path):
    answers = {a.AccessionNumber: a for a in find_worklist(shared_scp, tmp_path)}
    assert str(answers["ACC200"].PatientName) == "Παπαδόπουλος^Νίκος"
    assert answers["ACC200"].SpecificCharacterSet == "ISO_IR 126"
    assert str(answers["ACC100"].PatientName) == "Müller^Jürgen"


def test_wildcard_patient_name_is_case_insensitive(shared_scp, worklist, tmp_path):
    answers = find_worklist(shared_scp, tmp_path, "SpecificCharacterSet=ISO_IR 192", "PatientName=mül*")
    assert [a.AccessionNumber for a in answers] == ["ACC100"]


def test_protocol_codes_come_back_as_sequences(shared_scp, worklist, tmp_path):
    answers = find_worklist(shared_scp, tmp_path, "AccessionNumber=ACC100", f"{SPS}.ScheduledProtocolCodeSequence")
    code = answers[0].ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("CT123", "LOCAL", "CT chest")


def test_worklist_queries_are_logged_only_when_asked(shared_scp, worklist, tmp_path):
    find_worklist(shared_scp, tmp_path, f"{SPS}.Modality=CT")
    assert WorklistQuery.objects.count() == 0
    row = WorklistSettings.load()
    row.message_logging = True
    row.save()
    find_worklist(shared_scp, tmp_path, f"{SPS}.Modality=CT")
    logged = WorklistQuery.objects.get()
    assert (logged.calling_ae, logged.matches, logged.status) == (SCANNER, 2, "0000")
    assert "Modality=CT" in logged.keys
