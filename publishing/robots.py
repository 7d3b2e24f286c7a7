"""Disc robots driven through hot folders: one writer and one reader, with the
differences between PRIMERA PTBurn and EPSON TD Bridge kept as data.

Sources: PTBurn SDK (2005, rev 3.24) and the TD Bridge Technical Reference
Guide, summarised in docs/publishing.md.

* Job files are `Key=Value` lines (CRLF, the robot PC's ANSI code page),
  written under a temporary name the robot ignores and renamed into the
  hot folder, so it never reads half a file.
* The robot renames a job file as it goes (`.JRQ`→`.QRJ`→`.INP`→`.DON`/`.ERR`,
  `.JDF`→`.RJD`→`.INP`→`.DON`/`.ERR`) and keeps an INI-like status file
  with one section per job; `read_status()` combines both.
* Cancel: PTBurn reads a `.PTM` message file (`Message=ABORT`), TD Bridge a
  `.JCF` file (`[CANCEL]` / `JOB_ID=`).
"""

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from pacs_site.datafiles import ROBOT_READABLE_FILE
from publishing.models import JobState

CLIENT_ID = "PACS"  # PTBurn ClientID; an abort must name the same one
TEMP_SUFFIX = ".TMP"  # neither robot picks it up


@dataclass(frozen=True)
class RobotFormat:
    job_ext: str
    cancel_ext: str
    keys: dict  # our name -> the vendor's key
    disc_types: dict  # cd/dvd -> value of the disc type key
    constant_lines: tuple  # (key, value) written in every job
    merge: str  # "lines": one MergeField line per value; "file": REPLACE_FIELD names a data file
    cancel: str  # template of the cancel file, with {job_id} and {client_id}
    cancel_name: str  # its file name, with {job_id}
    # Status file
    status_names: tuple  # default file names (looked up in the status folder, any case)
    default_status_dir: str  # relative to the job folder
    active_section: str
    completed_section: str
    list_key: str  # "Job" -> Job0, Job1…
    state_key: str
    states: dict  # value of state_key -> JobState
    good_key: str
    bad_key: str
    text_keys: tuple  # keys whose values describe the status
    error_keys: tuple
    # Job-file extensions after the robot renamed it -> JobState
    renamed: dict = field(default_factory=dict)
    format_by_media: dict = field(default_factory=dict)


PRIMERA = RobotFormat(
    job_ext=".JRQ",
    cancel_ext=".PTM",
    keys={
        "job_id": "JobID",
        "robot": "RobotName",
        "copies": "Copies",
        "disc_type": "DiscType",
        "data": "Data",
        "volume": "VolumeName",
        "label": "PrintLabel",
        "merge": "MergeField",
        "format": "",
    },
    disc_types={"cd": "CDR", "dvd": "DVDR"},
    constant_lines=(("ClientID", CLIENT_ID), ("Importance", "4")),
    merge="lines",
    cancel="Message=ABORT\r\nClientID={client_id}\r\n",
    cancel_name="{job_id}.PTM",
    status_names=("PTStatus.txt",),
    default_status_dir="Status",
    active_section="JobList",
    completed_section="CompletedJobs",
    list_key="Job",
    state_key="JobState",
    states={"0": JobState.SUBMITTED, "1": JobState.BURNING, "2": JobState.DONE, "3": JobState.FAILED},
    good_key="GoodDiscs",
    bad_key="BadDiscs",
    text_keys=("CurrentStatus",),
    error_keys=("JobErrorString",),
    renamed={".QRJ": JobState.SUBMITTED, ".INP": JobState.BURNING, ".DON": JobState.DONE, ".ERR": JobState.FAILED},
)

EPSON = RobotFormat(
    job_ext=".JDF",
    cancel_ext=".JCF",
    keys={
        "job_id": "JOB_ID",
        "robot": "PUBLISHER",
        "copies": "COPIES",
        "disc_type": "DISC_TYPE",
        "data": "DATA",
        "volume": "VOLUME_LABEL",
        "label": "LABEL",
        "merge": "REPLACE_FIELD",
        "format": "FORMAT",
    },
    disc_types={"cd": "CD", "dvd": "DVD"},
    constant_lines=(),
    merge="file",
    cancel="[CANCEL]\r\nJOB_ID={job_id}\r\n",
    cancel_name="{job_id}.JCF",
    status_names=("TDBStatus.txt",),
    default_status_dir="",
    active_section="ACTIVE_JOB",
    completed_section="COMPLETE_JOB",
    list_key="JOB",
    state_key="STATUS",
    states={
        "1": JobState.SUBMITTED,
        "2": JobState.BURNING,
        "3": JobState.BURNING,  # paused
        "4": JobState.DONE,
        "5": JobState.FAILED,  # completed abnormally
        "6": JobState.FAILED,  # not accepted
    },
    good_key="COMPLETION_NUMBER",
    bad_key="ERRORDISC_NUMBER",
    text_keys=("DETAIL_STATUS",),
    error_keys=("ERROR",),
    renamed={
        ".RJD": JobState.SUBMITTED,
        ".INP": JobState.BURNING,
        ".STP": JobState.BURNING,
        ".DON": JobState.DONE,
        ".ERR": JobState.FAILED,
    },
    # ISO 9660 + Joliet on a CD; UDF 1.02 with an ISO 9660 bridge on a DVD (PS3.12).
    format_by_media={"cd": "JOLIET", "dvd": "UDF102_BRIDGE"},
)

