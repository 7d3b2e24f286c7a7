"""The hooks other apps subscribe to (in their AppConfig.ready()), so that
dicomnodes never imports them.

- `scp_started`: a runscp process (dispatcher or worker) has started; no
  arguments.  Publishing starts its clock (delayed burns, robot status).
- `studies_created`: the index writer committed new studies;
  `studies` = [NewStudy(study_instance_uid, accession_number,
  from_known_peer)].  Sent after the commit and after the senders were
  released.  Worklist completes the matching items and tells the RIS (for
  studies from known peers only, unless the setting "any sender completes
  orders" is on: anyone may store by default).
- `association_closed`: sent by the index writer once the end of an
  incoming association is committed, with `association` (the AssociationLog
  row, called AE included) and `sop_instance_uids`: every instance stored in
  it, duplicates included (`association.instances` holds only those it
  stored first).  Publishing turns `_E`/`_P`/`_TE`/`_TP` associations into
  burn jobs.

Receivers must be quick, or hand work to django-q2; `send_robust()` is used,
so a failing receiver is logged and never fails the ingest.
"""

import logging
from typing import NamedTuple

from django.dispatch import Signal

logger = logging.getLogger(__name__)

class NewStudy(NamedTuple):
    """One study row the index writer created (what `studies_created` carries)."""

    study_instance_uid: str
    accession_number: str
    # Its first instance came from a peer in the peer list (AE title, and
    # host when checked), or from a retrieve we asked for.
    from_known_peer: bool = True


scp_started = Signal()
studies_created = Signal()
association_closed = Signal()


def send_logged(signal, sender, **kwargs):
    """`signal.send_robust()`, with every receiver's failure logged."""
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            logger.error("receiver %s failed: %s", getattr(receiver, "__qualname__", receiver), result, exc_info=result)
