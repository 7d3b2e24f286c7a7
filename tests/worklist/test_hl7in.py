"""HL7 orders -> worklist items, and the ACK for each message (no sockets).

Personas: a RIS (RIS / HOSP, sends orders), a HIS (HIS / HOSP, sends
patient updates), a stranger (sends anything but HL7). The ACKs are read
back with python-hl7, a parser that is not ours.
"""

import random
import threading

import hl7
import pytest
from django.db import connection

from worklist.hl7in import process_message
from worklist.models import HL7Message, ItemStatus, MessageOutcome, WorklistItem, WorklistSettings

pytestmark = pytest.mark.django_db

RIS = ("RIS", "HOSP")
HIS = ("HIS", "HOSP")
UID = "1.2.826.0.1.3680043.10.543.77"


def seg(name, fields):
    """One segment from {field number: ER7 text}; the fields between are empty."""
    last = max(fields)
    return "|".join([name] + [fields.get(n, "") for n in range(1, last + 1)])


def msg(*segments, type="ORM^O01", version="2.3.1", control="MSG0001", charset="", sender=RIS):
    msh = f"MSH|^~\\&|{sender[0]}|{sender[1]}|PACS|RAD|20240501101500||{type}|{control}|P|{version}||||||{charset}"
    return "\r".join([msh.rstrip("|"), *segments]) + "\r"


def send(text, codec="latin-1", *, peer="10.0.0.5"):
    return process_message(text.encode(codec), peer=peer)


def read_ack(ack, codec="latin-1"):
    assert ack is not None, "no ACK was returned"
    return hl7.parse(ack.decode(codec))


def ack_code(ack, codec="latin-1"):
    return str(read_ack(ack, codec).segment("MSA")[1])


def pid(patient_id="PAT123^^^HOSP^MR", name="Müller^Hans^Peter^Jr.^Dr.", birth="19600101", sex="M"):
    return seg("PID", {1: "1", 3: patient_id, 5: name, 7: birth, 8: sex})


def orc(control="NW", placer="PL100^RIS", filler="FI200^PACS", timing="^^^20240502093000^^S", station="CT01"):
    return seg("ORC", {1: control, 2: placer, 3: filler, 5: "SC", 7: timing, 18: station})


def obr(placer="PL100^RIS", filler="FI200^PACS", extra=None):
    fields = {
        1: "1",
        2: placer,
        3: filler,
        4: "CTHEAD^CT head^LOCAL^P1^Head protocol^LOCAL",
        16: "2000^Request^Rolf",
        18: "ACC555",
        19: "RP77",
        20: "SPS88",
        24: "CT",
        34: "3000&Perform&Paula",
        44: "RPC1^CT head plain^LOCAL",
    }
    fields.update(extra or {})
    return seg("OBR", {k: v for k, v in fields.items() if v is not None})


PV1 = seg("PV1", {1: "1", 2: "O", 8: "1234^Referrer^Rita^^^Dr."})
ZDS = seg("ZDS", {1: f"{UID}^PACS^Application^DICOM"})


def new_order(control="MSG0001", **kwargs):
    """ORM^O01 2.3.1 NW with every field the mapping reads."""
    return msg(pid(), PV1, orc(), obr(), ZDS, control=control, charset="8859/1", **kwargs)


@pytest.fixture(autouse=True)
def worklist_settings(db):
    row = WorklistSettings.load()
    row.sending_application = "PACS"
    row.sending_facility = "RADIOLOGY"
    row.default_charset = "8859/1"
    row.send_acknowledgement = True
    row.save()
    return row


@pytest.fixture
def an_order():
    assert ack_code(send(new_order(control="ORDER-1"))) == "AA"
    return WorklistItem.objects.get()


# --- Orders ---------------------------------------------------------------------------------


