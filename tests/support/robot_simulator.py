"""A disc robot for the tests: it reads job files from a hot folder the way
PTBurn and TD Bridge do, renames them through their life cycle and writes
the vendor's status file.  It checks what a robot would reject (key case,
missing data folder) and keeps every job it parsed for assertions.

It is written from the vendor documentation, independently of
publishing/robots.py, so that a mistake there shows up here.

    robot = RobotSimulator("epson", hot_folder)
    robot.accept()           # JDF -> RJD, status 1      (JRQ -> QRJ, JobState 0)
    robot.burn()             # -> INP, status 2          (-> INP, JobState 1)
    robot.finish()           # -> DON, status 4          (-> DON, JobState 2)
    robot.finish(fail=True)  # -> ERR, status 5          (-> ERR, JobState 3)
    robot.handle_cancels()   # JCF -> CDN / PTM ABORT
"""

import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

EPSON_KEY = re.compile(r"^[A-Z_]+$")


@dataclass
class SimJob:
    job_id: str
    base: str  # job file name without extension
    keys: dict  # key -> list of values
    stage: str = "received"  # received, burning, done, failed, cancelled
    good: int = 0
    bad: int = 0
    history: list = field(default_factory=list)

    def first(self, key, default=""):
        return self.keys.get(key, [default])[0]


class RobotRejected(AssertionError):
    pass


