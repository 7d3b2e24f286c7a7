"""Association negotiation (PS3.8 7.1, 9.3.2–9.3.4, Annex D; PS3.7 D.3.3)
on pynetdicom's PDU codec and presentation-context negotiation: the
A-ASSOCIATE-RQ read into a `Request`, answered by an A-ASSOCIATE-AC or -RJ
encoded to bytes; and the requestor's side (an RQ encoded, the AC read).

Pure: bytes in, bytes out, no socket.  The runtime (`association.py`) reads
and writes the PDUs.  `body` is always a PDU's bytes after its 6-byte
header, as `pdata.read_pdu` returns it.

Everything here answers as pynetdicom's ACSE (`pynetdicom/acse.py`) does, so
that peers see the same A-ASSOCIATE-AC as from runscp before the new runtime:

- the AC's Called/Calling AE Title fields echo the RQ (PS3.8 Table 9-17:
  "shall not be tested" by the receiver; DCMTK copies them, untested, into
  its responding AE title);
- SCP/SCU Role Selection items are answered and the roles set
  (`negotiate_unrestricted`, `negotiate_as_acceptor`);
- an Asynchronous Operations Window proposing more than (1, 1) is answered
  with (1, 1), as pynetdicom with an `EVT_ASYNC_OPS` handler bound (without
  one it sends no item; both mean one operation at a time, PS3.7 D.3.3.3);
- User Identity and SOP Class (Common) Extended Negotiation get no response
  item, as pynetdicom without handlers for them.
"""

import re
import struct
from copy import deepcopy
from dataclasses import dataclass, field

from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor, negotiate_as_requestor, negotiate_unrestricted

from dicomnodes.net import ProtocolError, pdata

# An RQ's or AC's fixed fields after the PDU header (PS3.8 Tables 9-11,
# 9-17): protocol version (2), reserved (2), called and calling AE titles
# (16 each), reserved (32).  The variable items follow.
FIXED_LENGTH = 68
ACCEPTED = 0x00
# A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21): result, source -> valid reasons.
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_ACSE, SOURCE_PRESENTATION = 0x01, 0x02, 0x03
REJECT_REASONS = {
    SOURCE_USER: (1, 2, 3, 7),  # no reason, application context, calling AE, called AE
    SOURCE_ACSE: (1, 2),  # no reason, protocol version
    SOURCE_PRESENTATION: (1, 2),  # temporary congestion, local limit exceeded
}
# PS3.8 9.3.2: a receiver "shall only test that bit 0 is set".
PROTOCOL_VERSION_1 = 0x0001
MAX_REQUESTED_CONTEXTS = 128  # PS3.8 9.3.2.2: odd IDs 1..255
# pynetdicom decodes ~0.4 ms per UID (pydicom validates each; 120 contexts
# of 3 syntaxes take 190 ms), so an RQ as long as our PDU bound could hold
# half a minute's work.  No peer proposes more than a few syntaxes per
# context: 31 on average over 128 contexts still passes.
MAX_PROPOSED_SYNTAXES = 4096
# pynetdicom takes any UID with a warning; we want no control characters in
# a syntax we log and compare, but keep what old devices send (leading
# zeros in a component): digits and dots, at most 64 (PS3.5 9.1).
_UID_CHARACTERS = re.compile(r"[0-9.]{1,64}")


class MustReject(ProtocolError):
    """An A-ASSOCIATE-RQ that PS3.8 answers with an A-ASSOCIATE-RJ rather
    than an A-ABORT: `rejection` is its (result, source, reason) for
    `reject()`.  A runtime that only knows ProtocolError still ends the
    association (with an A-ABORT)."""

    def __init__(self, reason, *, rejection):
        super().__init__(reason)
        self.rejection = rejection


@dataclass(frozen=True)
class Context:
    """An accepted presentation context."""

    id: int
    abstract_syntax: str
    transfer_syntax: str
    # Roles after SCP/SCU role selection (PS3.7 D.3.3.4), from our side:
    # scu: we may send requests on it; scp: we may answer requests on it.
    scu_role: bool = False
    scp_role: bool = True


@dataclass
class Request:
    """A peer's A-ASSOCIATE-RQ."""

    calling_ae: str
    called_ae: str
    max_pdu: int  # the peer's Maximum Length Received (0: no limit)
    implementation_class_uid: str
    implementation_version_name: str
    primitive: object = field(repr=False, default=None)  # pynetdicom's A_ASSOCIATE
    # The proposed pynetdicom PresentationContexts, each with an abstract
    # syntax and at least one transfer syntax, IDs unique.
    contexts: list = field(repr=False, default_factory=list)
    roles: dict = field(default_factory=dict)  # SOP class UID -> the peer's (scu, scp) proposal
    async_ops: tuple | None = None  # (invoked, performed) if the peer sent the item