def test_a_new_order_from_the_ris_becomes_a_worklist_item_with_every_mapped_field():
    ack = send(new_order())

    assert ack_code(ack) == "AA"
    item = WorklistItem.objects.get()
    assert {
        "status": item.status,
        "placer_order_number": item.placer_order_number,
        "filler_order_number": item.filler_order_number,
        "sending_application": item.sending_application,
        "sending_facility": item.sending_facility,
        "patient_id": item.patient_id,
        "issuer_of_patient_id": item.issuer_of_patient_id,
        "patient_name": item.patient_name,
        "patient_birth_date": item.patient_birth_date,
        "patient_sex": item.patient_sex,
        "accession_number": item.accession_number,
        "requested_procedure_id": item.requested_procedure_id,
        "scheduled_procedure_step_id": item.scheduled_procedure_step_id,
        "modality": item.modality,
        "scheduled_start_date": item.scheduled_start_date,
        "scheduled_start_time": item.scheduled_start_time,
        "scheduled_protocol_code": (
            item.scheduled_protocol_code_value,
            item.scheduled_protocol_code_scheme,
            item.scheduled_protocol_code_meaning,
        ),
        "scheduled_procedure_step_description": item.scheduled_procedure_step_description,
        "requested_procedure_code": (
            item.requested_procedure_code_value,
            item.requested_procedure_code_scheme,
            item.requested_procedure_code_meaning,
        ),
        "requested_procedure_description": item.requested_procedure_description,
        "requesting_physician": item.requesting_physician,
        "referring_physician_name": item.referring_physician_name,
        "scheduled_performing_physician_name": item.scheduled_performing_physician_name,
        "scheduled_station_ae_title": item.scheduled_station_ae_title,
        "study_instance_uid": item.study_instance_uid,
        "requested_procedure_priority": item.requested_procedure_priority,
        "specific_character_set": item.specific_character_set,
    } == {
        "status": ItemStatus.SCHEDULED,
        "placer_order_number": "PL100",
        "filler_order_number": "FI200",
        "sending_application": "RIS",
        "sending_facility": "HOSP",
        "patient_id": "PAT123",
        "issuer_of_patient_id": "HOSP",
        "patient_name": "Müller^Hans^Peter^Dr.^Jr.",
        "patient_birth_date": "19600101",
        "patient_sex": "M",
        "accession_number": "ACC555",
        "requested_procedure_id": "RP77",
        "scheduled_procedure_step_id": "SPS88",
        "modality": "CT",
        "scheduled_start_date": "20240502",
        "scheduled_start_time": "093000",
        "scheduled_protocol_code": ("P1", "LOCAL", "Head protocol"),
        "scheduled_procedure_step_description": "Head protocol",
        "requested_procedure_code": ("RPC1", "LOCAL", "CT head plain"),
        "requested_procedure_description": "CT head plain",
        "requesting_physician": "Request^Rolf",
        "referring_physician_name": "Referrer^Rita^^Dr.",
        "scheduled_performing_physician_name": "Perform^Paula",
        "scheduled_station_ae_title": "CT01",
        "study_instance_uid": UID,
        "requested_procedure_priority": "STAT",
        "specific_character_set": "ISO_IR 100",
    }


def test_an_omi_order_in_2_5_1_takes_the_step_from_ipc_and_the_start_from_tq1():
    text = msg(
        pid("PAT200^^^HOSP^MR", "Öztürk^Ayşe", "19851231", "F"),
        seg("PV1", {1: "1", 2: "O"}),
        seg("ORC", {1: "NW", 2: "PL300", 3: "FI300", 5: "SC", 12: "4000^Order^Olga"}),
        seg("TQ1", {1: "1", 7: "20240610143000", 8: "20240610150000", 9: "A"}),
        seg("OBR", {1: "1", 2: "PL300", 3: "FI300", 4: "MRKNEE^MR knee^LOCAL"}),
        seg("IPC", {1: "ACC300", 2: "RP300", 3: "1.2.3.4.300", 4: "SPS300", 5: "MR", 6: "MRK1^Knee^LOCAL", 9: "MR01"}),
        type="OMI^O23^OMI_O23",
        version="2.5.1",
        charset="UNICODE UTF-8",
    )

    assert ack_code(send(text, "utf-8")) == "AA"
    item = WorklistItem.objects.get()
    assert (item.accession_number, item.requested_procedure_id, item.scheduled_procedure_step_id) == (
        "ACC300",
        "RP300",
        "SPS300",
    )
    assert (item.study_instance_uid, item.modality, item.scheduled_station_ae_title) == ("1.2.3.4.300", "MR", "MR01")
    assert (item.scheduled_start_date, item.scheduled_start_time) == ("20240610", "143000")
    assert (item.scheduled_protocol_code_value, item.scheduled_procedure_step_description) == ("MRK1", "Knee")
    assert (item.requested_procedure_code_value, item.requested_procedure_description) == ("MRKNEE", "MR knee")
    assert item.requested_procedure_priority == "HIGH"
    assert item.requesting_physician == "Order^Olga"
    assert item.patient_name == "Öztürk^Ayşe"
    assert item.specific_character_set == "ISO_IR 192"


