"""Incoming HL7: one framed message in, its ACK out. No sockets here.

The MLLP listener calls `process_message` for every message (the bytes
between 0x0B and 0x1C); the ACK bytes it returns go back on the connection.
"""

import logging
from dataclasses import dataclass

from django.db import transaction
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from worklist.ack import build_ack
from worklist.er7 import Header, dicom_charset, read_header, resolve_charset, split_segments
from worklist.mapping import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    ProcessingError,
    Rejected,
)
from worklist.models import HL7_CHARSETS, HL7Message, MessageOutcome, WorklistItem, WorklistSettings
from worklist.orders import apply_merge, apply_order, apply_patient_update
from worklist.senders import SenderRules

logger = logging.getLogger(__name__)

_ORDER_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
# (MSH-9.1, MSH-9.2) -> (handler, HL7 versions taken)
HANDLERS = {
    ("ORM", "O01"): (apply_order, _ORDER_VERSIONS),
    ("OMI", "O23"): (apply_order, ("2.4", "2.5", "2.5.1")),
    ("ADT", "A08"): (apply_patient_update, _ORDER_VERSIONS),
    ("ADT", "A31"): (apply_patient_update, _ORDER_VERSIONS),
    ("ADT", "A40"): (apply_merge, _ORDER_VERSIONS),
}


@dataclass
class Result:
    outcome: MessageOutcome
    ack_code: str
    summary: str = ""
    error: str = ""
    error_code: int | None = None
    error_location: str = ""
    item: WorklistItem | None = None

    @classmethod
    def failed(cls, exc: ProcessingError) -> "Result":
        outcome = MessageOutcome.REJECTED if exc.ack_code == "AR" else MessageOutcome.ERROR
        return cls(outcome, exc.ack_code, error=str(exc), error_code=exc.code, error_location=exc.location)


@dataclass
class Decoded:
    header: Header | None  # None: no MSH could be read
    text: str  # the message as text (with U+FFFD where it could not be decoded)
    charset: str  # HL7 name of the charset used (a key of HL7_CHARSETS), "" if unknown
    problem: Rejected | None = None


def process_message(raw: bytes, *, peer: str = "", address: str = "") -> bytes | None:
    """Apply one HL7 message and log it; the ACK in the message's charset,
    or None when acknowledgements are off. Never raises.

    `peer` is how the log shows the connection (host:port); `address` is
    the sending host alone (default: `peer`), what the allowed senders and
    the duplicate check compare.

    1. Read MSH from the bytes (it is ASCII) to learn the charset (MSH-18,
       else the default charset of the settings) and decode.
    2. Refuse (AR) what is not an HL7 message, a sender that is not allowed
       (address, MSH-3/MSH-4), not a type/version we take, or what hl7apy
       cannot parse.
    3. In one transaction: skip a control ID (MSH-10) this sender (address +
       MSH-3 + MSH-4) already had applied, else apply; then log the message.
    """
    address = address or peer
    try:
        settings = WorklistSettings.load()
        decoded = decode(raw, default_charset=settings.default_charset)
        refused = decoded.problem or sender_refusal(decoded, address, settings.sender_rules()) or refusal(decoded)
        with transaction.atomic():
            result = Result.failed(refused) if refused else _apply_once(decoded, address)
            ack = _ack(result, decoded, settings) if settings.send_acknowledgement else None
            _log(result, decoded, ack, peer, address)
    except Exception:
        # The database is unreachable, or a bug: no ACK, so the sender sends again later.
        logger.exception("HL7 message from %s was not processed", peer or "?")
        return None
    header = decoded.header or Header(enc=None)
    # The error text may quote patient data: the log row has it, INFO only the code.
    logger.info(
        "HL7 %s %s from %s (%s): %s%s",
        header.message_type or "?",
        header.control_id or "?",
        peer or "?",
        header.sending_application or "?",
        result.outcome,
        f" (error {result.error_code} at {result.error_location or '?'})" if result.error_code else "",
    )
    if ack is None:
        return None
    return ack.encode(_codec(decoded.charset or settings.default_charset), "replace")


def _codec(name: str) -> str:
    return HL7_CHARSETS.get(name, "iso8859_1")


def decode(raw: bytes, *, default_charset: str) -> Decoded:
    """The message text, decoded by MSH-18 (else default_charset)."""
    first_line = raw.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\r", 1)[0].split(b"\n", 1)[0]
    sniffed = read_header(first_line.decode("latin-1"))
    declared = sniffed.charset if sniffed is not None else ""
    name = resolve_charset(declared) if declared else (default_charset if default_charset in HL7_CHARSETS else "8859/1")
    if name is None:
        text = raw.decode(_codec(default_charset), "replace")
        problem = Rejected(
            f"MSH-18 character set {declared!r} is not supported", code=DATA_TYPE_ERROR, location="MSH-18"
        )
        return Decoded(sniffed, text, "", problem)
    try:
        text = raw.decode(HL7_CHARSETS[name])
    except UnicodeDecodeError as exc:
        text = raw.decode(HL7_CHARSETS[name], "replace")
        problem = Rejected(
            f"the message is not valid {name} text ({exc.reason} at byte {exc.start})", code=DATA_TYPE_ERROR
        )
        return Decoded(sniffed, text, name, problem)
    text = text.lstrip("\ufeff \t\r\n")
    header = read_header(text)
    if header is None:
        return Decoded(
            sniffed, text, name, Rejected("not an HL7 v2 message (no MSH segment)", code=SEGMENT_SEQUENCE_ERROR)
        )
    return Decoded(header, text, name)


