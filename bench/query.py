#!/usr/bin/env python3
"""Query/retrieve benchmark: C-FIND, C-MOVE and C-GET against our `runscp`
and Orthanc, each holding the same synthetic archive.

    .venv/bin/python bench/query.py [--instances N | --quick] [--repeat R]
                                    [--retrieve-repeat K] [--pacs-processes P]
                                    [--keep]

The archive: N tiny instances (16×16) in studies of a realistic shape, plus
one retrieve study of 600 × 512×512 16-bit CT.  Ours gets the N instances by
a direct bulk load of its index (dicomnodes.archive.index.index_instances, no files)
and the retrieve study over the network (storescu → runscp, so that C-MOVE
and C-GET have files to read); Orthanc gets everything with storescu.  Both
run side by side; every query is run R times with `findscu -S`, alternating
between the two, and the findscu wall time gives median and p95 ms.  The
retrieve study is then moved (C-MOVE) to a DCMTK storescp and fetched with
C-GET (getscu) K times each: instances per second, every run checked for all
600 files.  A table is printed and the numbers are written as JSON to
bench/results/query-<timestamp>.json.

The corpora are cached in /tmp/pacs-bench-query-corpus-<N> and
/tmp/pacs-bench-query-retrieve-600 (delete them to regenerate).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    PYTHON,
    REPO,
    RESULTS_DIR,
    Orthanc,
    Pacs,
    Run,
    StoreScp,
    TargetError,
    first_line,
    git_changes,
    pixel_bytes,
    print_aligned,
    send,
    serving,
    tail,
    tool_env,
    wait_for_count,
)

PARTS = 4  # sub-folders per corpus = parallel storescu associations when loading
SEED = 20240611
CORPUS_VERSION = 1  # bump when the generator changes (the cache is rebuilt)
CALLER_AE = "BENCHSCU"  # our findscu/movescu/getscu
DEST_AE = "DEST"  # the storescp that C-MOVE sends to
RETRIEVE_INSTANCES = 600
RETRIEVE_SERIES = 2
TINY, LARGE = 16, 512  # rows = columns
INDEX_BATCH = 1000
LOAD_TIMEOUT = 3600.0  # seconds for a whole corpus to arrive somewhere
QUERY_TIMEOUT = 120.0  # seconds for one findscu/movescu/getscu

CT, MR, CR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's implementation class UID
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"  # pydicom's root, our own branch

SURNAMES = [
    "SMITH", "SMITHSON", "SMITHERS", "SMIRNOV", "SMALL", "SCHMIDT", "JONES", "JOHNSON", "BROWN", "WILLIAMS",
    "TAYLOR", "DAVIES", "EVANS", "WILSON", "THOMAS", "ROBERTS", "WALKER", "WRIGHT", "GREEN", "HALL",
    "WOOD", "HARRIS", "MARTIN", "LEWIS", "CLARKE", "JACKSON", "TURNER", "HILL", "MOORE", "COOPER",
    "WARD", "KING", "BAKER", "MUELLER", "GARCIA", "MARTINEZ", "NGUYEN", "KOWALSKI", "PAPADOPOULOS", "ROSSI",
]  # fmt: skip
GIVEN_NAMES = [
    "JOHN", "MARY", "JAMES", "ANNA", "PETER", "LINDA", "DAVID", "SUSAN",
    "MICHAEL", "KAREN", "PAUL", "ELENA", "GEORGE", "MARIA", "THOMAS", "SARAH",
]  # fmt: skip
REFERRERS = ["HOUSE^GREGORY", "GREY^MEREDITH", "WATSON^JOHN", "QUINN^MICHAELA", "KILDARE^JAMES", ""]
# (study description, modality, SOP class, body part, series descriptions)
RADIOGRAPHS = [
    ("CR CHEST", "CR", CR, "CHEST", ["PA", "LATERAL"]),
    ("CR KNEE", "CR", CR, "KNEE", ["AP", "LATERAL"]),
    ("CR HAND", "CR", CR, "HAND", ["PA", "OBLIQUE"]),
]
RADIOGRAPH_SHARE = 0.45  # of the studies: 1–4 instances over 1–2 series
STUDIES_PER_PATIENT = 1.2
PROTOCOLS = [
    ("CT CHEST", "CT", CT, "CHEST", ["TOPOGRAM", "AXIAL 5MM", "AXIAL 1MM", "MIP CORONAL"]),
    ("CT ABDOMEN PELVIS", "CT", CT, "ABDOMEN", ["TOPOGRAM", "PORTAL VENOUS", "ARTERIAL", "DELAYED"]),
    ("CT HEAD", "CT", CT, "HEAD", ["TOPOGRAM", "AXIAL BRAIN", "AXIAL BONE", "CORONAL"]),
    ("MR BRAIN", "MR", MR, "HEAD", ["T1 SAG", "T2 AX", "FLAIR AX", "DWI"]),
    ("MR KNEE", "MR", MR, "KNEE", ["PD SAG", "PD FS COR", "T1 COR", "T2 AX"]),
    ("MR LUMBAR SPINE", "MR", MR, "LSPINE", ["T1 SAG", "T2 SAG", "T2 AX", "STIR SAG"]),
]
FIRST_DAY = dt.date(2023, 1, 1)
DAYS = 730  # study dates over two years


# ---------------------------------------------------------------------------
# The corpus plan: a pure function of (instances, seed)
# ---------------------------------------------------------------------------


@dataclass
class PatientPlan:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass
class SeriesPlan:
    uid: str
    number: int
    description: str
    count: int
    first: int  # global index of its first instance


@dataclass
class StudyPlan:
    index: int
    uid: str
    patient: PatientPlan
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    modality: str
    sop_class: str
    body_part: str
    referrer: str
    series: list[SeriesPlan] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.series)


@dataclass
class Plan:
    """Every study, series and patient of a corpus; instance k of a series
    has SOP Instance UID `<series uid>.<k>` and Instance Number k."""

    kind: str  # "tiny" or "retrieve"
    size: int  # rows = columns
    studies: list[StudyPlan]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.studies)

    @property
    def patients(self) -> list[PatientPlan]:
        return list({s.patient.patient_id: s.patient for s in self.studies}.values())

    def instances(self):
        """(study, series, instance number, global index) for every instance."""
        for study in self.studies:
            for series in study.series:
                for k in range(1, series.count + 1):
                    yield study, series, k, series.first + k - 1

    def digest(self) -> str:
        h = hashlib.sha1()
        for st in self.studies:
            p = st.patient
            h.update(f"{st.uid}|{p.patient_id}|{p.name}|{st.date}|{st.accession}|{st.modality}|".encode())
            for se in st.series:
                h.update(f"{se.uid}:{se.count}:{se.description};".encode())
        return h.hexdigest()

    def part_of(self, index: int) -> int:
        """Sub-folder (0-based) of the instance with this global index."""
        return index * PARTS // self.count


def split(total: int, parts: int, rng: random.Random) -> list[int]:
    """`total` cut into `parts` positive, unequal pieces."""
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


def tiny_plan(n: int, seed: int = SEED) -> Plan:
    """n instances in studies of two kinds: radiographs (RADIOGRAPH_SHARE of
    the studies, 1–4 instances over 1–2 series) and CT/MR studies of 20–200
    instances (log-uniform) over 1–4 series; about STUDIES_PER_PATIENT studies
    per patient; dates uniform over two years."""
    rng = random.Random(seed)
    root = f"{UID_ROOT}.{seed % 1000}.{n}"
    shapes, left = [], n  # (protocol, instances, series)
    while left > 0:
        if rng.random() < RADIOGRAPH_SHARE:
            protocol, size = rng.choice(RADIOGRAPHS), rng.randint(1, 4)
            n_series = rng.randint(1, 2)
        else:
            protocol, size = rng.choice(PROTOCOLS), int(math.exp(rng.uniform(math.log(20), math.log(201))))
            n_series = rng.randint(1, 4)
        size = min(size, left)
        shapes.append((protocol, size, min(size, n_series)))
        left -= size
    n_patients = max(1, round(len(shapes) / STUDIES_PER_PATIENT))
    patients = [
        PatientPlan(
            patient_id=f"PID{100001 + i}",
            name=f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN_NAMES)}",
            birth_date=(dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))).strftime("%Y%m%d"),
            sex=rng.choice("MF"),
        )
        for i in range(n_patients)
    ]
    owners = list(range(n_patients)) + [rng.randrange(n_patients) for _ in range(len(shapes) - n_patients)]
    rng.shuffle(owners)
    studies, first = [], 0
    for s, ((protocol, size, n_series), owner) in enumerate(zip(shapes, owners)):
        description, modality, sop_class, body_part, series_names = protocol
        study = StudyPlan(
            index=s,
            uid=f"{root}.1.{s + 1}",
            patient=patients[owner],
            date=(FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d"),
            time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            accession=f"ACC{1000001 + s}",
            study_id=str(s + 1),
            description=description,
            modality=modality,
            sop_class=sop_class,
            body_part=body_part,
            referrer=rng.choice(REFERRERS),
        )
        for k, count in enumerate(split(size, n_series, rng)):
            study.series.append(SeriesPlan(f"{root}.2.{s + 1}.{k + 1}", k + 1, series_names[k], count, first))
            first += count
        studies.append(study)
    return Plan("tiny", TINY, studies)


def retrieve_plan(n: int = RETRIEVE_INSTANCES, seed: int = SEED) -> Plan:
    """One CT study of n 512×512 instances over RETRIEVE_SERIES series, of a
    patient and date that none of the timed queries match."""
    root = f"{UID_ROOT}.{seed % 1000}.0"
    patient = PatientPlan("RETRIEVE01", "BENCH^RETRIEVE", "19600101", "O")
    study = StudyPlan(
        index=0,
        uid=f"{root}.1.1",
        patient=patient,
        date="20250115",
        time="101500",
        accession="RETRIEVE01",
        study_id="1",
        description="CT CHEST ABDOMEN",
        modality="CT",
        sop_class=CT,
        body_part="CHEST",
        referrer="REFERRER^BENCH",
    )
    first = 0
    for k, count in enumerate(split_even(n, RETRIEVE_SERIES)):
        study.series.append(SeriesPlan(f"{root}.2.1.{k + 1}", k + 1, ["AXIAL 5MM", "AXIAL 1MM"][k % 2], count, first))
        first += count
    return Plan("retrieve", LARGE, [study])


def split_even(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ---------------------------------------------------------------------------
# Writing files: a minimal Explicit VR Little Endian encoder (fast enough for
# 100 000 files; pydicom reads them back in the check below)
# ---------------------------------------------------------------------------

_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN"}


def element(tag: int, vr: str, value) -> bytes:
    if isinstance(value, str):
        data = value.encode("latin-1")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
    elif vr == "US":
        data = struct.pack("<H", value)
    elif vr == "UL":
        data = struct.pack("<I", value)
    else:
        data = bytes(value)
        if len(data) % 2:
            data += b"\0"
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(data)) + data
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


def encode_file(elements: list[tuple[int, str, object]], sop_class: str, sop_uid: str) -> bytes:
    meta = b"".join(
        element(*e)
        for e in [
            (0x00020001, "OB", b"\0\1"),
            (0x00020002, "UI", sop_class),
            (0x00020003, "UI", sop_uid),
            (0x00020010, "UI", EXPLICIT_LE),
            (0x00020012, "UI", IMPLEMENTATION_UID),
            (0x00020013, "SH", "PACS_BENCH"),
        ]
    )
    body = b"".join(element(*e) for e in sorted(elements, key=lambda e: e[0]))
    return b"\0" * 128 + b"DICM" + element(0x00020000, "UL", len(meta)) + meta + body


def instance_elements(plan: Plan, study: StudyPlan, series: SeriesPlan, k: int, pixels: bytes):
    size = plan.size
    z = f"{-2.5 * k:.1f}"
    p = study.patient
    return [
        (0x00080005, "CS", "ISO_IR 100"),
        (0x00080008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
        (0x00080016, "UI", study.sop_class),
        (0x00080018, "UI", f"{series.uid}.{k}"),
        (0x00080020, "DA", study.date),
        (0x00080021, "DA", study.date),
        (0x00080023, "DA", study.date),
        (0x00080030, "TM", study.time),
        (0x00080031, "TM", study.time),
        (0x00080033, "TM", study.time),
        (0x00080050, "SH", study.accession),
        (0x00080060, "CS", study.modality),
        (0x00080070, "LO", "PACS bench"),
        (0x00080080, "LO", "Bench General Hospital"),
        (0x00080090, "PN", study.referrer),
        (0x00081030, "LO", study.description),
        (0x0008103E, "LO", series.description),
        (0x00100010, "PN", p.name),
        (0x00100020, "LO", p.patient_id),
        (0x00100030, "DA", p.birth_date),
        (0x00100040, "CS", p.sex),
        (0x00180015, "CS", study.body_part),
        (0x00180050, "DS", "2.5"),
        (0x0020000D, "UI", study.uid),
        (0x0020000E, "UI", series.uid),
        (0x00200010, "SH", study.study_id),
        (0x00200011, "IS", str(series.number)),
        (0x00200013, "IS", str(k)),
        (0x00200032, "DS", f"-250.0\\-250.0\\{z}"),
        (0x00200037, "DS", "1\\0\\0\\0\\1\\0"),
        (0x00200052, "UI", f"{series.uid}.0"),
        (0x00201041, "DS", z),
        (0x00280002, "US", 1),
        (0x00280004, "CS", "MONOCHROME2"),
        (0x00280010, "US", size),
        (0x00280011, "US", size),
        (0x00280030, "DS", f"{500 / size:.4f}\\{500 / size:.4f}"),
        (0x00280100, "US", 16),
        (0x00280101, "US", 12),
        (0x00280102, "US", 11),
        (0x00280103, "US", 0),
        (0x00281050, "DS", "40"),
        (0x00281051, "DS", "400"),
        (0x00281052, "DS", "-1024"),
        (0x00281053, "DS", "1"),
        (0x7FE00010, "OW", pixels),
    ]


@dataclass
class Corpus:
    plan: Plan
    root: Path

    @property
    def parts(self) -> list[Path]:
        return [self.root / f"part{i + 1}" for i in range(PARTS)]

    def path(self, index: int) -> Path:
        return self.root / f"part{self.plan.part_of(index) + 1}" / f"{index + 1:07d}.dcm"

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for part in self.parts for p in part.iterdir())

    def describe(self) -> str:
        plan = self.plan
        return (
            f"{plan.kind}: {plan.count} × {plan.size}×{plan.size} 16-bit, {len(plan.studies)} studies, "
            f"{sum(len(s.series) for s in plan.studies)} series, {len(plan.patients)} patients ({self.root})"
        )


def load_or_build_corpus(plan: Plan, name: str) -> Corpus:
    """The cached corpus in /tmp/<name>, written first if it is missing or
    was written from another plan (written aside, then renamed into place)."""
    root = Path(tempfile.gettempdir()) / name
    stamp = {"version": CORPUS_VERSION, "instances": plan.count, "digest": plan.digest()}
    marker = root / "corpus.json"
    try:
        if json.loads(marker.read_text()) == stamp:
            return Corpus(plan, root)
    except (OSError, ValueError):
        pass
    print(f"generating the {plan.kind} corpus ({plan.count} instances) in {root} ...", flush=True)
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    building = root.with_name(f"{root.name}.building-{os.getpid()}")
    aside = Corpus(plan, building)
    for part in aside.parts:
        part.mkdir(parents=True)
    pixels = pixel_bytes(plan.size)
    for study, series, k, index in plan.instances():
        data = encode_file(instance_elements(plan, study, series, k, pixels), study.sop_class, f"{series.uid}.{k}")
        aside.path(index).write_bytes(data)
    (building / "corpus.json").write_text(json.dumps(stamp))
    building.rename(root)
    print(f"  written in {time.monotonic() - started:.1f} s", flush=True)
    return Corpus(plan, root)


def header_for(study: StudyPlan, series: SeriesPlan, k: int):
    """The InstanceHeader our ingest would read from this instance's file."""
    from dicomnodes.archive.header import InstanceHeader

    p = study.patient
    return InstanceHeader(
        sop_class_uid=study.sop_class,
        sop_instance_uid=f"{series.uid}.{k}",
        study_instance_uid=study.uid,
        series_instance_uid=series.uid,
        transfer_syntax_uid=EXPLICIT_LE,
        specific_character_set="ISO_IR 100",
        patient_id=p.patient_id,
        patient_name=p.name,
        patient_birth_date=p.birth_date,
        patient_sex=p.sex,
        study_date=study.date,
        study_time=study.time,
        accession_number=study.accession,
        study_id=study.study_id,
        study_description=study.description,
        referring_physician_name=study.referrer,
        modality=study.modality,
        series_number=series.number,
        series_description=series.description,
        body_part_examined=study.body_part,
        series_date=study.date,
        series_time=study.time,
        institution_name="Bench General Hospital",
        instance_number=k,
    )


