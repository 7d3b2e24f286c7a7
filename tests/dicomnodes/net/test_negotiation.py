"""Association negotiation (dicomnodes/net/negotiation.py), checked against
pynetdicom: its requestor's A-ASSOCIATE-RQ read, our AC decoded by its codec,
our contexts against its own negotiation functions, and fuzzed requests
refused with ProtocolError only."""

import random
import struct
import time

import pytest
from pynetdicom import build_context, build_role
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import (
    StoragePresentationContexts,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    negotiate_unrestricted,
)
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomnodes.net import ProtocolError
from dicomnodes.net.negotiation import (
    Context,
    MustReject,
    accept,
    decode_accept,
    decode_reject,
    decode_request,
    reject,
    request,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.90"
PRIVATE_SOP_CLASS = "1.3.46.670589.11.0.0.12.1"  # a vendor's private storage class
UNCOMPRESSED = [EXPLICIT, IMPLICIT]
OURS = {
    "max_pdu_received": 2**20,
    "implementation_class_uid": "1.2.826.0.1.3680043.9.7433.1.1",
    "implementation_version_name": "PACS_1",
}
MODALITY = {"calling_ae": "CT_SCANNER", "called_ae": "PACS"}


def supported_contexts():
    """What runscp supports besides unrestricted storage (as acceptor.SUPPORTED)."""
    return [build_context(Verification, [IMPLICIT, EXPLICIT, BIG_ENDIAN])] + [
        build_context(uid, UNCOMPRESSED)
        for uid in (
            PatientRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        )
    ]


def pynetdicom_request(contexts, *, extra=(), max_pdu=16384, version_name="PYNETDICOM_304", ids=None):
    """The A-ASSOCIATE-RQ body as pynetdicom's ACSE send_request encodes it
    (AE.associate numbers the contexts 1, 3, 5...)."""
    for index, cx in enumerate(contexts):
        cx.context_id = ids[index] if ids else 2 * index + 1
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = MODALITY["calling_ae"]
    primitive.called_ae_title = MODALITY["called_ae"]
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = version_name
    primitive.user_information = [length, class_uid, version, *extra]
    return A_ASSOCIATE_RQ(primitive).encode()[6:]


def async_window(invoked, performed):
    item = AsynchronousOperationsWindowNegotiation()
    item.maximum_number_operations_invoked = invoked
    item.maximum_number_operations_performed = performed
    return item


def user_identity():
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"radiographer"
    item.secondary_field = b"secret"
    item.positive_response_requested = True
    return item


def sop_extended():
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = PatientRootQueryRetrieveInformationModelFind
    item.service_class_application_information = b"\x01"
    return item


def storescu_like():
    """storescu +xa style: CT and MR in several syntaxes each, each
    syntax also alone, and a private SOP class."""
    contexts = [build_context(CTImageStorage, [JPEG_LOSSLESS, EXPLICIT, IMPLICIT])]
    contexts += [build_context(MRImageStorage, [ts]) for ts in (J2K, EXPLICIT, IMPLICIT)]
    contexts.append(build_context(PRIVATE_SOP_CLASS, [EXPLICIT, IMPLICIT]))
    return contexts


def getscu_like():
    """getscu: the Q/R GET model, and storage classes with SCP role asked."""
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet, UNCOMPRESSED)]
    contexts += [build_context(uid, [JPEG_BASELINE, EXPLICIT, IMPLICIT]) for uid in (CTImageStorage, MRImageStorage)]
    roles = [build_role(uid, scp_role=True) for uid in (CTImageStorage, MRImageStorage)]
    return contexts, roles


def many_storage_contexts():
    """120 storage classes in three syntaxes each, as DCMTK's storescu -xa."""
    return [
        build_context(cx.abstract_syntax, [JPEG_LOSSLESS, EXPLICIT, IMPLICIT])
        for cx in StoragePresentationContexts[:120]
    ]