def sender_refusal(decoded: Decoded, address: str, rules: SenderRules) -> Rejected | None:
    """AR for a sender the "allowed senders" setting does not list.  Code 103
    (table value not found): the sender is not in our table of senders."""
    header = decoded.header
    application = header.sending_application.split(header.enc.component, 1)[0]
    facility = header.sending_facility.split(header.enc.component, 1)[0]
    why = rules.refusal(address, application, facility)
    if not why:
        return None
    location = "" if why.startswith("sender address") else "MSH-3"
    return Rejected(why, code=TABLE_VALUE_NOT_FOUND, location=location)


def refusal(decoded: Decoded) -> Rejected | None:
    """Why a message type, version or syntax is not taken (AR); None if it is."""
    header = decoded.header
    key = (header.message_code, header.trigger_event)
    if key not in HANDLERS:
        known_codes = {code for code, _ in HANDLERS}
        code = UNSUPPORTED_EVENT_CODE if header.message_code in known_codes else UNSUPPORTED_MESSAGE_TYPE
        return Rejected(f"message type {header.message_type or '(empty)'} is not handled", code=code, location="MSH-9")
    versions = HANDLERS[key][1]
    if header.version not in versions:
        return Rejected(
            f"{header.message_type} version {header.version or '(empty)'} is not handled (takes {', '.join(versions)})",
            code=UNSUPPORTED_VERSION_ID,
            location="MSH-12",
        )
    try:
        parse_message(
            "\r".join(seg.text for seg in split_segments(decoded.text, header.enc)),
            validation_level=VALIDATION_LEVEL.TOLERANT,
            find_groups=False,
        )
    except Exception as exc:  # hl7apy raises many kinds of errors on bad input
        return Rejected(f"the message cannot be parsed: {type(exc).__name__}: {exc}"[:500], code=DATA_TYPE_ERROR)
    return None


def _apply_once(decoded: Decoded, address: str) -> Result:
    header = decoded.header
    # Serialise HL7 messages: two connections delivering the same control ID
    # at once would otherwise both find no earlier copy and both apply it.
    # (PostgreSQL: this row lock; SQLite: its IMMEDIATE transactions.)
    WorklistSettings.objects.select_for_update().filter(pk=1).first()
    # A duplicate is the same control ID from the same sending address as
    # well as MSH-3/MSH-4: those are text anyone can write, and a forged
    # message with a RIS's next control ID would otherwise make the real
    # order come back AA but unapplied.  Rows logged before the address was
    # kept (sender_address "") still count, so an upgrade applies nothing twice.
    earlier = (
        HL7Message.objects.filter(
            control_id=header.control_id,
            sending_application=header.sending_application[:180],
            sending_facility=header.sending_facility[:180],
            outcome=MessageOutcome.APPLIED,
        )
        .filter(sender_address__in=(_fit(address, 64), ""))
        .first()
    )
    if header.control_id and earlier is not None:
        return Result(
            MessageOutcome.DUPLICATE, "AA", summary=f"already applied (HL7 message {earlier.pk})", item=earlier.item
        )
    handler = HANDLERS[(header.message_code, header.trigger_event)][0]
    try:
        with transaction.atomic():
            segments = split_segments(decoded.text, header.enc)
            applied = handler(segments, header, dicom_charset(decoded.charset))
    except ProcessingError as exc:
        return Result.failed(exc)
    except Exception as exc:
        logger.exception("HL7 %s %s could not be applied", header.message_type, header.control_id)
        return Result.failed(ProcessingError(f"internal error: {type(exc).__name__}", code=APPLICATION_INTERNAL_ERROR))
    return Result(MessageOutcome.APPLIED, "AA", summary=applied.summary, item=applied.item)


def _ack(result: Result, decoded: Decoded, settings: WorklistSettings) -> str:
    header = decoded.header
    # The ACK is written in the message's charset and says so as they did;
    # when theirs is unknown, in our default charset, named.
    declared = header.charset if header is not None else ""
    return build_ack(
        code=result.ack_code,
        header=header,
        our_application=settings.sending_application,
        our_facility=settings.sending_facility,
        charset=declared if decoded.charset or not declared else settings.default_charset,
        text=result.error,
        error_code=result.error_code,
        error_location=result.error_location,
    )


def _fit(text: str, length: int | None = None) -> str:
    text = text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
    return text[:length] if length else text


def _log(result: Result, decoded: Decoded, ack: str | None, peer: str, address: str):
    header = decoded.header or Header(enc=None)
    HL7Message.objects.create(
        peer=_fit(peer, 64),
        sender_address=_fit(address, 64),
        sending_application=_fit(header.sending_application, 180),
        sending_facility=_fit(header.sending_facility, 180),
        control_id=_fit(header.control_id, 199),
        message_type=_fit(header.message_type, 32),
        version=_fit(header.version, 16),
        charset=_fit(decoded.charset or header.charset, 32),
        raw=_fit(decoded.text),
        summary=_fit(result.summary or result.error, 255),
        outcome=result.outcome,
        ack_code=result.ack_code if ack else "",
        ack=_fit(ack or ""),
        error=_fit(result.error),
        item=result.item,
    )
