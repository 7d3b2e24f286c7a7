"""QIDO-RS (portal/dicomweb/qido.py) with the reference client, dicomweb-client,
against a running web process (`manage.py runpacs --only web`).

The archive is filled once for the module (through the store path's index
writer) and the web process started once: every test only reads.

Personas: a reader (staff with the view permissions, by API token), a staff
member without them, a stranger (no login), a patient with a link to one
study (valid, expired, revoked).
"""

import datetime as dt
import json
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from django.utils import timezone
from pydicom.uid import CTImageStorage
from rest_framework.authtoken.models import Token

from dicomnodes.archive import storage
from dicomnodes.models import DicomServerSettings
from dicomnodes.query.levels import IMAGE, SERIES, STUDY
from dicomnodes.query.matching import build_query, iter_results, iter_rows
from portal.dicomweb.qido import SearchParameters, json_results, search_identifier
from portal.models import HttpSettings
from portal.tokens import create_token
from tests.conftest import flush_database
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct_series
from tests.support.portal import start_runpacs_web, wait_for_web
from tests.support.processes import free_port, wait_until

DOE, SMITH, MUELLER = "1.2.826.0.1.3680043.10.7.1", "1.2.826.0.1.3680043.10.7.2", "1.2.826.0.1.3680043.10.7.3"
# The tests only read (over HTTP); the marker has the test database set up,
# and the rows the module's fixture commits stay for all of them.
pytestmark = pytest.mark.django_db

STUDY_UID, SERIES_UID, SOP_UID, PATIENT_NAME = "0020000D", "0020000E", "00080018", "00100010"


def _study(folder, study_uid, *, series, per_series, modalities=(), **ct_args):
    paths = []
    for number in range(1, series + 1):
        made = make_ct_series(
            folder / f"{study_uid}-{number}", per_series, study_uid=study_uid, series_number=number, **ct_args
        )
        modality = modalities[number - 1] if modalities else "CT"
        for path in made:
            ds = pydicom.dcmread(path)
            ds.Modality = modality
            ds.save_as(path)
        paths += made
    return archive_files(paths)[0].series.study