class RobotSimulator:
    def __init__(self, kind, hot_folder, *, status_file=None):
        self.kind = kind
        self.folder = Path(hot_folder)
        if status_file is None:
            status_file = self.folder / "TDBStatus.txt" if kind == "epson" else self.folder / "Status" / "PTStatus.txt"
        self.status_file = Path(status_file)
        self.jobs = {}  # job id -> SimJob, in order of arrival
        self.ext = ".JDF" if kind == "epson" else ".JRQ"

    # --- reading job files ---------------------------------------------------------------------

    def parse(self, path: Path) -> dict:
        keys = {}
        for line in path.read_bytes().decode("cp1252").split("\r\n"):
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise RobotRejected(f"{path.name}: not a key=value line: {line!r}")
            key, value = line.split("=", 1)
            if self.kind == "epson" and not EPSON_KEY.match(key):
                raise RobotRejected(f"{path.name}: TD Bridge ignores the key {key!r} (case, spaces)")
            keys.setdefault(key.strip() if self.kind == "primera" else key, []).append(value)
        return keys

    def data_folder(self, job: SimJob) -> Path:
        value = job.first("DATA" if self.kind == "epson" else "Data").split("\t")[0]
        return Path(value) if not PureWindowsPath(value).drive else Path(PureWindowsPath(value))

    def accept(self):
        """Pick up every complete job file (never a temporary one)."""
        for path in sorted(self.folder.iterdir()):
            if path.suffix.upper() != self.ext:
                continue
            keys = self.parse(path)
            id_key = "JOB_ID" if self.kind == "epson" else "JobID"
            job_id = keys.get(id_key, [path.stem])[0]
            job = SimJob(job_id, path.stem, keys)
            if not self.data_folder(job).is_dir() or not (self.data_folder(job) / "DICOMDIR").is_file():
                raise RobotRejected(f"{path.name}: the data folder {self.data_folder(job)} has no DICOMDIR")
            path.rename(path.with_suffix(".RJD" if self.kind == "epson" else ".QRJ"))
            job.history.append("accepted")
            self.jobs[job_id] = job
        self.write_status()
        return list(self.jobs)

    def _rename(self, job, ext):
        for path in self.folder.glob(job.base + ".*"):
            if path.suffix.upper() in (".RJD", ".QRJ", ".INP", self.ext):
                path.rename(path.with_suffix(ext))
                return

    def burn(self):
        for job in self.jobs.values():
            if job.stage == "received":
                job.stage = "burning"
                self._rename(job, ".INP")
        self.write_status()

    def finish(self, *, fail=False):
        for job in self.jobs.values():
            if job.stage in ("received", "burning"):
                copies = int(job.first("COPIES" if self.kind == "epson" else "Copies", "1"))
                job.stage = "failed" if fail else "done"
                job.good, job.bad = (0, copies) if fail else (copies, 0)
                self._rename(job, ".ERR" if fail else ".DON")
        self.write_status()

    def handle_cancels(self):
        """TD Bridge: a .JCF names the job; it becomes .CDN (or .CER).  PTBurn:
        a .PTM with Message=ABORT and the job's ClientID; it is consumed."""
        ext = ".JCF" if self.kind == "epson" else ".PTM"
        handled = []
        for path in sorted(self.folder.iterdir()):
            if path.suffix.upper() != ext:
                continue
            text = path.read_bytes().decode("cp1252")
            if self.kind == "epson":
                assert text.startswith("[CANCEL]\r\n"), text
                job_id = re.search(r"^JOB_ID=(.*)$", text, re.M).group(1).strip()
                job = self.jobs.get(job_id)
                ok = job is not None and job.stage in ("received", "burning")
                path.rename(path.with_suffix(".CDN" if ok else ".CER"))
            else:
                fields = dict(line.split("=", 1) for line in text.split("\r\n") if "=" in line)
                job = next((j for j in self.jobs.values() if j.base == path.stem), None)
                ok = (
                    job is not None
                    and fields.get("Message") == "ABORT"
                    and fields.get("ClientID") in (job.first("ClientID", "Unknown"), "Administrator")
                    and job.stage in ("received", "burning")
                )
                path.unlink()
            if ok:
                job.stage = "cancelled"
                self._rename(job, ".DON" if self.kind == "epson" else ".ERR")
                handled.append(job.job_id)
        self.write_status()
        return handled

    # --- the status file ----------------------------------------------------------------------

    def write_status(self):
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        text = self._epson_status() if self.kind == "epson" else self._primera_status()
        self.status_file.write_bytes(text.replace("\n", "\r\n").encode("cp1252"))

    def _epson_status(self):
        active = [j for j in self.jobs.values() if j.stage in ("received", "burning")]
        complete = [j for j in reversed(list(self.jobs.values())) if j not in active]
        lines = ["[ACTIVE_JOB]"] + [f"JOB{n}={j.job_id}" for n, j in enumerate(active, 1)]
        lines += ["[COMPLETE_JOB]"] + [f"JOB{n}={j.job_id}" for n, j in enumerate(complete, 1)]
        codes = {"received": "1", "burning": "2", "done": "4", "failed": "5", "cancelled": "5"}
        for job in self.jobs.values():
            lines.append(f"[{job.job_id}]")
            if job.stage == "received":
                lines += ["STATUS=1", "ERROR="]
                continue
            lines += [
                f"PUBLISHER={job.first('PUBLISHER', 'Publisher 0')}",
                f"STATUS={codes[job.stage]}",
                f"PUBLICATION_NUMBER={job.first('COPIES', '1')}",
                f"COMPLETION_NUMBER={job.good}",
                f"ERRORDISC_NUMBER={job.bad}",
                "TYPE=3",
                "IN_STACKER=1",
                "OUT_STACKER=4",
                "ESTIMATION_TIME=133",
                f"ERROR={'0301' if job.stage == 'failed' else ''}",
                f"DETAIL_STATUS={'writing' if job.stage == 'burning' else ''}",
            ]
        lines += ["[PUBLISHER1]", "NAME=Publisher 0", "STACKER1=16", "STACKER2=12", "INK_C=76", "INFO1=HST3001"]
        return "\n".join(lines) + "\n"

    def _primera_status(self):
        active = [j for j in self.jobs.values() if j.stage in ("received", "burning")]
        complete = [j for j in self.jobs.values() if j not in active]
        lines = []
        if active:
            lines += ["[JobList]"] + [f"Job{n}={j.base}" for n, j in enumerate(active)]
        lines += ["[CompletedJobs]"] + [f"Job{n}={j.base}" for n, j in enumerate(complete)]
        lines += ["[System]", "SystemError=0", "SystemStatus=System OK"]
        states = {"received": "0", "burning": "1", "done": "2", "failed": "3", "cancelled": "3"}
        texts = {
            "received": "Waiting for the robot",
            "burning": "Recording disc 1",
            "done": "The job is complete",
            "failed": "The job failed",
            "cancelled": "The job was aborted",
        }
        for job in self.jobs.values():
            failed = job.stage in ("failed", "cancelled")
            lines += [
                f"[{job.base}]",
                f"JobID={job.job_id}",
                f"ClientID={job.first('ClientID', 'Unknown')}",
                "JobsAhead=0",
                "DiscsAhead=0",
                f"DiscsRemaining={0 if job.stage in ('done', 'failed', 'cancelled') else 1}",
                f"GoodDiscs={job.good}",
                f"BadDiscs={job.bad}",
                f"CurrentStatus={texts[job.stage]}",
                "TimeCreated=11/27/2026 10:15:00 AM",
                f"JobState={states[job.stage]}",
                f"JobErrorNumber={'12' if failed else '0'}",
                f"JobErrorString={'Disc could not be recorded' if job.stage == 'failed' else ''}",
            ]
        return "\n".join(lines) + "\n"
