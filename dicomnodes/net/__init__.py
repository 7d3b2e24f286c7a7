"""Our own DICOM association data phase, the pure part: P-DATA-TF framing,
PDV reassembly, A-RELEASE and A-ABORT (`pdata`), and DIMSE command sets
encoded and decoded as bytes (`commandset`).

No sockets, threads or Django here: the runtime that owns the socket feeds
these functions bytes and sends what they return, and the tests call them
directly.  pynetdicom keeps association control (A-ASSOCIATE and
presentation-context negotiation); see "Next: the data phase of
associations" in DESIGN.md and issue 14.

Anything a peer sent that is inconsistent raises `ProtocolError`; the
runtime answers it with an A-ABORT (source 2, the error's `abort_reason`)
and a log line.  Every length a peer states is checked against what
surrounds it and against a bound before anything is allocated for it.
"""

# A-ABORT reasons (PS3.8 9.3.8, source 2 = UL service-provider).
REASON_NOT_SPECIFIED = 0x00
UNRECOGNIZED_PDU = 0x01
UNEXPECTED_PDU = 0x02
UNRECOGNIZED_PDU_PARAMETER = 0x04
UNEXPECTED_PDU_PARAMETER = 0x05
INVALID_PDU_PARAMETER_VALUE = 0x06


class ProtocolError(Exception):
    """What a peer sent breaks PS3.8 or PS3.7: the association must end
    with an A-ABORT.  `reason` says what in words (for the log line);
    `abort_reason` is the A-ABORT reason/diag to send (PS3.8 9.3.8)."""

    def __init__(self, reason, *, abort_reason=INVALID_PDU_PARAMETER_VALUE):
        super().__init__(reason)
        self.reason = reason
        self.abort_reason = abort_reason
