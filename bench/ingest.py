#!/usr/bin/env python3
"""Ingest benchmark: how fast do DCMTK storescp, Orthanc and our `runscp`
take in C-STOREs sent by DCMTK storescu?

    .venv/bin/python bench/ingest.py [--quick] [--small N] [--large N]
                                     [--only storescp,orthanc,pacs]
                                     [--pacs-processes N] [--keep] [--repeat N]
                                     [--big | --big-only] [--big-mib N]

For every target and every case (small/large corpus, 1 or 4 parallel
associations) a fresh target is started on free ports, receiving into a fresh
temporary folder; the corpus is sent with storescu; the time from the start of
sending until every storescu has exited gives instances per second.  The run
counts only if every storescu exited 0 and the target really holds all the
instances afterwards.  A table is printed and the same numbers are written as
JSON to bench/results/ingest-<timestamp>.json.

`--repeat N` runs every case N times, the targets taking turns within each
round (the first target rotates from round to round); the table then shows
the median and the min–max range per cell, and the median of the per-round
ratios.

The synthetic CT corpora are cached in /tmp/pacs-bench-corpus-<n>-<size>, so a
re-run does not generate them again.

`--big` adds the case of issue 14, "Big instances": 4 associations at once,
each sending one 500 MiB multi-frame instance (cached in
/tmp/pacs-bench-corpus-big), with the seconds, MB/s and the peak resident
memory (VmHWM) of every process of each target, in a table of its own; for
ours, the stored datasets are checked complete.  `--big-only` runs only that
case.  It is not in the default run because it is not cheap: 2 GiB of corpus
written once, 2 GiB received per target (ours spools it first: 4 GiB
written), 2 GiB held by the four storescu, a minute or more in all — and it
measures memory, which the default cases do not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import psutil
import pydicom
from common import (
    REPO,
    RESULTS_DIR,
    Orthanc,
    Pacs,
    StoreScp,
    Target,
    TargetError,
    first_line,
    fmt_spread,
    median_ratio,
    passed,
    pixel_bytes,
    print_aligned,
    round_order,
    round_ratios,
    send,
    serving,
    tail,
    wait_for_count,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

PARTS = 4  # sub-folders per corpus = associations of the parallel cases
STUDIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 10, 2, 2

# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

SIZES = {"small": 128, "large": 512}  # rows = columns, 16 bits per pixel


@dataclass
class Corpus:
    """A folder of synthetic CT instances split into PARTS sub-folders."""

    kind: str
    root: Path
    parts: list[Path]
    count: int
    total_bytes: int

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.count} × {SIZES[self.kind]}×{SIZES[self.kind]} 16-bit CT, "
            f"{self.total_bytes / self.count / 1024:.0f} KiB each, {self.total_bytes / 2**20:.0f} MiB ({self.root})"
        )


def ct_dataset(index: int, n: int, size: int, pixels: bytes, uids: dict) -> Dataset:
    """Instance `index` of `n`: spread over STUDIES studies of SERIES_PER_STUDY
    series, two studies per patient; consecutive instances share a series."""
    series = index * STUDIES * SERIES_PER_STUDY // n
    study = series // SERIES_PER_STUDY
    patient = study // STUDIES_PER_PATIENT
    first_of_series = -(-series * n // (STUDIES * SERIES_PER_STUDY))  # ceil
    number = index - first_of_series + 1
    study_uid = uids.setdefault(("study", study), generate_uid())
    series_uid = uids.setdefault(("series", series), generate_uid())
    frame_uid = uids.setdefault(("frame", series), generate_uid())
    sop_uid = generate_uid()
    study_date = f"2024{1 + study % 12:02d}{1 + study:02d}"

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = "101500"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = "100000"
    ds.SeriesTime = f"10{series % SERIES_PER_STUDY:02d}00"
    ds.ContentTime = f"10{series % SERIES_PER_STUDY:02d}{number % 60:02d}"
    ds.AccessionNumber = f"BENCH{study:05d}"
    ds.Modality = "CT"
    ds.Manufacturer = "PACS bench"
    ds.InstitutionName = "Bench General Hospital"
    ds.ReferringPhysicianName = "REFERRER^BENCH"
    ds.StudyDescription = "CT CHEST ABDOMEN"
    ds.SeriesDescription = ["AXIAL 5MM", "AXIAL 1MM"][series % SERIES_PER_STUDY]
    ds.ManufacturerModelName = "Synthetic"
    ds.PatientName = f"BENCH^PATIENT{patient:02d}"
    ds.PatientID = f"BENCH{patient:04d}"
    ds.PatientBirthDate = f"19{50 + patient:02d}0101"
    ds.PatientSex = "MF"[patient % 2]
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "5.0"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = series % SERIES_PER_STUDY + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-5.0 * number:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{-5.0 * number:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{500 / size:.4f}", f"{500 / size:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds


def load_or_build_corpus(kind: str, n: int) -> Corpus:
    """The cached corpus in /tmp/pacs-bench-corpus-<n>-<kind>, built first if
    it is missing or incomplete (built aside, then renamed into place)."""
    root = Path(tempfile.gettempdir()) / f"pacs-bench-corpus-{n}-{kind}"
    parts = [root / f"part{i + 1}" for i in range(PARTS)]
    files = sorted(root.glob("part*/*.dcm"))
    if len(files) != n:
        print(f"generating the {kind} corpus ({n} instances) in {root} ...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        building = root.with_name(f"{root.name}.building-{os.getpid()}")
        size = SIZES[kind]
        pixels = pixel_bytes(size)
        uids: dict = {}
        for index in range(n):
            part = building / f"part{index * PARTS // n + 1}"
            part.mkdir(parents=True, exist_ok=True)
            ds = ct_dataset(index, n, size, pixels, uids)
            pydicom.dcmwrite(part / f"CT{index + 1:06d}.dcm", ds, enforce_file_format=True)
        building.rename(root)
        files = sorted(root.glob("part*/*.dcm"))
    return Corpus(kind, root, parts, len(files), sum(f.stat().st_size for f in files))


# ---------------------------------------------------------------------------
# The big corpus: PARTS multi-frame instances of BIG_FRAME × BIG_FRAME × 16 bits
# ---------------------------------------------------------------------------

BIG_FRAME = 512  # rows = columns: 512 KiB per frame, so 2 frames per MiB


@dataclass
class BigCorpus(Corpus):
    """PARTS instances of one study, one per sub-folder (one per association)."""

    mib: int = 0
    dataset_bytes: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> bytes after the file meta

    def describe(self) -> str:
        return (
            f"big: {self.count} × {self.mib} MiB multi-frame SC ({self.mib * 2} frames of "
            f"{BIG_FRAME}×{BIG_FRAME} 16-bit), {self.total_bytes / 2**20:.0f} MiB ({self.root})"
        )


def big_dataset(index: int, frames: int, study_uid: str) -> Dataset:
    """Multi-frame Grayscale Word Secondary Capture, without its Pixel Data."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240601"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "BENCHBIG"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "PACS bench"
    ds.StudyDescription = "BIG MULTI-FRAME"
    ds.SeriesDescription = f"BIG {index + 1}"
    ds.PatientName = "BENCH^BIG"
    ds.PatientID = "BENCHBIG"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = index + 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    ds.FrameTime = "40"
    ds.Rows = ds.Columns = BIG_FRAME
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def write_big(path: Path, ds: Dataset, frames: int, pattern: bytes) -> None:
    """`ds`, then its Pixel Data written frame by frame (each frame the
    pattern with its number in the first 4 bytes): one frame in memory, not
    the instance."""
    head = BytesIO()
    pydicom.dcmwrite(head, ds, enforce_file_format=True)
    frame = bytearray(pattern)
    with open(path, "wb") as out:
        out.write(head.getvalue())
        # (7FE0,0010) Pixel Data, explicit VR little endian: tag, OW, 2 reserved bytes, 32-bit length.
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * len(pattern)))
        for number in range(frames):
            frame[:4] = struct.pack("<I", number)
            out.write(frame)


