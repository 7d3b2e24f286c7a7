"""What a deletion in the archive takes from the portal: patient links
(found by dicomnodes/lifecycle/deletion.py, which imports no portal module).

A link to a study that goes is deleted with it (its row cascades), so it
answers 404 from then on; a link to a study that loses only some series
keeps working for the rest.
"""

from django.db.models import Q
from django.utils import timezone

from dicomnodes.lifecycle.deletion import register_impact
from portal.models import StudyToken


def open_links(scope) -> int:
    """Unexpired, unrevoked links to the studies that go whole."""
    now = timezone.now()
    return (
        StudyToken.objects.filter(study__in=scope.studies.values("pk"), revoked_at=None)
        .filter(Q(expires_at=None) | Q(expires_at__gt=now))
        .count()
    )


register_impact("open_links", "open patient links", open_links)
