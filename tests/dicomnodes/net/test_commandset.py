"""DIMSE command sets as bytes (dicomnodes/net/commandset.py), checked
against pynetdicom's encoding and decoding of the same messages."""

import struct
from io import BytesIO

import pytest
from pynetdicom import dimse_messages
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode as pynetdicom_decode
from pynetdicom.dsutils import encode as pynetdicom_encode

from dicomnodes.net import ProtocolError
from dicomnodes.net.commandset import (
    C_ECHO_RSP,
    C_FIND_RSP,
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATA_SET,
    CommandSet,
    ResponseTemplate,
    decode,
    encode,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123456789"  # odd length: padded


def pynetdicom_command(message_class, primitive) -> bytes:
    """The command set pynetdicom encodes for `primitive`."""
    message = message_class()
    message.primitive_to_message(primitive)
    return pynetdicom_encode(message.command_set, True, True)


def primitive(cls, **values):
    made = cls()
    for name, value in values.items():
        setattr(made, name, value)
    return made


def assert_same_values(ours: CommandSet, theirs):
    """Our decoded command set holds what pydicom decoded, tag by tag."""
    assert set(ours) == {int(element.tag) for element in theirs}
    for element in theirs:
        expected = element.value
        if element.VR == "AT":
            expected = tuple(int(t) for t in expected) if element.VM > 1 else (int(expected),)
        assert ours[int(element.tag)] == expected, element.keyword


REQUESTS = {
    "C-STORE-RQ": (
        dimse_messages.C_STORE_RQ,
        primitive(
            C_STORE,
            MessageID=7,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=INSTANCE,
            Priority=2,
            MoveOriginatorApplicationEntityTitle="ORTHANC",
            MoveOriginatorMessageID=3,
            DataSet=BytesIO(b"\x08\x00\x18\x00"),
        ),
    ),
    "C-FIND-RQ": (
        dimse_messages.C_FIND_RQ,
        primitive(C_FIND, MessageID=65535, AffectedSOPClassUID=STUDY_FIND, Priority=0, Identifier=BytesIO(b"ab")),
    ),
    "C-MOVE-RQ": (
        dimse_messages.C_MOVE_RQ,
        primitive(
            C_MOVE,
            MessageID=2,
            AffectedSOPClassUID=STUDY_MOVE,
            Priority=1,
            MoveDestination="STORESCP",
            Identifier=BytesIO(b"ab"),
        ),
    ),
    "C-GET-RSP": (
        dimse_messages.C_GET_RSP,
        primitive(
            C_GET,
            MessageIDBeingRespondedTo=2,
            AffectedSOPClassUID=STUDY_GET,
            Status=0xB000,
            NumberOfRemainingSuboperations=0,
            NumberOfCompletedSuboperations=598,
            NumberOfFailedSuboperations=2,
            NumberOfWarningSuboperations=0,
            ErrorComment="two failed",
        ),
    ),
    "C-ECHO-RQ": (dimse_messages.C_ECHO_RQ, primitive(C_ECHO, MessageID=1, AffectedSOPClassUID=VERIFICATION)),
    "C-CANCEL-RQ": (dimse_messages.C_CANCEL_RQ, primitive(C_FIND, MessageIDBeingRespondedTo=5)),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_it_decodes_what_pynetdicom_encodes(name):
    message_class, prim = REQUESTS[name]
    encoded = pynetdicom_command(message_class, prim)

    ours = decode(encoded)

    assert_same_values(ours, pynetdicom_decode(BytesIO(encoded), True, True))


def test_it_names_the_elements_the_runtime_reads():
    ours = decode(pynetdicom_command(*REQUESTS["C-STORE-RQ"]))

    assert ours.CommandField == C_STORE_RQ
    assert ours.MessageID == 7
    assert ours.AffectedSOPClassUID == CT
    assert ours.AffectedSOPInstanceUID == INSTANCE  # the NUL padding stripped
    assert ours.Priority == 2
    assert ours.MoveOriginatorApplicationEntityTitle == "ORTHANC"  # the space padding stripped
    assert ours.MoveOriginatorMessageID == 3
    assert ours.has_data_set()
    assert ours.Status is None  # absent
    with pytest.raises(AttributeError):
        ours.NoSuchKeyword


def test_it_reads_sub_operation_counts_and_error_comment():
    ours = decode(pynetdicom_command(*REQUESTS["C-GET-RSP"]))

    assert (ours.NumberOfCompletedSuboperations, ours.NumberOfFailedSuboperations) == (598, 2)
    assert ours.ErrorComment == "two failed"
    assert not ours.has_data_set()


def test_what_it_encodes_pynetdicom_decodes_to_the_same_values():
    values = dict(
        CommandField=0x0021,
        MessageID=9,
        AffectedSOPClassUID=STUDY_MOVE,
        Priority=0,
        CommandDataSetType=0x0001,
        MoveDestination="ODD",
        OffendingElement=(0x00100010, 0x00080052),
        ErrorComment="odd",
        RequestedSOPInstanceUID=INSTANCE,
    )

    encoded = encode(**values)

    theirs = pynetdicom_decode(BytesIO(encoded), True, True)
    assert theirs.CommandGroupLength == len(encoded) - 12
    for keyword, value in values.items():
        assert getattr(theirs, keyword) == (list(value) if keyword == "OffendingElement" else value)
    assert_same_values(decode(encoded), theirs)


def test_it_encodes_as_pynetdicom_does_byte_for_byte():
    message_class, prim = REQUESTS["C-MOVE-RQ"]

    ours = encode(
        CommandField=0x0021,
        MessageID=2,
        AffectedSOPClassUID=STUDY_MOVE,
        Priority=1,
        MoveDestination="STORESCP",
        CommandDataSetType=0x0001,
    )

    assert ours == pynetdicom_command(message_class, prim)


def test_it_puts_elements_in_tag_order_with_even_lengths():
    encoded = encode({0x00001000: "1.2.3", 0x00000100: 1, 0x00000600: "ABC", 0x00000800: NO_DATA_SET})

    tags, offset = [], 12
    while offset < len(encoded):
        group, element, length = struct.unpack_from("<HHL", encoded, offset)
        assert length % 2 == 0
        tags.append(element)
        offset += 8 + length
    assert tags == sorted(tags) == [0x0100, 0x0600, 0x0800, 0x1000]
    assert b"1.2.3\x00" in encoded and b"ABC " in encoded


def test_it_keeps_unknown_group_0000_elements_as_bytes():
    encoded = encode({0x00000100: 1, 0x00000800: NO_DATA_SET, 0x00005010: b"SETID "})

    assert decode(encoded)[0x00005010] == b"SETID "


def test_it_refuses_to_encode_a_value_too_long_for_its_vr():
    with pytest.raises(ValueError):
        encode(MoveDestination="A" * 17)


def element(tag, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def with_group_length(body: bytes, stated=None) -> bytes:
    return element(0, struct.pack("<L", len(body) if stated is None else stated)) + body


ECHO_BODY = element(0x00000100, b"\x30\x00") + element(0x00000800, b"\x01\x01")

MALFORMED = {
    "element outside group 0000": with_group_length(ECHO_BODY + element(0x00080018, b"1.2\x00")),
    "group length too big": with_group_length(ECHO_BODY, len(ECHO_BODY) + 2),
    "group length too small": with_group_length(ECHO_BODY, len(ECHO_BODY) - 2),
    "no group length": ECHO_BODY,
    "empty": b"",
    "element longer than what is left": with_group_length(ECHO_BODY + struct.pack("<HHL", 0, 0x1000, 40) + b"1.2"),
    "element header cut short": with_group_length(ECHO_BODY + b"\x00\x00\x00\x10"),
    "undefined length": with_group_length(ECHO_BODY + struct.pack("<HHL", 0, 0x1000, 0xFFFFFFFF)),
    "tags out of order": with_group_length(element(0x00000800, b"\x01\x01") + element(0x00000100, b"\x30\x00")),
    "a tag twice": with_group_length(ECHO_BODY + element(0x00000800, b"\x01\x01")),
    "US of three bytes": with_group_length(element(0x00000100, b"\x30\x00\x00\x00")[:-1]),
    "AT of six bytes": with_group_length(ECHO_BODY + element(0x00000901, b"\x10\x00\x10\x00\x08\x00")),
    "UI not ASCII": with_group_length(ECHO_BODY + element(0x00001000, b"1.\xff\x00")),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_it_refuses_a_malformed_command_set(case):
    with pytest.raises(ProtocolError):
        decode(MALFORMED[case])


def test_a_store_response_renders_as_pynetdicom_encodes_it():
    template = ResponseTemplate(C_STORE_RSP, CT)

    ours = template.render(7, 0x0000, instance_uid=INSTANCE)

    theirs = pynetdicom_command(
        dimse_messages.C_STORE_RSP,
        primitive(
            C_STORE, MessageIDBeingRespondedTo=7, AffectedSOPClassUID=CT, AffectedSOPInstanceUID=INSTANCE, Status=0
        ),
    )
    assert ours == theirs


def test_a_store_failure_renders_with_its_comment_and_offending_element():
    template = ResponseTemplate(C_STORE_RSP, CT)

    ours = template.render(
        65535, 0xC000, instance_uid=INSTANCE, error_comment="Cannot\\understand", offending_element=0x7FE00010
    )

    theirs = pynetdicom_command(
        dimse_messages.C_STORE_RSP,
        primitive(
            C_STORE,
            MessageIDBeingRespondedTo=65535,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=INSTANCE,
            Status=0xC000,
            ErrorComment="Cannot/understand",
            OffendingElement=[0x7FE00010],
        ),
    )
    assert ours == theirs
    assert decode(ours).ErrorComment == "Cannot/understand"


def test_an_echo_response_renders_as_pynetdicom_encodes_it():
    ours = ResponseTemplate(C_ECHO_RSP, VERIFICATION).render(1, 0)

    theirs = pynetdicom_command(
        dimse_messages.C_ECHO_RSP,
        primitive(C_ECHO, MessageIDBeingRespondedTo=1, AffectedSOPClassUID=VERIFICATION, Status=0),
    )
    assert ours == theirs


def test_find_responses_render_as_pynetdicom_encodes_them():
    template = ResponseTemplate(C_FIND_RSP, STUDY_FIND)

    pending = template.render(4, 0xFF00, data_set_follows=True)
    final = template.render(4, 0xA900, error_comment="x" * 80)

    assert pending == pynetdicom_command(
        dimse_messages.C_FIND_RSP,
        primitive(
            C_FIND, MessageIDBeingRespondedTo=4, AffectedSOPClassUID=STUDY_FIND, Status=0xFF00, Identifier=BytesIO(b"a")
        ),
    )
    assert final == pynetdicom_command(
        dimse_messages.C_FIND_RSP,
        primitive(
            C_FIND, MessageIDBeingRespondedTo=4, AffectedSOPClassUID=STUDY_FIND, Status=0xA900, ErrorComment="x" * 64
        ),
    )
    assert decode(pending).has_data_set() and not decode(final).has_data_set()


def test_move_and_get_responses_carry_their_sub_operation_counts():
    counts = dict(remaining=3, completed=596, failed=1, warning=0)

    move = ResponseTemplate(C_MOVE_RSP, STUDY_MOVE).render(2, 0xFF00, **counts)
    get = ResponseTemplate(C_GET_RSP, STUDY_GET).render(2, 0xFF00, **counts)

    for ours, message_class, prim_class, sop_class in (
        (move, dimse_messages.C_MOVE_RSP, C_MOVE, STUDY_MOVE),
        (get, dimse_messages.C_GET_RSP, C_GET, STUDY_GET),
    ):
        theirs = pynetdicom_command(
            message_class,
            primitive(
                prim_class,
                MessageIDBeingRespondedTo=2,
                AffectedSOPClassUID=sop_class,
                Status=0xFF00,
                NumberOfRemainingSuboperations=3,
                NumberOfCompletedSuboperations=596,
                NumberOfFailedSuboperations=1,
                NumberOfWarningSuboperations=0,
            ),
        )
        assert ours == theirs
        assert decode(ours).NumberOfRemainingSuboperations == 3


def test_a_latin1_error_comment_is_read_not_refused():
    encoded = with_group_length(ECHO_BODY + element(0x00000902, "Fehler ungültig".encode("latin-1") + b" "))

    assert decode(encoded).ErrorComment == "Fehler ung\ufffdltig"
