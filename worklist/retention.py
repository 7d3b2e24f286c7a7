"""What worklist prunes daily (see pacs_site/retention.py): the text of HL7
messages (patient data).

The rows stay: their control IDs still detect a duplicate, their outcome and
summary still tell what happened, and the worklist items they made are not
touched.  Only the message text and the ACK are blanked, of incoming
messages and of outgoing ones that are no longer waiting to be sent.
"""

import datetime

from django.utils import timezone

from pacs_site.retention import register_pruner
from worklist.models import DeliveryState, HL7Message, OutgoingHL7Message


def blank_old_messages(row) -> str:
    if not row.hl7_message_days:
        return "kept"
    cutoff = timezone.now() - datetime.timedelta(days=row.hl7_message_days)
    incoming = HL7Message.objects.filter(received_at__lt=cutoff).exclude(raw="", ack="").update(raw="", ack="")
    outgoing = (
        OutgoingHL7Message.objects.filter(created_at__lt=cutoff)
        .exclude(state=DeliveryState.PENDING)
        .exclude(message="", ack="")
        .update(message="", ack="")
    )
    return f"text of {incoming} received and {outgoing} sent messages blanked"


register_pruner("HL7 message text", blank_old_messages)