def test_an_order_with_two_ipc_segments_gives_two_steps_of_one_study():
    ipc = {1: "ACC400", 2: "RP400", 5: "CT", 9: "CT01"}
    text = msg(
        pid(),
        seg("ORC", {1: "NW", 2: "PL400", 3: "FI400"}),
        seg("OBR", {1: "1", 2: "PL400", 4: "CTCAP^CT chest abdomen^LOCAL"}),
        seg("IPC", {**ipc, 4: "SPS401", 6: "CHEST^Chest^LOCAL"}),
        seg("IPC", {**ipc, 4: "SPS402", 6: "ABD^Abdomen^LOCAL"}),
        type="OMI^O23^OMI_O23",
        version="2.5.1",
    )

    assert ack_code(send(text)) == "AA"
    steps = list(WorklistItem.objects.order_by("scheduled_procedure_step_id"))
    assert [s.scheduled_procedure_step_id for s in steps] == ["SPS401", "SPS402"]
    assert [s.scheduled_procedure_step_description for s in steps] == ["Chest", "Abdomen"]
    assert steps[0].study_instance_uid == steps[1].study_instance_uid != ""


def test_without_obr_18_the_placer_order_number_is_the_accession_and_a_study_uid_is_generated():
    text = msg(
        pid(), orc(placer="PL500", filler=""), obr(placer="PL500", filler="", extra={18: None, 19: None, 20: None})
    )

    assert ack_code(send(text)) == "AA"
    item = WorklistItem.objects.get()
    assert (item.accession_number, item.requested_procedure_id, item.scheduled_procedure_step_id) == (
        "PL500",
        "PL500",
        "PL500",
    )
    assert item.study_instance_uid.startswith("1.2.826.0.1.3680043.")


def test_each_supported_version_of_orm_is_accepted():
    for n, version in enumerate(["2.3", "2.3.1", "2.4", "2.5", "2.5.1"]):
        text = msg(pid(), orc(placer=f"PL{n}", filler=""), obr(placer=f"PL{n}", filler="", extra={18: f"A{n}"}))
        assert ack_code(send(msg(*text.split("\r")[1:-1], version=version, control=f"V{n}"))) == "AA", version
    assert WorklistItem.objects.count() == 5


def test_a_change_order_updates_the_item_and_keeps_what_it_does_not_mention(an_order):
    change = msg(
        seg("ORC", {1: "XO", 2: "PL100^RIS", 7: "^^^20240503110000^^R", 18: "CT02"}),
        seg("OBR", {1: "1", 2: "PL100^RIS"}),
        control="ORDER-2",
    )

    assert ack_code(send(change)) == "AA"
    item = WorklistItem.objects.get()
    assert (item.scheduled_start_date, item.scheduled_start_time) == ("20240503", "110000")
    assert (item.scheduled_station_ae_title, item.requested_procedure_priority) == ("CT02", "ROUTINE")
    assert (item.accession_number, item.patient_name) == ("ACC555", "Müller^Hans^Peter^Dr.^Jr.")
    assert item.study_instance_uid == an_order.study_instance_uid