# ---------------------------------------------------------------------------
# Ours: bulk load of the index (runs in a child process with Django set up)
# ---------------------------------------------------------------------------


def bulk_load_index(corpus_root: Path, n: int, seed: int) -> dict:
    """Index every instance of the tiny corpus (no files stored): headers
    built from the plan, checked against read_header_file on a sample,
    index_instances() in batches of INDEX_BATCH, one transaction each."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_site.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.db import transaction
    from django.utils import timezone

    from dicomnodes.archive.header import read_header_file
    from dicomnodes.archive.hierarchy import HierarchyCache
    from dicomnodes.archive.index import IndexItem, index_instances
    from dicomnodes.models import Instance, Series, Study

    plan = tiny_plan(n, seed)
    corpus = Corpus(plan, corpus_root)
    rng = random.Random(seed)
    sample = set(rng.sample(range(plan.count), min(50, plan.count)))
    for study, series, k, index in plan.instances():
        if index in sample:
            read = read_header_file(corpus.path(index))
            built = header_for(study, series, k)
            if read != built:
                path = corpus.path(index)
                raise SystemExit(f"header built from the plan differs from the file {path}:\n{read}\n{built}")

    started = time.monotonic()
    cache, batch, now = HierarchyCache(), [], timezone.now()
    outcomes = {}

    def flush():
        with transaction.atomic():
            for outcome in index_instances(batch, cache):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        batch.clear()

    for study, series, k, index in plan.instances():
        size = corpus.path(index).stat().st_size
        item = IndexItem(
            header_for(study, series, k),
            file_size=size,
            file_is_new=True,
            overwrite=False,
            called_ae="PACS",
            calling_ae="BENCHLOAD",
            received_at=now,
        )
        batch.append(item)
        if len(batch) >= INDEX_BATCH:
            flush()
    if batch:
        flush()
    seconds = time.monotonic() - started
    return {
        "instances": Instance.objects.count(),
        "studies": Study.objects.count(),
        "series": Series.objects.count(),
        "outcomes": outcomes,
        "seconds": seconds,
        "instances_per_s": plan.count / seconds if seconds else None,
    }


class QueryPacs(Pacs):
    """Ours, prepared for queries: migrated, the caller and the storescp
    declared as peers (`pacsconfig import`), the tiny corpus bulk-loaded
    into the index before runscp starts."""

    def __init__(self, processes: int, corpus: Corpus, seed: int, dest_port: int):
        super().__init__(processes)
        self.corpus = corpus
        self.seed = seed
        self.dest_port = dest_port
        self.load: dict = {}

    def prepare(self, run):
        super().prepare(run)
        peers = {
            "peers": [
                {
                    "name": "bench caller",
                    "ae_title": CALLER_AE,
                    "host": "127.0.0.1",
                    "port": 104,
                    "can_store": True,
                    "can_query": True,
                    "can_retrieve": True,
                    "move_destination": False,
                    "check_host": False,
                },
                {
                    "name": "bench storescp",
                    "ae_title": DEST_AE,
                    "host": "127.0.0.1",
                    "port": self.dest_port,
                    "can_store": False,
                    "can_query": False,
                    "can_retrieve": False,
                    "move_destination": True,
                    "check_host": False,
                },
            ]
        }
        config = run.workdir / "peers.json"
        config.write_text(json.dumps(peers, indent=2))
        self.manage(run, "pacsconfig", "import", str(config))
        proc = subprocess.run(
            [
                PYTHON,
                str(Path(__file__).resolve()),
                "--bulk-load",
                str(self.corpus.root),
                "--instances",
                str(self.corpus.plan.count),
                "--seed",
                str(self.seed),
            ],
            cwd=REPO,
            env=dict(self.env(run), DJANGO_SETTINGS_MODULE="pacs_site.settings"),
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT,
        )
        if proc.returncode != 0:
            raise TargetError(f"bulk load of the index exited {proc.returncode}:\n{proc.stderr.strip()[-3000:]}")
        self.load = json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------

STUDY_RETURN_KEYS = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyID", "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "StudyInstanceUID",
]  # fmt: skip
SERIES_RETURN_KEYS = [
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
]  # fmt: skip


@dataclass
class QueryCase:
    key: str  # short name in the JSON
    label: str  # row heading
    level: str
    match: dict[str, str]  # matching keys
    expected: set[str]  # the UIDs (study or series) that must come back
    floor: bool = False

    def keys(self) -> list[str]:
        returns = STUDY_RETURN_KEYS if self.level == "STUDY" else SERIES_RETURN_KEYS
        args = ["-k", f"QueryRetrieveLevel={self.level}"]
        for name, value in self.match.items():
            args += ["-k", f"{name}={value}"]
        for name in returns:
            if name not in self.match:
                args += ["-k", name]
        return args

    @property
    def uid_keyword(self) -> str:
        return "StudyInstanceUID" if self.level == "STUDY" else "SeriesInstanceUID"


def query_cases(plans: list[Plan]) -> list[QueryCase]:
    """The timed queries, with what each must return (from the plans)."""
    studies = [s for plan in plans for s in plan.studies]
    tiny = plans[0].studies
    per_patient: dict[str, list[StudyPlan]] = {}
    for s in studies:
        per_patient.setdefault(s.patient.patient_id, []).append(s)
    middle = len(tiny) // 2
    patient = next(
        (s.patient for s in tiny[middle:] + tiny[:middle] if len(per_patient[s.patient.patient_id]) >= 2),
        tiny[middle].patient,
    )
    by_uid = tiny[middle]
    by_accession = tiny[len(tiny) // 3]
    month_first = dt.date(2024, 3, 1)
    month = (month_first.strftime("%Y%m%d"), dt.date(2024, 3, 31).strftime("%Y%m%d"))
    series_study = max(tiny[middle:] + tiny[:middle], key=lambda s: len(s.series))
    return [
        QueryCase("floor", "floor: PatientID, no match", "STUDY", {"PatientID": "NOSUCHPATIENT"}, set(), floor=True),
        QueryCase(
            "patient_id",
            "study: PatientID",
            "STUDY",
            {"PatientID": patient.patient_id},
            {s.uid for s in per_patient[patient.patient_id]},
        ),
        QueryCase("study_uid", "study: StudyInstanceUID", "STUDY", {"StudyInstanceUID": by_uid.uid}, {by_uid.uid}),
        QueryCase(
            "accession",
            "study: AccessionNumber",
            "STUDY",
            {"AccessionNumber": by_accession.accession},
            {by_accession.uid},
        ),
        QueryCase(
            "name_wildcard",
            "study: PatientName=SMI*",
            "STUDY",
            {"PatientName": "SMI*"},
            {s.uid for s in studies if s.patient.name.upper().startswith("SMI")},
        ),
        QueryCase(
            "date_range",
            "study: StudyDate 1 month",
            "STUDY",
            {"StudyDate": f"{month[0]}-{month[1]}"},
            {s.uid for s in studies if month[0] <= s.date <= month[1]},
        ),
        QueryCase(
            "series_in_study",
            "series: in one study",
            "SERIES",
            {"StudyInstanceUID": series_study.uid},
            {se.uid for se in series_study.series},
        ),
    ]


@dataclass
class Server:
    """One of the two servers under test, running."""

    key: str  # "pacs" or "orthanc"
    label: str
    ae_title: str
    port: int
    log: Path


def findscu(server: Server, case: QueryCase, outdir: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    cmd = ["findscu", "-S", "-aet", CALLER_AE, "-aec", server.ae_title, "127.0.0.1", str(server.port)]
    if outdir is not None:
        cmd += ["-X", "-od", str(outdir)]
    cmd += case.keys()
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=tool_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=QUERY_TIMEOUT
    )
    return time.perf_counter() - started, proc


def check_answers(server: Server, case: QueryCase, workdir: Path) -> dict:
    """Run the query once (untimed, also a warm-up) writing the answers;
    compare the UIDs that came back with what the plan says."""
    import pydicom

    outdir = Path(tempfile.mkdtemp(prefix=f"{server.key}-{case.key}-", dir=workdir))
    seconds, proc = findscu(server, case, outdir)
    uids = []
    for f in sorted(outdir.glob("rsp*.dcm")):
        ds = pydicom.dcmread(f)
        uids.append(str(ds.get(case.uid_keyword, "")))
    shutil.rmtree(outdir, ignore_errors=True)
    problems = []
    if proc.returncode != 0:
        problems.append(f"findscu exited {proc.returncode}")
    if set(uids) != case.expected or len(uids) != len(case.expected):
        missing, extra = case.expected - set(uids), set(uids) - case.expected
        problems.append(
            f"{len(uids)} answers, expected {len(case.expected)} (missing {len(missing)}, unexpected {len(extra)})"
        )
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("E:", "F:"))]
    if errors:
        problems.append("; ".join(errors[:5]))
    if problems:
        problems.append(f"--- findscu ---\n{(proc.stdout + proc.stderr).strip()[-1500:]}")
        problems.append(f"--- {server.label} log ---\n{tail(server.log, 20)}")
    return {"answers": len(uids), "expected": len(case.expected), "problems": problems}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..1)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timing:
    samples_ms: list[float] = field(default_factory=list)
    answers: int | None = None
    expected: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and len(self.samples_ms) > 0

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def p95(self) -> float | None:
        return percentile(self.samples_ms, 0.95) if self.samples_ms else None

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "median_ms": self.median,
            "p95_ms": self.p95,
            "min_ms": min(self.samples_ms) if self.samples_ms else None,
            "answers": self.answers,
            "expected": self.expected,
            "samples_ms": [round(s, 3) for s in self.samples_ms],
            "errors": self.errors,
        }


def time_queries(servers: list[Server], cases: list[QueryCase], repeat: int, workdir: Path) -> dict:
    """{case key: {server key: Timing}}: a checked warm-up run, then `repeat`
    timed runs alternating between the servers."""
    results: dict[str, dict[str, Timing]] = {}
    for case in cases:
        print(f"{case.label:30} ", end="", flush=True)
        per = results[case.key] = {s.key: Timing() for s in servers}
        for server in servers:
            try:
                check = check_answers(server, case, workdir)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                check = {"answers": None, "expected": len(case.expected), "problems": [f"{type(exc).__name__}: {exc}"]}
            per[server.key].answers, per[server.key].expected = check["answers"], check["expected"]
            per[server.key].errors += check["problems"]
        for _ in range(repeat):
            for server in servers:
                timing = per[server.key]
                if timing.errors:
                    continue
                try:
                    seconds, proc = findscu(server, case)
                except subprocess.SubprocessError as exc:
                    timing.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if proc.returncode != 0:
                    timing.errors.append(f"findscu exited {proc.returncode}: {(proc.stdout + proc.stderr)[-500:]}")
                    continue
                timing.samples_ms.append(seconds * 1000)
        for server in servers:
            t = per[server.key]
            if t.ok:
                print(f"  {server.label} {t.median:7.1f} ms {f'({t.answers})':>6}", end="")
            else:
                print(f"  {server.label} FAILED", end="")
        print(flush=True)
    return results


# ---------------------------------------------------------------------------
# Retrieve
# ---------------------------------------------------------------------------


@dataclass
class Transfer:
    instances: int
    seconds: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.seconds)

    @property
    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def rate(self) -> float | None:
        m = self.median_seconds
        return self.instances / m if m else None

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "instances": self.instances,
            "seconds": [round(s, 3) for s in self.seconds],
            "median_seconds": self.median_seconds,
            "instances_per_s": self.rate,
            "received": self.received,
            "errors": self.errors,
        }


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def empty(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def retrieve_once(kind: str, server: Server, study_uid: str, dest_dir: Path, get_dir: Path) -> tuple[float, int, str]:
    """One C-MOVE to the storescp (files counted in dest_dir) or one C-GET
    (files written by getscu into get_dir): seconds, files, tool output."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    target = ["-aec", server.ae_title, "127.0.0.1", str(server.port)]
    if kind == "move":
        folder = dest_dir
        cmd = ["movescu", "-S", "-aet", CALLER_AE, "-aem", DEST_AE, *target, *keys]
    else:
        folder = get_dir
        cmd = ["getscu", "-S", "-aet", CALLER_AE, *target, "-od", str(get_dir), *keys]
    empty(folder)
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=tool_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=QUERY_TIMEOUT * 5
    )
    seconds = time.perf_counter() - started
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        output = f"exit {proc.returncode}\n{output}"
    return seconds, count_files(folder), output if proc.returncode != 0 or "E:" in output else ""


