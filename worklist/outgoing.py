"""Outgoing HL7: order status updates (ORM^O01, ORC-1 SC / ORC-5 CM) when a
worklist item's images arrive, delivered by the django-q worker with retries.

`studies_arrived()` is called by the runscp index writer after a batch that
created studies has committed; it completes the matching items and queues one
`deliver(pk)` task per destination after its own commit.  `status_update()`
builds the message text; `deliver()` sends it over MLLP and records the ACK.
"""

import datetime
import logging
import socket
import time
import uuid

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule

from dicomnodes.models import DicomServerSettings
from worklist.er7 import Encoding, escape, read_header, split_segments
from worklist.mllp import FrameBuffer, frame
from worklist.models import (
    DICOM_CHARSETS,
    HL7_CHARSETS,
    DeliveryState,
    HL7Destination,
    HL7Message,
    ItemStatus,
    OutgoingHL7Message,
    WorklistItem,
    WorklistSettings,
)

logger = logging.getLogger(__name__)

OPEN_STATUSES = (ItemStatus.SCHEDULED, ItemStatus.IN_PROGRESS)
DELIVER_TASK = "worklist.outgoing.deliver"
TIMEOUT = 10.0  # seconds, for the connection and for the ACK
# A claimed row is left alone for this long, so a worker that dies mid-send
# does not keep it forever (an admin "resend" or a later run takes it over).
LEASE = datetime.timedelta(seconds=60)
RETRY_BACKOFF = [datetime.timedelta(minutes=m) for m in (1, 5, 15)]
MAX_ATTEMPTS = len(RETRY_BACKOFF) + 1
MAX_ACK_SIZE = 1024 * 1024
ORDER_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5")  # those that define ORM^O01 with these segments
DEFAULT_VERSION = "2.3.1"


# --- Matching arrived studies to worklist items ----------------------------------------------


def on_studies_created(sender, *, studies, **kwargs):
    """Receiver of dicomnodes.signals.studies_created (runscp's and the
    transfer runner's index writers): `studies` are signals.NewStudy.

    Anyone may store by default, so a study from a caller that is not a known
    peer completes no item and tells the RIS nothing (an instance with an
    order's accession number would otherwise report the exam done), unless
    the DICOM server setting "any sender completes orders" is on.
    """
    trusted = [s for s in studies if s.from_known_peer]
    if len(trusted) < len(studies) and DicomServerSettings.load().trust_any_sender:
        trusted = studies
    elif len(trusted) < len(studies):
        logger.info("%d new studies from unknown senders complete no worklist item", len(studies) - len(trusted))
    studies_arrived([(s.study_instance_uid, s.accession_number) for s in trusted])


def studies_arrived(studies: list[tuple[str, str]]) -> list[int]:
    """Complete the open items of these new studies and queue their status updates.

    `studies` are (Study Instance UID, Accession Number) pairs.  Returns the
    pks of the OutgoingHL7Message rows created.

    1. nothing to do without open items (one EXISTS query: the usual case
       for a PACS without a worklist);
    2. items match by accession number (when not empty) or Study Instance UID;
    3. each item is completed by a conditional update, so that two runscp
       processes receiving the same study complete it (and notify) once;
    4. one pending message per enabled destination; the deliver tasks are
       queued after the commit, with the row's pk.
    """
    open_items = WorklistItem.objects.filter(status__in=OPEN_STATUSES)
    if not studies or not open_items.exists():
        return []
    uids = {uid for uid, _ in studies if uid}
    accessions = {accession for _, accession in studies if accession}
    matches = open_items.filter(Q(study_instance_uid__in=uids) | Q(accession_number__in=accessions))
    created = []
    with transaction.atomic():
        destinations = None
        for item in matches:
            completed = WorklistItem.objects.filter(pk=item.pk, status__in=OPEN_STATUSES).update(
                status=ItemStatus.COMPLETED, updated_at=timezone.now()
            )
            if not completed:
                continue  # another process got there first
            item.status = ItemStatus.COMPLETED
            logger.info("worklist item %s completed: its images arrived", item.pk)
            if destinations is None:
                destinations = list(HL7Destination.objects.filter(enabled=True))
            if not destinations:
                continue
            text = status_update(item)
            for destination in destinations:
                row = OutgoingHL7Message.objects.create(item=item, destination=destination, message=text)
                created.append(row.pk)
        if created:
            transaction.on_commit(lambda: queue_delivery(created))
    return created