def test_an_hl7_null_clears_a_stored_value(an_order):
    change = msg(seg("ORC", {1: "XO", 2: "PL100^RIS", 18: '""'}), seg("OBR", {1: "1", 2: "PL100^RIS"}), control="C2")

    assert ack_code(send(change)) == "AA"
    assert WorklistItem.objects.get().scheduled_station_ae_title == ""


def test_a_change_is_found_by_filler_order_number_when_the_placer_number_is_absent(an_order):
    change = msg(seg("ORC", {1: "XO", 3: "FI200^PACS", 18: "CT03"}), control="ORDER-3")

    assert ack_code(send(change)) == "AA"
    assert WorklistItem.objects.get().scheduled_station_ae_title == "CT03"


def test_a_change_is_found_by_accession_number_when_it_has_no_order_numbers(an_order):
    change = msg(seg("ORC", {1: "XO", 18: "CT04"}), seg("OBR", {1: "1", 18: "ACC555"}), control="ORDER-3A")

    assert ack_code(send(change)) == "AA"
    assert WorklistItem.objects.get().scheduled_station_ae_title == "CT04"


@pytest.mark.parametrize("control, status", [("CA", "CANCELLED"), ("OC", "CANCELLED"), ("DC", "DISCONTINUED")])
def test_a_cancel_keeps_the_item_but_hides_it(an_order, control, status):
    ack = send(msg(seg("ORC", {1: control, 2: "PL100^RIS"}), control="ORDER-4"))

    assert ack_code(ack) == "AA"
    item = WorklistItem.objects.get()
    assert item.pk == an_order.pk
    assert item.status == status


def test_a_status_change_to_completed_closes_the_item(an_order):
    ack = send(msg(seg("ORC", {1: "SC", 2: "PL100^RIS", 5: "CM"}), control="ORDER-5"))

    assert ack_code(ack) == "AA"
    assert WorklistItem.objects.get().status == ItemStatus.COMPLETED


def test_the_same_placer_number_from_another_application_is_another_order(an_order):
    ack = send(msg(seg("ORC", {1: "CA", 2: "PL100^RIS"}), control="X1", sender=("OTHERRIS", "HOSP")))

    assert ack_code(ack) == "AE"
    assert WorklistItem.objects.get().status == ItemStatus.SCHEDULED


def test_a_second_new_order_with_the_same_number_is_an_error(an_order):
    ack = send(new_order(control="ORDER-AGAIN"))

    assert ack_code(ack) == "AE"
    assert str(read_ack(ack)["ERR.F1.R1.C4"]) == "205"
    assert WorklistItem.objects.count() == 1


# --- Patients -------------------------------------------------------------------------------


def test_a_patient_update_changes_the_open_items_of_that_patient_only(an_order):
    other = WorklistItem.objects.create(patient_id="OTHER", patient_name="Other^Olga", accession_number="A2")
    closed = WorklistItem.objects.create(
        patient_id="PAT123", patient_name="Old^Name", accession_number="A3", status=ItemStatus.CANCELLED
    )
    update = msg(
        seg("EVN", {1: "A08"}),
        pid(name="Müller-Schmidt^Hans", birth="19600102", sex="M"),
        type="ADT^A08^ADT_A01",
        control="ADT-1",
        sender=HIS,
    )

    assert ack_code(send(update)) == "AA"
    an_order.refresh_from_db()
    assert (an_order.patient_name, an_order.patient_birth_date) == ("Müller-Schmidt^Hans", "19600102")
    assert WorklistItem.objects.get(pk=other.pk).patient_name == "Other^Olga"
    assert WorklistItem.objects.get(pk=closed.pk).patient_name == "Old^Name"


def test_a_patient_information_update_a31_is_taken_like_a08(an_order):
    update = msg(seg("EVN", {1: "A31"}), pid(sex="F"), type="ADT^A31", version="2.4", control="A31-1", sender=HIS)

    assert ack_code(send(update)) == "AA"
    assert WorklistItem.objects.get().patient_sex == "F"