def time_retrieves(servers: list[Server], study_uid: str, n: int, repeat: int, dest_dir: Path, workdir: Path):
    results: dict[str, dict[str, Transfer]] = {}
    get_dir = workdir / "getscu"
    for kind, label in (("move", "C-MOVE"), ("get", "C-GET")):
        print(f"{f'{label} {n} × {LARGE}²':30} ", end="", flush=True)
        per = results[kind] = {s.key: Transfer(n) for s in servers}
        for _ in range(repeat):
            for server in servers:
                t = per[server.key]
                if t.errors:
                    continue
                try:
                    seconds, received, problem = retrieve_once(kind, server, study_uid, dest_dir, get_dir)
                except (OSError, subprocess.SubprocessError) as exc:
                    t.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                t.received.append(received)
                if received != n or problem:
                    t.errors.append(
                        f"received {received}/{n}\n--- {kind}scu ---\n{problem[-1500:]}\n"
                        f"--- {server.label} log ---\n{tail(server.log, 20)}"
                    )
                    continue
                t.seconds.append(seconds)
        for server in servers:
            t = per[server.key]
            print(f"  {server.label} " + (f"{t.rate:7.0f} inst/s  " if t.ok else "FAILED"), end="")
        print(flush=True)
    shutil.rmtree(get_dir, ignore_errors=True)
    empty(dest_dir)
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt(value: float | None, ok: bool, digits: int = 1) -> str:
    if value is None:
        return "error"
    return f"{value:.{digits}f}" + ("" if ok else "!")


