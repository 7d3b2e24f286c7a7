#!/usr/bin/env python3
"""Ingest benchmark: how fast do DCMTK storescp, Orthanc and our `runscp`
take in C-STOREs sent by DCMTK storescu?

    .venv/bin/python bench/ingest.py [--quick] [--small N] [--large N]
                                     [--only storescp,orthanc,pacs]
                                     [--pacs-processes N] [--keep]

For every target and every case (small/large corpus, 1 or 4 parallel
associations) a fresh target is started on free ports, receiving into a fresh
temporary folder; the corpus is sent with storescu; the time from the start of
sending until every storescu has exited gives instances per second.  The run
counts only if every storescu exited 0 and the target really holds all the
instances afterwards.  A table is printed and the same numbers are written as
JSON to bench/results/ingest-<timestamp>.json.

The synthetic CT corpora are cached in /tmp/pacs-bench-corpus-<n>-<size>, so a
re-run does not generate them again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

PARTS = 4  # sub-folders per corpus = associations of the parallel cases
STUDIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 10, 2, 2
START_TIMEOUT = 60.0  # seconds for a target to come up
COUNT_TIMEOUT = 30.0  # seconds for a target to show every instance after sending
STOP_TIMEOUT = 60.0  # seconds between SIGTERM and SIGKILL

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


def pixel_bytes(size: int) -> bytes:
    """A size×size 16-bit little-endian test pattern (12 bits used)."""
    half = size // 2
    pixels = array("H", (((x - half) ** 2 + (y - half) ** 2) // 8 % 4096 for y in range(size) for x in range(size)))
    if sys.byteorder != "little":
        pixels.byteswap()
    return pixels.tobytes()


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
# Processes and ports
# ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """True if 127.0.0.1:port accepts a TCP connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def http_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def tool_env(**extra: str) -> dict:
    """The environment for DCMTK tools and targets: TCP_NODELAY=1 (Debian's
    DCMTK and Orthanc otherwise leave Nagle on: ~40 ms per DIMSE message)."""
    env = dict(os.environ, TCP_NODELAY="1")
    env.update(extra)
    return env


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def first_line(cmd: list[str]) -> str:
    """First non-empty output line of `cmd` (a version string), or ''."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((line.strip() for line in out.splitlines() if line.strip()), "")


class TargetError(RuntimeError):
    """A target failed to start, answer or stop."""


# ---------------------------------------------------------------------------
# Targets: what differs between storescp, Orthanc and ours
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """One started target: its folder, ports and process."""

    workdir: Path
    port: int
    http_port: int
    log: Path
    proc: subprocess.Popen | None = None


class Target:
    """A storage SCP under test.  Subclasses say how to prepare, start,
    recognise as ready and count what was received."""

    key = ""  # name on the command line (--only) and in the JSON
    label = ""  # column heading
    ae_title = ""
    cwd: Path | None = None

    def prepare(self, run: Run) -> None:
        """Work before the server starts (configuration, database)."""

    def command(self, run: Run) -> list[str]:
        raise NotImplementedError

    def env(self, run: Run) -> dict:
        return tool_env()

    def ready(self, run: Run) -> bool:
        """True once the target takes associations."""
        return port_open(run.port)

    def count(self, run: Run) -> int:
        """Instances the target holds now."""
        raise NotImplementedError

    def version(self) -> str:
        return ""


class StoreScp(Target):
    key, label, ae_title = "storescp", "storescp", "STORESCP"

    def command(self, run):
        return ["storescp", "-aet", self.ae_title, "-od", str(run.workdir / "in"), str(run.port)]

    def prepare(self, run):
        (run.workdir / "in").mkdir()

    def count(self, run):
        return sum(1 for p in (run.workdir / "in").rglob("*") if p.is_file())

    def version(self):
        return first_line(["storescp", "--version"]).strip("$ ")


class Orthanc(Target):
    key, label, ae_title = "orthanc", "Orthanc", "ORTHANC"

    def prepare(self, run):
        config = {
            "Name": "pacs-bench",
            "StorageDirectory": str(run.workdir / "storage"),
            "IndexDirectory": str(run.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": run.port,
            "HttpPort": run.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "SaveJobs": False,
        }
        (run.workdir / "config.json").write_text(json.dumps(config, indent=2))

    def command(self, run):
        return ["Orthanc", str(run.workdir / "config.json")]

    def ready(self, run):
        try:
            http_json(f"http://127.0.0.1:{run.http_port}/system")
        except OSError:
            return False
        return port_open(run.port)

    def count(self, run):
        return int(http_json(f"http://127.0.0.1:{run.http_port}/statistics")["CountInstances"])

    def version(self):
        return first_line(["Orthanc", "--version"])


class Pacs(Target):
    """Ours: `manage.py runscp` with a fresh PACS_DATA_DIR (so a fresh SQLite
    database and storage folder); DATABASE_URL is dropped so that the
    default SQLite database in that folder is really used."""

    key, label, ae_title = "pacs", "ours", "PACS"
    cwd = REPO

    def __init__(self, processes: int, fsync: bool = True):
        self.processes = processes
        self.fsync = fsync  # the "fsync on store" setting (default on)

    def env(self, run):
        env = tool_env(PACS_DATA_DIR=str(run.workdir / "data"))
        env.pop("DATABASE_URL", None)
        return env

    def manage(self, run: Run, *args: str, timeout: float = 300) -> str:
        """Run a manage.py command with this run's environment; its stdout."""
        proc = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=REPO,
            env=self.env(run),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise TargetError(f"manage.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}")
        return proc.stdout

    def prepare(self, run):
        self.manage(run, "migrate", "--noinput")
        if not self.fsync:
            self.manage(
                run,
                "shell",
                "-c",
                "from dicomnodes.models import DicomServerSettings as S; "
                "s = S.load(); s.fsync_on_store = False; s.save()",
            )

    def command(self, run):
        return [PYTHON, "manage.py", "runscp", "--port", str(run.port), "--processes", str(self.processes)]

    def count(self, run):
        out = self.manage(run, "shell", "-c", "from dicomnodes.models import Instance; print(Instance.objects.count())")
        return int(out.strip().splitlines()[-1])

    def version(self):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit = rev.stdout.strip() or "(no commit yet)"
        return f"git {commit}, runscp --processes {self.processes}, fsync on store {'on' if self.fsync else 'off'}"