def variants():
    get_contexts, get_roles = getscu_like()
    return {
        "pynetdicom echoscu": ([build_context(Verification)], []),
        "storescu, several syntaxes, private class": (storescu_like(), []),
        "storescu, 120 storage classes": (many_storage_contexts(), []),
        "getscu, SCP role on storage classes": (get_contexts, get_roles),
        "findscu with async ops and user identity": (
            [build_context(PatientRootQueryRetrieveInformationModelFind, [EXPLICIT, IMPLICIT])],
            [async_window(5, 5), user_identity(), sop_extended()],
        ),
        "unsupported syntax and classes": (
            [
                build_context(Verification, [JPEG_BASELINE]),
                build_context("1.2.840.10008.1.20.1", UNCOMPRESSED),  # Storage Commitment, not supported
                build_context(CTImageStorage, [EXPLICIT]),
            ],
            [],
        ),
    }


def decoded_ac(pdu):
    assert pdu[0] == 0x02
    assert struct.unpack(">L", pdu[2:6])[0] == len(pdu) - 6
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu)
    return ac, ac.to_primitive()


def role_items(items):
    """{SOP class UID: (scu, scp)} of the role selection items among `items`."""
    return {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in items
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }


def our_outcome(answer):
    """An `Accepted` in the terms of `outcome`."""
    ours = {
        cx.id: (cx.abstract_syntax, 0, [cx.transfer_syntax], cx.scu_role, cx.scp_role)
        for cx in answer.contexts.values()
    }
    ours.update(outcome(answer.rejected))
    return ours


def outcome(contexts):
    """What matters of negotiated pynetdicom contexts, by ID."""
    return {
        cx.context_id: (
            str(cx.abstract_syntax),
            cx.result,
            [str(ts) for ts in cx.transfer_syntax],
            cx.as_scu,
            cx.as_scp,
        )
        for cx in contexts
    }


@pytest.mark.parametrize("name", list(variants()))
@pytest.mark.parametrize("unrestricted", [True, False])
def test_it_answers_as_pynetdicom_negotiates(name, unrestricted):
    contexts, extra = variants()[name]
    body = pynetdicom_request(contexts, extra=extra)
    received = decode_request(body)
    supported = supported_contexts()
    answer = accept(received, supported=supported, ae_title="PACS", unrestricted_storage=unrestricted, **OURS)

    # The reference: pynetdicom's own negotiation of the RQ it decodes.
    rq = A_ASSOCIATE_RQ()
    rq.decode(b"\x01\x00" + struct.pack(">L", len(body)) + body)
    rq_primitive = rq.to_primitive()
    rq_roles = role_items(rq_primitive.user_information)
    negotiate = negotiate_unrestricted if unrestricted else negotiate_as_acceptor
    expected, expected_roles = negotiate(rq_primitive.presentation_context_definition_list, supported, rq_roles)
    assert our_outcome(answer) == outcome(expected)

    # And the AC as pynetdicom's requestor reads it.
    ac, primitive = decoded_ac(answer.pdu)
    assert (ac.reserved_aet, ac.reserved_aec) == ("PACS", "CT_SCANNER")
    results = {
        cx.context_id: (cx.result, [str(ts) for ts in cx.transfer_syntax])
        for cx in primitive.presentation_context_definition_results_list
    }
    assert results == {cx_id: (result, ts) for cx_id, (_, result, ts, _, _) in outcome(expected).items()}
    user = {type(item).__name__: item for item in primitive.user_information}
    assert user["MaximumLengthNotification"].maximum_length_received == 2**20
    assert user["ImplementationClassUIDNotification"].implementation_class_uid == OURS["implementation_class_uid"]
    assert user["ImplementationVersionNameNotification"].implementation_version_name == "PACS_1"
    # Same items in the same order (pynetdicom sorts them by UID).
    assert list(role_items(primitive.user_information).items()) == list(role_items(expected_roles).items())
    assert "UserIdentityNegotiation" not in user
    assert "SOPClassExtendedNegotiation" not in user