@dataclass
class Accepted:
    """What an acceptor answers: the A-ASSOCIATE-AC bytes and its contexts.
    On the requestor's side (`decode_accept`), the AC received."""

    pdu: bytes
    contexts: dict  # id -> Context, accepted ones only
    rejected: list = field(default_factory=list)  # pynetdicom PresentationContexts not accepted
    max_pdu: int = 0  # the peer's Maximum Length Received (0: no limit)
    primitive: object = field(repr=False, default=None)  # pynetdicom's A_ASSOCIATE (AC)


def _check_size(body):
    """Count the presentation contexts and their syntaxes by the item
    headers alone before pynetdicom decodes them (PS3.8 9.3.2.2: a
    context item has 4 bytes after its header, then the sub-items)."""
    contexts = syntaxes = 0
    offset = FIXED_LENGTH
    while offset + 4 <= len(body):
        end = min(len(body), offset + 4 + int.from_bytes(body[offset + 2 : offset + 4], "big"))
        if body[offset] == 0x20:
            contexts += 1
            sub = offset + 8
            while sub + 4 <= end:
                syntaxes += 1
                sub += 4 + int.from_bytes(body[sub + 2 : sub + 4], "big")
        offset = end
    if contexts > MAX_REQUESTED_CONTEXTS or syntaxes > MAX_PROPOSED_SYNTAXES:
        raise ProtocolError(
            f"A-ASSOCIATE-RQ proposing {contexts} presentation contexts with {syntaxes} syntaxes "
            f"(at most {MAX_REQUESTED_CONTEXTS} and {MAX_PROPOSED_SYNTAXES})"
        )


def _with_header(pdu_type, body) -> bytes:
    # pynetdicom's decoders read fields at offsets of the whole PDU and do
    # not look at its length field.
    return struct.pack(">BxL", pdu_type, len(body)) + bytes(body)


def _decode(pdu_class, pdu_type, body, name):
    """pynetdicom's PDU object and primitive for `body`, or ProtocolError:
    its decoders raise whatever the bytes lead them to (struct.error,
    AssertionError, KeyError for an unknown item, ValueError, ...)."""
    if len(body) < FIXED_LENGTH:
        raise ProtocolError(f"{name} of {len(body)} bytes, shorter than its {FIXED_LENGTH} fixed bytes")
    pdu = pdu_class()
    try:
        pdu.decode(_with_header(pdu_type, body))
        primitive = pdu.to_primitive()
    except Exception as exc:
        raise ProtocolError(f"undecodable {name}: {type(exc).__name__}: {exc}") from exc
    if not pdu.protocol_version & PROTOCOL_VERSION_1:
        raise MustReject(
            f"{name} for protocol version 0x{pdu.protocol_version:04X}, without version 1 (bit 0)",
            rejection=(REJECTED_PERMANENT, SOURCE_ACSE, 2),
        )
    return pdu, primitive


def _user_item(primitive, item_class):
    for item in primitive.user_information:
        if isinstance(item, item_class):
            return item
    return None


def _max_pdu(primitive) -> int:
    item = _user_item(primitive, MaximumLengthNotification)
    return item.maximum_length_received if item is not None else 0


def _check_contexts(contexts, name):
    """Each context has an abstract syntax, a transfer syntax and its own ID
    (PS3.8 9.3.2.2): the negotiation functions index on all three; and its
    UIDs are made of digits and dots."""
    if not contexts:
        raise ProtocolError(f"{name} without a presentation context")
    seen = set()
    for cx in contexts:
        if cx.context_id in seen:
            raise ProtocolError(f"{name} proposes presentation context ID {cx.context_id} twice")
        seen.add(cx.context_id)
        if not cx.abstract_syntax:
            raise ProtocolError(f"{name}: presentation context {cx.context_id} has no abstract syntax")
        if not cx.transfer_syntax:
            raise ProtocolError(f"{name}: presentation context {cx.context_id} has no transfer syntax")
        for uid in (cx.abstract_syntax, *cx.transfer_syntax):
            if not _UID_CHARACTERS.fullmatch(uid):
                raise ProtocolError(f"{name}: presentation context {cx.context_id} proposes {uid!r}, not a UID")


