"""C-FIND answers written as bytes (dicomnodes/query/answers.py) are the
bytes pydicom writes for the same answers, in implicit and explicit VR:
names read from files in ISO 2022 and UTF-8, empty and odd-length values,
every VR of the stored keys, keys returned empty of any VR (sequences,
private, binary), every level of both models; and what the layout cannot
write goes through pydicom."""

import dataclasses
import warnings

import pytest
from django.db import connection
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode

from dicomnodes.archive.header import InstanceHeader, read_header_file
from dicomnodes.archive.index import IndexItem, apply_batch
from dicomnodes.models import Study
from dicomnodes.net.elements import ElementCoder, ValueTooLong, pad
from dicomnodes.query import answers
from dicomnodes.query.matching import KEYS, UNSTORED_KEYS, build_query, iter_results
from tests.support.dicomdata import make_ct

# The odd-length dates and times are invalid DA/TM: pydicom says so while
# building the Datasets we compare with.
pytestmark = [pytest.mark.archive, pytest.mark.filterwarnings("ignore:Invalid value for VR")]

OUR_AE = "PACS"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _index(header):
    apply_batch([IndexItem(header=header, file_size=1, file_is_new=True, overwrite=False)])


@pytest.fixture
def archive(db, tmp_path):
    """Patients whose names came in ISO 2022 (Japanese, Korean), UTF-8 and
    Latin-1 files, plus rows with empty, odd-length and long values."""
    study = generate_uid()
    named = [
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
        ("ISO_IR 192", "Παπαδόπουλος^Γιώργος"),
        ("ISO_IR 100", "Müller^Jürgen"),
        (None, "Doe^Jane"),
    ]
    for i, (charset, name) in enumerate(named):
        path = make_ct(tmp_path / f"{i}.dcm", size=8, patient_id=f"P{i}", patient_name=name, charset=charset)
        header = read_header_file(path)
        assert header.patient_name == name  # decoded from its character set
        _index(dataclasses.replace(header, modality="MR" if i % 2 else "CT", study_time="101500.123"))
    base = dict(sop_class_uid=CT, transfer_syntax_uid="1.2.840.10008.1.2.1")
    _index(InstanceHeader(**base, sop_instance_uid=generate_uid(), study_instance_uid=generate_uid(),
                          series_instance_uid=generate_uid()))  # every optional value empty  # fmt: skip
    for modality in ("CT", "PT", "SEG"):  # one study of three series: ModalitiesInStudy multi-valued
        _index(
            InstanceHeader(
                **base,
                sop_instance_uid=generate_uid(),
                study_instance_uid=study,
                series_instance_uid=generate_uid(),
                patient_id="ODD",  # odd lengths everywhere
                patient_name="Odd^Len",
                patient_birth_date="1970010",
                patient_sex="O",
                study_date="2026112",
                study_time="1",
                accession_number="A",
                study_id="123",
                study_description="x" * 63,
                referring_physician_name="Dr^Who^^^",
                modality=modality,
                series_number=7,
                series_description="é",
                body_part_examined="HEAD",
                series_date="20260101",
                series_time="235959.999999",
                institution_name="Hôpital",
                station_name="ST1",
                instance_number=0,
                issuer_of_patient_id="ISSUER",
            )
        )
    return study


def _identifier(level, keywords, **values):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword in keywords:
            setattr(ds, keyword, values.get(keyword, ""))
    return ds


def _with_odd_keys(ds):
    """Keys of VRs no index column has: an empty sequence, a sequence with an
    item, a private creator and private elements (one UN, as an implicit VR
    peer's arrive), binary and numeric standard keys."""
    ds.ProcedureCodeSequence = Sequence()
    item = Dataset()
    item.CodeValue = ""
    ds.AnatomicRegionsInStudyCodeSequence = Sequence([item])
    ds.add_new(0x00090010, "LO", "OUR CREATOR")
    ds.add_new(0x00091001, "OB", b"")
    ds[0x00091002] = RawDataElement(Tag(0x00091002), "UN", 0, b"", 0, True, True)
    ds.add_new(0x00091003, "US", None)
    ds.add_new(0x00091004, "FD", None)
    ds.add_new(0x00091005, "AT", None)
    ds.add_new(0x00091006, "UT", "")
    ds.PatientSize = None  # DS, unstored
    ds.InstanceAvailability = ""
    return ds


