#!/usr/bin/env python3
"""Outgoing transfer benchmark: how fast do our transfer jobs (issue 4) send
studies to a peer and retrieve them from one, next to DCMTK and Orthanc?

    .venv/bin/python bench/transfer.py [--quick] [--small N] [--large N] [--only dcmtk,orthanc,pacs]
        [--ops send,move,get] [--pacs-processes N] [--pacs-no-fsync] [--keep] [--repeat N]

Corpora of bench/ingest.py (10 studies).  Cases: send to a fresh storescp --fork
(storescu, Orthanc's REST store, our send jobs); C-MOVE and C-GET from an
Orthanc holding the corpora (movescu to a fresh storescp, getscu, a second
fresh Orthanc retrieving by C-MOVE over its REST API, and our retrieve jobs
into a fresh archive).  Each with one association/request/job
for the whole corpus and with PARALLEL at once, the studies dealt
round-robin.  Ours is the server as users run it (`runpacs --only
scp,worker,web`: runscp, a django-q2 worker, the web process), the jobs
submitted over the REST API and timed from their rows (first job created to
last job finished).  A run counts only if every process exited 0 (every job
succeeded) and every instance arrived.  `--repeat N`: N rounds of every
case, the tools taking turns.  See bench/README.md; JSON in
bench/results/transfer-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError

import pydicom
from common import (
    COUNT_TIMEOUT,
    PYTHON,
    REPO,
    RESULTS_DIR,
    Orthanc,
    Pacs,
    Run,
    StoreScp,
    TargetError,
    fmt_spread,
    git_changes,
    http_json,
    median_ratio,
    passed,
    port_open,
    print_aligned,
    round_order,
    round_ratios,
    run_all,
    send,
    serving,
    tail,
    wait_for_count,
)
from ingest import (
    PARTS,
    SIZES,
    Corpus,
    Result,
    environment,
    fmt_rates,
    fmt_ratio,
    load_or_build_corpus,
    print_index_table,
    summary_json,
)

PARALLEL = PARTS  # jobs / associations / requests at once in the parallel cases
CALLER_AE = "BENCHSCU"  # movescu / getscu
TOOLS = ["dcmtk", "orthanc", "pacs"]
OPS = ["send", "move", "get"]
DCMTK_TOOL = {"send": "storescu", "move": "movescu", "get": "getscu"}
RUN_TIMEOUT = 1800.0  # seconds for one Orthanc store request
JOB_TIMEOUT = 600.0  # seconds for our jobs of one run to end
JOB_POLL = 0.2  # seconds between looks at the job rows (not counted: the times come from the rows)
FINISHED = {"succeeded", "partly_failed", "failed", "cancelled"}  # dicomnodes.transfers.models.FINISHED_STATES

# Our archive's settings, peers and API user, in one `manage.py shell`
# before it starts; prints a JSON line: the token and the peers' ids.
# "dest" (the send cases' storescp) gets its port over the API each run.
PREPARE = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from dicomnodes.models import DicomServerSettings, Peer
s = DicomServerSettings.load(); s.port = {port}; s.max_outgoing_connections = {parallel}; s.save()
peers = {{}}
for name, ae, port in (("orthanc", {orthanc_ae!r}, {orthanc_port}), ("dest", {dest_ae!r}, 104)):
    peers[name] = Peer.objects.update_or_create(name=name, defaults=dict(ae_title=ae, host="127.0.0.1", port=port,
        may_query=True, may_retrieve=True, is_move_destination=True))[0].pk
user = User.objects.create_superuser("bench", "", None)
print(json.dumps({{"token": Token.objects.create(user=user).key, "peers": peers}}))
"""
# django-q2's line once its workers and pusher run (at INFO: PACS_Q_LOG_LEVEL).
QCLUSTER_RUNNING = re.compile(r"Q Cluster \S+ .*running\.")


@dataclass
class Case:
    op: str  # send, move, get
    corpus: str  # small, large
    parallel: int  # 1 or PARALLEL

    @property
    def name(self) -> str:
        return f"{self.op} {self.corpus}×{self.parallel}"