def test_a_merge_moves_the_open_items_of_the_old_patient_id_to_the_new_one(an_order):
    merge = msg(
        seg("EVN", {1: "A40"}),
        pid("NEW999^^^HOSP^MR", "Müller^Hans"),
        seg("MRG", {1: "PAT123^^^HOSP^MR"}),
        type="ADT^A40^ADT_A39",
        version="2.5",
        control="MERGE-1",
        sender=HIS,
    )

    assert ack_code(send(merge)) == "AA"
    item = WorklistItem.objects.get()
    assert (item.patient_id, item.issuer_of_patient_id, item.patient_name) == ("NEW999", "HOSP", "Müller^Hans")
    assert not WorklistItem.objects.filter(patient_id="PAT123").exists()


# --- Duplicates and errors ------------------------------------------------------------------


def test_a_repeated_control_id_is_acknowledged_but_not_applied_twice(an_order):
    ack = send(new_order(control="ORDER-1"))

    assert ack_code(ack) == "AA"
    assert WorklistItem.objects.count() == 1
    outcomes = list(HL7Message.objects.order_by("pk").values_list("outcome", flat=True))
    assert outcomes == [MessageOutcome.APPLIED, MessageOutcome.DUPLICATE]


@pytest.mark.django_db(transaction=True)
def test_the_same_message_on_four_connections_at_once_is_applied_once():
    start = threading.Barrier(4)
    codes = []

    def deliver():
        start.wait()
        try:
            codes.append(ack_code(send(new_order(control="RACE-1"))))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert codes == ["AA"] * 4
    assert WorklistItem.objects.count() == 1
    assert sorted(HL7Message.objects.values_list("outcome", flat=True)) == [
        MessageOutcome.APPLIED,
        MessageOutcome.DUPLICATE,
        MessageOutcome.DUPLICATE,
        MessageOutcome.DUPLICATE,
    ]


def test_the_same_control_id_from_another_sender_is_not_a_duplicate(an_order):
    other_order = msg(
        pid(),
        orc(placer="PX1", filler=""),
        obr(placer="PX1", filler="", extra={18: "ACCX"}),
        control="ORDER-1",
        sender=("CARDIORIS", "HOSP"),
    )
    ack = send(other_order)
    assert ack_code(ack) == "AA"
    assert WorklistItem.objects.count() == 2


def test_a_forged_control_id_from_another_address_does_not_swallow_the_real_order():
    forged = msg(
        pid(patient_id="EVE^^^HOSP"),
        orc(placer="PX9", filler=""),
        obr(placer="PX9", filler="", extra={18: "ACCX"}),
        control="ORDER-9",
    )
    assert ack_code(send(forged, peer="203.0.113.66")) == "AA"  # anyone may send: no allowed senders

    real = send(new_order(control="ORDER-9"), peer="10.0.0.5")

    assert ack_code(real) == "AA"
    assert WorklistItem.objects.filter(patient_id="PAT123").exists(), "the RIS's order is applied"
    outcomes = list(HL7Message.objects.order_by("pk").values_list("sender_address", "outcome"))
    assert outcomes == [("203.0.113.66", MessageOutcome.APPLIED), ("10.0.0.5", MessageOutcome.APPLIED)]


def test_the_sending_address_is_the_host_without_the_connections_port(an_order):
    ack = process_message(new_order(control="ORDER-1").encode("latin-1"), peer="10.0.0.5:40001", address="10.0.0.5")

    assert ack_code(ack) == "AA"
    assert HL7Message.objects.order_by("pk").last().outcome == MessageOutcome.DUPLICATE


def allow(text):
    WorklistSettings.objects.filter(pk=1).update(allowed_senders=text)