def after_file_meta(path: Path) -> tuple[str, int]:
    """(SOP Instance UID, bytes after the file meta group) of a Part 10 file,
    reading its header only."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with open(path, "rb") as f:
        head = f.read(144)
    # (0002,0000) UL File Meta Information Group Length, explicit VR LE, at 132.
    meta_end = 144 + int.from_bytes(head[140:144], "little")
    return str(ds.SOPInstanceUID), path.stat().st_size - meta_end


def load_or_build_big_corpus(mib: int) -> BigCorpus:
    """The cached corpus in /tmp/pacs-bench-corpus-big, built first if it is
    missing or of another size (built aside, then renamed into place)."""
    root = Path(tempfile.gettempdir()) / "pacs-bench-corpus-big"
    parts = [root / f"part{i + 1}" for i in range(PARTS)]
    frames = mib * 2**20 // (BIG_FRAME * BIG_FRAME * 2)
    files = sorted(root.glob("part*/*.dcm"))
    built = {int(pydicom.dcmread(f, stop_before_pixels=True).NumberOfFrames) for f in files}
    if len(files) != PARTS or built != {frames}:
        print(f"generating the big corpus ({PARTS} × {mib} MiB) in {root} ...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        building = root.with_name(f"{root.name}.building-{os.getpid()}")
        pattern = pixel_bytes(BIG_FRAME)
        study_uid = generate_uid()
        for index in range(PARTS):
            part = building / f"part{index + 1}"
            part.mkdir(parents=True)
            write_big(part / f"SC{index + 1:06d}.dcm", big_dataset(index, frames, study_uid), frames, pattern)
        building.rename(root)
        files = sorted(root.glob("part*/*.dcm"))
    dataset_bytes = dict(after_file_meta(f) for f in files)
    total = sum(f.stat().st_size for f in files)
    return BigCorpus("big", root, parts, len(files), total, mib=mib, dataset_bytes=dataset_bytes)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


@dataclass
class Case:
    corpus: str  # "small" or "large"
    associations: int  # 1 (one storescu, whole corpus) or PARTS (one per sub-folder)

    @property
    def name(self) -> str:
        return f"{self.corpus}×{self.associations}"


CASES = [Case("small", 1), Case("small", PARTS), Case("large", 1), Case("large", PARTS)]


@dataclass
class Result:
    """One target on one case."""

    instances: int
    seconds: float | None = None
    received: int | None = None
    exit_codes: list[int] = field(default_factory=list)
    error: str | None = None
    kept: str | None = None  # the target's folder, with --keep
    index: dict | None = None  # ours: its index writers' commits (Pacs.index_stats)

    @property
    def ok(self) -> bool:
        return self.error is None and self.received == self.instances and all(c == 0 for c in self.exit_codes)

    @property
    def rate(self) -> float | None:
        return self.instances / self.seconds if self.seconds else None

    def as_json(self, total_bytes: int) -> dict:
        return {
            "ok": self.ok,
            "instances": self.instances,
            "received": self.received,
            "seconds": self.seconds,
            "instances_per_s": self.rate,
            "mib_per_s": total_bytes / 2**20 / self.seconds if self.seconds else None,
            "storescu_exit_codes": self.exit_codes,
            "error": self.error,
            "kept": self.kept,
            "index": self.index,
        }


def run_case(target: Target, case: Case, corpus: Corpus, keep: bool) -> Result:
    """Fresh target, send, verify, stop."""
    result = Result(corpus.count)
    try:
        with serving(target, keep) as run:
            result.kept = str(run.workdir) if keep else None
            result.seconds, result.exit_codes = send(
                corpus.parts, case.associations, target.ae_title, run.port, run.workdir
            )
            result.received = wait_for_count(target, run, corpus.count)
            if not result.ok:
                logs = "\n".join(tail(p, 10) for p in sorted(run.workdir.glob("storescu-*.log")))
                result.error = (
                    f"storescu exit codes {result.exit_codes}, received {result.received}/{corpus.count}\n"
                    f"--- storescu ---\n{logs}\n--- {target.label} ---\n{tail(run.log)}"
                )
        if isinstance(target, Pacs):  # stopped: its processes have logged their index writers' figures
            result.index = target.index_stats(run)
    except (TargetError, OSError, subprocess.SubprocessError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


BIG_CASE = f"big×{PARTS}"


class PeakRss:
    """The peak resident memory (VmHWM, MiB) of a process and of all its
    descendants, sampled every `interval` seconds in a thread while in the
    `with` block and once more at its end: a process that ended before the
    end (a forked worker restarted) keeps the last peak seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in family:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    line = next(x for x in status if x.startswith("VmHWM:"))
            except (OSError, StopIteration):
                continue  # ended meanwhile
            mib = int(line.split()[1]) / 1024
            self.peaks[proc.pid] = max(mib, self.peaks.get(proc.pid, 0.0))
            self.roles.setdefault(proc.pid, "main" if proc.pid == self.pid else "child")

    @property
    def peak(self) -> float | None:
        return max(self.peaks.values(), default=None)