def test_it_reads_the_request_of_pynetdicom_requestor():
    body = pynetdicom_request(storescu_like(), extra=[async_window(3, 2)], max_pdu=32768)
    received = decode_request(body)
    assert received.calling_ae == "CT_SCANNER"
    assert received.called_ae == "PACS"
    assert received.max_pdu == 32768
    assert received.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert received.implementation_version_name == "PYNETDICOM_304"
    assert received.async_ops == (3, 2)
    assert [cx.context_id for cx in received.contexts] == [1, 3, 5, 7, 9]
    assert received.contexts[0].transfer_syntax == [JPEG_LOSSLESS, EXPLICIT, IMPLICIT]


def test_it_reads_no_maximum_length_as_no_limit():
    body = pynetdicom_request([build_context(Verification)], max_pdu=0)
    assert decode_request(body).max_pdu == 0
    # A request without the Maximum Length item at all (pynetdicom would
    # not send one, so cut it out of the User Information item).
    start = body.index(b"\x51\x00\x00\x04")
    cut = body[:start] + body[start + 8 :]
    user_item = cut.index(b"\x50\x00", 68)
    length = struct.unpack(">H", cut[user_item + 2 : user_item + 4])[0]
    cut = cut[: user_item + 2] + struct.pack(">H", length - 8) + cut[user_item + 4 :]
    assert decode_request(cut).max_pdu == 0


def answer_to(contexts, extra=(), **kwargs):
    received = decode_request(pynetdicom_request(contexts, extra=extra))
    return accept(received, supported=supported_contexts(), ae_title="PACS", **{**OURS, **kwargs})


def test_it_accepts_storage_and_private_classes_in_the_first_proposed_syntax():
    answer = answer_to(storescu_like())
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in answer.contexts.values()] == [
        (CTImageStorage, JPEG_LOSSLESS),
        (MRImageStorage, J2K),
        (MRImageStorage, EXPLICIT),
        (MRImageStorage, IMPLICIT),
        (PRIVATE_SOP_CLASS, EXPLICIT),
    ]
    assert answer.rejected == []


def test_it_refuses_storage_not_supported_without_unrestricted_storage():
    answer = answer_to(
        [build_context(CTImageStorage, [EXPLICIT]), build_context(Verification)], unrestricted_storage=False
    )
    assert list(answer.contexts) == [3]
    assert [(cx.context_id, cx.result) for cx in answer.rejected] == [(1, 0x03)]


def test_it_accepts_verification_and_query_classes_only_when_supported():
    # Not Modality Worklist: pynetdicom looks classes up by pydicom's keyword,
    # misses its own ModalityWorklistInformationFind and so accepts MWL as
    # an unknown (storage-like) class under unrestricted storage.
    commitment = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model
    answer = answer_to(
        [
            build_context(Verification),
            build_context(PatientRootQueryRetrieveInformationModelFind),
            build_context(commitment),
        ]
    )
    assert {cx.id: cx.transfer_syntax for cx in answer.contexts.values()} == {1: IMPLICIT, 3: EXPLICIT}
    assert [(cx.context_id, cx.result) for cx in answer.rejected] == [(5, 0x03)]  # abstract syntax not supported


def test_it_rejects_a_context_in_an_unsupported_transfer_syntax():
    answer = answer_to([build_context(Verification, [JPEG_BASELINE]), build_context(Verification, [EXPLICIT])])
    assert list(answer.contexts) == [3]
    assert [(cx.context_id, cx.result) for cx in answer.rejected] == [(1, 0x04)]  # transfer syntaxes not supported
    _, primitive = decoded_ac(answer.pdu)
    # Accepted first, then rejected, as pynetdicom's send_accept.
    assert [cx.context_id for cx in primitive.presentation_context_definition_results_list] == [3, 1]