def _pydicom_and_ours(ds, model, implicit):
    """(pydicom's encoding of matching's Dataset answers, ours); relational,
    so that a SERIES or IMAGE query answers from every study."""
    query = build_query(ds, model=model, case_insensitive=True, relational=True)
    theirs = [encode(r, implicit, True) for r in iter_results(query, retrieve_ae_title=OUR_AE)]
    ours = list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=implicit))
    return theirs, ours


def _keys_of(level):
    """Every stored key of `level` and the levels above it."""
    levels = ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    return [kw for kw, key in KEYS.items() if levels.index(key.level) <= levels.index(level)]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_every_stored_key_comes_out_as_pydicom_writes_it(archive, level, implicit):
    theirs, ours = _pydicom_and_ours(_identifier(level, _keys_of(level)), "STUDY", implicit)
    assert len(theirs) >= 7 and None not in theirs
    assert ours == theirs


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_patient_level_answers_of_the_patient_root_model_are_pydicom_s(archive, implicit):
    theirs, ours = _pydicom_and_ours(_identifier("PATIENT", _keys_of("PATIENT")), "PATIENT", implicit)
    assert len(theirs) == 7
    assert ours == theirs


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_keys_returned_empty_of_any_vr_are_pydicom_s(archive, implicit):
    keys = ["PatientName", "StudyInstanceUID", "ModalitiesInStudy", *sorted(UNSTORED_KEYS["STUDY"] - {"PatientSize"})]
    ds = _with_odd_keys(_identifier("STUDY", [k for k in keys if not k.endswith("Sequence")]))
    theirs, ours = _pydicom_and_ours(ds, "STUDY", implicit)
    assert len(theirs) == 7
    assert ours == theirs
    assert b"OUR CREATOR" not in ours[0], "keys are returned empty"


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_matching_on_names_in_other_character_sets_gives_pydicom_s_answers(archive, implicit):
    for pattern in ("*山田*", "HONG*", "Παπαδόπουλος^Γιώργος", "MÜLLER*", "*"):
        ds = _identifier("STUDY", ["PatientName", "PatientID", "StudyInstanceUID"], PatientName=pattern)
        theirs, ours = _pydicom_and_ours(ds, "STUDY", implicit)
        assert theirs and ours == theirs, pattern
        assert "ISO_IR 192".encode() in ours[0]


def test_the_answers_are_also_those_of_the_raw_path_runscp_used(archive):
    """The bytes runscp sent before (matching._raw_response through pydicom),
    including a non-ASCII value of a CS key, which that path wrote in UTF-8."""
    ds = _identifier("SERIES", ["StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription", "Modality"],
                     StudyInstanceUID=archive)  # fmt: skip
    query = build_query(ds, model="STUDY", case_insensitive=True)
    raw = [encode(r, False, True) for r in iter_results(query, retrieve_ae_title=OUR_AE, implicit_vr=False)]
    assert len(raw) == 3
    assert list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=False)) == raw


def test_a_limit_and_an_offset_window_the_answers_as_iter_results_does(archive):
    query = build_query(_identifier("STUDY", ["StudyInstanceUID"]), model="STUDY", case_insensitive=True)
    every = list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=True))
    page = list(answers.iter_answers(query, limit=2, offset=3, retrieve_ae_title=OUR_AE, implicit_vr=True))
    assert len(every) == 7 and page == every[3:5]


