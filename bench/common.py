"""What the benchmarks share: paths, free ports, the environment of DCMTK
tools and targets, and the targets themselves (DCMTK storescp, Orthanc, our
`manage.py runscp`) started in a fresh temporary folder and stopped again.

Used by bench/ingest.py, bench/query.py and bench/transfer.py (run as
scripts, so this module is imported as `common`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

START_TIMEOUT = 60.0  # seconds for a target to come up
COUNT_TIMEOUT = 30.0  # seconds for a target to show every instance after sending
STOP_TIMEOUT = 60.0  # seconds between SIGTERM and SIGKILL


def pixel_bytes(size: int) -> bytes:
    """A size×size 16-bit little-endian test pattern (12 bits used)."""
    half = size // 2
    pixels = array("H", (((x - half) ** 2 + (y - half) ** 2) // 8 % 4096 for y in range(size) for x in range(size)))
    if sys.byteorder != "little":
        pixels.byteswap()
    return pixels.tobytes()


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


def http_json(
    url: str, data: dict | None = None, method: str | None = None, timeout: float = 10, headers: dict | None = None
):
    """GET `url` (POST `data` as JSON if given, or `method`; `headers` added);
    the decoded JSON answer (None if empty)."""
    body = json.dumps(data).encode() if data is not None else None
    headers = {**({"Content-Type": "application/json"} if body else {}), **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip() else None


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


def git_commit() -> str:
    """The short commit of the working tree, or '(no commit yet)'."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return rev.stdout.strip() or "(no commit yet)"


def git_changes() -> list[str]:
    """`git status --porcelain` lines: uncommitted changes the run includes."""
    out = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


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
    """A DICOM server under test.  Subclasses say how to prepare, start,
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
    """A throw-away Orthanc; `extra_config` is merged into its configuration
    (e.g. DicomAlwaysAllowFind, DicomModalities).

    `sync` is its "SyncStorageArea": Orthanc 1.7.4 and later fdatasync()
    every file they store unless it is false (checked with strace on 1.10.1:
    one fdatasync per instance; the SQLite index is synced only at its
    checkpoints).  The benchmarks set it like our "fsync on store", so that
    ours and Orthanc are compared with the same file durability."""

    key, label, ae_title = "orthanc", "Orthanc", "ORTHANC"

    def __init__(self, extra_config: dict | None = None, *, sync: bool = True):
        self.extra_config = dict(extra_config or {})
        self.sync = sync

    def config(self, run: Run) -> dict:
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
            "SyncStorageArea": self.sync,
        }
        config.update(self.extra_config)
        return config

    def prepare(self, run):
        (run.workdir / "config.json").write_text(json.dumps(self.config(run), indent=2))

    def command(self, run):
        return ["Orthanc", str(run.workdir / "config.json")]

    def ready(self, run):
        try:
            http_json(f"http://127.0.0.1:{run.http_port}/system")
        except OSError:
            return False
        return port_open(run.port)

    def statistics(self, run: Run) -> dict:
        return http_json(f"http://127.0.0.1:{run.http_port}/statistics")

    def count(self, run):
        return int(self.statistics(run)["CountInstances"])

    def version(self):
        return f"{first_line(['Orthanc', '--version'])}, SyncStorageArea {str(self.sync).lower()}"


# runscp's line at stop, one per process (dicomnodes.archive.index.IndexWriter.summary).
_STOP_LINE = re.compile(
    r"stopped: (?P<jobs>\d+) index jobs in (?P<commits>\d+) commits"
    r"(?: \([\d.]+ a commit; per commit (?P<held>[\d.]+) ms committing and (?P<waited>[\d.]+) ms waiting)?"
)


class Pacs(Target):
    """Ours: `manage.py runscp` with a fresh PACS_DATA_DIR (so a fresh SQLite
    database and storage folder); DATABASE_URL is dropped so that the
    default SQLite database in that folder is really used."""

    key, label, ae_title = "pacs", "ours", "PACS"
    cwd = REPO

    def __init__(self, processes: int, fsync: bool = True):
        self.processes = processes
        self.fsync = fsync  # the "fsync on store" setting (default on)

    def data_dir(self, run: Run) -> Path:
        return run.workdir / "data"

    def env(self, run):
        env = tool_env(PACS_DATA_DIR=str(self.data_dir(run)))
        env.pop("DATABASE_URL", None)
        if not self.fsync:
            # Without fsync on store, the index need not sync its WAL at every
            # commit either (README: NORMAL pairs with "fsync on store" off).
            env["PACS_SQLITE_SYNCHRONOUS"] = "NORMAL"
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

    def index_stats(self, run: Run) -> dict | None:
        """What runscp's index writers did, from the line each runscp
        process logs when it stops (IndexWriter.summary), summed over the
        processes: index jobs (instances, association rows), commits, and
        the milliseconds per commit spent committing (under the writer lock)
        and waiting for that lock (other processes' commits).  None without such lines."""
        jobs = commits = 0
        held = waited = 0.0
        for m in _STOP_LINE.finditer(run.log.read_text(errors="replace") if run.log.exists() else ""):
            n = int(m["commits"])
            jobs, commits = jobs + int(m["jobs"]), commits + n
            held += float(m["held"] or 0) * n
            waited += float(m["waited"] or 0) * n
        if not commits:
            return None
        return {
            "jobs": jobs,
            "commits": commits,
            "jobs_per_commit": jobs / commits,
            "held_ms_per_commit": held / commits,
            "waited_ms_per_commit": waited / commits,
        }

    def version(self):
        fsync = "on" if self.fsync else "off"
        sync = "FULL" if self.fsync else "NORMAL"
        return (
            f"git {git_commit()}, runscp --processes {self.processes}, "
            f"fsync on store {fsync}, SQLite synchronous={sync}"
        )


# Folders of finished runs, removed when the bench ends, not between runs:
# on this machines' ext4 (no journal), creating files in the first seconds
# after thousands were deleted costs more (the inode allocator skips recently
# deleted inodes one by one: perf showed `recently_deleted` and
# `find_inode_bit`).  Our runscp took 2000 small instances over 4
# associations in 2.4-3.4 s right after a previous run's folder was removed,
# 1.9-2.9 s without; whichever target ran after a removal paid for it.
_REMOVE_AT_EXIT: list[Path] = []


@atexit.register
def _remove_folders():
    for workdir in _REMOVE_AT_EXIT:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def serving(target: Target, keep: bool):
    """Start `target` in a fresh folder on free ports; yield the Run once it
    is ready; stop it (SIGTERM, then SIGKILL).  The folder is removed when
    the bench ends (see _REMOVE_AT_EXIT), unless `keep`."""
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
            _REMOVE_AT_EXIT.append(workdir)


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
# Sending with storescu
# ---------------------------------------------------------------------------


def send(parts: list[Path], associations: int, ae_title: str, port: int, logdir: Path) -> tuple[float, list[int]]:
    """Send the folders `parts` with storescu: one process for all of them
    (associations == 1), or one per folder in parallel.  Seconds from the
    start until every storescu has exited, and their exit codes."""
    groups = [parts] if associations == 1 else [[part] for part in parts]
    cmd = ["storescu", "-aec", ae_title, "127.0.0.1", str(port), "+sd"]
    return run_all([[*cmd, *map(str, folders)] for folders in groups], logdir, "storescu")


def run_all(
    cmds: list[list[str]], logdir: Path, name: str, env: dict | None = None, cwd: Path | None = None
) -> tuple[float, list[int]]:
    """Run `cmds` in parallel (output to logdir/<name>-<i>.log; tool_env()
    unless `env` is given).  Seconds from the start until every process has
    exited, and their exit codes."""
    env = env or tool_env()
    started = time.monotonic()
    procs = []
    for i, cmd in enumerate(cmds):
        log = open(logdir / f"{name}-{i + 1}.log", "wb")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, log))
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    return time.monotonic() - started, codes