@dataclass
class BigResult(Result):
    """One target on the big case: also its processes' peak memory and, where
    the received files can be read, whether each is complete."""

    total_bytes: int = 0
    peaks: dict[int, float] = field(default_factory=dict)  # pid -> VmHWM MiB
    roles: dict[int, str] = field(default_factory=dict)  # pid -> "main" / "child"
    incomplete: list[str] | None = None  # None: files not checked

    @property
    def ok(self) -> bool:
        return Result.ok.fget(self) and not self.incomplete

    @property
    def mib_per_s(self) -> float | None:
        return self.total_bytes / 2**20 / self.seconds if self.seconds else None

    @property
    def peak(self) -> float | None:
        return max(self.peaks.values(), default=None)

    def as_json(self, total_bytes: int) -> dict:
        return {
            **super().as_json(total_bytes),
            "peak_rss_mib": self.peak,
            "peak_rss_mib_by_process": {
                str(pid): {"role": self.roles[pid], "peak_rss_mib": mib} for pid, mib in self.peaks.items()
            },
            "files_checked": self.incomplete is not None,
            "incomplete_files": self.incomplete,
        }


def received_files(target: Target, run) -> list[Path] | None:
    """The files a target stored, where they can be read as sent (None:
    Orthanc, whose storage is its own business)."""
    if target.key == "storescp":
        return [p for p in (run.workdir / "in").rglob("*") if p.is_file()]
    if target.key == "pacs":
        storage = run.workdir / "data" / "storage"
        return [p for p in storage.glob("*/*/*") if p.is_file() and not p.name.startswith(".")]
    return None


