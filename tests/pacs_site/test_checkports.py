"""`manage.py checkports`: who holds each listener's port, and the machine's addresses."""

import os
import socket
from io import StringIO

import pytest
from django.core.management import call_command

from dicomnodes.models import DicomServerSettings
from tests.support.processes import free_port
from worklist.models import WorklistSettings


def checkports():
    out = StringIO()
    call_command("checkports", stdout=out)
    return out.getvalue()


def dicom_line(output):
    (line,) = [line for line in output.splitlines() if "DICOM (runscp)" in line]
    return line


@pytest.fixture(autouse=True)
def hl7_listener_off(db, monkeypatch):
    """Only the DICOM port is under test: switch the HL7 and web ports off."""
    from portal.models import HttpSettings

    row = WorklistSettings.load()
    row.hl7_port = 0
    row.save()
    http = HttpSettings.load()
    http.web_port = 0
    http.save()
    monkeypatch.delenv("PACS_WEB_PORT", raising=False)


def set_dicom_port(port):
    row = DicomServerSettings.load()
    row.port = port
    row.save()


@pytest.fixture
def held_port():
    """A port this test process listens on, like a program that is not ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_port_0_is_reported_disabled(db):
    set_dicom_port(0)
    assert "DISABLED" in dicom_line(checkports())


def test_a_port_nobody_listens_on_is_reported_free(db):
    port = free_port()
    set_dicom_port(port)
    output = checkports()
    assert f"port {port}" in dicom_line(output)
    assert "FREE" in dicom_line(output)
    assert "held by another program" not in output


def test_a_port_held_by_another_program_names_its_pid(db, held_port):
    set_dicom_port(held_port)
    output = checkports()
    assert "OTHER" in dicom_line(output)
    assert f"PID {os.getpid()} " in dicom_line(output)
    assert "1 port(s) held by another program" in output


def test_a_port_held_by_our_runscp_is_reported_ours(scp):
    line = dicom_line(checkports())
    assert "OURS" in line
    assert f"PID {scp.proc.pid}" in line


def test_it_lists_the_loopback_addresses_of_both_families(db):
    set_dicom_port(0)
    addresses = checkports().split("Addresses of this machine", 1)[1].split()
    assert "127.0.0.1" in addresses
    assert "::1" in addresses


def test_the_web_port_of_the_http_settings_is_checked_too(db, held_port, monkeypatch):
    from portal.models import HttpSettings

    monkeypatch.delenv("PACS_WEB_PORT", raising=False)
    set_dicom_port(0)
    http = HttpSettings.load()
    http.web_port = held_port
    http.save()
    (line,) = [line for line in checkports().splitlines() if "web (daphne)" in line]
    assert f"port {held_port}" in line and "OTHER" in line and "HTTP server settings" in line
    monkeypatch.setenv("PACS_WEB_PORT", "0")
    (line,) = [line for line in checkports().splitlines() if "web (daphne)" in line]
    assert "DISABLED" in line and "PACS_WEB_PORT" in line