FORMATS = {"primera": PRIMERA, "epson": EPSON}
EPSON_STATUS_NAMES = {
    "1": "registered",
    "2": "processing",
    "3": "paused",
    "4": "completed",
    "5": "completed abnormally",
    "6": "not accepted",
    "99": "unknown",
}


@dataclass
class JobSpec:
    """What one disc's job file says; paths are as the robot sees them."""

    job_id: str
    data_folder: str
    media: str  # cd / dvd
    volume: str
    copies: int = 1
    robot_name: str = ""
    label: str = ""
    merge_values: list = field(default_factory=list)  # [(field name, value)]
    merge_file: str = ""  # EPSON: where the REPLACE_FIELD data file is (robot's path)


def clean_value(text) -> str:
    """A value on one line: the robot reads a value up to the line end."""
    return re.sub(r"[\r\n\t\x00]+", " ", str(text)).strip()


def job_lines(fmt: RobotFormat, spec: JobSpec) -> list[str]:
    k = fmt.keys
    lines = [f"{k['job_id']}={spec.job_id}"]
    lines += [f"{key}={value}" for key, value in fmt.constant_lines]
    if spec.robot_name:
        lines.append(f"{k['robot']}={clean_value(spec.robot_name)}")
    lines.append(f"{k['copies']}={spec.copies}")
    lines.append(f"{k['disc_type']}={fmt.disc_types[spec.media]}")
    if k["format"]:
        lines.append(f"{k['format']}={fmt.format_by_media[spec.media]}")
    lines.append(f"{k['data']}={spec.data_folder}")  # a folder: its contents go to the disc root
    lines.append(f"{k['volume']}={spec.volume}")
    if spec.label:
        lines.append(f"{k['label']}={clean_value(spec.label)}")
        if fmt.merge == "lines":
            lines += [f"{k['merge']}={clean_value(value)}" for _, value in spec.merge_values]
        elif spec.merge_values and spec.merge_file:
            lines.append(f"{k['merge']}={spec.merge_file}")
    return lines


def merge_file_text(spec: JobSpec) -> str:
    """TD Bridge's REPLACE_FIELD data file: one `NAME=value` line per field
    (the manual leaves the syntax open; the names match the label design)."""
    return "".join(f"{name.upper()}={clean_value(value)}\r\n" for name, value in spec.merge_values)


def write_atomically(folder: Path, name: str, text: str, encoding: str) -> Path:
    """Write `folder/name` so that a watcher sees either nothing or all of it:
    a temporary name in the same folder (same file system, and an extension
    the robot ignores), flushed to disk, then renamed."""
    folder = Path(folder)
    final = folder / name
    temp = folder / (Path(name).stem + TEMP_SUFFIX)
    data = text.encode(encoding, errors="replace")
    with open(temp, "wb") as fp:
        # The robot reads (and renames) the job file, perhaps as another user:
        # 0644 despite the server's umask 077 (pacs_site/datafiles.py).  A
        # share that keeps no Unix modes may refuse: its own rules apply.
        try:
            os.fchmod(fp.fileno(), ROBOT_READABLE_FILE)
        except OSError:
            pass
        fp.write(data)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(temp, final)
    return final


def write_job(kind: str, folder, spec: JobSpec, *, encoding="cp1252") -> Path:
    fmt = FORMATS[kind]
    text = "\r\n".join(job_lines(fmt, spec)) + "\r\n"
    return write_atomically(Path(folder), spec.job_id + fmt.job_ext, text, encoding)


def write_cancel(kind: str, folder, job_id: str, *, encoding="cp1252") -> Path:
    fmt = FORMATS[kind]
    text = fmt.cancel.format(job_id=job_id, client_id=CLIENT_ID)
    return write_atomically(Path(folder), fmt.cancel_name.format(job_id=job_id), text, encoding)


