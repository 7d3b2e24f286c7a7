"""runscp C-FIND with DCMTK findscu: Patient Root and Study Root, every level."""

import time

import pydicom
import pytest
from pydicom.uid import CTImageStorage, generate_uid

from dicomnodes.models import DicomServerSettings, Peer
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.processes import wait_until

VIEWER = "VIEWER1"


# (folder, instances, study, patient ID, name, study date, accession, series number)
_LAYOUT = [
    ("a", 3, "smith1", "P1", "Smith^John", "20260105", "ACC1", 1),
    ("b", 2, "smith2", "P1", "Smith^John", "20260320", "ACC2", 1),
    ("b2", 1, "smith2", "P1", "Smith^John", "20260320", "ACC2", 2),
    ("c", 4, "jones", "P2", "Jones^Ann", "20260215", "ACC3", 1),
]


@pytest.fixture
def four_studies(shared_scp, tmp_path):
    """Three patients, four studies; a viewer that may query."""
    studies = {"smith1": generate_uid(), "smith2": generate_uid(), "jones": generate_uid(), "greek": generate_uid()}
    for folder, count, study, pid, name, date, accession, number in _LAYOUT:
        make_ct_series(
            tmp_path / folder,
            count,
            study_uid=studies[study],
            patient_id=pid,
            patient_name=name,
            study_date=date,
            accession=accession,
            series_number=number,
        )
    make_ct(
        tmp_path / "d" / "g.dcm",
        study_uid=studies["greek"],
        patient_id="P3",
        patient_name="Παπαδόπουλος^Νίκος",
        charset="ISO_IR 126",
        study_date="20260110",
        accession="ACC4",
    )
    assert shared_scp.store(*(tmp_path / folder for folder in ("a", "b", "b2", "c", "d"))).returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True)
    shared_scp.wait_until_allowed(VIEWER, "find")
    return studies


def run_findscu(scp, tmp_path, *keys, root="-S", options=()):
    """findscu as the viewer; (result, answers as datasets)."""
    out = tmp_path / f"find-{time.monotonic_ns()}"
    out.mkdir()
    result = scp.qr("findscu", *keys, calling=VIEWER, root=root, options=[*options, "-X", "-od", out])
    return result, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def find(scp, tmp_path, *keys, root="-S"):
    """The answers of a findscu query that must succeed."""
    result, answers = run_findscu(scp, tmp_path, *keys, root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return answers


@pytest.mark.archive
def test_study_root_study_level_by_patient_id(shared_scp, four_studies, tmp_path):
    answers = find(
        shared_scp,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "PatientID=P1",
        "StudyInstanceUID",
        "StudyDate",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
    )
    assert sorted(a.StudyInstanceUID for a in answers) == sorted([four_studies["smith1"], four_studies["smith2"]])
    counts = {a.StudyInstanceUID: int(a.NumberOfStudyRelatedInstances) for a in answers}
    assert counts == {four_studies["smith1"]: 3, four_studies["smith2"]: 3}
    for a in answers:
        assert a.SpecificCharacterSet == "ISO_IR 192"
        assert a.ModalitiesInStudy == "CT"
        assert a.SOPClassesInStudy == CTImageStorage
        assert set(a.dir()) >= {"StudyInstanceUID", "StudyDate", "PatientID", "QueryRetrieveLevel"}
        assert "AccessionNumber" not in a, "only the requested keys come back"


@pytest.mark.archive
def test_wildcard_name_is_case_insensitive(shared_scp, four_studies, tmp_path):
    answers = find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=smi*", "StudyInstanceUID")
    assert len(answers) == 2
    assert {str(a.PatientName) for a in answers} == {"Smith^John"}


@pytest.mark.archive
def test_date_range_and_open_ranges(shared_scp, four_studies, tmp_path):
    def dates(value):
        answers = find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyDate={value}", "StudyInstanceUID")
        return len(answers)

    assert dates("20260101-20260131") == 2  # smith1 and the Greek study
    assert dates("20260301-") == 1
    assert dates("-20260110") == 2


@pytest.mark.archive
def test_uid_list(shared_scp, four_studies, tmp_path):
    value = f"{four_studies['jones']}\\{four_studies['greek']}"
    answers = find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={value}")
    assert sorted(a.StudyInstanceUID for a in answers) == sorted([four_studies["jones"], four_studies["greek"]])


@pytest.mark.archive
def test_non_ascii_query_and_answer(shared_scp, four_studies, tmp_path):
    answers = find(
        shared_scp,
        tmp_path,
        "SpecificCharacterSet=ISO_IR 192",
        "QueryRetrieveLevel=STUDY",
        "PatientName=Παπαδό*",
        "StudyInstanceUID",
    )
    assert len(answers) == 1
    assert str(answers[0].PatientName) == "Παπαδόπουλος^Νίκος"


@pytest.mark.archive
def test_series_and_image_levels(shared_scp, four_studies, tmp_path):
    series = find(
        shared_scp,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={four_studies['smith2']}",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "Modality",
    )
    assert sorted((int(s.SeriesNumber), int(s.NumberOfSeriesRelatedInstances)) for s in series) == [(1, 2), (2, 1)]
    target = [s for s in series if int(s.SeriesNumber) == 1][0]
    images = find(
        shared_scp,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={four_studies['smith2']}",
        f"SeriesInstanceUID={target.SeriesInstanceUID}",
        "SOPInstanceUID",
        "InstanceNumber",
    )
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2]


@pytest.mark.archive
def test_patient_root_at_every_level(shared_scp, four_studies, tmp_path):
    patients = find(
        shared_scp,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        "PatientID=P*",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        root="-P",
    )
    assert {a.PatientID: int(a.NumberOfPatientRelatedStudies) for a in patients} == {"P1": 2, "P2": 1, "P3": 1}
    studies = find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyInstanceUID", root="-P")
    assert len(studies) == 2
    series = find(
        shared_scp,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        "PatientID=P2",
        f"StudyInstanceUID={four_studies['jones']}",
        "SeriesInstanceUID",
        root="-P",
    )
    assert len(series) == 1
    images = find(
        shared_scp,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        "PatientID=P2",
        f"StudyInstanceUID={four_studies['jones']}",
        f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
        "SOPInstanceUID",
        root="-P",
    )
    assert len(images) == 4


@pytest.mark.archive
def test_a_key_below_the_level_is_a900(shared_scp, four_studies, tmp_path):
    result, answers = run_findscu(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "SOPInstanceUID", options=["-v"])
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr  # DCMTK's name for A900
    assert answers == []


@pytest.mark.archive
def test_result_limit(shared_scp, four_studies, tmp_path):
    row = DicomServerSettings.load()
    row.find_result_limit = 2
    row.save()
    # runscp reads the limit at its next poll: ask until it applies.
    wait_until(lambda: len(find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID")) == 2, 10)


def test_cancel_stops_the_answers(shared_scp, four_studies, tmp_path):
    from dicomnodes.archive.header import InstanceHeader
    from dicomnodes.archive.index import IndexItem, index_instances

    headers = [
        InstanceHeader(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=generate_uid(),
            study_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            patient_id=f"BULK{i}",
        )
        for i in range(3000)
    ]
    index_instances([IndexItem(header=h, file_size=1, file_is_new=True, overwrite=False) for h in headers])
    result, answers = run_findscu(
        shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", options=["-v", "--cancel", "1"]
    )
    output = result.stdout + result.stderr
    assert "Cancel" in output, output
    assert len(answers) < 2000, "the answers stopped early"
