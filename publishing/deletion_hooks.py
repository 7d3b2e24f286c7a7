"""What a deletion in the archive takes from publishing: burn jobs not yet
finished that hold something that goes (found by dicomnodes/lifecycle/
deletion.py, which imports no publishing module)."""

from dicomnodes.lifecycle.deletion import register_impact
from publishing.models import FINAL_STATES, BurnJob


def pending_burns(scope) -> int:
    pending = BurnJob.objects.exclude(state__in=FINAL_STATES)
    jobs = set(pending.filter(studies__in=scope.touched_studies.values("pk")).values_list("pk", flat=True))
    jobs |= set(pending.filter(series__in=scope.instances.values("series_id")).values_list("pk", flat=True))
    jobs |= set(pending.filter(instances__in=scope.instances.values("pk")).values_list("pk", flat=True))
    return len(jobs)


register_impact("pending_burns", "pending burn jobs", pending_burns)