def robot_path(local: Path, local_root: Path, robot_root: str) -> str:
    """`local` (under `local_root`) as the robot's PC names it."""
    if not robot_root:
        return str(local)
    relative = Path(local).relative_to(local_root)
    if "\\" in robot_root or re.match(r"^[A-Za-z]:", robot_root):
        return str(PureWindowsPath(robot_root, *relative.parts))
    return "/".join([robot_root.rstrip("/"), *relative.parts])


# --- Reading the robot's view back ------------------------------------------------------------


@dataclass
class RobotStatus:
    state: str | None = None  # a JobState, None when the robot says nothing about the job
    text: str = ""
    good: int = 0
    bad: int = 0


def parse_ini(text: str) -> configparser.ConfigParser:
    """The status files are INI-like; keys keep their case, duplicates and
    stray lines are tolerated (the robot rewrites the file as we read)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), allow_no_value=True)
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error:
        pass
    return parser


def _int(value) -> int:
    try:
        return max(0, int(str(value).strip()))
    except (TypeError, ValueError):
        return 0


def status_from_file(kind: str, text: str, job_id: str) -> RobotStatus:
    """The job's section of a status file (PTBurn: named after the job
    file's base name, which is our job ID; TD Bridge: the JOB_ID)."""
    fmt = FORMATS[kind]
    ini = parse_ini(text)
    if not ini.has_section(job_id):
        listed = any(
            ini.has_section(name) and job_id in ini[name].values()
            for name in (fmt.active_section, fmt.completed_section)
        )
        return RobotStatus(JobState.SUBMITTED if listed else None, "queued" if listed else "")
    section = ini[job_id]
    raw_state = section.get(fmt.state_key, "").strip()
    state = fmt.states.get(raw_state)
    if state is None and ini.has_section(fmt.completed_section):
        if job_id in ini[fmt.completed_section].values():
            state = JobState.FAILED if _int(section.get(fmt.bad_key)) else JobState.DONE
    if state is None:
        state = JobState.SUBMITTED
    parts = [section.get(key, "").strip() for key in fmt.text_keys]
    if kind == "epson":
        parts.insert(0, EPSON_STATUS_NAMES.get(raw_state, f"status {raw_state or '?'}"))
    errors = [section.get(key, "").strip() for key in fmt.error_keys]
    parts += [f"error {e}" for e in errors if e and e != "0"]
    good, bad = _int(section.get(fmt.good_key)), _int(section.get(fmt.bad_key))
    return RobotStatus(state, "; ".join(p for p in parts if p), good, bad)


def status_from_job_file(kind: str, folder, job_id: str) -> str | None:
    """The state the job file's current extension tells (None: not found)."""
    fmt = FORMATS[kind]
    folder = Path(folder)
    for ext, state in fmt.renamed.items():
        for candidate in (ext, ext.lower()):
            if (folder / f"{job_id}{candidate}").exists():
                return state
    if (folder / f"{job_id}{fmt.job_ext}").exists():
        return JobState.SUBMITTED
    return None


def find_status_file(kind: str, job_folder, status_location: str, robot_name: str = "") -> Path | None:
    """The status file: the one configured, or the vendor's name in the
    configured (else default) folder, matched without regard to case (a
    Windows share)."""
    fmt = FORMATS[kind]
    location = Path(status_location) if status_location else Path(job_folder) / fmt.default_status_dir
    if location.is_file():
        return location
    if not location.is_dir():
        return None
    names = [f"{robot_name}.txt"] if robot_name and kind == "primera" else []
    names += list(fmt.status_names)
    by_lower = {p.name.lower(): p for p in location.iterdir() if p.is_file()}
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def read_status(kind: str, job_id: str, *, job_folder, status_location="", robot_name="", encoding="cp1252"):
    """What the robot says of one job: the status file's section if it has
    one, else what the job file's extension says."""
    status = RobotStatus()
    path = find_status_file(kind, job_folder, status_location, robot_name)
    if path is not None:
        try:
            text = path.read_bytes().decode(encoding, errors="replace")
        except OSError:
            text = ""
        status = status_from_file(kind, text, job_id)
    by_name = status_from_job_file(kind, job_folder, job_id)
    if by_name in (JobState.DONE, JobState.FAILED) and status.state not in (JobState.DONE, JobState.FAILED):
        # The rename is final; the status file may lag (rewritten every few seconds).
        status.state = by_name
        status.text = status.text or ("job file done" if by_name == JobState.DONE else "job file in error")
    elif status.state is None:
        status.state = by_name
    return status
