"""C-MOVE and C-GET: which instances a request names (PS3.4 C.4.2.1.4)."""

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomnodes.dimse import Status
from dicomnodes.query.levels import LEVELS, MODELS, instances_at, levels_above


class RetrieveError(ValueError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.comment = message[:64]


@dataclass(frozen=True, slots=True)
class Target:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


def select_instances(identifier: Dataset, *, model: str):
    """The instances a C-MOVE/C-GET identifier names (list of Target).

    `model` is "PATIENT" or "STUDY" (the information model's root).  Raises
    RetrieveError (A900) for a missing level or unique key.
    """
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in MODELS[model]:
        raise RetrieveError(
            Status.IDENTIFIER_DOES_NOT_MATCH, f"Query/Retrieve Level {level or '(none)'} not valid here"
        )
    keyword = LEVELS[level].unique_key
    values = _uid_list(identifier, keyword)
    if not values:
        raise RetrieveError(Status.IDENTIFIER_DOES_NOT_MATCH, f"{keyword} is required at level {level}")
    rows = instances_at(level, values)
    # Upper-level unique keys that were given narrow the match (hierarchical).
    for upper in levels_above(model, level):
        upper_values = _uid_list(identifier, LEVELS[upper].unique_key)
        if upper_values:
            rows = rows.filter(**{LEVELS[upper].instance_lookup: upper_values})
    rows = rows.order_by("series__series_number", "instance_number", "pk")
    return [Target(*row) for row in rows.values_list("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid")]


def _uid_list(identifier, keyword):
    value = identifier.get(keyword)
    if value is None:
        return []
    value = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in value if str(v).strip() and str(v).strip() != "*"]
