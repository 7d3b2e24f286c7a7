"""AE title rules (PS3.5 6.2, VR AE) and the numeric limits of the DICOM
server settings and peers, as the admin sees them through full_clean()."""

import pytest
from django.core.exceptions import ValidationError

from dicomnodes.models import DicomServerSettings, Peer

BAD_AE_TITLES = {
    "empty": "",
    "17 characters": "A" * 17,
    "inner space": "MY PACS",
    "leading space": " PACS",
    "trailing space": "PACS ",
    "tab": "PACS\t1",
    "control character": "PACS\x01",
    "backslash": "PACS\\1",
    "non-ASCII": "PACSÉ",
}
GOOD_AE_TITLES = ["PACS", "A" * 16, "pacs", "A-B_C.1"]


def settings_with(**values):
    row = DicomServerSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    return row


def a_peer(**values):
    fields = dict(name="CT scanner", ae_title="MODALITY1", host="192.0.2.10", port=104)
    fields.update(values)
    return Peer(**fields)


def errors_of(obj):
    """The field errors full_clean() raises, or {} when it accepts obj."""
    try:
        obj.full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


@pytest.mark.parametrize("title", BAD_AE_TITLES.values(), ids=BAD_AE_TITLES.keys())
def test_server_settings_refuse_a_bad_ae_title(db, title):
    assert "ae_title" in errors_of(settings_with(ae_title=title))


@pytest.mark.parametrize("title", GOOD_AE_TITLES)
def test_server_settings_accept_a_good_ae_title(db, title):
    assert errors_of(settings_with(ae_title=title)) == {}


def test_server_settings_refuse_an_ae_title_ending_in_a_newline(db):
    assert "ae_title" in errors_of(settings_with(ae_title="PACS\n"))


def test_the_length_error_says_how_long_the_title_is(db):
    assert any("17" in message for message in errors_of(settings_with(ae_title="A" * 17))["ae_title"])


def test_server_settings_refuse_a_port_above_65535(db):
    assert "port" in errors_of(settings_with(port=65536))


def test_server_settings_accept_port_0_which_switches_the_server_off(db):
    assert errors_of(settings_with(port=0)) == {}


def test_server_settings_refuse_a_service_timeout_of_0(db):
    assert "service_timeout" in errors_of(settings_with(service_timeout=0))


@pytest.mark.parametrize("title", BAD_AE_TITLES.values(), ids=BAD_AE_TITLES.keys())
def test_a_peer_with_a_bad_ae_title_is_refused(db, title):
    assert "ae_title" in errors_of(a_peer(ae_title=title))


@pytest.mark.parametrize("title", GOOD_AE_TITLES)
def test_a_peer_with_a_good_ae_title_is_accepted(db, title):
    assert errors_of(a_peer(ae_title=title)) == {}


@pytest.mark.parametrize("port", [0, 65536])
def test_a_peer_port_outside_1_to_65535_is_refused(db, port):
    assert "port" in errors_of(a_peer(port=port))


def test_a_peer_host_with_a_space_is_refused(db):
    assert "host" in errors_of(a_peer(host="ct scanner.local"))


def test_retry_delays_are_read_in_seconds_minutes_and_hours():
    from dicomnodes.validators import parse_delays

    assert parse_delays("1m 5m, 15m 1h 30s") == [60, 300, 900, 3600, 30]
    assert parse_delays("") == []


@pytest.mark.parametrize("text", ["5", "5 min", "0s", "8d", "-1m"])
def test_a_delay_without_a_unit_or_out_of_range_is_refused(text):
    from dicomnodes.validators import parse_delays

    with pytest.raises(ValueError):
        parse_delays(text)