def incomplete_files(target: Target, run, corpus: BigCorpus) -> list[str] | None:
    """What is missing or short among the received datasets (bytes after the
    file meta group, compared with the sent ones); None if not checked."""
    files = received_files(target, run)
    if files is None:
        return None
    got = dict(after_file_meta(p) for p in files)
    return [
        f"{uid}: {got.get(uid, 'no file')} of {size} bytes"
        for uid, size in corpus.dataset_bytes.items()
        if got.get(uid) != size
    ]


def run_big_case(target: Target, corpus: BigCorpus, keep: bool) -> BigResult:
    """Fresh target; PARTS storescu at once, one big instance each, while
    the target's processes are watched; verify; stop."""
    result = BigResult(corpus.count, total_bytes=corpus.total_bytes)
    try:
        with serving(target, keep) as run:
            result.kept = str(run.workdir) if keep else None
            with PeakRss(run.proc.pid) as rss:
                result.seconds, result.exit_codes = send(corpus.parts, PARTS, target.ae_title, run.port, run.workdir)
                result.received = wait_for_count(target, run, corpus.count)
            result.peaks, result.roles = rss.peaks, rss.roles
            result.incomplete = incomplete_files(target, run, corpus)
            if not result.ok:
                logs = "\n".join(tail(p, 10) for p in sorted(run.workdir.glob("storescu-*.log")))
                result.error = (
                    f"storescu exit codes {result.exit_codes}, received {result.received}/{corpus.count}, "
                    f"incomplete {result.incomplete}\n"
                    f"--- storescu ---\n{logs}\n--- {target.label} ---\n{tail(run.log)}"
                )
    except (TargetError, OSError, subprocess.SubprocessError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def ratio(ours: Result | None, other: Result | None) -> float | None:
    if ours is None or other is None or not ours.rate or not other.rate:
        return None
    return ours.rate / other.rate


def fmt_rates(runs: list[Result] | None) -> str:
    """A cell: the median inst/s of a target's runs and their range ('!'
    if one failed its checks); '—' if the target did not run."""
    if not runs:
        return "—"
    return fmt_spread(passed([(r.rate, r.ok) for r in runs]), not all(r.ok for r in runs))


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "—"


def summary_json(runs: list[Result], total_bytes: int, medians: tuple[str, ...] = ()) -> dict:
    """One target's runs of one case, in the JSON shape of a single run
    (with one run: exactly that run's fields), plus `instances_per_s_min`
    / `_max` and every run under `runs`.  With several runs, `ok` says all
    passed, `error` is the first failure, and `seconds`, `instances_per_s`,
    `mib_per_s` and the `medians` keys are medians (over the runs that
    passed, as in the table)."""
    each = [r.as_json(total_bytes) for r in runs]
    out = dict(each[0])
    rates = passed([(r.rate, r.ok) for r in runs])
    if len(runs) > 1:
        out["ok"] = all(r.ok for r in runs)
        out["error"] = next((r.error for r in runs if r.error), None)
        for key in ("seconds", "instances_per_s", "mib_per_s", *medians):
            values = passed([(run[key], run["ok"]) for run in each])
            out[key] = statistics.median(values) if values else None
    out["instances_per_s_min"] = min(rates, default=None)
    out["instances_per_s_max"] = max(rates, default=None)
    out["runs"] = each
    return out


def print_table(results: dict, targets: list[Target], cases: list[Case]) -> None:
    """Rows = cases; columns = inst/s per target (median and range over the
    rounds), then the median per-round ours/storescp and ours/Orthanc.  '!'
    marks a cell with a run that failed its checks."""
    headers = ["case"] + [f"{t.label} inst/s" for t in targets] + ["ours/storescp", "ours/Orthanc"]
    rows = []
    for case in cases:
        per = results[case.name]
        cells = [case.name] + [fmt_rates(per.get(t.key)) for t in targets]
        for other in ("storescp", "orthanc"):
            cells.append(fmt_ratio(median_ratio(per.get("pacs", []), per.get(other, []))))
        rows.append(cells)
    print_aligned(headers, rows)


def print_index_table(results: dict, cases: list[Case]) -> None:
    """Ours' index writers per case (medians over the rounds), after a blank
    line; nothing without figures: jobs per commit, and per commit the ms
    committing (under the writer lock) and waiting for it while another
    runscp process committed.  A wait near or above the commit means the
    processes' commits queue behind one another."""
    rows = []
    for case in cases:
        stats = [r.index for r in results[case.name].get("pacs", []) if r.ok and r.index]
        if stats:
            rows.append(
                [case.name]
                + [
                    f"{statistics.median(s[key] for s in stats):.{digits}f}"
                    for key, digits in (("jobs_per_commit", 1), ("held_ms_per_commit", 2), ("waited_ms_per_commit", 2))
                ]
            )
    if rows:
        print("\nours' index writers (runscp's stop lines, all processes):")
        print_aligned(["case", "jobs/commit", "ms committing/commit", "ms waiting/commit"], rows)


RSS_AIM_MIB = 300  # issue 14: runscp's RSS per process while the big case runs


def per_process(target: Target, result: BigResult) -> str:
    """Each process's peak, the target's own process first ("dispatcher
    112, worker 140, worker 138" for a runscp with two workers)."""
    if target.key == "pacs":
        names = {"main": "dispatcher" if len(result.peaks) > 1 else "runscp", "child": "worker"}
    else:
        names = {"main": target.label, "child": "child"}
    ordered = sorted(result.peaks, key=lambda pid: (result.roles[pid] != "main", pid))
    return ", ".join(f"{names[result.roles[pid]]} {result.peaks[pid]:.0f}" for pid in ordered)


def print_big_table(results: dict[str, BigResult], targets: list[Target], corpus: BigCorpus) -> None:
    """Rows = targets: seconds, MB/s (MB = 2**20 bytes), the highest peak
    RSS over the target's processes, and each process's peak."""
    print(f"{BIG_CASE}: {PARTS} associations at once, one {corpus.mib} MiB instance each (MB = 2^20 bytes)")
    headers = ["target", "seconds", "MB/s", "peak RSS MB", "processes", "peak RSS per process MB"]
    rows = []
    for t in targets:
        r = results.get(t.key)
        if r is None:
            continue
        mark = "" if r.ok else "!"
        rows.append(
            [
                t.label,
                f"{r.seconds:.2f}{mark}" if r.seconds else "error",
                f"{r.mib_per_s:.0f}{mark}" if r.mib_per_s else "—",
                f"{r.peak:.0f}" if r.peak is not None else "—",
                str(len(r.peaks)),
                per_process(t, r),
            ]
        )
    print_aligned(headers, rows)
    ours = results.get("pacs")
    if ours is not None and ours.peak is not None:
        for other in ("storescp", "orthanc"):
            r = ratio(ours, results.get(other))
            if r is not None:
                print(f"ours/{other} MB/s: {r:.2f}")
        verdict = "met" if ours.peak <= RSS_AIM_MIB else "NOT met"
        checked = "complete" if ours.incomplete == [] else f"INCOMPLETE {ours.incomplete}"
        print(f"aim ≤ {RSS_AIM_MIB} MB per runscp process: {verdict} ({ours.peak:.0f}); received datasets {checked}")


def environment(targets: list[Target], corpora: dict[str, Corpus], args) -> dict:
    try:
        import pynetdicom

        pynetdicom_version = pynetdicom.__version__
    except ImportError:
        pynetdicom_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom_version,
        "storescu": first_line(["storescu", "--version"]).strip("$ "),
        "targets": {t.key: t.version() for t in targets},
        "pacs_processes": args.pacs_processes,
        "pacs_fsync_on_store": not args.pacs_no_fsync,
        "corpora": {
            k: {
                "instances": c.count,
                "bytes": c.total_bytes,
                "bytes_per_instance": c.total_bytes // c.count,
                "path": str(c.root),
            }
            for k, c in corpora.items()
        },
    }


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def case_json(case: Case, runs: dict[str, list[Result]], orders: list[list[str]], corpus: Corpus) -> dict:
    """A case in the JSON: each target's summary (`results`, see
    summary_json), the median per-round ratios (`ratios`), each round's
    ratios (`ratios_per_round`) and the targets' order in each round."""
    ours, others = runs.get("pacs", []), {other: runs.get(other, []) for other in ("storescp", "orthanc")}
    return {
        "case": case.name,
        "corpus": case.corpus,
        "associations": case.associations,
        "results": {k: summary_json(r, corpus.total_bytes) for k, r in runs.items() if r},
        "ratios": {f"pacs/{other}": median_ratio(ours, theirs) for other, theirs in others.items()},
        "ratios_per_round": {f"pacs/{other}": round_ratios(ours, theirs) for other, theirs in others.items()},
        "round_orders": orders,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=2000, help="instances of 128×128 (default 2000)")
    parser.add_argument("--large", type=int, default=600, help="instances of 512×512 (default 600)")
    parser.add_argument("--quick", action="store_true", help="fast check: --small 200 --large 60")
    parser.add_argument(
        "--only", default="storescp,orthanc,pacs", help="targets, comma-separated (storescp,orthanc,pacs)"
    )
    parser.add_argument("--pacs-processes", type=int, default=2, help="runscp --processes (default 2)")
    parser.add_argument(
        "--pacs-no-fsync",
        action="store_true",
        help="switch our 'fsync on store' setting off, and Orthanc's SyncStorageArea (storescp never syncs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the targets' temporary folders")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of every case, the targets taking turns in each round (default 1); "
        "the table shows medians and ranges",
    )
    parser.add_argument(
        "--big", action="store_true", help=f"also the big case: {PARTS} associations at once, one big instance each"
    )
    parser.add_argument("--big-only", action="store_true", help="only the big case (implies --big)")
    parser.add_argument("--big-mib", type=int, default=500, help="MiB per big instance (default 500)")
    args = parser.parse_args(argv)
    args.big = args.big or args.big_only
    if args.big_mib < 1:
        parser.error("--big-mib must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick:
        args.small, args.large = 200, 60
    for name in ("small", "large"):
        if getattr(args, name) < PARTS:
            parser.error(f"--{name} must be at least {PARTS}")
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(args.only) - {"storescp", "orthanc", "pacs"}
    if unknown:
        parser.error(f"--only: unknown target(s) {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    fsync = not args.pacs_no_fsync
    all_targets = [StoreScp(), Orthanc(sync=fsync), Pacs(args.pacs_processes, fsync=fsync)]
    targets = [t for t in all_targets if t.key in args.only]
    cases = [] if args.big_only else CASES
    corpora: dict[str, Corpus] = {kind: load_or_build_corpus(kind, getattr(args, kind)) for kind in SIZES if cases}
    big = load_or_build_big_corpus(args.big_mib) if args.big else None
    if big is not None:
        corpora["big"] = big

    env = environment(targets, corpora, args)
    print(f"CPUs: {env['cpu_count']} (usable {env['cpu_affinity']}); {env['platform']}; Python {env['python']}")
    print(f"{env['storescu']}; pydicom {env['pydicom']}; pynetdicom {env['pynetdicom']}")
    for t in targets:
        print(f"target {t.label}: {env['targets'][t.key]}")
    for corpus in corpora.values():
        print(f"corpus {corpus.describe()}")
    print(flush=True)

    # Case by case, round by round: each round runs every target once, in
    # turns (round_order), so the targets of one round are neighbours in time.
    results: dict[str, dict[str, list[Result]]] = {case.name: {t.key: [] for t in targets} for case in cases}
    orders: dict[str, list[list[str]]] = {case.name: [] for case in cases}
    for case in cases:
        corpus = corpora[case.corpus]
        for round_index in range(args.repeat):
            order = round_order(targets, round_index)
            orders[case.name].append([t.key for t in order])
            for target in order:
                where = f" {round_index + 1}/{args.repeat}" if args.repeat > 1 else ""
                print(f"{target.label:8} {case.name:8}{where} ... ", end="", flush=True)
                result = run_case(target, case, corpus, args.keep)
                results[case.name][target.key].append(result)
                if result.rate is not None:
                    print(f"{result.seconds:.2f} s, {result.rate:.0f} inst/s, received {result.received}", end="")
                print("" if result.ok else "  FAILED", end="")
                print(f"  (kept {result.kept})" if result.kept else "", flush=True)
    big_results: dict[str, BigResult] = {}
    if big is not None:
        for target in targets:
            print(f"{target.label:8} {BIG_CASE:8} ... ", end="", flush=True)
            result = big_results[target.key] = run_big_case(target, big, args.keep)
            if result.seconds:
                peak = f"{result.peak:.0f}" if result.peak is not None else "?"
                print(f"{result.seconds:.2f} s, {result.mib_per_s:.0f} MB/s, peak RSS {peak} MB", end="")
                print(f", received {result.received}", end="")
            print("" if result.ok else "  FAILED", end="")
            print(f"  (kept {result.kept})" if result.kept else "", flush=True)

    if cases:
        print()
        print_table(results, targets, cases)
        print_index_table(results, cases)
    if big is not None:
        print()
        print_big_table(big_results, targets, big)
    failures = [
        (f"{case_name} run {i + 1}" if len(runs) > 1 else case_name, key, result)
        for case_name, per in results.items()
        for key, runs in per.items()
        for i, result in enumerate(runs)
        if not result.ok
    ]
    failures += [(BIG_CASE, k, r) for k, r in big_results.items() if not r.ok]
    for case_name, key, result in failures:
        print(f"\n! {key} {case_name}: {result.error}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS_DIR / f"ingest-{stamp}.json"
    report = {
        "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "environment": env,
        "repeat": args.repeat,
        "cases": [case_json(case, results[case.name], orders[case.name], corpora[case.corpus]) for case in cases],
    }
    if big is not None:
        report["big"] = {
            "case": BIG_CASE,
            "associations": PARTS,
            "mib_per_instance": big.mib,
            "results": {k: r.as_json(big.total_bytes) for k, r in big_results.items()},
            "ratios": {
                f"pacs/{other}": ratio(big_results.get("pacs"), big_results.get(other))
                for other in ("storescp", "orthanc")
            },
            "rss_aim_mib": RSS_AIM_MIB,
        }
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