def queue_delivery(pks):
    for pk in pks:
        async_task(DELIVER_TASK, pk)


# --- The message ------------------------------------------------------------------------------


def status_update(item: WorklistItem) -> str:
    """ORM^O01 telling the order's sender that the procedure is complete.

    MSH-3/MSH-4 are ours (worklist settings), MSH-5/MSH-6 the order's sender
    (ER7 as it sent them); the version is the order's when it defines ORM^O01.
    """
    enc = Encoding()
    cfg = WorklistSettings.load()
    charset = _charset_for(item)
    c = enc.component

    def e(text):
        return escape(text, enc)

    def pn(name):  # DICOM PN -> XPN: the alphabetic group, its ^ kept
        return escape(name.split("=")[0], enc, keep_components=True)

    now = timezone.localtime().strftime("%Y%m%d%H%M%S")
    msh = [
        "MSH",
        enc.msh2,
        escape(cfg.sending_application, enc, keep_components=True),
        escape(cfg.sending_facility, enc, keep_components=True),
        item.sending_application,  # already ER7
        item.sending_facility,
        now,
        "",
        f"ORM{c}O01",
        uuid.uuid4().hex[:20],
        "P",
        _version_for(item),
        "",
        "",
        "",
        "",
        "",
        charset,
    ]
    patient_id = e(item.patient_id)
    if item.issuer_of_patient_id:
        patient_id += f"{c * 3}{e(item.issuer_of_patient_id)}"
    pid = ["PID", "1", "", patient_id, "", pn(item.patient_name), "", item.patient_birth_date, e(item.patient_sex)]
    orc = ["ORC", "SC", e(item.placer_order_number), e(item.filler_order_number), "", "CM"]
    procedure = c.join(
        [
            e(item.requested_procedure_code_value),
            e(item.requested_procedure_code_meaning or item.requested_procedure_description),
            e(item.requested_procedure_code_scheme),
        ]
    ).rstrip(c)
    obr = ["OBR", "1", e(item.placer_order_number), e(item.filler_order_number), procedure]
    obr += [""] * (18 - len(obr))
    obr += [e(item.accession_number), e(item.requested_procedure_id), e(item.scheduled_procedure_step_id)]
    obr += ["", "", "", e(item.modality)]  # OBR-24: diagnostic service section (the modality)
    segments = [msh, pid, orc, obr]
    if item.study_instance_uid:  # IHE RAD-4 ZDS-1: the Study Instance UID
        segments.append(["ZDS", c.join([e(item.study_instance_uid), "", "Application", "DICOM"])])
    return "\r".join(enc.field.join(_trim(seg)) for seg in segments) + "\r"


def _trim(fields):
    while len(fields) > 1 and fields[-1] == "":
        fields = fields[:-1]
    return fields


def _version_for(item) -> str:
    version = (
        HL7Message.objects.filter(item=item, message_type__startswith="ORM")
        .order_by("received_at")
        .values_list("version", flat=True)
        .first()
    )
    return version if version in ORDER_VERSIONS else DEFAULT_VERSION


def _charset_for(item) -> str:
    """MSH-18: the item's character set when its text fits, else UTF-8; empty for plain ASCII."""
    text = "".join(
        [
            item.patient_name,
            item.patient_id,
            item.requested_procedure_description,
            item.requested_procedure_code_meaning,
        ]
    )
    if text.isascii():
        return ""
    names = [name for name, term in DICOM_CHARSETS.items() if term and term == item.specific_character_set]
    for name in names:
        try:
            text.encode(HL7_CHARSETS[name])
            return name
        except UnicodeEncodeError:
            pass
    return "UNICODE UTF-8"