@contextlib.contextmanager
def serving(target: Target, keep: bool):
    """Start `target` in a fresh folder on free ports; yield the Run once it
    is ready; stop it (SIGTERM, then SIGKILL) and remove the folder after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pacs-bench-{target.key}-"))
    run = Run(workdir, free_port(), free_port(), workdir / "target.log")
    try:
        target.prepare(run)
        with open(run.log, "wb") as log:
            run.proc = subprocess.Popen(
                target.command(run),
                cwd=target.cwd or workdir,
                env=target.env(run),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not target.ready(run):
            if run.proc.poll() is not None:
                raise TargetError(f"{target.label} exited {run.proc.returncode} at start:\n{tail(run.log)}")
            if time.monotonic() > deadline:
                raise TargetError(f"{target.label} not ready after {START_TIMEOUT:.0f} s:\n{tail(run.log)}")
            time.sleep(0.1)
        yield run
    finally:
        stop(run.proc)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process we started and wait; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        }


def send(corpus: Corpus, associations: int, ae_title: str, port: int, logdir: Path) -> tuple[float, list[int]]:
    """Send the corpus with storescu: one process for the whole corpus, or
    one per sub-folder in parallel.  Seconds from the start until every
    storescu has exited, and their exit codes."""
    if associations == 1:
        groups = [corpus.parts]
    else:
        groups = [[part] for part in corpus.parts]
    env = tool_env()
    started = time.monotonic()
    procs = []
    for i, folders in enumerate(groups):
        log = open(logdir / f"storescu-{i + 1}.log", "wb")
        cmd = ["storescu", "-aec", ae_title, "127.0.0.1", str(port), "+sd", *map(str, folders)]
        procs.append(
            (subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT), log)
        )
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    return time.monotonic() - started, codes


def wait_for_count(target: Target, run: Run, expected: int) -> int:
    """What the target holds, polled until it reaches `expected` or
    COUNT_TIMEOUT passes (a target may index after answering)."""
    deadline = time.monotonic() + COUNT_TIMEOUT
    while True:
        received = target.count(run)
        if received >= expected or time.monotonic() > deadline:
            return received
        time.sleep(0.5)


def run_case(target: Target, case: Case, corpus: Corpus, keep: bool) -> Result:
    """Fresh target, send, verify, stop."""
    result = Result(corpus.count)
    try:
        with serving(target, keep) as run:
            result.kept = str(run.workdir) if keep else None
            result.seconds, result.exit_codes = send(corpus, case.associations, target.ae_title, run.port, run.workdir)
            result.received = wait_for_count(target, run, corpus.count)
            if not result.ok:
                logs = "\n".join(tail(p, 10) for p in sorted(run.workdir.glob("storescu-*.log")))
                result.error = (
                    f"storescu exit codes {result.exit_codes}, received {result.received}/{corpus.count}\n"
                    f"--- storescu ---\n{logs}\n--- {target.label} ---\n{tail(run.log)}"
                )
    except (TargetError, OSError, subprocess.SubprocessError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt_rate(result: Result | None) -> str:
    if result is None:
        return "—"
    if result.rate is None:
        return "error"
    return f"{result.rate:.0f}" + ("" if result.ok else "!")


def ratio(ours: Result | None, other: Result | None) -> float | None:
    if ours is None or other is None or not ours.rate or not other.rate:
        return None
    return ours.rate / other.rate


def print_table(results: dict, targets: list[Target]) -> None:
    """Rows = cases; columns = inst/s per target, then ours/storescp and
    ours/Orthanc.  '!' marks a run that failed its checks."""
    headers = ["case"] + [f"{t.label} inst/s" for t in targets] + ["ours/storescp", "ours/Orthanc"]
    rows = []
    for case in CASES:
        per = results[case.name]
        cells = [case.name] + [fmt_rate(per.get(t.key)) for t in targets]
        for other in ("storescp", "orthanc"):
            r = ratio(per.get("pacs"), per.get(other))
            cells.append(f"{r:.2f}" if r is not None else "—")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for cells in rows:
        print(line(cells))


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
        help="switch our 'fsync on store' setting off (storescp and Orthanc do not fsync)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the targets' temporary folders")
    args = parser.parse_args(argv)
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
    all_targets = [StoreScp(), Orthanc(), Pacs(args.pacs_processes, fsync=not args.pacs_no_fsync)]
    targets = [t for t in all_targets if t.key in args.only]
    corpora = {kind: load_or_build_corpus(kind, getattr(args, kind)) for kind in SIZES}

    env = environment(targets, corpora, args)
    print(f"CPUs: {env['cpu_count']} (usable {env['cpu_affinity']}); {env['platform']}; Python {env['python']}")
    print(f"{env['storescu']}; pydicom {env['pydicom']}; pynetdicom {env['pynetdicom']}")
    for t in targets:
        print(f"target {t.label}: {env['targets'][t.key]}")
    for corpus in corpora.values():
        print(f"corpus {corpus.describe()}")
    print(flush=True)

    results: dict[str, dict[str, Result]] = {case.name: {} for case in CASES}
    for target in targets:
        for case in CASES:
            corpus = corpora[case.corpus]
            print(f"{target.label:8} {case.name:8} ... ", end="", flush=True)
            result = run_case(target, case, corpus, args.keep)
            results[case.name][target.key] = result
            if result.rate is not None:
                print(f"{result.seconds:.2f} s, {result.rate:.0f} inst/s, received {result.received}", end="")
            print("" if result.ok else "  FAILED", end="")
            print(f"  (kept {result.kept})" if result.kept else "", flush=True)

    print()
    print_table(results, targets)
    failures = [(c, k, r) for c, per in results.items() for k, r in per.items() if not r.ok]
    for case_name, key, result in failures:
        print(f"\n! {key} {case_name}: {result.error}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS_DIR / f"ingest-{stamp}.json"
    report = {
        "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "environment": env,
        "cases": [
            {
                "case": case.name,
                "corpus": case.corpus,
                "associations": case.associations,
                "results": {k: r.as_json(corpora[case.corpus].total_bytes) for k, r in results[case.name].items()},
                "ratios": {
                    f"pacs/{other}": ratio(results[case.name].get("pacs"), results[case.name].get(other))
                    for other in ("storescp", "orthanc")
                },
            }
            for case in CASES
        ],
    }
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