@pytest.fixture(scope="module")
def site(django_db_setup, django_db_blocker, tmp_path_factory):
    """Three studies, the personas, and the web process; a dict of them.

    1. Doe^Jane (CT and MR series of 3 images, 2024-03-15),
       Smith^John (1 CT series of 2, 2023-12-01), Müller^Jörg (Latin-1 in the
       file, 1 image, 2025-01-10);
    2. a reader's and a permission-less staff member's API tokens, a link to
       Doe's study (and an expired and a revoked one);
    3. the web process on a free port; stopped, then the database flushed.
    """
    root = tmp_path_factory.mktemp("qido")
    data = root / "data"
    data.mkdir()
    with override_settings(PACS_DATA_DIR=data, PACS_STORAGE_DIR=data / "storage",
                           PACS_QUARANTINE_DIR=data / "quarantine", PACS_LOG_DIR=data / "logs"), \
            django_db_blocker.unblock():  # fmt: skip
        storage._made_dirs.clear()
        made = root / "made"
        doe = _study(made, DOE, series=2, per_series=3, modalities=("CT", "MR"), patient_name="Doe^Jane",
                     patient_id="P1", study_date="20240315", accession="ACC1")  # fmt: skip
        _study(made, SMITH, series=1, per_series=2, patient_name="Smith^John", patient_id="P2",
               study_date="20231201", accession="ACC2")  # fmt: skip
        _study(made, MUELLER, series=1, per_series=1, patient_name="Müller^Jörg", patient_id="P3",
               study_date="20250110", accession="ACC3", charset="ISO_IR 100")  # fmt: skip

        reader = User.objects.create_user("reader", password=None, is_staff=True)
        reader.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
        nobody = User.objects.create_user("staff", password=None, is_staff=True)
        link, expired, revoked = create_token(doe), create_token(doe), create_token(doe)
        link.row.expires_at = timezone.now() + dt.timedelta(days=1)
        link.row.save()
        expired.row.expires_at = timezone.now() - dt.timedelta(minutes=1)
        expired.row.save()
        revoked.row.revoke()

        # Searches read the settings: written now, while no test holds the
        # write lock; names match case-sensitively unless fuzzymatching asks.
        DicomServerSettings.objects.update_or_create(pk=1, defaults={"case_insensitive_names": False})
        port = free_port()
        http = HttpSettings.load()
        http.web_port, http.web_server_name = port, "127.0.0.1"
        http.save()
        web = start_runpacs_web(data, root / "runpacs.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_web(f"{base}/admin/login/", web)
            yield {
                "log": root / "runpacs.log",
                "base": base,
                "reader": Token.objects.create(user=reader).key,
                "nobody": Token.objects.create(user=nobody).key,
                "link": link.clear,
                "expired": expired.clear,
                "revoked": revoked.clear,
            }
        finally:
            web.stop()
    flush_database(django_db_blocker)


def _session(api_token=None):
    session = requests.Session()
    if api_token:
        session.headers["Authorization"] = f"Token {api_token}"
    return session


@pytest.fixture
def staff(site):
    """dicomweb-client on the staff root, as the reader."""
    return DICOMwebClient(f"{site['base']}/dicomweb", session=_session(site["reader"]))


@pytest.fixture
def patient(site):
    """dicomweb-client on the root of the link to Doe's study."""
    return DICOMwebClient(f"{site['base']}/dicomweb/t/{site['link']}", session=_session())


def values(results, tag):
    return [r[tag]["Value"][0] if "Value" in r.get(tag, {}) else None for r in results]


def retrieve_path(result):
    """The path of a result's RetrieveURL: its host is the Host header the
    client sent (dicomweb-client sends its host name without the port)."""
    url = result["00081190"]["Value"][0]
    assert url.startswith("http://127.0.0.1")
    return urlsplit(url).path


def names(results):
    return sorted(r[PATIENT_NAME]["Value"][0]["Alphabetic"] for r in results)


# --- Studies ------------------------------------------------------------------------------


def test_a_study_search_finds_every_study_with_the_default_attributes(staff, site):
    results = staff.search_for_studies()

    assert names(results) == ["Doe^Jane", "Müller^Jörg", "Smith^John"]
    doe = next(r for r in results if r[STUDY_UID]["Value"] == [DOE])
    assert doe["00080020"] == {"vr": "DA", "Value": ["20240315"]}  # StudyDate
    assert doe["00080050"]["Value"] == ["ACC1"]  # AccessionNumber
    assert sorted(doe["00080061"]["Value"]) == ["CT", "MR"]  # ModalitiesInStudy
    assert doe["00100020"]["Value"] == ["P1"]  # PatientID
    assert doe["00201206"] == {"vr": "IS", "Value": [2]}  # NumberOfStudyRelatedSeries
    assert doe["00201208"] == {"vr": "IS", "Value": [6]}  # NumberOfStudyRelatedInstances
    assert doe["00080056"]["Value"] == ["ONLINE"]  # InstanceAvailability
    assert doe["00081190"]["vr"] == "UR"
    assert retrieve_path(doe) == f"/dicomweb/studies/{DOE}"  # RetrieveURL
    assert "00080052" not in doe and "00080054" not in doe  # no C-FIND bookkeeping


def test_a_name_with_a_wildcard_matches_and_comes_back_in_utf8(staff):
    assert names(staff.search_for_studies(search_filters={"PatientName": "Mü*"})) == ["Müller^Jörg"]
    assert names(staff.search_for_studies(search_filters={"00100010": "M?ller*"})) == ["Müller^Jörg"]  # by tag


def test_fuzzy_matching_matches_names_without_regard_to_case_and_says_so(staff, site):
    assert staff.search_for_studies(search_filters={"PatientName": "s*"}) == []
    assert names(staff.search_for_studies(search_filters={"PatientName": "s*"}, fuzzymatching=True)) == ["Smith^John"]
    response = _session(site["reader"]).get(
        f"{site['base']}/dicomweb/studies", params={"PatientName": "s*", "fuzzymatching": "true"}
    )
    assert "case-insensitive person name matching" in response.headers["Warning"]


def test_a_key_the_index_cannot_match_is_skipped_with_a_warning(site):
    response = _session(site["reader"]).get(f"{site['base']}/dicomweb/studies", params={"PatientComments": "x"})
    assert response.status_code == 200 and len(response.json()) == 3
    assert response.headers["Warning"] == (
        '299 - "The following attributes are not supported for matching: PatientComments"'
    )


def test_a_date_range_selects_the_studies_inside_it(staff):
    found = staff.search_for_studies(search_filters={"StudyDate": "20240101-20251231"})
    assert names(found) == ["Doe^Jane", "Müller^Jörg"]
    assert names(staff.search_for_studies(search_filters={"StudyDate": "-20231231"})) == ["Smith^John"]


def test_uid_lists_and_modalities_in_study(staff):
    found = staff.search_for_studies(search_filters={"StudyInstanceUID": f"{DOE},{SMITH}"})
    assert names(found) == ["Doe^Jane", "Smith^John"]
    assert names(staff.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == ["Doe^Jane"]


def test_limit_and_offset_page_through_the_studies(staff):
    pages = [staff.search_for_studies(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(page) for page in pages] == [2, 1, 0]
    assert sorted(values(pages[0] + pages[1], STUDY_UID)) == [DOE, SMITH, MUELLER]


def test_a_limited_answer_warns_that_more_results_wait(site):
    response = _session(site["reader"]).get(f"{site['base']}/dicomweb/studies", params={"limit": 1})
    assert response.status_code == 200 and len(response.json()) == 1
    assert "additional results" in response.headers["Warning"]
    assert response.headers["Content-Type"] == "application/dicom+json"


def test_includefield_adds_attributes_and_all_adds_every_one_the_index_holds(staff):
    plain = staff.search_for_studies(search_filters={"PatientID": "P1"})[0]
    assert "00081030" in plain  # StudyDescription is among ours
    assert "00100021" not in plain  # IssuerOfPatientID is not a default
    included = staff.search_for_studies(search_filters={"PatientID": "P1"}, fields=["IssuerOfPatientID", "00080060"])[0]
    assert "00100021" in included and "00080060" not in included  # Modality is below the study level: left out
    every = staff.search_for_studies(search_filters={"PatientID": "P1"}, fields=["all"])[0]
    assert every["00201200"]["Value"] == [1]  # NumberOfPatientRelatedStudies
    assert every["00080062"] == {"vr": "UI", "Value": [CTImageStorage]}  # SOPClassesInStudy, from the instances
    by_class = staff.search_for_studies(search_filters={"PatientID": "P1", "SOPClassesInStudy": CTImageStorage})
    assert len(by_class) == 1
    assert staff.search_for_studies(search_filters={"PatientID": "P1", "SOPClassesInStudy": "1.2.3.4"}) == []


def test_no_match_is_204_no_content(site, staff):
    response = _session(site["reader"]).get(f"{site['base']}/dicomweb/studies", params={"PatientID": "NOBODY"})
    assert response.status_code == 204 and response.content == b""
    assert staff.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


# --- Series and instances ---------------------------------------------------------------


def test_the_series_of_a_study(staff, site):
    results = staff.search_for_series(DOE)

    assert sorted(values(results, "00080060")) == ["CT", "MR"]  # Modality
    assert values(results, STUDY_UID) == [DOE, DOE]
    assert sorted(values(results, "00201209")) == [3, 3]  # NumberOfSeriesRelatedInstances
    series_uid = results[0][SERIES_UID]["Value"][0]
    assert retrieve_path(results[0]) == f"/dicomweb/studies/{DOE}/series/{series_uid}"
    assert PATIENT_NAME not in results[0]  # the study's attributes only for /series


def test_all_series_carry_their_studys_attributes_and_match_on_them(staff):
    results = staff.search_for_series(search_filters={"Modality": "C?", "StudyDate": "20231201-20241231"})

    assert sorted(values(results, STUDY_UID)) == [DOE, SMITH]
    assert names(results) == ["Doe^Jane", "Smith^John"]


def test_the_instances_of_a_series_of_a_study_and_of_the_archive(staff, site):
    series_uid = staff.search_for_series(DOE, search_filters={"Modality": "MR"})[0][SERIES_UID]["Value"][0]

    in_series = staff.search_for_instances(DOE, series_uid)
    assert sorted(values(in_series, "00200013")) == [1, 2, 3]  # InstanceNumber
    sop = in_series[0][SOP_UID]["Value"][0]
    assert retrieve_path(in_series[0]) == f"/dicomweb/studies/{DOE}/series/{series_uid}/instances/{sop}"
    assert len(staff.search_for_instances(DOE)) == 6
    everywhere = staff.search_for_instances(search_filters={"PatientName": "Smith*"}, limit=1)
    assert len(everywhere) == 1 and values(everywhere, STUDY_UID) == [SMITH]
    assert len(staff.search_for_instances(search_filters={"SOPInstanceUID": sop})) == 1


@pytest.mark.parametrize("level", [STUDY, SERIES, IMAGE])
def test_the_json_written_from_rows_is_what_pydicom_makes_of_the_c_find_answers(site, level):
    """qido.json_results skips building datasets; the C-FIND answers of the
    same query, through pydicom's to_json_dict, say the same."""
    identifier, _ = search_identifier(level, SearchParameters(include_all=True), {})
    query = build_query(identifier, model="STUDY", case_insensitive=True, relational=True)
    written = json_results(query, list(iter_rows(query)), retrieve_root="R")
    answers = list(iter_results(query, retrieve_ae_title="PACS"))

    assert len(written) == len(answers) == {STUDY: 3, SERIES: 4, IMAGE: 9}[level]
    for ours, answer in zip(written, answers, strict=True):
        for keyword in ("SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"):
            del answer[keyword]
        expected = answer.to_json_dict()
        assert ours.pop("00081190")["Value"][0].startswith(f"R/{answer.StudyInstanceUID}")
        assert json.dumps(ours, sort_keys=True) == json.dumps(expected, sort_keys=True)
        assert list(ours) == sorted(ours)


# --- Mistakes and media types -------------------------------------------------------------


@pytest.mark.parametrize(
    "query, says",
    [
        ({"NoSuchKeyword": "1"}, "NoSuchKeyword"),
        ({"StudyDate": "2024"}, "malformed date"),
        ({"limit": "-1"}, "limit"),
        ({"includefield": "PatientName,Nonsense"}, "Nonsense"),
        ({"fuzzymatching": "yes"}, "fuzzymatching"),
        ({"Modality": "CT"}, "below the STUDY level"),
        ({"ReferencedSOPSequence.ReferencedSOPInstanceUID": "1.2"}, "sequence"),
        ({"ReferencedStudySequence": "x"}, "sequence"),
        ({"StudyInstanceUID": "1.2.*"}, "wildcards are not allowed in UIDs"),
    ],
)
def test_a_mistake_in_the_query_is_a_400_that_says_what(site, query, says):
    response = _session(site["reader"]).get(f"{site['base']}/dicomweb/studies", params=query)
    assert response.status_code == 400
    assert says in response.json()["error"]


def test_accept_is_negotiated(site):
    url, session = f"{site['base']}/dicomweb/studies", _session(site["reader"])
    several = session.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom+xml", application/json;q=0.5'}
    )
    assert several.status_code == 200 and several.headers["Content-Type"] == "application/json"
    assert session.get(url, headers={"Accept": "*/*"}).headers["Content-Type"] == "application/dicom+json"
    assert session.get(url, headers={"Accept": "application/dicom+xml"}).status_code == 406
    by_parameter = session.get(url, params={"accept": "application/json"}, headers={"Accept": "text/html"})
    assert by_parameter.headers["Content-Type"] == "application/json"


# --- Access -----------------------------------------------------------------------------------


def test_a_patient_link_finds_only_its_study(patient, site):
    studies = patient.search_for_studies()
    assert values(studies, STUDY_UID) == [DOE]
    assert retrieve_path(studies[0]) == f"/dicomweb/t/{site['link']}/studies/{DOE}"
    assert len(patient.search_for_series()) == 2
    assert len(patient.search_for_instances()) == 6
    assert patient.search_for_studies(search_filters={"StudyInstanceUID": SMITH}) == []
    assert patient.search_for_series(SMITH) == []
    assert patient.search_for_instances(SMITH) == []


@pytest.mark.parametrize(
    "root, api_token, status",
    [
        ("dicomweb", None, 401),
        ("dicomweb", "nobody", 403),
        ("dicomweb", "reader", 200),
        ("dicomweb/t/{link}", None, 200),
        ("dicomweb/t/{expired}", None, 410),
        ("dicomweb/t/{revoked}", None, 410),
        ("dicomweb/t/" + "x" * 43, None, 404),
    ],
)
@pytest.mark.parametrize("resource", ["studies", "series", "instances", f"studies/{DOE}/series"])
def test_who_may_search(site, root, api_token, status, resource):
    url = f"{site['base']}/{root.format(**site)}/{resource}"
    response = _session(site[api_token] if api_token else None).get(url)
    assert response.status_code == status


def test_no_link_token_reaches_the_web_process_log(site):
    """Neither the access log nor Django's request log ("Gone: <path>" for
    an expired link, "Not Found: <path>") prints a link's token."""
    tokens = [site["link"], site["expired"], site["revoked"], "x" * 43]
    line = f"/dicomweb/t/…/studies/{DOE}/series"
    before = site["log"].read_text(errors="replace").count(line)
    urls = [f"{site['base']}/dicomweb/t/{t}/studies/{DOE}/series" for t in tokens]
    codes = [requests.get(url, timeout=30).status_code for url in urls]
    assert codes[0] == 200 and all(c in (404, 410) for c in codes[1:])
    # one access line each, and a request-log line for each refusal
    wanted = before + len(tokens) + len(tokens) - 1
    wait_until(lambda: site["log"].read_text(errors="replace").count(line) >= wanted, 10, message="the log lines")
    text = site["log"].read_text(errors="replace")
    assert not [t for t in tokens if t in text]