def test_it_may_send_c_stores_on_storage_contexts_a_c_get_scu_offers_to_serve():
    contexts, roles = getscu_like()
    answer = answer_to(contexts, extra=roles)
    get, ct, mr = (answer.contexts[cx_id] for cx_id in (1, 3, 5))
    assert (get.scu_role, get.scp_role) == (False, True)  # we answer the C-GET-RQ
    assert (ct.scu_role, ct.scp_role) == (True, False)  # we send C-STORE-RQs
    assert (mr.scu_role, mr.scp_role) == (True, False)
    _, primitive = decoded_ac(answer.pdu)
    assert role_items(primitive.user_information) == {CTImageStorage: (False, True), MRImageStorage: (False, True)}


@pytest.mark.parametrize("window, answered", [(None, None), ((1, 1), None), ((5, 3), (1, 1)), ((0, 0), (1, 1))])
def test_it_answers_an_asynchronous_operations_window_with_one_at_a_time(window, answered):
    extra = [async_window(*window)] if window else []
    answer = answer_to([build_context(Verification)], extra=extra)
    _, primitive = decoded_ac(answer.pdu)
    items = [item for item in primitive.user_information if isinstance(item, AsynchronousOperationsWindowNegotiation)]
    got = (items[0].maximum_number_operations_invoked, items[0].maximum_number_operations_performed) if items else None
    assert got == answered


def test_it_reports_the_peers_maximum_length():
    received = decode_request(pynetdicom_request([build_context(Verification)], max_pdu=4096))
    assert accept(received, supported=supported_contexts(), ae_title="PACS", **OURS).max_pdu == 4096


@pytest.mark.parametrize("rejection", [(1, 1, 7), (1, 1, 3), (2, 3, 2), (1, 2, 2), (2, 3, 1)])
def test_it_encodes_rejections_as_pynetdicom_reads_them(rejection):
    pdu = reject(*rejection)
    assert pdu[:6] == b"\x03\x00\x00\x00\x00\x04"
    rj = A_ASSOCIATE_RJ()
    rj.decode(pdu)
    assert (rj.result, rj.source, rj.reason_diagnostic) == rejection
    assert decode_reject(pdu[6:]) == rejection


@pytest.mark.parametrize("rejection", [(3, 1, 1), (1, 4, 1), (1, 2, 7), (1, 3, 3)])
def test_it_refuses_to_encode_a_rejection_the_standard_has_not(rejection):
    with pytest.raises(ValueError):
        reject(*rejection)


def test_it_refuses_a_rejection_of_the_wrong_length():
    with pytest.raises(ProtocolError):
        decode_reject(b"\x00\x01\x01")


def with_fields(body, offset, data):
    return body[:offset] + data + body[offset + len(data) :]


VERIFICATION_RQ = pynetdicom_request([build_context(Verification)])


def test_it_rejects_another_protocol_version_as_the_standard_says():
    with pytest.raises(MustReject) as error:
        decode_request(with_fields(VERIFICATION_RQ, 0, b"\x00\x02"))
    assert error.value.rejection == (1, 2, 2)
    assert "protocol version 0x0002" in error.value.reason
    # Version 1 among others: only bit 0 is tested.
    assert decode_request(with_fields(VERIFICATION_RQ, 0, b"\x00\x03")).called_ae == "PACS"


def test_it_rejects_another_application_context():
    other = VERIFICATION_RQ.replace(APPLICATION_CONTEXT_NAME.encode(), b"1.2.840.10008.3.1.1.2")
    with pytest.raises(MustReject) as error:
        decode_request(other)
    assert error.value.rejection == (1, 1, 2)