def print_table(cases: list[QueryCase], queries: dict, retrieves: dict, n_retrieve: int) -> None:
    headers = ["case", "ours med", "ours p95", "Orthanc med", "Orthanc p95", "ours/Orthanc", "answers"]
    rows = []
    for case in cases:
        ours, orthanc = queries[case.key].get("pacs"), queries[case.key].get("orthanc")
        r = ours.median / orthanc.median if ours and orthanc and ours.median and orthanc.median else None
        answers = "/".join(str(t.answers) if t and t.answers is not None else "?" for t in (ours, orthanc))
        rows.append(
            [
                f"{case.label} (ms)",
                fmt(ours.median if ours else None, bool(ours and ours.ok)),
                fmt(ours.p95 if ours else None, bool(ours and ours.ok)),
                fmt(orthanc.median if orthanc else None, bool(orthanc and orthanc.ok)),
                fmt(orthanc.p95 if orthanc else None, bool(orthanc and orthanc.ok)),
                f"{r:.2f}" if r is not None else "—",
                answers,
            ]
        )
    for kind, label in (("move", "C-MOVE"), ("get", "C-GET")):
        ours, orthanc = retrieves[kind].get("pacs"), retrieves[kind].get("orthanc")
        r = ours.rate / orthanc.rate if ours and orthanc and ours.rate and orthanc.rate else None
        received = "/".join(str(min(t.received)) if t and t.received else "?" for t in (ours, orthanc))
        rows.append(
            [
                f"{label} {n_retrieve} × {LARGE}² (inst/s)",
                fmt(ours.rate if ours else None, bool(ours and ours.ok), 0),
                "",
                fmt(orthanc.rate if orthanc else None, bool(orthanc and orthanc.ok), 0),
                "",
                f"{r:.2f}" if r is not None else "—",
                received,
            ]
        )
    print_aligned(headers, rows)


