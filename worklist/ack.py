"""ACK messages (HL7 v2 original acknowledgement mode), built with hl7apy."""

import logging
import re
import uuid

from hl7apy import SUPPORTED_LIBRARIES
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import InvalidEncodingChars

from worklist.er7 import Encoding, Header, escape
from worklist.mapping import ERROR_NAMES

logger = logging.getLogger(__name__)

_FALLBACK_VERSION = "2.5"
_MSA3_LENGTH = 80  # MSA-3 text message, ST(80)


def build_ack(
    *,
    code: str,
    header: Header | None,
    our_application: str,
    our_facility: str,
    charset: str,
    text: str = "",
    error_code: int | None = None,
    error_location: str = "",
) -> str:
    """The ACK as text (to be encoded by the caller in the message's charset).

    code is AA, AE or AR; header is the received MSH (None if there was none:
    then MSA-2 is empty); charset goes to MSH-18 as given; error_location is
    "SEG-n" (e.g. "PID-3") and ends up in ERR.
    """
    enc = header.enc if header is not None else Encoding()
    their_version = header.version if header is not None else ""
    version = their_version if their_version in SUPPORTED_LIBRARIES else _FALLBACK_VERSION
    try:
        msg = Message(
            "ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT, encoding_chars=enc.as_hl7apy()
        )
    except InvalidEncodingChars:
        # Their MSH-2 is unusable (duplicate characters): answer in the standard ones.
        enc = Encoding()
        msg = Message(
            "ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT, encoding_chars=enc.as_hl7apy()
        )
    if their_version != version and re.fullmatch(r"\d(\.\d+){1,2}", their_version):
        msg.msh.msh_12 = their_version  # answer in the version asked, even one we refuse

    c = enc.component
    trigger = escape(header.trigger_event, enc) if header is not None else ""
    msh = msg.msh
    msh.msh_3 = escape(our_application, enc, keep_components=True)
    if our_facility:
        msh.msh_4 = escape(our_facility, enc, keep_components=True)
    if header is not None:
        # Their MSH-3/MSH-4 are already ER7 text: echoed as sent.
        if header.sending_application:
            msh.msh_5 = header.sending_application
        if header.sending_facility:
            msh.msh_6 = header.sending_facility
    if not trigger:
        msh.msh_9 = "ACK"
    elif version < "2.4":
        msh.msh_9 = f"ACK{c}{trigger}"
    else:
        msh.msh_9 = f"ACK{c}{trigger}{c}ACK"
    msh.msh_10 = uuid.uuid4().hex[:20]
    processing = header.processing_id if header is not None else ""
    msh.msh_11 = escape(processing, enc) if processing in ("P", "T", "D") else "P"
    if charset:
        msh.msh_18 = escape(charset, enc)

    msg.msa.msa_1 = code
    if header is not None and header.control_id:
        msg.msa.msa_2 = escape(header.control_id, enc)
    if text:
        msg.msa.msa_3 = escape(text[:_MSA3_LENGTH], enc)
    if error_code is not None:
        _add_err(msg, version, enc, code=error_code, location=error_location, text=text)
    return msg.to_er7() + "\r"


def _add_err(msg, version: str, enc: Encoding, *, code: int, location: str, text: str):
    c, s = enc.component, enc.subcomponent
    name = escape(ERROR_NAMES.get(code, ""), enc)
    segment, _, number = location.partition("-")
    field = number.split(".")[0]
    where = c.join([escape(segment, enc), "1", field] if segment and field.isdigit() else [escape(segment, enc)])
    err = msg.add_segment("ERR")
    if version < "2.5":
        # ERR-1, ELD: segment^sequence^field^code&text&HL70357
        err.err_1 = f"{where}{c * (3 - where.count(c))}{code}{s}{name}{s}HL70357"
    else:
        if segment:
            err.err_2 = where
        err.err_3 = f"{code}{c}{name}{c}HL70357"
        err.err_4 = "E"
        if text:
            err.err_8 = escape(text[:250], enc)
