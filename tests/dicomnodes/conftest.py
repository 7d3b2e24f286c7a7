"""Fixtures of the dicomnodes tests: Orthanc as the remote PACS.

One Orthanc serves the whole run (starting and stopping one takes seconds);
each test gets it emptied through its REST API, knowing us afresh.
"""

import pytest
from pydicom import dcmread

from dicomnodes.models import Peer
from tests.support.dicomdata import make_ct_series
from tests.support.orthanc import start_orthanc, stop_orthanc
from tests.support.transfer import store_to_orthanc


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory):
    """Debian's Orthanc, for the whole run (tests use `orthanc`)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    stop_orthanc(server)


@pytest.fixture
def orthanc(orthanc_server, request, transactional_db):
    """Orthanc as the remote PACS: empty, with its peer row ("orthanc").
    Transactional: the transfer runner works in threads of its own.

    It knows us as AE PACS on 127.0.0.1 (so it answers our C-FIND), at the
    port of this test's runscp (`shared_scp` or `scp`) for its C-MOVEs to
    us, else at 11112.
    """
    port = 11112
    for name in ("shared_scp", "scp"):
        if name in request.fixturenames:
            port = request.getfixturevalue(name).port
    orthanc_server.empty()
    orthanc_server.knows("pacs", "PACS", port)
    orthanc_server.peer = Peer.objects.create(
        name="orthanc", ae_title=orthanc_server.aet, host="127.0.0.1", port=orthanc_server.dicom_port
    )
    return orthanc_server


@pytest.fixture
def orthanc_with_two_studies(orthanc, tmp_path):
    """Orthanc holding Smith^John's study (P1, ACC1, two images; its UIDs in
    `study_a`, `series_a`) and Jones^Ann's (P2, ACC2, 2025-01-01, one image)."""
    a = make_ct_series(tmp_path / "orthanc-a", 2, patient_id="P1", patient_name="Smith^John", accession="ACC1")
    make_ct_series(
        tmp_path / "orthanc-b", 1, patient_id="P2", patient_name="Jones^Ann", accession="ACC2", study_date="20250101"
    )
    store_to_orthanc(orthanc, tmp_path / "orthanc-a")
    store_to_orthanc(orthanc, tmp_path / "orthanc-b")
    orthanc.study_a = str(dcmread(a[0]).StudyInstanceUID)
    orthanc.series_a = str(dcmread(a[0]).SeriesInstanceUID)
    return orthanc


@pytest.fixture
def viewer(shared_scp):
    """Persona: a viewer (VIEWER1) that may query and retrieve."""
    Peer.objects.create(name="viewer", ae_title="VIEWER1", host="127.0.0.1", may_query=True, may_retrieve=True)
    shared_scp.wait_until_allowed("VIEWER1", "find")
    return "VIEWER1"