CASES = [Case(op, kind, p) for op in OPS for kind in SIZES for p in (1, PARALLEL)]


@dataclass
class TransferResult(Result):
    # Ours (from the TransferJob rows): `seconds` runs from the first job's
    # creation to the last job's end; `job_seconds` from the first job's
    # start to the last job's end, so the difference is the dispatch (the
    # django-q2 broker poll, the worker claiming the jobs).
    job_seconds: float | None = None
    jobs: list[dict] | None = None  # ours: each job's row (state, times)

    @property
    def job_rate(self) -> float | None:
        return self.instances / self.job_seconds if self.job_seconds else None

    def as_json(self, total_bytes: int) -> dict:
        out = super().as_json(total_bytes)
        out["exit_codes"] = out.pop("storescu_exit_codes")
        return {**out, "job_seconds": self.job_seconds, "job_instances_per_s": self.job_rate, "jobs": self.jobs}


class TransferPacs(Pacs):
    """Ours as users run it: `manage.py runpacs --only scp,worker,web` —
    runscp (PACS_SCP_PROCESSES = --pacs-processes), a django-q2 worker
    (`qcluster`) and the web process — on a fresh data folder, with Orthanc
    and the send destination declared as peers, "maximum outgoing
    connections" = PARALLEL (also the default), and a superuser with an API
    token who submits the jobs."""

    orthanc_port = 0

    def __init__(self, processes: int, fsync: bool = True):
        super().__init__(processes, fsync)
        self.token, self.peers = "", {}  # set by prepare()

    def env(self, run):
        return dict(
            super().env(run),
            PACS_SCP_PROCESSES=str(self.processes),
            PACS_WEB_PORT=str(run.http_port),
            PACS_Q_LOG_LEVEL="INFO",  # for QCLUSTER_RUNNING
        )

    def prepare(self, run):
        super().prepare(run)
        code = PREPARE.format(
            port=run.port,
            parallel=PARALLEL,
            orthanc_ae=Orthanc.ae_title,
            orthanc_port=self.orthanc_port,
            dest_ae=StoreScp.ae_title,
        )
        answer = json.loads(self.manage(run, "shell", "-c", code).strip().splitlines()[-1])
        self.token, self.peers = answer["token"], answer["peers"]

    def command(self, run):
        return [PYTHON, "manage.py", "runpacs", "--only", "scp,worker,web"]

    def version(self):
        workers = os.environ.get("PACS_Q_WORKERS", "2 (default)")
        return f"{super().version()}; runpacs --only scp,worker,web, django-q2 workers {workers}"

    def ready(self, run):
        if not (port_open(run.port) and port_open(run.http_port)):
            return False
        return QCLUSTER_RUNNING.search(run.log.read_text(errors="replace")) is not None

    def api(self, run: Run, path: str, data: dict | None = None, method: str | None = None):
        """A REST API call as the bench's superuser; an error answer raises
        TargetError with its body."""
        url = f"http://127.0.0.1:{run.http_port}/api/{path}"
        try:
            return http_json(url, data, method, timeout=60, headers={"Authorization": f"Token {self.token}"})
        except HTTPError as exc:
            raise TargetError(f"{method or 'POST'} /api/{path} answered {exc.code}: {exc.read()[:500]!r}") from None

    def submit(self, run: Run, kind: str, peer: str, groups: list[list[str]]) -> list[int]:
        """One job per group, all POSTed at once (a thread each); their ids."""

        def post(uids):
            return self.api(run, "transfers/", {"kind": kind, "peer": self.peers[peer], "uids": uids})["id"]

        with ThreadPoolExecutor(len(groups)) as pool:
            return list(pool.map(post, groups))

    def job_rows(self, run: Run, pks: list[int]) -> list[dict]:
        """The jobs' rows, read from the SQLite file (read-only): a look
        costs the server nothing, unlike an API request."""
        db = self.data_dir(run) / "pacs.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(
                "SELECT id, state, attempts, total, done, failed, last_error, created_at, started_at, finished_at"
                f" FROM dicomnodes_transferjob WHERE id IN ({','.join('?' * len(pks))}) ORDER BY id",
                pks,
            ).fetchall()
        return [dict(row) for row in rows]

    def wait_for_jobs(self, run: Run, pks: list[int], timeout: float = JOB_TIMEOUT) -> list[dict]:
        """The jobs' rows once each has ended (`has_ended`); TargetError
        naming their states after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.job_rows(run, pks)
            if len(rows) == len(pks) and all(map(has_ended, rows)):
                return rows
            if time.monotonic() > deadline:
                raise TargetError(f"our jobs have not ended after {timeout:.0f} s: {describe_jobs(rows)}")
            time.sleep(JOB_POLL)


class OrthancArchive(Orthanc):
    """A second, fresh Orthanc that retrieves the studies from the loaded one
    by C-MOVE to itself (`POST /modalities/source/move`, synchronous in
    Orthanc 1.10): the archive doing what our retrieve jobs do, storing
    with SyncStorageArea like our "fsync on store".  Orthanc 1.10 has no
    C-GET SCU, so the get cases have no Orthanc column."""

    ae_title = "ORTHANCDST"

    def __init__(self, source_port: int, *, sync: bool):
        super().__init__({"DicomModalities": {"source": [Orthanc.ae_title, "127.0.0.1", source_port]}}, sync=sync)


class ForkingStoreScp(StoreScp):
    """storescp --fork: a child per association, so parallel senders are
    not served one after the other."""

    def command(self, run):
        return [*super().command(run), "--fork"]


@dataclass
class Context:
    args: argparse.Namespace
    orthanc: Orthanc
    orun: Run
    pacs: TransferPacs
    prun: Run | None  # our archive holding the corpora (send cases)
    orthanc_ids: dict[str, str]  # Study Instance UID -> Orthanc's study ID

    def modality(self, name: str, ae: str, port: int) -> None:
        """Declare (or move) a DICOM modality of Orthanc."""
        body = {"AET": ae, "Host": "127.0.0.1", "Port": port}
        http_json(f"http://127.0.0.1:{self.orun.http_port}/modalities/{name}", body, method="PUT")


def read_studies(corpus: Corpus) -> dict[str, list[Path]]:
    """The corpus's files by Study Instance UID, studies in file order."""
    studies: dict[str, list[Path]] = {}
    for path in sorted(corpus.root.glob("part*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        studies.setdefault(str(ds.StudyInstanceUID), []).append(path)
    return studies


def deal(studies: dict[str, list[Path]], n: int) -> list[list[str]]:
    """The Study Instance UIDs dealt round-robin into n groups."""
    uids = list(studies)
    return [uids[i::n] for i in range(n)]


def dcmtk_cmds(case: Case, groups, studies, corpus: Corpus, ctx: Context, dest: Run) -> list[list[str]]:
    if case.op == "send":
        cmd = ["storescu", "-aec", StoreScp.ae_title, "127.0.0.1", str(dest.port), "+sd"]
        if case.parallel == 1:
            return [[*cmd, *map(str, corpus.parts)]]
        return [[*cmd, *(str(f) for uid in uids for f in studies[uid])] for uids in groups]
    cmds = []
    for uids in groups:
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=" + "\\".join(uids)]
        peer = ["-aec", Orthanc.ae_title, "127.0.0.1", str(ctx.orun.port), *keys]
        if case.op == "move":
            cmds.append(["movescu", "-S", "-aet", CALLER_AE, "-aem", StoreScp.ae_title, *peer])
        else:
            cmds.append(["getscu", "-S", "-aet", CALLER_AE, "-od", str(dest.workdir / "in"), *peer])
    return cmds


def has_ended(row: dict) -> bool:
    """A job row that has ended, or is queued again after an attempt (a
    network failure: retried minutes later, the run has failed)."""
    return row["state"] in FINISHED or (row["state"] == "queued" and row["attempts"] > 0)


def describe_jobs(rows: list[dict]) -> str:
    """'job 3 running 120/200, job 4 queued (attempt 1: …)'."""
    return (
        ", ".join(
            f"job {r['id']} {r['state']} {r['done']}/{r['total'] if r['total'] is not None else '?'}"
            + (f" (attempt {r['attempts']}: {r['last_error'][:200]})" if r["last_error"] else "")
            for r in rows
        )
        or "no job rows"
    )


def when(value: str | None) -> dt.datetime | None:
    """A DateTimeField as Django stores it in SQLite (UTC text)."""
    return dt.datetime.fromisoformat(value) if value else None


def run_ours(case: Case, groups: list[list[str]], archive: TransferPacs, arun: Run, result: TransferResult) -> None:
    """Submit the jobs over the API, wait for their rows to say they ended,
    and take the times from the rows: `seconds` from the first job's
    creation to the last job's end, `job_seconds` from the first start."""
    pks = archive.submit(arun, case.op, "dest" if case.op == "send" else "orthanc", groups)
    rows = archive.wait_for_jobs(arun, pks)
    result.jobs = rows
    result.exit_codes = [0 if r["state"] == "succeeded" else 1 for r in rows]
    created = [when(r["created_at"]) for r in rows]
    started = [when(r["started_at"]) for r in rows]
    finished = [when(r["finished_at"]) for r in rows]
    if all(finished) and all(started):
        result.seconds = (max(finished) - min(created)).total_seconds()
        result.job_seconds = (max(finished) - min(started)).total_seconds()
    if any(result.exit_codes):
        result.error = f"jobs: {describe_jobs(rows)}"


def orthanc_store(ctx: Context, groups: list[list[str]], logdir: Path) -> tuple[float, list[int]]:
    """POST /modalities/dest/store (synchronous), one request per group in
    parallel; exit code 0 for an answer without failed instances."""
    url = f"http://127.0.0.1:{ctx.orun.http_port}/modalities/dest/store"

    def store(i: int, uids: list[str]) -> int:
        try:
            body = {"Resources": [ctx.orthanc_ids[u] for u in uids], "Synchronous": True}
            answer = http_json(url, body, timeout=RUN_TIMEOUT)
        except OSError as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        (logdir / f"orthanc-store-{i + 1}.log").write_text(json.dumps(answer, indent=1))
        return 0 if answer.get("FailedInstancesCount") == 0 and "error" not in answer else 1

    started = time.monotonic()
    with ThreadPoolExecutor(len(groups)) as pool:
        codes = list(pool.map(store, range(len(groups)), groups))
    return time.monotonic() - started, codes


def orthanc_move(drun: Run, groups: list[list[str]], logdir: Path) -> tuple[float, list[int]]:
    """POST /modalities/source/move to the retrieving Orthanc, one request per
    group in parallel, each naming its studies; exit code 0 for a 200 answer
    (Orthanc answers an error status when a C-MOVE fails)."""
    url = f"http://127.0.0.1:{drun.http_port}/modalities/source/move"

    def move(i: int, uids: list[str]) -> int:
        body = {
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": uid} for uid in uids],
            "TargetAet": OrthancArchive.ae_title,
            "Timeout": int(RUN_TIMEOUT),
        }
        try:
            answer, code = http_json(url, body, timeout=RUN_TIMEOUT), 0
        except OSError as exc:
            detail = exc.read()[:500] if isinstance(exc, HTTPError) else b""
            answer, code = {"error": f"{type(exc).__name__}: {exc} {detail!r}"}, 1
        (logdir / f"orthanc-move-{i + 1}.log").write_text(json.dumps(answer, indent=1))
        return code

    started = time.monotonic()
    with ThreadPoolExecutor(len(groups)) as pool:
        codes = list(pool.map(move, range(len(groups)), groups))
    return time.monotonic() - started, codes


def run_case(case: Case, tool: str, ctx: Context, corpus: Corpus, studies: dict) -> TransferResult:
    """A fresh destination, the transfer, the check."""
    result = TransferResult(corpus.count)
    groups = deal(studies, case.parallel)
    keep = ctx.args.keep
    dest = drun = None
    try:
        with contextlib.ExitStack() as stack:
            if tool == "pacs" and case.op != "send":  # ours retrieves into a fresh archive
                dest = TransferPacs(ctx.args.pacs_processes, fsync=not ctx.args.pacs_no_fsync)
                dest.orthanc_port = ctx.orun.port
                drun = stack.enter_context(serving(dest, keep))
                ctx.modality("pacs", dest.ae_title, drun.port)
            elif tool == "orthanc" and case.op == "move":  # a second Orthanc retrieves into its storage
                dest = OrthancArchive(ctx.orun.port, sync=not ctx.args.pacs_no_fsync)
                drun = stack.enter_context(serving(dest, keep))
                ctx.modality("orthancdst", dest.ae_title, drun.port)
            elif case.op == "get":  # getscu writes the files itself
                dest, workdir = StoreScp(), Path(tempfile.mkdtemp(prefix="pacs-bench-getscu-"))
                drun = Run(workdir, 0, 0, workdir / "none.log")
                (workdir / "in").mkdir()
                if not keep:
                    stack.callback(shutil.rmtree, workdir, True)
            else:
                dest = ForkingStoreScp()
                drun = stack.enter_context(serving(dest, keep))
                ctx.modality("dest", dest.ae_title, drun.port)
            result.kept = str(drun.workdir) if keep else None
            if tool == "orthanc" and case.op == "move":
                result.seconds, result.exit_codes = orthanc_move(drun, groups, drun.workdir)
            elif tool == "orthanc":
                result.seconds, result.exit_codes = orthanc_store(ctx, groups, drun.workdir)
            elif tool == "dcmtk":
                cmds = dcmtk_cmds(case, groups, studies, corpus, ctx, drun)
                result.seconds, result.exit_codes = run_all(cmds, drun.workdir, DCMTK_TOOL[case.op])
            else:
                archive, arun = (ctx.pacs, ctx.prun) if case.op == "send" else (dest, drun)
                if case.op == "send":
                    archive.api(arun, f"peers/{archive.peers['dest']}/", {"port": drun.port}, method="PATCH")
                run_ours(case, groups, archive, arun, result)
            timeout = 0 if any(result.exit_codes) else COUNT_TIMEOUT  # no waiting after a failure
            result.received = wait_for_count(dest, drun, corpus.count, timeout)
            if not result.ok:
                logs = "\n".join(f"--- {p.name}\n{tail(p, 12)}" for p in sorted(drun.workdir.glob("*-*.log")))
                result.error = (
                    f"exit codes {result.exit_codes}, received {result.received}/{corpus.count}\n"
                    + (f"{result.error}\n" if result.error else "")
                    + f"{logs}\n--- {dest.label} ---\n{tail(drun.log)}"
                )
                if tool == "pacs":
                    result.error += f"\n--- ours (the archive running the jobs) ---\n{tail(arun.log)}"
    except (TargetError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    if case.op == "move" and isinstance(dest, TransferPacs) and drun is not None:
        # Stopped: runscp's processes, which took the C-MOVE's stores, have logged their index writers' figures.
        # (A C-GET job indexes in the django-q2 worker's writer, which logs no such line.)
        result.index = dest.index_stats(drun)
    return result


def load(target, run: Run, corpora: dict[str, Corpus]) -> dict:
    """Both corpora into `target` with storescu (PARTS associations), checked."""
    total = sum(c.count for c in corpora.values())
    seconds, codes = 0.0, []
    for corpus in corpora.values():
        took, exit_codes = send(corpus.parts, PARTS, target.ae_title, run.port, run.workdir)
        seconds, codes = seconds + took, codes + exit_codes
    received = wait_for_count(target, run, total)
    if any(codes) or received != total:
        logs = "\n".join(tail(p, 10) for p in sorted(run.workdir.glob("storescu-*.log")))
        raise TargetError(f"{target.label} holds {received}/{total}; storescu exit codes {codes}\n{logs}")
    return {"instances": total, "seconds": seconds}


def print_table(results: dict, cases: list[Case]) -> None:
    """Rows = cases; inst/s per tool (median and range over the rounds),
    ours' jobs alone, and the median per-round ours/DCMTK and ours/Orthanc
    (above 1: ours is faster).  '!' marks a cell with a failed run."""
    headers = ["case", "DCMTK inst/s", "Orthanc inst/s", "ours inst/s", "ours jobs inst/s", "ours/DCMTK"]
    rows = []
    for case in cases:
        per = results[case.name]
        ours = per.get("pacs", [])
        jobs = fmt_spread(passed([(r.job_rate, r.ok) for r in ours]), False) if ours else "—"
        cells = [case.name, fmt_rates(per.get("dcmtk")), fmt_rates(per.get("orthanc")), fmt_rates(ours), jobs]
        for other in ("dcmtk", "orthanc"):
            cells.append(fmt_ratio(median_ratio(ours, per.get(other, []))))
        rows.append(cells)
    print_aligned([*headers, "ours/Orthanc"], rows)
    print(
        "DCMTK: storescu (send), movescu to a storescp / getscu (move/get from Orthanc); Orthanc: REST store "
        "to the storescp (send), a second Orthanc's REST C-MOVE to itself (move), synchronous;\n"
        "ours: runscp + a django-q2 worker + the web process, 1 or "
        f"{PARALLEL} jobs POSTed to /api/transfers/, first job created to last job finished (TransferJob rows);\n"
        "'ours jobs': first job started to last job finished (the difference is the dispatch: broker poll, claim)."
    )


def case_json(case: Case, runs: dict[str, list[TransferResult]], orders, groups, corpus: Corpus) -> dict:
    """A case in the JSON: each tool's summary (ingest.summary_json), the
    median per-round ratios, each round's ratios and the tools' order."""
    ours, others = runs.get("pacs", []), {other: runs.get(other, []) for other in ("dcmtk", "orthanc")}
    medians = ("job_seconds", "job_instances_per_s")
    return {
        "case": case.name,
        "op": case.op,
        "corpus": case.corpus,
        "parallel": case.parallel,
        "study_groups": groups,
        "results": {k: summary_json(r, corpus.total_bytes, medians) for k, r in runs.items() if r},
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
    parser.add_argument("--only", default=",".join(TOOLS), help="tools, comma-separated (dcmtk,orthanc,pacs)")
    parser.add_argument("--ops", default=",".join(OPS), help="cases, comma-separated (send,move,get)")
    parser.add_argument("--pacs-processes", type=int, default=2, help="runscp --processes (default 2)")
    parser.add_argument("--pacs-no-fsync", action="store_true", help="switch our 'fsync on store' off")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every case, the tools taking turns in each round (default 1)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick:
        args.small, args.large = 200, 60
    for name in ("small", "large"):
        if getattr(args, name) < 20:
            parser.error(f"--{name} must be at least 20 (10 studies of 2 series)")
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    args.ops = [k.strip() for k in args.ops.split(",") if k.strip()]
    if set(args.only) - set(TOOLS) or set(args.ops) - set(OPS):
        parser.error(f"--only takes {','.join(TOOLS)}; --ops takes {','.join(OPS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    corpora = {kind: load_or_build_corpus(kind, getattr(args, kind)) for kind in SIZES}
    studies = {kind: read_studies(corpus) for kind, corpus in corpora.items()}
    cases = [case for case in CASES if case.op in args.ops]
    orthanc = Orthanc(
        {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowGet": True}
        | {"ConcurrentJobs": PARALLEL}
    )
    pacs = TransferPacs(args.pacs_processes, fsync=not args.pacs_no_fsync)
    env = environment([StoreScp(), orthanc, pacs], corpora, args)
    env["uncommitted_changes"] = git_changes()
    print(f"CPUs: {env['cpu_count']} (usable {env['cpu_affinity']}); {env['platform']}; Python {env['python']}")
    print(f"{env['storescu']}; pydicom {env['pydicom']}; pynetdicom {env['pynetdicom']}")
    print(f"ours: {env['targets']['pacs']}\nOrthanc: {env['targets']['orthanc']} (ConcurrentJobs {PARALLEL})")
    for corpus in corpora.values():
        print(f"corpus {corpus.describe()}, {len(studies[corpus.kind])} studies")
    print(flush=True)

    results: dict[str, dict[str, list[TransferResult]]] = {case.name: {} for case in cases}
    orders: dict[str, list[list[str]]] = {case.name: [] for case in cases}
    report: dict = {"loads": {}, "load_average": {"before": os.getloadavg()}}
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            print("Orthanc: loading the corpora ... ", end="", flush=True)
            orun = stack.enter_context(serving(orthanc, args.keep))
            report["loads"]["orthanc"] = load(orthanc, orun, corpora)
            print(f"{report['loads']['orthanc']['seconds']:.1f} s", flush=True)
            found = http_json(f"http://127.0.0.1:{orun.http_port}/studies?expand")
            ids = {s["MainDicomTags"]["StudyInstanceUID"]: s["ID"] for s in found}
            pacs.orthanc_port, prun = orun.port, None
            if "pacs" in args.only and "send" in args.ops:
                print("ours: loading the corpora into the archive ... ", end="", flush=True)
                prun = stack.enter_context(serving(pacs, args.keep))
                report["loads"]["pacs"] = load(pacs, prun, corpora)
                print(f"{report['loads']['pacs']['seconds']:.1f} s", flush=True)
            ctx = Context(args, orthanc, orun, pacs, prun, ids)
            # Case by case, round by round: each round runs every tool once,
            # in turns (round_order), so one round's runs are neighbours in time.
            for case in cases:
                tools = [t for t in TOOLS if t in args.only and (t != "orthanc" or case.op != "get")]
                for round_index in range(args.repeat):
                    order = round_order(tools, round_index)
                    orders[case.name].append(order)
                    for tool in order:
                        where = f" {round_index + 1}/{args.repeat}" if args.repeat > 1 else ""
                        print(f"{case.name:16} {tool:8}{where} ... ", end="", flush=True)
                        result = run_case(case, tool, ctx, corpora[case.corpus], studies[case.corpus])
                        results[case.name].setdefault(tool, []).append(result)
                        if result.rate is not None:
                            print(f"{result.seconds:.2f} s, {result.rate:.0f} inst/s", end="")
                            print(f", received {result.received}", end="")
                        if result.job_seconds:
                            print(f" (jobs {result.job_seconds:.2f} s)", end="")
                        print(("" if result.ok else "  FAILED") + (f"  (kept {result.kept})" if result.kept else ""))
            if args.keep:
                report["kept"] = {"orthanc": str(orun.workdir), "pacs": str(prun.workdir) if prun else None}
        except (TargetError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    report["load_average"]["after"] = os.getloadavg()

    print()
    print_table(results, cases)
    print_index_table(results, [c for c in cases if c.op == "move"])
    failures += [
        f"{key} {name}" + (f" run {i + 1}" if len(runs) > 1 else "") + f": {r.error}"
        for name, per in results.items()
        for key, runs in per.items()
        for i, r in enumerate(runs)
        if not r.ok
    ]
    for failure in failures:
        print(f"\n! {failure}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"transfer-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    report |= {
        "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "environment": env,
        "parallel": PARALLEL,
        "repeat": args.repeat,
        "cases": [
            case_json(
                case,
                results[case.name],
                orders[case.name],
                deal(studies[case.corpus], case.parallel),
                corpora[case.corpus],
            )
            for case in cases
        ],
        "failures": failures,
    }
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
