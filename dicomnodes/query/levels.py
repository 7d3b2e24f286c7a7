"""Query/retrieve levels: the one table of PS3.4 C.6 that matching, retrieve
selection, transfer scoping and our SCU identifiers all read.

For each level: its unique key (C.4.1.1.3.1), the index model searched at
that level, the path from that model to the row of each level above it,
and the lookup that selects instances (C-MOVE/C-GET, transfers) by that
level's unique key; `identifier()` builds what our SCUs send.
"""

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomnodes.models import Instance, Patient, Series, Study

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"


@dataclass(frozen=True)
class Level:
    name: str
    unique_key: str  # keyword of the unique key
    model: type  # index model searched at this level
    paths: dict  # level above (or this one) -> ORM path from `model` to its row
    instance_lookup: str  # Instance lookup "…__in" for this level's unique key


LEVELS = {
    PATIENT: Level(PATIENT, "PatientID", Patient, {PATIENT: ""}, "series__study__patient_id__in"),  # (0010,0020)
    STUDY: Level(
        STUDY,
        "StudyInstanceUID",  # (0020,000D)
        Study,
        {PATIENT: "patient_record__", STUDY: ""},
        "series__study__study_instance_uid__in",
    ),
    SERIES: Level(
        SERIES,
        "SeriesInstanceUID",  # (0020,000E)
        Series,
        {PATIENT: "study__patient_record__", STUDY: "study__", SERIES: ""},
        "series__series_instance_uid__in",
    ),
    IMAGE: Level(
        IMAGE,
        "SOPInstanceUID",  # (0008,0018)
        Instance,
        {PATIENT: "series__study__patient_record__", STUDY: "series__study__", SERIES: "series__"},
        "sop_instance_uid__in",
    ),
}

# Information model -> its levels, top down (PS3.4 C.6.1 Patient Root, C.6.2 Study Root).
MODELS = {
    "PATIENT": (PATIENT, STUDY, SERIES, IMAGE),
    "STUDY": (STUDY, SERIES, IMAGE),
}

def levels_above(model, level):
    """The levels of `model` above `level`, top down."""
    levels = MODELS[model]
    return levels[: levels.index(level)]


def instances_at(level, uids):
    """Instances named by unique keys of `level` (a queryset)."""
    return Instance.objects.filter(**{LEVELS[level].instance_lookup: list(uids)})


def identifier(level, value, *, above=(), model="STUDY", **returned):
    """A Q/R identifier at `level` (what we send as an SCU): the unique keys
    of the levels above from `above` (top down, one value each: PS3.4
    C.4.1.2.1, C.4.2.2.1), `value` for the level's own unique key (a UID, a
    list, or "" to have it returned), and the other keys to return."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for upper, upper_value in zip(levels_above(model, level), above, strict=True):
        setattr(ds, LEVELS[upper].unique_key, upper_value)
    setattr(ds, LEVELS[level].unique_key, value)
    for keyword, returned_value in returned.items():
        setattr(ds, keyword, returned_value)
    return ds