def test_a_sender_whose_address_is_not_allowed_is_answered_ar_and_nothing_is_applied():
    allow("10.1.0.0/16")

    ack = send(new_order(), peer="10.0.0.5")

    assert ack_code(ack) == "AR"
    err = read_ack(ack).segment("ERR")
    assert "103" in str(err) and "not an allowed sender" in str(read_ack(ack).segment("MSA"))
    assert not WorklistItem.objects.exists()
    assert HL7Message.objects.get().outcome == MessageOutcome.REJECTED


def test_with_pairs_listed_only_those_applications_may_send_from_an_allowed_address():
    allow("10.0.0.0/8\nRIS^HOSP")

    assert ack_code(send(new_order(control="FROM-HIS", sender=HIS), peer="10.0.0.5")) == "AR"
    assert ack_code(send(new_order(control="FROM-RIS"), peer="10.0.0.5")) == "AA"
    assert ack_code(send(new_order(control="FORGED", sender=RIS), peer="203.0.113.66")) == "AR"

    assert WorklistItem.objects.count() == 1


def test_an_order_without_pid_3_is_answered_ae_with_an_err_segment():
    ack = send(msg(pid(patient_id=""), orc(), obr()))

    parsed = read_ack(ack)
    assert str(parsed.segment("MSA")[1]) == "AE"
    assert str(parsed["ERR.F1.R1.C1"]) == "PID"
    assert str(parsed["ERR.F1.R1.C3"]) == "3"
    assert str(parsed["ERR.F1.R1.C4"]) == "101"
    assert not WorklistItem.objects.exists()
    row = HL7Message.objects.get()
    assert (row.outcome, row.ack_code) == (MessageOutcome.ERROR, "AE")
    assert "PID-3" in row.error


@pytest.mark.parametrize(
    "segments, where",
    [
        ((pid(birth="19601340"), orc(), obr()), "PID-7"),
        ((pid(), orc(timing="^^^2024050^^R"), obr()), "ORC-7.4"),
        ((pid(), orc(timing="^^^20240502256100^^R"), obr()), "ORC-7.4"),
    ],
)
def test_a_bad_date_is_answered_ae_and_nothing_is_created(segments, where):
    ack = send(msg(*segments))

    assert ack_code(ack) == "AE"
    assert not WorklistItem.objects.exists()
    assert where in HL7Message.objects.get().error


def test_an_ae_in_2_5_carries_the_error_in_err_2_and_err_3():
    ack = send(msg(pid(patient_id=""), orc(), obr(), version="2.5"))

    parsed = read_ack(ack)
    err = parsed.segment("ERR")
    assert (str(err[2]), str(err[3]), str(err[4])) == ("PID^1^3", "101^Required field missing^HL70357", "E")


def test_a_change_for_an_unknown_order_is_answered_ae():
    ack = send(msg(seg("ORC", {1: "XO", 2: "NOSUCH"}), seg("OBR", {1: "1", 2: "NOSUCH"})))

    assert ack_code(ack) == "AE"
    assert str(read_ack(ack)["ERR.F1.R1.C4"]) == "204"
    assert not WorklistItem.objects.exists()


def test_an_unsupported_message_type_is_rejected_ar():
    ack = send(msg(pid(), seg("OBR", {1: "1"}), seg("OBX", {1: "1", 2: "TX"}), type="ORU^R01"))

    assert ack_code(ack) == "AR"
    assert str(read_ack(ack)["ERR.F1.R1.C4"]) == "200"
    assert HL7Message.objects.get().outcome == MessageOutcome.REJECTED


def test_an_unsupported_order_control_code_is_rejected_ar(an_order):
    ack = send(msg(seg("ORC", {1: "HD", 2: "PL100^RIS"}), control="HOLD"))

    assert ack_code(ack) == "AR"
    assert WorklistItem.objects.get().status == ItemStatus.SCHEDULED


def test_an_unsupported_version_is_rejected_ar_in_that_version():
    ack = send(msg(pid(), orc(), obr(), version="2.6"))

    parsed = read_ack(ack)
    assert str(parsed.segment("MSA")[1]) == "AR"
    assert str(parsed.segment("MSH")[12]) == "2.6"
    assert not WorklistItem.objects.exists()


