"""DICOM over TLS (PS3.15 B.1): runscp's second port, with DCMTK's
storescu/findscu `+tls` as peers — in one process and behind the
dispatcher, anonymous and with a client certificate required."""

import datetime as dt
import ipaddress

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dicomnodes.models import DicomServerSettings, Instance
from tests.support.dicomdata import make_ct
from tests.support.processes import MODALITY, dcmtk, free_port, wait_until


def _pair(folder, name, *, issuer=None):
    """A key and a certificate for 127.0.0.1 (self-signed, or signed by `issuer`: (cert, key))."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
    )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key, cert_path, key_path


@pytest.fixture
def tls_files(tmp_path):
    ca_cert, ca_key, ca_path, _ = _pair(tmp_path, "ca")
    _, _, server_cert, server_key = _pair(tmp_path, "server", issuer=(ca_cert, ca_key))
    _, _, client_cert, client_key = _pair(tmp_path, "client", issuer=(ca_cert, ca_key))
    return {"ca": ca_path, "server": (server_cert, server_key), "client": (client_cert, client_key)}


def _tls_settings(tls_files, *, client_ca=False):
    row = DicomServerSettings.load()
    row.tls_port = free_port()
    row.tls_certificate_file, row.tls_key_file = map(str, tls_files["server"])
    row.tls_client_ca_file = str(tls_files["ca"]) if client_ca else ""
    row.full_clean()
    row.save()
    return row.tls_port


def _tls_options(tls_files, *, client_certificate):
    """storescu/findscu: TLS, the server checked against our CA, with or
    without a client certificate (`+tls key cert` / `+tla`)."""
    if client_certificate:
        key, cert = tls_files["client"][1], tls_files["client"][0]
        return ["+tls", str(key), str(cert), "+cf", str(tls_files["ca"])]
    return ["+tla", "+cf", str(tls_files["ca"])]


def _store_and_find(scp, tls_port, tls_files, tmp_path, *, client_certificate):
    src = make_ct(tmp_path / "tls.dcm", patient_name="Tls^Patient", patient_id="TLS1")
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    options = _tls_options(tls_files, client_certificate=client_certificate)
    stored = dcmtk("storescu", *options, "-aet", MODALITY, "-aec", scp.ae_title, "127.0.0.1", tls_port, src)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert Instance.objects.filter(sop_instance_uid=uid).exists()
    found = dcmtk(
        "findscu",
        *options,
        "-S",
        "-aet",
        MODALITY,
        "-aec",
        scp.ae_title,
        "127.0.0.1",
        tls_port,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientID=TLS1",
        "-k",
        "StudyInstanceUID",
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert "Tls" in found.stdout + found.stderr or "TLS1" in found.stdout + found.stderr
    return found


@pytest.mark.parametrize("processes", [1, 2])
def test_a_store_and_a_find_over_tls(start_scp, tls_files, tmp_path, processes):
    DicomServerSettings.objects.filter(pk=1).update(unknown_ae_may_echo_and_store=True)
    tls_port = _tls_settings(tls_files)
    scp = start_scp(processes=processes)
    wait_until(lambda: f"listening for TLS on port {tls_port}" in scp.log(), 10, message="the TLS listener")
    from dicomnodes.models import Peer

    Peer.objects.create(name="modality", ae_title=MODALITY, host="127.0.0.1", may_query=True)
    wait_until(lambda: scp.accepts(MODALITY, "find"), 10, message="the peer allowed")
    _store_and_find(scp, tls_port, tls_files, tmp_path, client_certificate=False)
    # The plain port still answers, and the TLS port does not speak plain DICOM.
    assert scp.echo().returncode == 0
    assert scp.echo(port=tls_port).returncode != 0


def test_a_client_certificate_is_required_when_client_cas_are_set(start_scp, tls_files, tmp_path):
    DicomServerSettings.objects.filter(pk=1).update(unknown_ae_may_echo_and_store=True)
    tls_port = _tls_settings(tls_files, client_ca=True)
    scp = start_scp()
    wait_until(lambda: f"listening for TLS on port {tls_port}" in scp.log(), 10, message="the TLS listener")
    from dicomnodes.models import Peer

    Peer.objects.create(name="modality", ae_title=MODALITY, host="127.0.0.1", may_query=True)
    wait_until(lambda: scp.accepts(MODALITY, "find"), 10, message="the peer allowed")
    src = make_ct(tmp_path / "anon.dcm")
    anonymous = dcmtk(
        "storescu",
        *_tls_options(tls_files, client_certificate=False),
        "-aet",
        MODALITY,
        "-aec",
        scp.ae_title,
        "127.0.0.1",
        tls_port,
        src,
    )
    assert anonymous.returncode != 0
    wait_until(lambda: "TLS connection from 127.0.0.1 refused" in scp.log(), 10, message="the refusal logged")
    _store_and_find(scp, tls_port, tls_files, tmp_path, client_certificate=True)


def test_the_admin_refuses_a_tls_port_without_a_usable_certificate(tls_files, db):
    from django.core.exceptions import ValidationError

    row = DicomServerSettings.load()
    row.tls_port = 2762
    row.tls_certificate_file = str(tls_files["server"][0])
    row.tls_key_file = str(tls_files["client"][1])  # not the certificate's key
    with pytest.raises(ValidationError) as err:
        row.full_clean()
    assert "tls_key_file" in err.value.message_dict
    row.tls_key_file = str(tls_files["server"][1])
    row.tls_port = row.port
    with pytest.raises(ValidationError) as err:
        row.full_clean()
    assert "tls_port" in err.value.message_dict


def test_our_requestor_speaks_tls_too(start_scp, tls_files):
    """outgoing.connect with an SSLContext: a C-ECHO to runscp's TLS port
    on our own runtime (the requestor side of issue 14's TLS-ready runtime)."""
    import ssl

    from pynetdicom.presentation import build_context

    from dicomnodes.net import commandset as cs
    from dicomnodes.scp import outgoing

    DicomServerSettings.objects.filter(pk=1).update(unknown_ae_may_echo_and_store=True)
    tls_port = _tls_settings(tls_files)
    scp = start_scp()
    wait_until(lambda: f"listening for TLS on port {tls_port}" in scp.log(), 10, message="the TLS listener")
    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    assoc = outgoing.connect(
        "127.0.0.1",
        tls_port,
        calling_ae=MODALITY,
        called_ae=scp.ae_title,
        contexts=[build_context("1.2.840.10008.1.1")],
        timeout=10,
        ssl_context=context,
    )
    try:
        (verification,) = assoc.contexts.values()
        assoc.send_command(
            verification.id,
            cs.encode(
                CommandField=cs.C_ECHO_RQ,
                MessageID=7,
                AffectedSOPClassUID="1.2.840.10008.1.1",
                CommandDataSetType=cs.NO_DATA_SET,
            ),
        )
        answer = assoc.next_message().command
    finally:
        outgoing.finish(assoc)
    assert (answer.CommandField, answer.MessageIDBeingRespondedTo, answer.Status) == (cs.C_ECHO_RSP, 7, 0)
