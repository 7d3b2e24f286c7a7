"""Signals other apps listen to (publishing, notifications).

`association_closed` is sent by runscp's index writer thread once the end of
an incoming association is committed, with `association` (the AssociationLog
row, called AE included) and `sop_instance_uids`: every instance stored in
it, duplicates included (`association.instances` holds only those it stored
first).  Receivers must be quick, or hand work to django-q2.
"""

from django.dispatch import Signal

association_closed = Signal()
