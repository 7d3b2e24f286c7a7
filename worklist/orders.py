"""Apply an accepted order or patient message to the WorklistItem rows.

Each `apply_*` function runs inside the caller's transaction, raises
ProcessingError (ACK AE) or Rejected (ACK AR), and returns what it did.

Which items an order message touches:
1. The order's items are found by placer order number (ORC-2, else OBR-2) with
   the same sending application (MSH-3), else by filler order number (ORC-3,
   else OBR-3), else by accession number; open items come before closed ones.
2. A step that names its Scheduled Procedure Step ID (IPC-4, else OBR-20)
   updates the item with that ID; if the order has none, the step is added.
3. A step without an ID updates every item of the order.
"""

from dataclasses import dataclass

from django.db import models
from django.db.models import Q
from pydicom.uid import generate_uid

from worklist.er7 import Header, Segment, codec_for_dicom
from worklist.mapping import (
    CANCELS,
    CREATE,
    DUPLICATE_KEY_IDENTIFIER,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    UPDATES,
    OrderGroup,
    ProcessingError,
    Rejected,
    first,
    order_groups,
    order_keys,
    order_status,
    order_values,
    patient_values,
    require_patient_id,
)
from worklist.models import ItemStatus, WorklistItem

OPEN = (ItemStatus.SCHEDULED, ItemStatus.IN_PROGRESS)
_TEXT_FIELDS = [
    f.name for f in WorklistItem._meta.get_fields() if isinstance(f, models.CharField) and f.name != "status"
]


@dataclass
class Applied:
    summary: str
    item: WorklistItem | None = None  # the (last) item created or changed, for the log


def fit_charset(item: WorklistItem, *preferred: str) -> str:
    """The DICOM character set the item's text can be written in: the first
    preferred one that fits (the message's), else the item's own, else UTF-8
    (ISO_IR 192)."""
    for term in dict.fromkeys((*preferred, item.specific_character_set)):
        try:
            for name in _TEXT_FIELDS:
                getattr(item, name).encode(codec_for_dicom(term) if term else "ascii")
        except UnicodeEncodeError:
            continue
        return term
    return "ISO_IR 192"


def _save(item: WorklistItem, values: dict, charset: str):
    for name, value in values.items():
        setattr(item, name, value)
    item.specific_character_set = fit_charset(item, charset)
    item.save()


# --- Orders ----------------------------------------------------------------------------------


def apply_order(segments: list[Segment], header: Header, charset: str) -> Applied:
    """ORM^O01 / OMI^O23: every ORC group, by its order control code (ORC-1)."""
    groups = order_groups(segments)
    if not groups:
        raise ProcessingError("the message has no ORC segment", code=SEGMENT_SEQUENCE_ERROR, location="ORC")
    for group in groups:
        if group.control != CREATE and group.control not in UPDATES and group.control not in CANCELS:
            raise Rejected(
                f"order control code {group.control or '(empty)'!r} in ORC-1 is not handled",
                code=TABLE_VALUE_NOT_FOUND,
                location="ORC-1",
            )
    pid, pv1 = first(segments, "PID"), first(segments, "PV1")
    done = []
    for group in groups:
        if group.control == CREATE:
            done.append(_create(group, pid, pv1, header, charset))
        elif group.control in UPDATES:
            done.append(_update(group, pid, pv1, header, charset))
        else:
            done.append(_cancel(group, header))
    return Applied("; ".join(a.summary for a in done), done[-1].item)


def _label(keys: dict) -> str:
    return keys.get("placer_order_number") or keys.get("filler_order_number") or keys.get("accession_number") or "?"


def _lookups(keys: dict, header: Header) -> list[dict]:
    lookups = []
    if keys.get("placer_order_number"):
        lookups.append(
            {"placer_order_number": keys["placer_order_number"], "sending_application": header.sending_application}
        )
    if keys.get("filler_order_number"):
        lookups.append({"filler_order_number": keys["filler_order_number"]})
    if keys.get("accession_number"):
        lookups.append({"accession_number": keys["accession_number"]})
    return lookups


def find_order(keys: dict, header: Header) -> list[WorklistItem]:
    """The order's items by the first key that finds any; open ones only if there are some."""
    for lookup in _lookups(keys, header):
        # Locked: an update and a cancel of the same order arriving on two
        # connections would otherwise each save over the other's change.
        items = list(WorklistItem.objects.select_for_update().filter(**lookup).order_by("pk"))
        if items:
            return [i for i in items if i.status in OPEN] or items
    return []


def _require_order(group: OrderGroup, header: Header) -> tuple[dict, list[WorklistItem]]:
    keys = order_keys(group)
    items = find_order(keys, header)
    if not items:
        raise ProcessingError(
            f"ORC-1 {group.control}: no order {_label(keys)} is known", code=UNKNOWN_KEY_IDENTIFIER, location="ORC-2"
        )
    return keys, items


def _create(group: OrderGroup, pid: Segment | None, pv1: Segment | None, header: Header, charset: str) -> Applied:
    require_patient_id(pid)
    patient = patient_values(pid)
    keys = order_keys(group)
    if not any(keys.values()):
        raise ProcessingError("ORC-2 / ORC-3 (order number) is missing", code=REQUIRED_FIELD_MISSING, location="ORC-2")
    for lookup in _lookups(keys, header):
        if WorklistItem.objects.filter(**lookup, status__in=OPEN).exists():
            raise ProcessingError(
                f"ORC-1 NW: order {_label(keys)} already exists ({', '.join(lookup)})",
                code=DUPLICATE_KEY_IDENTIFIER,
                location="ORC-2",
            )
    steps = group.ipcs or [None]
    study_uid = ""
    created = []
    for index, ipc in enumerate(steps):
        values = order_values(group, ipc, pv1)
        item = WorklistItem(
            sending_application=header.sending_application[:180], sending_facility=header.sending_facility[:180]
        )
        _fill_defaults(values, keys, index=index, count=len(steps))
        # All steps of one order share one study; it is generated once, here.
        study_uid = values.get("study_instance_uid") or study_uid or generate_uid()
        values["study_instance_uid"] = study_uid
        _save(item, {**patient, **values}, charset)
        created.append(item)
    ids = ", ".join(str(i.pk) for i in created)
    return Applied(f"NW {_label(keys)}: created item {ids} (accession {created[-1].accession_number})", created[-1])