def environment(args, pacs: QueryPacs, orthanc: Orthanc, corpora: list[Corpus]) -> dict:
    try:
        import pydicom
        import pynetdicom

        versions = {"pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__}
    except ImportError:
        versions = {}
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "findscu": first_line(["findscu", "--version"]).strip("$ "),
        "targets": {"pacs": pacs.version(), "orthanc": orthanc.version()},
        "uncommitted_changes": git_changes(),
        "orthanc_config": {k: v for k, v in orthanc.extra_config.items()},
        "repeat": args.repeat,
        "retrieve_repeat": args.retrieve_repeat,
        "study_return_keys": STUDY_RETURN_KEYS,
        "series_return_keys": SERIES_RETURN_KEYS,
        "corpora": {
            c.plan.kind: {
                "instances": c.plan.count,
                "studies": len(c.plan.studies),
                "series": sum(len(s.series) for s in c.plan.studies),
                "patients": len(c.plan.patients),
                "rows_columns": c.plan.size,
                "path": str(c.root),
            }
            for c in corpora
        },
    }


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=100_000, help="tiny instances (default 100000)")
    parser.add_argument("--quick", action="store_true", help="fast check: --instances 10000")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of every query (default 20)")
    parser.add_argument("--retrieve-repeat", type=int, default=3, help="timed C-MOVEs and C-GETs (default 3)")
    parser.add_argument("--pacs-processes", type=int, default=2, help="runscp --processes (default 2)")
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    parser.add_argument("--bulk-load", metavar="CORPUS", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--keep", action="store_true", help="keep the servers' temporary folders")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances = 10_000
    if args.instances < 100:
        parser.error("--instances must be at least 100")
    if args.repeat < 1 or args.retrieve_repeat < 1:
        parser.error("--repeat and --retrieve-repeat must be at least 1")
    return args


def load_orthanc(orthanc: Orthanc, run: Run, corpora: list[Corpus]) -> dict:
    """Send every corpus with storescu over PARTS parallel associations and
    wait until Orthanc counts every instance."""
    total, seconds, codes = 0, 0.0, []
    for corpus in corpora:
        took, exit_codes = send(corpus.parts, PARTS, orthanc.ae_title, run.port, run.workdir)
        seconds += took
        codes += exit_codes
        total += corpus.plan.count
    received = wait_for_count(orthanc, run, total)
    stats = orthanc.statistics(run)
    if any(codes) or received != total:
        logs = "\n".join(tail(p, 10) for p in sorted(run.workdir.glob("storescu-*.log")))
        raise TargetError(f"Orthanc holds {received}/{total}; storescu exit codes {codes}\n{logs}\n{tail(run.log)}")
    return {
        "instances": received,
        "studies": int(stats["CountStudies"]),
        "series": int(stats["CountSeries"]),
        "seconds": seconds,
        "instances_per_s": total / seconds,
    }


def load_pacs_retrieve_study(pacs: QueryPacs, run: Run, corpus: Corpus, total: int) -> dict:
    seconds, codes = send(corpus.parts, PARTS, pacs.ae_title, run.port, run.workdir)
    received = wait_for_count(pacs, run, total)
    if any(codes) or received != total:
        logs = "\n".join(tail(p, 10) for p in sorted(run.workdir.glob("storescu-*.log")))
        raise TargetError(f"ours holds {received}/{total}; storescu exit codes {codes}\n{logs}\n{tail(run.log)}")
    return {"instances": corpus.plan.count, "seconds": seconds, "instances_per_s": corpus.plan.count / seconds}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bulk_load:
        print(json.dumps(bulk_load_index(Path(args.bulk_load), args.instances, args.seed)))
        return 0

    tiny = load_or_build_corpus(tiny_plan(args.instances, args.seed), f"pacs-bench-query-corpus-{args.instances}")
    large = load_or_build_corpus(retrieve_plan(RETRIEVE_INSTANCES, args.seed), "pacs-bench-query-retrieve-600")
    corpora = [tiny, large]
    cases = query_cases([tiny.plan, large.plan])
    retrieve_uid = large.plan.studies[0].uid
    total = tiny.plan.count + large.plan.count

    dest = StoreScp()
    dest.key, dest.label, dest.ae_title = "dest", "storescp", DEST_AE
    report: dict = {"loads": {}, "errors": []}
    queries: dict = {}
    retrieves: dict = {"move": {}, "get": {}}
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            drun = stack.enter_context(serving(dest, args.keep))
            orthanc = Orthanc(
                {
                    "DicomAlwaysAllowFind": True,
                    "DicomAlwaysAllowMove": True,
                    "DicomAlwaysAllowGet": True,
                    "DicomModalities": {"dest": [DEST_AE, "127.0.0.1", drun.port]},
                }
            )
            pacs = QueryPacs(args.pacs_processes, tiny, args.seed, drun.port)
            env = environment(args, pacs, orthanc, corpora)
            print(f"CPUs: {env['cpu_count']} (usable {env['cpu_affinity']}); {env['platform']}; Python {env['python']}")
            print(f"{env['findscu']}; pydicom {env.get('pydicom')}; pynetdicom {env.get('pynetdicom')}")
            outside = [c for c in env["uncommitted_changes"] if not c[3:].startswith("bench/")]
            dirty = " (+ uncommitted changes outside bench/)" if outside else ""
            print(f"ours: {env['targets']['pacs']}{dirty}")
            print(f"Orthanc: {env['targets']['orthanc']}")
            for corpus in corpora:
                print(f"corpus {corpus.describe()}")
            print(flush=True)

            print(f"ours: bulk-loading the index with {tiny.plan.count} instances ... ", end="", flush=True)
            prun = stack.enter_context(serving(pacs, args.keep))
            print(f"{pacs.load['seconds']:.1f} s ({pacs.load['instances_per_s']:.0f} inst/s)", flush=True)
            print(
                f"ours: storing the retrieve study ({large.plan.count} × {LARGE}²) with storescu ... ",
                end="",
                flush=True,
            )
            report["loads"]["pacs"] = {
                "index": pacs.load,
                "retrieve_study": load_pacs_retrieve_study(pacs, prun, large, total),
            }
            print(f"{report['loads']['pacs']['retrieve_study']['seconds']:.1f} s", flush=True)
            print(f"Orthanc: storing {total} instances with storescu ({PARTS} associations) ... ", end="", flush=True)
            orun = stack.enter_context(serving(orthanc, args.keep))
            report["loads"]["orthanc"] = load_orthanc(orthanc, orun, corpora)
            o = report["loads"]["orthanc"]
            print(f"{o['seconds']:.1f} s ({o['instances_per_s']:.0f} inst/s)", flush=True)
            if args.keep:
                report["kept"] = {"pacs": str(prun.workdir), "orthanc": str(orun.workdir), "dest": str(drun.workdir)}
            print()

            servers = [
                Server("pacs", "ours", pacs.ae_title, prun.port, prun.log),
                Server("orthanc", "Orthanc", orthanc.ae_title, orun.port, orun.log),
            ]
            work = Path(tempfile.mkdtemp(prefix="pacs-bench-query-answers-"))
            stack.callback(shutil.rmtree, work, True)
            report["load_average"] = {"before_timings": os.getloadavg()}
            if os.getloadavg()[0] > 0.5:
                print(f"note: load average {os.getloadavg()[0]:.2f} before the timings (other work on this machine)")
            print(f"C-FIND, findscu -S, {args.repeat} timed runs each (median ms, answers):")
            queries = time_queries(servers, cases, args.repeat, work)
            print(f"\nretrieve of the {large.plan.count}-instance study, {args.retrieve_repeat} runs each:")
            retrieves = time_retrieves(
                servers, retrieve_uid, large.plan.count, args.retrieve_repeat, drun.workdir / "in", work
            )
            report["load_average"]["after_timings"] = os.getloadavg()
        except (TargetError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            report["errors"].append(failures[-1])

    for name, folder in report.get("kept", {}).items():
        print(f"kept {name}: {folder}")
    if queries:
        print()
        print_table(cases, queries, retrieves, large.plan.count)
        floor = queries.get("floor", {})
        print(
            "\nfindscu floor (no-match query, median ms): "
            + ", ".join(f"{k}: {t.median:.1f}" for k, t in floor.items() if t.median is not None)
        )
    for case_key, per in queries.items():
        for server_key, t in per.items():
            for e in t.errors:
                failures.append(f"{server_key} {case_key}: {e}")
    for kind, per in retrieves.items():
        for server_key, t in per.items():
            for e in t.errors:
                failures.append(f"{server_key} {kind}: {e}")
    for f in failures:
        print(f"\n! {f}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS_DIR / f"query-{stamp}.json"

    def ratio(a, b):
        return a / b if a and b else None

    report = {
        "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "environment": env if "env" in locals() else None,
        **report,
        "queries": [
            {
                "case": case.key,
                "label": case.label,
                "level": case.level,
                "match": case.match,
                "findscu_keys": case.keys(),
                "expected_answers": len(case.expected),
                "results": {k: t.as_json() for k, t in queries.get(case.key, {}).items()},
                "ratio_median_pacs_orthanc": ratio(
                    getattr(queries.get(case.key, {}).get("pacs"), "median", None),
                    getattr(queries.get(case.key, {}).get("orthanc"), "median", None),
                ),
            }
            for case in cases
        ],
        "retrieves": [
            {
                "case": kind,
                "study_instance_uid": retrieve_uid,
                "results": {k: t.as_json() for k, t in per.items()},
                "ratio_rate_pacs_orthanc": ratio(
                    getattr(per.get("pacs"), "rate", None), getattr(per.get("orthanc"), "rate", None)
                ),
            }
            for kind, per in retrieves.items()
        ],
        "failures": failures,
    }
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