def _codec(text: str) -> str:
    header = read_header(text)
    return HL7_CHARSETS.get(header.charset if header else "", "utf_8")


# --- Delivery ---------------------------------------------------------------------------------


class NoAck(Exception):
    """The peer closed the connection or sent something that is no ACK."""


def deliver(pk: int) -> str:
    """Send one status update and record what came back (the django-q task).

    1. claim the row (pending and due) for a lease;
    2. send it MLLP-framed and read the framed answer;
    3. an ACK, whatever its code, makes the row sent (AE/AR are recorded:
       sending again would not change the answer);
    4. a network error or no ACK counts an attempt and schedules a retry
       (1, 5, 15 minutes), and after the fourth the row is failed.
    """
    now = timezone.now()
    # The claim: the queued task, a scheduled retry, an admin "resend" and
    # django-q re-running a task whose worker seemed lost may all run at
    # once; only one passes this update, so the destination does not get
    # the message twice.
    claimed = (
        OutgoingHL7Message.objects.filter(pk=pk, state=DeliveryState.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(next_attempt_at=now + LEASE)
    )
    if not claimed:
        return f"outgoing HL7 message {pk}: not pending or not due"
    row = OutgoingHL7Message.objects.select_related("destination").get(pk=pk)
    dest = row.destination
    codec = _codec(row.message)
    try:
        answer = exchange(dest.host, dest.port, row.message.encode(codec, errors="replace"))
        ack_text = answer.decode(codec, errors="replace")
        msa = next((s for s in split_segments(ack_text, _encoding_of(ack_text)) if s.name == "MSA"), None)
        if msa is None or not msa.get(1):
            raise NoAck("the answer has no MSA-1")
    except (OSError, NoAck) as exc:
        return _attempt_failed(row, f"{type(exc).__name__}: {exc}")
    row.state = DeliveryState.SENT
    row.ack_code = msa.get(1)[:2]
    row.ack = ack_text
    row.error = ""
    row.next_attempt_at = None
    row.save(update_fields=["state", "ack_code", "ack", "error", "next_attempt_at", "updated_at"])
    level = logging.INFO if row.ack_code in ("AA", "CA") else logging.WARNING
    logger.log(level, "status update %s to %s acknowledged %s", pk, dest, row.ack_code)
    return f"outgoing HL7 message {pk}: {row.ack_code}"


def _encoding_of(text: str) -> Encoding:
    header = read_header(text)
    return header.enc if header else Encoding()


def _attempt_failed(row, error: str) -> str:
    row.attempts += 1
    row.error = error
    if row.attempts < MAX_ATTEMPTS:
        row.next_attempt_at = timezone.now() + RETRY_BACKOFF[row.attempts - 1]
        schedule(
            DELIVER_TASK,
            row.pk,
            name=f"hl7-retry-{row.pk}-{row.attempts}-{uuid.uuid4().hex[:8]}",
            schedule_type=Schedule.ONCE,
            next_run=row.next_attempt_at,
        )
        outcome = f"retry at {row.next_attempt_at:%H:%M:%S}"
    else:
        row.state = DeliveryState.FAILED
        row.next_attempt_at = None
        outcome = "gave up"
    row.save(update_fields=["attempts", "error", "state", "next_attempt_at", "updated_at"])
    logger.warning("status update %s to %s failed (%s); %s", row.pk, row.destination, error, outcome)
    return f"outgoing HL7 message {row.pk}: {outcome}"


def exchange(host: str, port: int, message: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Send one MLLP frame and return the first frame answered (without its envelope)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame(message))
        buffer = FrameBuffer(MAX_ACK_SIZE)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAck(f"no ACK within {timeout:.0f} s")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise NoAck("connection closed without an ACK")
            frames = buffer.feed(data)
            if frames:
                return frames[0]