def test_garbage_is_rejected_ar_and_logged_with_what_could_be_read():
    ack = process_message(b"\x00\xffHELLO\x00 this is not HL7", peer="10.9.9.9")

    assert ack_code(ack) == "AR"
    assert str(read_ack(ack).segment("MSA")[2]) == ""
    row = HL7Message.objects.get()
    assert (row.outcome, row.peer, row.ack_code) == (MessageOutcome.REJECTED, "10.9.9.9", "AR")
    assert "HELLO" in row.raw and "\x00" not in row.raw
    assert row.ack.startswith("MSH|")


def test_unusable_encoding_characters_are_answered_ar():
    ack = process_message(b"MSH^^~\\&|RIS|HOSP|PACS|RAD|20240501||ORM^O01|X1|P|2.3.1\rPID|||123||Doe^John\r")

    assert ack_code(ack) == "AR"
    assert HL7Message.objects.get().outcome == MessageOutcome.REJECTED


def test_no_kind_of_broken_message_makes_it_raise():
    rng = random.Random(5)
    good = new_order().encode("latin-1")
    broken = [
        b"",
        b"MSH",
        b"MSH|",
        b"MSH|^~\\&",
        b"MSH|^^^^|A|B",
        good[: len(good) // 2],
        good.replace(b"|", b"\x00"),
        good.replace(b"\r", b""),
        b"PID|1||X\rMSH|^~\\&|A",
        *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(30)),
        *(good[:i] + bytes([rng.randrange(256)]) + good[i + 1 :] for i in rng.sample(range(len(good)), 40)),
    ]
    for n, raw in enumerate(broken):
        ack = process_message(raw, peer=f"fuzz-{n}")
        assert ack is not None and ack.startswith(b"MSH"), raw
        assert ack_code(ack) in ("AA", "AE", "AR"), raw
    assert HL7Message.objects.count() == len(broken)


def test_with_acknowledgements_off_nothing_is_returned_but_the_message_is_logged(worklist_settings):
    worklist_settings.send_acknowledgement = False
    worklist_settings.save()

    assert send(new_order()) is None
    assert process_message(b"garbage") is None
    assert WorklistItem.objects.count() == 1
    assert list(HL7Message.objects.order_by("pk").values_list("outcome", "ack_code")) == [
        (MessageOutcome.APPLIED, ""),
        (MessageOutcome.REJECTED, ""),
    ]


# --- Character sets -------------------------------------------------------------------------

GREEK = "Παπαδόπουλος^Γιώργος"
GERMAN = "Größe^Jürgen"


def test_greek_names_are_decoded_by_msh_18():
    text = msg(pid(name=GREEK), orc(), obr(), charset="8859/7")

    ack = send(text, "iso8859_7")

    assert ack_code(ack) == "AA"
    item = WorklistItem.objects.get()
    assert item.patient_name == GREEK
    assert item.specific_character_set == "ISO_IR 126"


def test_german_names_are_decoded_by_msh_18_even_when_the_default_is_greek(worklist_settings):
    worklist_settings.default_charset = "8859/7"
    worklist_settings.save()

    assert ack_code(send(msg(pid(name=GERMAN), orc(), obr(), charset="8859/1"))) == "AA"
    assert WorklistItem.objects.get().patient_name == GERMAN


def test_greek_names_are_decoded_by_the_default_charset_when_msh_18_is_empty(worklist_settings):
    worklist_settings.default_charset = "8859/7"
    worklist_settings.save()

    ack = send(msg(pid(name=GREEK), orc(), obr()), "iso8859_7")

    assert ack_code(ack) == "AA"
    assert WorklistItem.objects.get().patient_name == GREEK
    assert HL7Message.objects.get().charset == "8859/7"


def test_german_names_are_decoded_by_the_default_charset_when_msh_18_is_empty():
    assert ack_code(send(msg(pid(name=GERMAN), orc(), obr()))) == "AA"
    item = WorklistItem.objects.get()
    assert (item.patient_name, item.specific_character_set) == (GERMAN, "ISO_IR 100")