def test_it_refuses_a_request_without_presentation_context():
    primitive = A_ASSOCIATE_RQ()
    primitive.decode(b"\x01\x00" + struct.pack(">L", len(VERIFICATION_RQ)) + VERIFICATION_RQ)
    primitive.variable_items = [item for item in primitive.variable_items if item.item_type != 0x20]
    with pytest.raises(ProtocolError, match="without a presentation context"):
        decode_request(primitive.encode()[6:])


def test_it_refuses_the_same_context_id_twice():
    body = pynetdicom_request([build_context(Verification), build_context(CTImageStorage)], ids=[1, 1])
    with pytest.raises(ProtocolError, match="ID 1 twice"):
        decode_request(body)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_it_refuses_a_syntax_that_is_not_a_uid():
    body = pynetdicom_request([build_context(Verification, [EXPLICIT])])
    with pytest.raises(ProtocolError, match="not a UID"):
        decode_request(body.replace(EXPLICIT.encode(), b"1.2.840.10008.1.2\x011"))


def test_it_refuses_more_contexts_than_ids_before_decoding_them():
    contexts = [build_context(Verification) for _ in range(129)]
    body = pynetdicom_request(contexts, ids=[1] * 129)
    started = time.perf_counter()
    with pytest.raises(ProtocolError, match="129 presentation contexts"):
        decode_request(body)
    assert time.perf_counter() - started < 0.05


def test_it_refuses_thousands_of_syntaxes_before_decoding_them():
    # 100 contexts of 50 syntaxes: 5,100 UIDs, two seconds of pynetdicom's decoding.
    syntaxes = [f"1.2.840.10008.1.2.4.{n}" for n in range(50)]
    body = pynetdicom_request([build_context(CTImageStorage, syntaxes) for _ in range(100)])
    started = time.perf_counter()
    with pytest.raises(ProtocolError, match="5100 syntaxes"):
        decode_request(body)
    assert time.perf_counter() - started < 0.05


def test_it_reads_128_contexts_of_several_syntaxes():
    syntaxes = [JPEG_LOSSLESS, J2K, JPEG_BASELINE, EXPLICIT, IMPLICIT]
    contexts = [build_context(cx.abstract_syntax, syntaxes) for cx in StoragePresentationContexts]
    contexts += [build_context(f"{PRIVATE_SOP_CLASS}.{n}", syntaxes) for n in range(8)]
    assert len(decode_request(pynetdicom_request(contexts)).contexts) == 128


