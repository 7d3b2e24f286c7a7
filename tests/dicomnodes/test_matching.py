"""C-FIND matching (dicomnodes/matching.py) without a network: identifiers
in, response identifiers out, over an index built from generated files."""

import copy
import dataclasses
import inspect
import io
import uuid
import warnings
from types import SimpleNamespace

import pytest
from django.db import connection
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom.dsutils import decode, encode

from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import IndexItem, apply_batch
from dicomnodes.models import Study
from dicomnodes.query.matching import IDENTIFIER_DOES_NOT_MATCH, QueryError, build_query, iter_results
from dicomnodes.query.rules import glob_pattern, like_pattern, time_upper_bound
from tests.support.dicomdata import make_ct

pytestmark = pytest.mark.archive

OUR_AE = "PACS"
ALWAYS = {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"}


@pytest.fixture
def add(tmp_path):
    """add(**make_ct arguments, modality=..., study_time=...) indexes one new file."""

    def make(*, modality="CT", study_time="101500", sop_class_uid=CTImageStorage, **kwargs):
        path = make_ct(tmp_path / f"{uuid.uuid4().hex}.dcm", size=8, **kwargs)
        header = dataclasses.replace(
            read_header_file(path), modality=modality, study_time=study_time, sop_class_uid=sop_class_uid
        )
        apply_batch([IndexItem(header=header, file_size=1, file_is_new=True, overwrite=False)])
        return header

    return make


@pytest.fixture
def archive(db, add):
    """Six studies of five patients; names, times, accessions chosen for the rules."""
    a = SimpleNamespace(**{f"s{i}": generate_uid() for i in range(1, 7)})
    a.ct_series, a.mr_series = generate_uid(), generate_uid()
    jane = dict(patient_id="PAT001", patient_name="Doe^Jane")
    a.ct1 = add(**jane, study_uid=a.s1, series_uid=a.ct_series, study_date="20261127", instance_number=1)
    a.ct2 = add(**jane, study_uid=a.s1, series_uid=a.ct_series, study_date="20261127", instance_number=2)
    add(**jane, study_uid=a.s1, series_uid=a.mr_series, series_number=2, modality="MR")
    add(**jane, study_uid=a.s2, study_date="20261201", accession="AB%1", modality="US", study_time="083000")
    add(patient_id="PAT002", patient_name="Roe^Richard", study_uid=a.s3, study_date="20250115", accession="ABC1",
        study_time="235959.5")  # fmt: skip
    add(patient_id="PAT003", patient_name="Παπαδόπουλος^Γιώργος", charset="ISO_IR 192", study_uid=a.s4,
        study_date="20240301", accession="AB_2", modality="MR", study_time="120000")  # fmt: skip
    add(patient_id="PAT004", patient_name="Müller^Jürgen", charset="ISO_IR 100", study_uid=a.s5,
        study_date="20240302", accession="ABX2")  # fmt: skip
    add(patient_id="PAT005", patient_name="山田^太郎", charset="ISO_IR 192", study_uid=a.s6, study_date="20230101",
        accession="ACC006")  # fmt: skip
    return a


def identifier(level="STUDY", **keys):
    """A request identifier; pydicom's warnings about query values (`M?` is
    no valid CS) are expected.  A value pydicom refuses to hold (`1*` for
    IS) arrives undecoded, as from the network."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in keys.items():
            try:
                setattr(ds, keyword, value)
            except ValueError:
                tag = Tag(keyword)
                ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value.encode(), 0, False, True)
    return ds


def find(level="STUDY", *, model="STUDY", case_insensitive=True, limit=0, **keys):
    query = build_query(identifier(level, **keys), model=model, case_insensitive=case_insensitive)
    return list(iter_results(query, limit=limit, retrieve_ae_title=OUR_AE))


def studies(**keys):
    """The Study Instance UIDs a study-level Study Root query finds."""
    keys.setdefault("StudyInstanceUID", "")
    return {ds.StudyInstanceUID for ds in find(**keys)}


def refused(level="STUDY", *, model="STUDY", **keys):
    with pytest.raises(QueryError) as caught:
        build_query(identifier(level, **keys), model=model, case_insensitive=True)
    assert len(str(caught.value)) <= 64
    return caught.value.status


# --- single value, UID list, universal ----------------------------------------------


def test_single_value_matching_finds_the_equal_value_only(archive):
    assert studies(AccessionNumber="ABC1") == {archive.s3}
    assert studies(PatientID="PAT001") == {archive.s1, archive.s2}
    assert studies(StudyDate="20240302") == {archive.s5}
    assert studies(AccessionNumber="ABC") == set()


def test_a_list_of_uids_matches_any_of_them(archive):
    assert studies(StudyInstanceUID=[archive.s1, archive.s3]) == {archive.s1, archive.s3}
    assert studies(StudyInstanceUID=archive.s4) == {archive.s4}


def test_an_empty_key_matches_everything_and_is_returned_empty_or_filled(archive):
    results = find(StudyInstanceUID="", AccessionNumber="", StudyDescription="*")
    assert len(results) == 6
    assert {ds.AccessionNumber for ds in results} == {"ACC001", "AB%1", "ABC1", "AB_2", "ABX2", "ACC006"}
    assert {ds.StudyDescription for ds in results} == {"CT CHEST"}


def test_uids_with_wildcards_and_bad_numbers_cannot_be_processed(archive):
    assert refused(StudyInstanceUID="1.2.*") == 0xC000
    assert refused("SERIES", StudyInstanceUID=archive.s1, SeriesNumber="1*") == 0xC000


# --- wildcards ------------------------------------------------------------------------


def test_star_and_question_mark_match_any_run_and_one_character(archive):
    assert studies(PatientID="PAT00?") == {archive.s1, archive.s2, archive.s3, archive.s4, archive.s5, archive.s6}
    assert studies(AccessionNumber="AB*") == {archive.s2, archive.s3, archive.s4, archive.s5}
    assert studies(AccessionNumber="AB?1") == {archive.s2, archive.s3}
    assert studies(AccessionNumber="*6") == {archive.s6}


def test_a_literal_percent_or_underscore_matches_only_itself(archive):
    assert studies(AccessionNumber="AB%*") == {archive.s2}
    assert studies(AccessionNumber="AB_*") == {archive.s4}
    assert studies(AccessionNumber="%*") == set()
    assert studies(AccessionNumber="_*") == set()


def test_brackets_are_literal_in_patterns(db, add):
    bracket = generate_uid()
    add(study_uid=bracket, accession="A[B]1")
    add(accession="AB1")
    assert studies(AccessionNumber="A[*") == {bracket}
    assert studies(AccessionNumber="A[B]?") == {bracket}
    assert studies(AccessionNumber="[AB]*") == set()


def test_wildcards_on_code_strings_are_case_sensitive(archive):
    ct = dict(StudyInstanceUID=archive.s1, SeriesInstanceUID="")
    assert {ds.Modality for ds in find("SERIES", **ct, Modality="C*")} == {"CT"}
    assert find("SERIES", **ct, Modality="ct") == []
    assert find("SERIES", **ct, Modality="c*") == []
    assert studies(AccessionNumber="abc*") == set()


# --- person names -----------------------------------------------------------------


def test_person_names_match_without_regard_to_case_when_the_setting_is_on(archive):
    assert studies(PatientName="doe^jane") == {archive.s1, archive.s2}
    assert studies(PatientName="dOE*") == {archive.s1, archive.s2}
    names = {str(ds.PatientName) for ds in find(PatientName="r*", StudyInstanceUID="")}
    assert names == {"Roe^Richard"}  # returned as stored, not upper-cased


def test_person_names_match_exactly_when_the_setting_is_off(archive):
    def exact(name):
        return {ds.StudyInstanceUID for ds in find(PatientName=name, StudyInstanceUID="", case_insensitive=False)}

    assert exact("doe^jane") == set()
    assert exact("DOE*") == set()
    assert exact("Doe^Jane") == {archive.s1, archive.s2}
    assert exact("Do?^*") == {archive.s1, archive.s2}


def test_non_ascii_names_match_and_come_back_in_utf8(archive):
    results = find(PatientName="Παπαδόπουλος*", StudyInstanceUID="")
    assert [ds.StudyInstanceUID for ds in results] == [archive.s4]
    assert str(results[0].PatientName) == "Παπαδόπουλος^Γιώργος"
    assert results[0].SpecificCharacterSet == "ISO_IR 192"
    assert studies(PatientName="παπαδόπουλος^γιώργος") == {archive.s4}
    assert studies(PatientName="müller^jürgen") == {archive.s5}
    assert studies(PatientName="M?ller*") == {archive.s5}  # ? is one character, not one byte
    assert studies(PatientName="山田*") == {archive.s6}
    wire = encode(results[0], True, True)
    assert str(decode(io.BytesIO(wire), True, True).PatientName) == "Παπαδόπουλος^Γιώργος"


# --- ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("20240301-20241231", {"s4", "s5"}),
        ("20261127-", {"s1", "s2"}),
        ("-20240301", {"s4", "s6"}),
        ("20240302-20240302", {"s5"}),
        ("2024.03.01-2024.03.01", {"s4"}),  # the ACR-NEMA form
    ],
)
def test_date_ranges_include_their_bounds(archive, value, expected):
    assert studies(StudyDate=value) == {getattr(archive, s) for s in expected}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1015-1200", {"s1", "s4", "s5", "s6"}),
        ("-0900", {"s2"}),
        ("-1015", {"s1", "s2", "s5", "s6"}),
        ("2359-", {"s3"}),
        ("10-11", {"s1", "s5", "s6"}),
        ("235959", {"s3"}),  # a single value covers the second it names
        ("08:30", {"s2"}),
    ],
)
def test_time_ranges_pad_the_bounds_like_the_stored_times(archive, value, expected):
    assert studies(StudyTime=value) == {getattr(archive, s) for s in expected}


@pytest.mark.parametrize("value", ["2024-01-01-", "abc-", "-", "2024*", "20240230x"])
def test_a_malformed_date_cannot_be_processed(archive, value):
    assert refused(StudyDate=value) == 0xC000


def test_a_malformed_time_cannot_be_processed(archive):
    assert refused(StudyTime="25x-") == 0xC000


def test_bounds_are_padded_to_the_end_of_the_period_they_name():
    assert time_upper_bound("1015") == "101559.999999"
    assert time_upper_bound("10") == "105959.999999"
    assert time_upper_bound("101500.5") == "101500.599999"


# --- ModalitiesInStudy --------------------------------------------------------------


def test_modalities_in_study_matches_any_of_the_study_modalities(archive):
    assert studies(ModalitiesInStudy="MR") == {archive.s1, archive.s4}
    assert studies(ModalitiesInStudy=["CT", "US"]) == {archive.s1, archive.s2, archive.s3, archive.s5, archive.s6}
    assert studies(ModalitiesInStudy="M?") == {archive.s1, archive.s4}
    assert studies(ModalitiesInStudy="C*R") == set()  # no * across two modalities
    [s1] = find(StudyInstanceUID=archive.s1, ModalitiesInStudy="CT")
    assert list(s1.ModalitiesInStudy) == ["CT", "MR"]
    # From the series and image levels the study is reached through the parents.
    series = find("SERIES", StudyInstanceUID=archive.s1, SeriesInstanceUID="", ModalitiesInStudy="M*")
    assert {ds.SeriesInstanceUID for ds in series} == {archive.ct_series, archive.mr_series}
    images = dict(StudyInstanceUID=archive.s1, SeriesInstanceUID=archive.ct_series, SOPInstanceUID="")
    assert len(find("IMAGE", **images, ModalitiesInStudy="M?")) == 2
    assert find("IMAGE", **images, ModalitiesInStudy="U?") == []


# --- SOPClassesInStudy --------------------------------------------------------------


def test_sop_classes_in_study_lists_each_class_of_the_study_once(archive, add):
    study, mr_series = generate_uid(), generate_uid()
    for number in (1, 2):
        add(study_uid=study, series_uid=mr_series, modality="MR", sop_class_uid=MRImageStorage, instance_number=number)
    add(study_uid=study, modality="OT", sop_class_uid=SecondaryCaptureImageStorage)
    [answer] = find(StudyInstanceUID=study, SOPClassesInStudy="")
    assert sorted(answer.SOPClassesInStudy) == sorted([MRImageStorage, SecondaryCaptureImageStorage])
    [s1] = find(StudyInstanceUID=archive.s1, SOPClassesInStudy="")
    assert s1.SOPClassesInStudy == CTImageStorage  # one class: a single value, however many instances
    assert len(find(SOPClassesInStudy="")) == 7, "an empty key restricts nothing"


def test_sop_classes_in_study_matches_a_study_holding_any_of_the_classes(archive, add):
    study = generate_uid()
    add(study_uid=study, modality="OT", sop_class_uid=SecondaryCaptureImageStorage)
    assert studies(SOPClassesInStudy=SecondaryCaptureImageStorage) == {study}
    assert studies(SOPClassesInStudy=[MRImageStorage, SecondaryCaptureImageStorage]) == {study}
    everything = {archive.s1, archive.s2, archive.s3, archive.s4, archive.s5, archive.s6, study}
    assert studies(SOPClassesInStudy=[SecondaryCaptureImageStorage, CTImageStorage]) == everything
    assert studies(SOPClassesInStudy="1.2.3.4") == set()
    assert refused(SOPClassesInStudy="1.2.840.10008.5.1.4.1.1.*") == 0xC000  # no wildcards in UIDs


def test_below_the_study_level_sop_classes_in_study_is_returned_empty_and_restricts_nothing(archive):
    keys = dict(StudyInstanceUID=archive.s1, SeriesInstanceUID="", SOPClassesInStudy="1.2.3.4")
    series = find("SERIES", **keys)
    assert {ds.SeriesInstanceUID for ds in series} == {archive.ct_series, archive.mr_series}
    assert all(ds.SOPClassesInStudy in ("", None) for ds in series)


# --- hierarchy ------------------------------------------------------------------------


def test_a_key_below_the_query_level_is_refused(archive):
    assert refused(SeriesInstanceUID="") == 0xA900
    assert refused("PATIENT", model="PATIENT", StudyDate="") == 0xA900
    assert refused("SERIES", StudyInstanceUID=archive.s1, InstanceNumber="") == 0xA900
    assert refused("SERIES", StudyInstanceUID=archive.s1, Rows=None) == 0xA900  # known, not stored


@pytest.mark.parametrize("value", [None, "", "*", "PAT*", ["PAT001", "PAT002"]])
def test_patient_root_study_queries_need_one_patient_id(archive, value):
    keys = {} if value is None else {"PatientID": value}
    assert refused("STUDY", model="PATIENT", StudyInstanceUID="", **keys) == 0xA900


def test_series_and_image_queries_need_their_parents_unique_keys(archive):
    assert refused("SERIES", SeriesInstanceUID="") == 0xA900
    assert refused("SERIES", StudyInstanceUID=[archive.s1, archive.s2]) == 0xA900
    assert refused("IMAGE", StudyInstanceUID=archive.s1) == 0xA900
    assert refused("IMAGE", StudyInstanceUID=archive.s1, SeriesInstanceUID="") == 0xA900


@pytest.mark.parametrize("level, model", [("PATIENT", "STUDY"), ("FOO", "STUDY"), ("", "PATIENT")])
def test_an_unknown_query_level_is_refused(archive, level, model):
    assert refused(level, model=model) == 0xA900


def test_a_missing_query_level_is_refused(archive):
    ds = Dataset()
    ds.PatientID = "PAT001"
    with pytest.raises(QueryError) as caught:
        build_query(ds, model="STUDY", case_insensitive=True)
    assert caught.value.status == 0xA900


# --- what comes back -----------------------------------------------------------------


def test_exactly_the_requested_keys_come_back(archive):
    [result] = find(StudyInstanceUID=archive.s1, PatientName="", StudyDate="", IssuerOfPatientID="")
    keywords = {elem.keyword for elem in result}
    assert keywords == ALWAYS | {"StudyInstanceUID", "PatientName", "StudyDate", "IssuerOfPatientID"}
    assert (result.SpecificCharacterSet, result.QueryRetrieveLevel) == ("ISO_IR 192", "STUDY")
    assert (result.RetrieveAETitle, result.StudyDate, result.IssuerOfPatientID) == (OUR_AE, "20261127", "")


def test_keys_we_do_not_store_come_back_empty_and_do_not_restrict(archive):
    procedure = Dataset()
    procedure.CodeValue = "X1"
    results = find(StudyInstanceUID="", PatientAge="045Y", ProcedureCodeSequence=[procedure])
    assert len(results) == 6
    assert all(ds.PatientAge == "" and len(ds.ProcedureCodeSequence) == 0 for ds in results)


def test_instance_availability_is_online_when_asked_for(archive):
    [asked] = find(StudyInstanceUID=archive.s3, InstanceAvailability="")
    [not_asked] = find(StudyInstanceUID=archive.s3)
    assert asked.InstanceAvailability == "ONLINE"
    assert "InstanceAvailability" not in not_asked


def test_counts_come_from_the_index(archive):
    [study] = find(
        StudyInstanceUID=archive.s1,
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        NumberOfPatientRelatedStudies="",
    )
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 3)
    assert study.NumberOfPatientRelatedStudies == 2
    series = find("SERIES", StudyInstanceUID=archive.s1, SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")
    assert {(ds.SeriesInstanceUID, ds.NumberOfSeriesRelatedInstances) for ds in series} == {
        (archive.ct_series, 2),
        (archive.mr_series, 1),
    }


def test_patient_root_finds_patients_then_their_studies(archive):
    [jane] = find("PATIENT", model="PATIENT", PatientName="DOE*", PatientID="", NumberOfPatientRelatedStudies="")
    assert (jane.PatientID, jane.NumberOfPatientRelatedStudies, jane.QueryRetrieveLevel) == ("PAT001", 2, "PATIENT")
    found = find("STUDY", model="PATIENT", PatientID="PAT001", StudyInstanceUID="", StudyDate="")
    assert {(ds.StudyInstanceUID, ds.PatientID) for ds in found} == {(archive.s1, "PAT001"), (archive.s2, "PAT001")}


def test_series_queries_return_series_and_parent_keys(archive):
    found = find("SERIES", StudyInstanceUID=archive.s1, SeriesInstanceUID="", Modality="MR", SeriesNumber="",
                 StudyDate="", PatientName="")  # fmt: skip
    [mr] = found
    assert (mr.SeriesInstanceUID, mr.SeriesNumber, mr.StudyDate) == (archive.mr_series, 2, "20261127")
    assert (mr.StudyInstanceUID, str(mr.PatientName)) == (archive.s1, "Doe^Jane")


def test_image_queries_match_on_instances(archive):
    keys = dict(StudyInstanceUID=archive.s1, SeriesInstanceUID=archive.ct_series, SOPClassUID="")
    both = find("IMAGE", SOPInstanceUID=[archive.ct1.sop_instance_uid, archive.ct2.sop_instance_uid], **keys)
    assert [ds.SOPInstanceUID for ds in both] == [archive.ct1.sop_instance_uid, archive.ct2.sop_instance_uid]
    assert {ds.SOPClassUID for ds in both} == {CTImageStorage}
    [second] = find("IMAGE", model="PATIENT", PatientID="PAT001", InstanceNumber="2", SOPInstanceUID="", **keys)
    assert (second.SOPInstanceUID, second.InstanceNumber) == (archive.ct2.sop_instance_uid, 2)


def test_results_are_lazy_and_stop_at_the_limit(archive):
    query = build_query(identifier(StudyInstanceUID=""), model="STUDY", case_insensitive=True)
    results = iter_results(query, limit=2, retrieve_ae_title=OUR_AE)
    assert inspect.isgenerator(results)
    assert len(list(results)) == 2
    assert len(list(iter_results(query, retrieve_ae_title=OUR_AE))) == Study.objects.count() == 6


def test_an_offset_skips_the_first_results(archive):
    query = build_query(identifier(StudyInstanceUID=""), model="STUDY", case_insensitive=True)
    every = [ds.StudyInstanceUID for ds in iter_results(query, retrieve_ae_title=OUR_AE)]
    page = [ds.StudyInstanceUID for ds in iter_results(query, limit=2, offset=3, retrieve_ae_title=OUR_AE)]
    assert page == every[3:5]
    assert [ds.StudyInstanceUID for ds in iter_results(query, offset=5, retrieve_ae_title=OUR_AE)] == every[5:]


def test_a_relational_query_needs_no_unique_keys_above_its_level(archive):
    request = identifier("SERIES", SeriesInstanceUID="", Modality="MR")
    assert refused("SERIES", SeriesInstanceUID="", Modality="MR") == IDENTIFIER_DOES_NOT_MATCH
    query = build_query(request, model="STUDY", case_insensitive=True, relational=True)
    found = list(iter_results(query, retrieve_ae_title=OUR_AE))
    assert len(found) == 2 and archive.mr_series in {ds.SeriesInstanceUID for ds in found}
    # the unique key of a level above matches as any key: a UID list
    request = identifier("IMAGE", SOPInstanceUID="", StudyInstanceUID=[archive.s1, archive.s3])
    query = build_query(request, model="STUDY", case_insensitive=True, relational=True)
    assert len(list(iter_results(query, retrieve_ae_title=OUR_AE))) == 4


def test_rows_narrow_the_search_to_what_the_caller_may_see(archive):
    seen = Study.objects.filter(study_instance_uid__in=[archive.s1, archive.s2])
    query = build_query(identifier(StudyInstanceUID="", PatientID="PAT00*"), model="STUDY", case_insensitive=True,
                        rows=seen)  # fmt: skip
    assert {ds.StudyInstanceUID for ds in iter_results(query, retrieve_ae_title=OUR_AE)} == {archive.s1, archive.s2}


def test_the_identifier_is_left_unchanged(archive):
    request = identifier(StudyInstanceUID="", PatientName="doe*", StudyDate="20261127-", ModalitiesInStudy=["CT", "MR"])
    before = copy.deepcopy(request)
    query = build_query(request, model="STUDY", case_insensitive=True)
    assert len(list(iter_results(query, retrieve_ae_title=OUR_AE))) == 1
    assert request == before
    assert str(request.PatientName) == "doe*"
    assert "SpecificCharacterSet" not in request and "RetrieveAETitle" not in request


def test_query_keeps_the_requested_keywords_in_order(archive):
    query = build_query(identifier(PatientName="", StudyInstanceUID=""), model="STUDY", case_insensitive=True)
    assert query.keywords == ["QueryRetrieveLevel", "PatientName", "StudyInstanceUID"]


# --- patterns as SQL -----------------------------------------------------------------


def test_patterns_escape_what_the_database_would_read_as_wildcards():
    assert like_pattern("a%b_c\\d*e?") == "a\\%b\\_c\\\\d%e_"
    assert glob_pattern("a[b]*c?") == "a[[]b]*c?"


def test_wildcards_use_a_case_sensitive_operator_on_each_database(db):
    sql = str(Study.objects.filter(accession_number__dicom_wildcard="A_*").query)
    if connection.vendor == "sqlite":
        assert "GLOB A_*" in sql  # SQLite's LIKE would ignore case
    else:
        assert "LIKE A\\_% ESCAPE" in sql


@pytest.mark.parametrize("implicit_vr", [False, True])
def test_raw_responses_encode_exactly_like_pydicom_ones(archive, implicit_vr):
    keys = dict.fromkeys(
        ["PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "ModalitiesInStudy",
         "NumberOfStudyRelatedInstances", "InstanceAvailability"],
        "",
    )  # fmt: skip

    def encoded(mode):
        query = build_query(identifier("STUDY", **keys), model="STUDY", case_insensitive=True)
        return [encode(r, implicit_vr, True) for r in iter_results(query, retrieve_ae_title=OUR_AE, implicit_vr=mode)]

    plain = encoded(None)
    assert len(plain) == 6 and None not in plain
    assert encoded(implicit_vr) == plain