def wait_for_count(target: Target, run: Run, expected: int, timeout: float = COUNT_TIMEOUT) -> int:
    """What the target holds, polled until it reaches `expected` or
    `timeout` passes (a target may index after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        received = target.count(run)
        if received >= expected or time.monotonic() > deadline:
            return received
        time.sleep(0.5)


def print_aligned(headers: list[str], rows: list[list[str]]) -> None:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for cells in rows:
        print(line(cells))


# ---------------------------------------------------------------------------
# Repeated runs (--repeat): rounds, medians and ranges
# ---------------------------------------------------------------------------
# This machine's disk throughput swings 2-5x between runs, so one run per
# target says little: with --repeat N every case runs N rounds, each target
# once per round, and the ratios are taken within a round (neighbours in
# time), then their median.


def round_order(items: list, round_index: int) -> list:
    """The order of `items` in round `round_index` (0-based): rotated by
    one each round, so that each runs first in turn (round 0: as given)."""
    k = round_index % len(items) if items else 0
    return items[k:] + items[:k]


def passed(values: list[tuple[float | None, bool]]) -> list[float]:
    """The values (value, passed its checks) to summarise: those of the
    runs that passed; when none did, every value there is (so a single
    failed run still shows its figure, marked '!')."""
    good = [v for v, ok in values if v is not None and ok]
    return good or [v for v, _ in values if v is not None]


def fmt_spread(values: list[float], failed: bool, form: str = "{:.0f}") -> str:
    """'412' for one value, '412 (380–455)' (median, min–max) for several;
    '!' when a run failed its checks; 'error' when there is no value."""
    if not values:
        return "error"
    text = form.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({form.format(min(values))}–{form.format(max(values))})"
    return text + ("!" if failed else "")


def round_ratios(ours: list, other: list) -> list[float | None]:
    """ours.rate / other.rate round by round (runs with `.rate` and `.ok`,
    listed by round); None where either has no rate."""
    return [a.rate / b.rate if a.rate and b.rate else None for a, b in zip(ours, other)]


def median_ratio(ours: list, other: list) -> float | None:
    """The median of the per-round ratios, over the rounds where both runs
    passed their checks (over every round with a ratio when none did)."""
    both_ok = [a.ok and b.ok for a, b in zip(ours, other)]
    values = passed(list(zip(round_ratios(ours, other), both_ok)))
    return statistics.median(values) if values else None