def decode_request(body) -> Request:
    """The peer's A-ASSOCIATE-RQ (PS3.8 9.3.2) from the PDU's body.

    ProtocolError on anything pynetdicom cannot decode, or without a usable
    presentation context; MustReject (a ProtocolError) for a protocol
    version without bit 0 or another application context than DICOM's."""
    _check_size(body)
    _, primitive = _decode(A_ASSOCIATE_RQ, pdata.A_ASSOCIATE_RQ, body, "A-ASSOCIATE-RQ")
    if str(primitive.application_context_name or "").rstrip("\0 ") != APPLICATION_CONTEXT_NAME:
        raise MustReject(
            f"A-ASSOCIATE-RQ for application context {primitive.application_context_name!r}",
            rejection=(REJECTED_PERMANENT, SOURCE_USER, 2),
        )
    contexts = primitive.presentation_context_definition_list
    _check_contexts(contexts, "A-ASSOCIATE-RQ")
    roles = {}
    for item in primitive.user_information:
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
    window = _user_item(primitive, AsynchronousOperationsWindowNegotiation)
    class_uid = _user_item(primitive, ImplementationClassUIDNotification)
    version = _user_item(primitive, ImplementationVersionNameNotification)
    return Request(
        # Leading and trailing spaces are not significant (PS3.8 Table 9-11).
        calling_ae=primitive.calling_ae_title.strip(),
        called_ae=primitive.called_ae_title.strip(),
        max_pdu=_max_pdu(primitive),
        implementation_class_uid=str(class_uid.implementation_class_uid or "") if class_uid else "",
        implementation_version_name=(version.implementation_version_name or "") if version else "",
        primitive=primitive,
        contexts=contexts,
        roles=roles,
        async_ops=(
            (window.maximum_number_operations_invoked, window.maximum_number_operations_performed)
            if window is not None
            else None
        ),
    )


def _notifications(max_pdu_received, implementation_class_uid, implementation_version_name) -> list:
    """The User Information's notifications (PS3.7 D.3.3.1–D.3.3.2), in
    pynetdicom's order."""
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu_received
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = implementation_class_uid
    items = [length, class_uid]
    if implementation_version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = implementation_version_name
        items.append(version)
    return items


def _context(cx, *, scu, scp) -> Context:
    return Context(cx.context_id, str(cx.abstract_syntax), str(cx.transfer_syntax[0]), bool(scu), bool(scp))


def accept(
    request,
    *,
    supported,
    ae_title=None,
    max_pdu_received,
    implementation_class_uid,
    implementation_version_name,
    unrestricted_storage=True,
) -> Accepted:
    """The A-ASSOCIATE-AC answering `request`, as pynetdicom's ACSE
    (`_negotiate_as_acceptor`, `send_accept`) builds it.

    1. Contexts negotiated by pynetdicom against `supported` (pynetdicom
       PresentationContexts, like `AE.supported_contexts`): with
       `unrestricted_storage`, every storage-like abstract syntax (storage,
       private or unknown to pynetdicom) is accepted in its first proposed
       transfer syntax whatever `supported` says.
    2. Role selection answered; each accepted context's roles from our side
       (a C-GET SCU asking for the SCP role on a storage class gives us
       `scu_role`: we send C-STORE-RQs on it).
    3. The AC: the RQ's AE titles echoed, our notifications, the role items,
       an Asynchronous Operations Window (1, 1) if the peer asked for more;
       accepted contexts by ID, then the rejected ones, as pynetdicom.

    `ae_title` (the title the runtime answers as) is not written: the AC's
    AE title fields echo the RQ's, as pynetdicom; runscp answers to several
    titles and accepts only when the called one is among them.
    """
    negotiate = negotiate_unrestricted if unrestricted_storage else negotiate_as_acceptor
    results, role_items = negotiate(request.contexts, supported, request.roles)
    accepted = [cx for cx in results if cx.result == ACCEPTED]
    rejected = [cx for cx in results if cx.result != ACCEPTED]

    user_information = _notifications(max_pdu_received, implementation_class_uid, implementation_version_name)
    user_information += role_items
    if request.async_ops is not None and request.async_ops != (1, 1):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        user_information.append(window)

    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = request.calling_ae
    primitive.called_ae_title = request.called_ae
    primitive.result = ACCEPTED
    primitive.result_source = SOURCE_USER
    primitive.presentation_context_definition_results_list = accepted + rejected
    primitive.user_information = user_information
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return Accepted(
        pdu=pdu.encode(),
        contexts={cx.context_id: _context(cx, scu=cx.as_scu, scp=cx.as_scp) for cx in accepted},
        rejected=rejected,
        max_pdu=request.max_pdu,
        primitive=primitive,
    )


