"""Signals other apps listen to (publishing, notifications).

`association_closed` is sent by runscp's index writer thread once the end of
an incoming association is committed, with `association` (the AssociationLog
row, called AE included).  Instances stored in it are
`association.instances`.  Receivers must be quick, or hand work to django-q2.
"""

from django.dispatch import Signal

association_closed = Signal()