def test_a_query_returning_only_unstored_keys_reads_no_column(archive):
    query = build_query(_identifier("STUDY", ["OtherStudyNumbers"]), model="STUDY", case_insensitive=True)
    theirs = [encode(r, True, True) for r in iter_results(query, retrieve_ae_title=OUR_AE)]
    assert list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=True)) == theirs
    assert len(theirs) == 7


def test_a_value_too_long_for_an_explicit_vr_header_goes_through_pydicom(archive):
    """pydicom writes such a value as UN (PS3.5 6.2.2); so do we, through it.
    Only SQLite can hold one: it does not enforce the column's 128 characters."""
    if connection.vendor != "sqlite":
        pytest.skip(f"{connection.vendor} keeps StudyDescription to its 128 characters: no such value")
    Study.objects.filter(study_instance_uid=archive).update(study_description="y" * 70_001)
    ds = _identifier("STUDY", ["StudyInstanceUID", "StudyDescription"], StudyInstanceUID=archive)
    query = build_query(ds, model="STUDY", case_insensitive=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it writes UN
        raw = [encode(r, False, True) for r in iter_results(query, retrieve_ae_title=OUR_AE, implicit_vr=False)]
        ours = list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=False))
        implicit = list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=True))
    assert ours == raw and b"\x08\x00\x30\x10UN\x00\x00" in ours[0]
    assert implicit == [encode(r, True, True) for r in iter_results(query, retrieve_ae_title=OUR_AE)]


def test_a_stored_column_of_a_binary_vr_sends_the_whole_query_through_pydicom(archive):
    query = build_query(_identifier("STUDY", ["StudyInstanceUID", "NumberOfStudyRelatedSeries"]), model="STUDY",
                        case_insensitive=True)  # fmt: skip
    binary = next(f for f in query.fields if f.column == "num_series")
    query.fields[query.fields.index(binary)] = dataclasses.replace(binary, vr="US")
    with pytest.raises(answers.Unusual):
        answers.AnswerLayout(query, retrieve_ae_title=OUR_AE, implicit_vr=False)
    theirs = [encode(r, False, True) for r in iter_results(query, retrieve_ae_title=OUR_AE, implicit_vr=False)]
    assert list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=False)) == theirs
    assert b"\x20\x00\x06\x12US\x02\x00" in theirs[0]  # the US went through pydicom


# --- net.elements ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vr", "implicit", "expected"),
    [
        ("LO", True, b"\x10\x00\x20\x00\x04\x00\x00\x00ABC "),
        ("LO", False, b"\x10\x00\x20\x00LO\x04\x00ABC "),
        ("UI", False, b"\x10\x00\x20\x00UI\x04\x00ABC\x00"),
        ("UT", False, b"\x10\x00\x20\x00UT\x00\x00\x04\x00\x00\x00ABC "),
        ("UC", False, b"\x10\x00\x20\x00UC\x00\x00\x04\x00\x00\x00ABC "),
    ],
)
def test_an_element_coder_writes_the_header_of_its_encoding(vr, implicit, expected):
    assert ElementCoder(0x00100020, vr, implicit=implicit).encode(pad(vr, b"ABC")) == expected


def test_a_short_explicit_header_refuses_a_value_it_cannot_state():
    ElementCoder(0x00081030, "LO", implicit=False).encode(b"x" * 0xFFFE)
    with pytest.raises(ValueTooLong):
        ElementCoder(0x00081030, "LO", implicit=False).encode(b"x" * 0x10000)
    assert len(ElementCoder(0x00081030, "LO", implicit=True).encode(b"x" * 0x10000)) == 0x10008


def test_each_answer_is_new_bytes_not_a_shared_buffer(archive):
    query = build_query(_identifier("STUDY", ["StudyInstanceUID"]), model="STUDY", case_insensitive=True)
    found = list(answers.iter_answers(query, retrieve_ae_title=OUR_AE, implicit_vr=True))
    assert len({id(a) for a in found}) == len(found) == len(set(found)) == 7
    assert all(isinstance(a, bytes) for a in found)