def _fill_defaults(values: dict, keys: dict, *, index: int, count: int):
    """The Type 1 attributes of a worklist answer a new item must not leave empty."""
    if not values.get("accession_number"):
        # OBR-18 empty: the order number stands in (ORC-2, else ORC-3).
        fallback = keys.get("placer_order_number") or keys.get("filler_order_number") or ""
        if len(fallback) > 16:
            raise ProcessingError(
                f"OBR-18 (accession number) is empty and the order number {fallback!r} is longer than 16 characters",
                code=REQUIRED_FIELD_MISSING,
                location="OBR-18",
            )
        values["accession_number"] = fallback
    values["requested_procedure_id"] = values.get("requested_procedure_id") or values["accession_number"]
    if not values.get("scheduled_procedure_step_id"):
        sps = values["requested_procedure_id"]
        values["scheduled_procedure_step_id"] = f"{sps[:12]}-{index + 1}" if count > 1 else sps
    for prefix in ("scheduled_protocol", "requested_procedure"):
        if values.get(f"{prefix}_code_value") and not values.get(f"{prefix}_code_scheme"):
            values[f"{prefix}_code_scheme"] = "L"  # HL7 table 0396: local code


def _update(group: OrderGroup, pid: Segment | None, pv1: Segment | None, header: Header, charset: str) -> Applied:
    keys, items = _require_order(group, header)
    patient = patient_values(pid) if pid is not None else {}
    status = order_status(group) if group.control == "SC" else None
    changed = []
    for ipc in group.ipcs or [None]:
        values = order_values(group, ipc, pv1)
        sps = values.get("scheduled_procedure_step_id")
        targets = [i for i in items if i.scheduled_procedure_step_id == sps] if sps else items
        if not targets:
            # A step the order did not have: a copy of its first item, changed below.
            new = WorklistItem.objects.get(pk=items[0].pk)
            new.pk = None
            new.status = ItemStatus.SCHEDULED
            targets = [new]
        for item in targets:
            _save(item, {**patient, **values, **({"status": status} if status else {})}, charset)
            changed.append(item)
    ids = ", ".join(str(i.pk) for i in changed)
    return Applied(f"{group.control} {_label(keys)}: updated item {ids}", changed[-1])


def _cancel(group: OrderGroup, header: Header) -> Applied:
    keys, items = _require_order(group, header)
    status = CANCELS[group.control]
    changed = [i for i in items if i.status in OPEN]
    for item in changed:
        item.status = status
        item.save(update_fields=["status", "updated_at"])
    if not changed:
        return Applied(f"{group.control} {_label(keys)}: already {items[0].get_status_display()}", items[0])
    ids = ", ".join(str(i.pk) for i in changed)
    return Applied(f"{group.control} {_label(keys)}: item {ids} {status.label}", changed[-1])


# --- Patients --------------------------------------------------------------------------------


def _open_items_of(patient_id: str, issuer: str) -> list[WorklistItem]:
    items = WorklistItem.objects.select_for_update().filter(patient_id=patient_id, status__in=OPEN)
    if issuer:
        items = items.filter(Q(issuer_of_patient_id="") | Q(issuer_of_patient_id=issuer))
    return list(items.order_by("pk"))


def apply_patient_update(segments: list[Segment], header: Header, charset: str) -> Applied:
    """ADT^A08 / ADT^A31: name, birth date, sex, issuer of the open items with that PID-3."""
    pid = first(segments, "PID")
    patient_id = require_patient_id(pid)
    values = patient_values(pid)
    items = _open_items_of(patient_id, values.get("issuer_of_patient_id", ""))
    for item in items:
        _save(item, values, charset)
    return Applied(f"patient update: {len(items)} open item(s) changed", items[-1] if items else None)


def apply_merge(segments: list[Segment], header: Header, charset: str) -> Applied:
    """ADT^A40: the open items of each MRG-1 (old ID) move to the PID-3 before it (new ID)."""
    pairs = []
    for seg in segments:
        if seg.name == "PID":
            pairs.append([seg, None])
        elif seg.name == "MRG" and pairs and pairs[-1][1] is None:
            pairs[-1][1] = seg
    if not pairs or any(mrg is None for _, mrg in pairs):
        raise ProcessingError(
            "ADT^A40 needs an MRG segment after each PID", code=SEGMENT_SEQUENCE_ERROR, location="MRG"
        )
    moved = []
    for pid, mrg in pairs:
        require_patient_id(pid)
        old_id = mrg.get(1, 1, rep=mrg.first_rep(1))
        if not old_id:
            raise ProcessingError("MRG-1 (prior patient ID) is missing", code=REQUIRED_FIELD_MISSING, location="MRG-1")
        values = patient_values(pid)
        for item in _open_items_of(old_id, mrg.get(1, 4, rep=mrg.first_rep(1))):
            _save(item, values, charset)
            moved.append(item)
    return Applied(f"merge: {len(moved)} open item(s) moved to the surviving patient ID", moved[-1] if moved else None)