def reject(result, source, reason) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4), e.g. (1, 1, 7) called AE title
    not recognised, (2, 3, 2) local limit exceeded."""
    if result not in (REJECTED_PERMANENT, REJECTED_TRANSIENT):
        raise ValueError(f"A-ASSOCIATE-RJ result {result!r}: 1 (permanent) or 2 (transient)")
    if reason not in REJECT_REASONS.get(source, ()):
        raise ValueError(f"A-ASSOCIATE-RJ source {source!r} with reason {reason!r}: see PS3.8 Table 9-21")
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


# The requestor's side: C-MOVE sub-associations, transfer jobs, echo.


def numbered(contexts) -> list:
    """Copies of `contexts` with IDs 1, 3, 5... where unset, as pynetdicom's
    `AE.associate`.  `request` and `decode_accept` both number this way, so
    both take the caller's list unchanged."""
    if not 0 < len(contexts) <= MAX_REQUESTED_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts: 1 to {MAX_REQUESTED_CONTEXTS} may be proposed")
    copies = deepcopy(list(contexts))
    for index, cx in enumerate(copies):
        if cx.context_id is None:
            cx.context_id = 2 * index + 1
    ids = [cx.context_id for cx in copies]
    if len(set(ids)) != len(ids):
        raise ValueError(f"presentation context IDs {ids} are not unique")
    return copies


def request(
    *,
    calling_ae,
    called_ae,
    contexts,
    max_pdu_received,
    implementation_class_uid,
    implementation_version_name,
    roles=None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU as pynetdicom's ACSE `send_request` builds it,
    proposing `contexts` (pynetdicom PresentationContexts, numbered by
    `numbered`) and, for `roles` ({SOP class UID: (scu, scp)}), SCP/SCU Role
    Selection items (a C-GET SCU asks for (False, True) on storage classes)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.presentation_context_definition_list = numbered(contexts)
    user_information = _notifications(max_pdu_received, implementation_class_uid, implementation_version_name)
    for uid, (scu, scp) in (roles or {}).items():
        item = SCP_SCU_RoleSelectionNegotiation()
        item.sop_class_uid = uid
        item.scu_role = scu
        item.scp_role = scp
        user_information.append(item)
    primitive.user_information = user_information
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def decode_accept(body, *, requested, roles=None) -> Accepted:
    """The peer's A-ASSOCIATE-AC (PS3.8 9.3.3) matched with what we
    proposed: `requested` and `roles` as given to `request`.  Contexts as
    pynetdicom's `negotiate_as_requestor` sees them, roles from our side
    (the requestor is SCU unless role selection says otherwise).  The
    caller decides what an AC without an accepted context means (pynetdicom
    aborts).  ProtocolError on garbage or an accepted context in a
    transfer syntax we did not propose."""
    _, primitive = _decode(A_ASSOCIATE_AC, pdata.A_ASSOCIATE_AC, body, "A-ASSOCIATE-AC")
    proposed = numbered(requested)
    # As pynetdicom's ACSE: our proposed roles go on the contexts, False
    # for a role not proposed (see SCP_SCU_RoleSelectionSubItem.from_primitive).
    for cx in proposed:
        if cx.abstract_syntax in (roles or {}):
            scu, scp = roles[cx.abstract_syntax]
            cx.scu_role, cx.scp_role = bool(scu), bool(scp)
    answered_roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in primitive.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    try:
        results = negotiate_as_requestor(
            proposed, primitive.presentation_context_definition_results_list, answered_roles
        )
    except Exception as exc:  # e.g. a role item pynetdicom's table has no row for
        raise ProtocolError(f"A-ASSOCIATE-AC not matched with our request: {type(exc).__name__}: {exc}") from exc
    offered = {cx.context_id: cx.transfer_syntax for cx in proposed}
    contexts, rejected = {}, []
    for cx in results:
        if cx.result != ACCEPTED:
            rejected.append(cx)
            continue
        if not cx.transfer_syntax or cx.transfer_syntax[0] not in offered[cx.context_id]:
            raise ProtocolError(
                f"A-ASSOCIATE-AC accepts presentation context {cx.context_id} in "
                f"{(cx.transfer_syntax or ['no transfer syntax'])[0]}, which we did not propose"
            )
        contexts[cx.context_id] = _context(cx, scu=cx.as_scu, scp=cx.as_scp)
    return Accepted(
        pdu=_with_header(pdata.A_ASSOCIATE_AC, body),
        contexts=contexts,
        rejected=rejected,
        max_pdu=_max_pdu(primitive),
        primitive=primitive,
    )


def decode_reject(body) -> tuple[int, int, int]:
    """(result, source, reason) of the peer's A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    if len(body) != 4:
        raise ProtocolError(f"A-ASSOCIATE-RJ of {len(body)} bytes, not 4")
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(_with_header(pdata.A_ASSOCIATE_RJ, body))
    return pdu.result, pdu.source, pdu.reason_diagnostic