@pytest.mark.parametrize("spelling", ["UTF-8", "utf8", "ISO_IR 192"])
def test_common_spellings_of_utf_8_in_msh_18_are_understood(spelling):
    assert ack_code(send(msg(pid(name=GREEK), orc(), obr(), charset=spelling), "utf-8"), "utf-8") == "AA"
    assert WorklistItem.objects.get().patient_name == GREEK


@pytest.mark.parametrize("spelling", ["ISO IR100", "ISO-8859-1", "8859/1"])
def test_common_spellings_of_latin_1_in_msh_18_are_understood(spelling):
    assert ack_code(send(msg(pid(name=GERMAN), orc(), obr(), charset=spelling))) == "AA"
    assert WorklistItem.objects.get().patient_name == GERMAN


def test_an_unknown_charset_is_rejected_ar():
    ack = send(msg(pid(), orc(), obr(), charset="KLINGON"))

    assert ack_code(ack) == "AR"
    assert "KLINGON" in HL7Message.objects.get().error


def test_bytes_that_are_not_the_declared_charset_are_rejected_ar():
    ack = send(msg(pid(name=GERMAN), orc(), obr(), charset="UNICODE UTF-8"), "latin-1")

    assert ack_code(ack) == "AR"
    assert not WorklistItem.objects.exists()


def test_escaped_separators_in_a_name_are_unescaped():
    assert ack_code(send(msg(pid(name="Smith\\T\\Jones^Ann"), orc(), obr()))) == "AA"
    assert WorklistItem.objects.get().patient_name == "Smith&Jones^Ann"


def test_segments_may_be_separated_by_newlines():
    assert ack_code(send(new_order().replace("\r", "\r\n"))) == "AA"
    assert WorklistItem.objects.get().accession_number == "ACC555"


# --- The ACK --------------------------------------------------------------------------------


def test_the_ack_names_us_them_the_message_and_its_charset():
    ack = send(msg(pid(name=GREEK), orc(), obr(), charset="8859/7", control="CTRL-77", version="2.4"), "iso8859_7")

    parsed = read_ack(ack, "iso8859_7")
    msh, msa = parsed.segment("MSH"), parsed.segment("MSA")
    assert [str(msh[n]) for n in (3, 4, 5, 6)] == ["PACS", "RADIOLOGY", "RIS", "HOSP"]
    assert str(msh[9]) == "ACK^O01^ACK"
    assert (str(msh[12]), str(msh[18])) == ("2.4", "8859/7")
    assert str(msh[10]) not in ("", "CTRL-77")
    assert (str(msa[1]), str(msa[2])) == ("AA", "CTRL-77")


def test_an_ack_in_2_3_1_has_a_two_part_message_type():
    parsed = read_ack(send(new_order()))
    assert str(parsed.segment("MSH")[9]) == "ACK^O01"


def test_an_error_text_in_the_ack_is_in_the_message_charset():
    ack = send(msg(pid(name=GREEK, patient_id=""), orc(), obr(), charset="8859/7"), "iso8859_7")

    parsed = read_ack(ack, "iso8859_7")
    assert str(parsed.segment("MSA")[1]) == "AE"
    assert "PID-3" in str(parsed.segment("MSA")[3])


def test_every_message_is_logged_with_its_text_summary_and_ack():
    send(new_order())

    row = HL7Message.objects.get()
    assert (row.message_type, row.control_id, row.version, row.charset) == ("ORM^O01", "MSG0001", "2.3.1", "8859/1")
    assert (row.sending_application, row.sending_facility, row.peer) == ("RIS", "HOSP", "10.0.0.5")
    assert row.raw.startswith("MSH|^~\\&|RIS|HOSP") and "Müller" in row.raw
    assert "ACC555" in row.summary
    assert row.ack.startswith("MSH|") and "MSA|AA|MSG0001" in row.ack
    assert row.item == WorklistItem.objects.get()