def test_it_refuses_a_context_without_transfer_syntax():
    body = pynetdicom_request([build_context(Verification, [])])
    with pytest.raises(ProtocolError, match="no transfer syntax"):
        decode_request(body)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "shorter than"),
        (VERIFICATION_RQ[:67], "shorter than"),
        (VERIFICATION_RQ[:100], "undecodable"),
        (VERIFICATION_RQ + b"\x99\x00\x00\x00", "undecodable"),  # unknown item type
        (with_fields(VERIFICATION_RQ, 4, b" " * 16), "undecodable"),  # called AE all spaces
    ],
)
def test_it_refuses_what_pynetdicom_cannot_decode(body, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode_request(body)


# The requestor's side.


def test_its_request_reads_as_pynetdicom_encodes_one():
    contexts, roles = getscu_like()
    ours = request(
        calling_ae="PACS",
        called_ae="ORTHANC",
        contexts=contexts,
        roles=role_items(roles),
        **OURS,
    )
    theirs = b"\x01\x00" + struct.pack(">L", len(ours) - 6) + pynetdicom_request_as(contexts, roles, "PACS", "ORTHANC")
    assert ours == theirs


def pynetdicom_request_as(contexts, roles, calling, called):
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    numbered = [build_context(cx.abstract_syntax, cx.transfer_syntax) for cx in contexts]
    for index, cx in enumerate(numbered):
        cx.context_id = 2 * index + 1
    primitive.presentation_context_definition_list = numbered
    length = MaximumLengthNotification()
    length.maximum_length_received = OURS["max_pdu_received"]
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = OURS["implementation_class_uid"]
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = OURS["implementation_version_name"]
    primitive.user_information = [length, class_uid, version, *roles]
    return A_ASSOCIATE_RQ(primitive).encode()[6:]


def test_its_request_leaves_the_callers_contexts_unnumbered():
    contexts = [build_context(Verification)]
    request(calling_ae="PACS", called_ae="PEER", contexts=contexts, **OURS)
    assert contexts[0].context_id is None


@pytest.mark.parametrize("name", list(variants()))
def test_both_sides_agree_on_the_contexts(name):
    contexts, extra = variants()[name]
    roles = role_items(extra)
    for cx in contexts:
        cx.context_id = None
    rq = request(calling_ae="PACS", called_ae="PEER", contexts=contexts, roles=roles, **OURS)
    received = decode_request(rq[6:])
    assert (received.calling_ae, received.called_ae, received.max_pdu) == ("PACS", "PEER", 2**20)
    acceptor = accept(received, supported=supported_contexts(), ae_title="PEER", **{**OURS, "max_pdu_received": 16384})
    requestor = decode_accept(acceptor.pdu[6:], requested=contexts, roles=roles)
    assert requestor.max_pdu == 16384
    assert requestor.contexts.keys() == acceptor.contexts.keys()
    assert [cx.context_id for cx in requestor.rejected] == [cx.context_id for cx in acceptor.rejected]
    for cx_id, theirs in acceptor.contexts.items():
        ours = requestor.contexts[cx_id]
        assert (ours.abstract_syntax, ours.transfer_syntax) == (theirs.abstract_syntax, theirs.transfer_syntax)
        # One side's requests are the other side's to answer.
        if theirs.abstract_syntax in roles:
            assert (ours.scu_role, ours.scp_role) == (theirs.scp_role, theirs.scu_role)
        else:
            assert (ours.scu_role, ours.scp_role) == (True, False)


def test_it_reads_an_accept_as_pynetdicom_negotiates_as_requestor():
    contexts, roles = getscu_like()
    role_map = role_items(roles)
    received = decode_request(pynetdicom_request(contexts, extra=roles))
    acceptor = accept(
        received,
        supported=[build_context(StudyRootQueryRetrieveInformationModelGet, [IMPLICIT])],
        ae_title="PACS",
        **OURS,
    )
    for cx in contexts:
        cx.context_id = None
    got = decode_accept(acceptor.pdu[6:], requested=contexts, roles=role_map)

    # The reference, as pynetdicom's ACSE _negotiate_as_requestor.
    _, primitive = decoded_ac(acceptor.pdu)
    requested = []
    for index, cx in enumerate(contexts):
        copy = build_context(cx.abstract_syntax, cx.transfer_syntax)
        copy.context_id = 2 * index + 1
        if copy.abstract_syntax in role_map:
            copy.scu_role, copy.scp_role = role_map[copy.abstract_syntax]
        requested.append(copy)
    ac_roles = role_items(primitive.user_information)
    expected = negotiate_as_requestor(requested, primitive.presentation_context_definition_results_list, ac_roles)
    assert our_outcome(got) == outcome(expected)
    assert got.contexts[3] == Context(3, CTImageStorage, JPEG_BASELINE, scu_role=False, scp_role=True)
    assert got.max_pdu == 2**20


def test_it_refuses_an_accept_in_a_syntax_we_did_not_propose():
    contexts = [build_context(Verification, [EXPLICIT])]
    received = decode_request(pynetdicom_request(contexts))
    ac = A_ASSOCIATE_AC()
    ac.decode(accept(received, supported=supported_contexts(), ae_title="PACS", **OURS).pdu)
    ac.presentation_context[0].transfer_syntax_sub_item[0].transfer_syntax_name = BIG_ENDIAN
    with pytest.raises(ProtocolError, match="did not propose"):
        decode_accept(ac.encode()[6:], requested=[build_context(Verification, [EXPLICIT])])


def test_it_refuses_an_accept_it_cannot_decode():
    with pytest.raises(ProtocolError):
        decode_accept(b"\x00\x01" + b"\x00" * 66 + b"\x99\x00\x00\x02ab", requested=[build_context(Verification)])


# Fuzzing: mutated A-ASSOCIATE-RQ bodies give a Request or ProtocolError.


def item_spans(body):
    """(start, end, parent's start or None) of each item and sub-item of
    an RQ body, as far as their lengths fit in it (a mutated body's may not)."""
    spans, offset = [], 68
    while offset + 4 <= len(body):
        item_type = body[offset]
        end = min(len(body), offset + 4 + struct.unpack(">H", body[offset + 2 : offset + 4])[0])
        spans.append((offset, end, None))
        first = {0x20: offset + 8, 0x50: offset + 4}.get(item_type)
        while first is not None and first + 4 <= end:
            sub_end = first + 4 + struct.unpack(">H", body[first + 2 : first + 4])[0]
            spans.append((first, sub_end, offset))
            first = sub_end
        offset = end
    return spans


def resized(body, parent, delta):
    """`body` with its parent item's length changed by `delta`."""
    if parent is None:
        return body
    length = struct.unpack(">H", body[parent + 2 : parent + 4])[0] + delta
    return with_fields(body, parent + 2, struct.pack(">H", length % 0x10000))


def mutate(body, rng):
    spans = item_spans(body)
    start, end, parent = rng.choice(spans) if spans else (68, len(body), None)
    kind = rng.randrange(7)
    if kind == 0 or not spans:  # flipped bytes
        data = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:  # truncated
        return body[: rng.randrange(len(body))]
    if kind == 2:  # an item's length 0 or 0xFFFF
        return with_fields(body, start + 2, struct.pack(">H", rng.choice([0, 0xFFFF])))
    if kind == 3:  # an item's length off by a little
        length = (end - start - 4 + rng.choice([-3, -1, 1, 2, 7])) % 0x10000
        return with_fields(body, start + 2, struct.pack(">H", length))
    if kind == 4:  # an item removed, its parent's length kept right
        return resized(body[:start] + body[end:], parent, -(end - start))
    if kind == 5:  # an item duplicated
        return resized(body[:end] + body[start:end] + body[end:], parent, end - start)
    return body[:start] + bytes([rng.randrange(256)]) + body[start + 1 :]  # another item type


def fuzz_bases():
    get_contexts, get_roles = getscu_like()
    return [
        VERIFICATION_RQ,
        pynetdicom_request(storescu_like(), extra=[async_window(5, 5)]),
        pynetdicom_request(get_contexts, extra=[*get_roles, user_identity(), sop_extended()]),
    ]


# pydicom warns of each malformed UID it is given.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzzed_requests_are_decoded_or_refused_with_protocol_error():
    rng = random.Random(14)
    bases = fuzz_bases()
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(1500):
        body = rng.choice(bases)
        for _ in range(rng.choice([1, 1, 2, 3])):
            if len(body) > 68:
                body = mutate(body, rng)
        try:
            received = decode_request(body)
        except ProtocolError as exc:
            assert exc.reason
            outcomes["refused"] += 1
            continue
        # A request we read can always be answered.
        answer = accept(received, supported=supported_contexts(), ae_title="PACS", **OURS)
        assert answer.pdu[0] == 0x02
        outcomes["decoded"] += 1
    # Both paths taken often: the mutations are neither all fatal nor all harmless.
    assert outcomes["decoded"] > 150
    assert outcomes["refused"] > 150


def test_random_bytes_are_refused_with_protocol_error():
    rng = random.Random(8)
    for _ in range(300):
        body = b"\x00\x01" + rng.randbytes(rng.randrange(300))
        with pytest.raises(ProtocolError):
            decode_request(body)
