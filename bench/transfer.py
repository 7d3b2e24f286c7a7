#!/usr/bin/env python3
"""Outgoing transfer benchmark: how fast do our transfer jobs (issue 4) send
studies to a peer and retrieve them from one, next to DCMTK and Orthanc?

    .venv/bin/python bench/transfer.py [--quick] [--small N] [--large N] [--only dcmtk,orthanc,pacs]
        [--ops send,move,get] [--pacs-processes N] [--pacs-no-fsync] [--keep]

Corpora of bench/ingest.py (10 studies).  Cases: send to a fresh storescp --fork
(storescu, Orthanc's REST store, `manage.py dicom send`); C-MOVE and C-GET
from an Orthanc holding the corpora (movescu to a fresh storescp, getscu, and
`manage.py dicom retrieve [--get]` into a fresh archive).  Each with one
association/request/job for the whole corpus and with PARALLEL at once, the
studies dealt round-robin.  A run counts only if every process exited 0 and
every instance arrived.  See bench/README.md; JSON in
bench/results/transfer-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
    git_changes,
    http_json,
    print_aligned,
    run_all,
    send,
    serving,
    tail,
    wait_for_count,
)
from ingest import PARTS, SIZES, Corpus, Result, environment, fmt_rate, load_or_build_corpus, ratio

PARALLEL = PARTS  # jobs / associations / requests at once in the parallel cases
CALLER_AE = "BENCHSCU"  # movescu / getscu
TOOLS = ["dcmtk", "orthanc", "pacs"]
OPS = ["send", "move", "get"]
DCMTK_TOOL = {"send": "storescu", "move": "movescu", "get": "getscu"}
RUN_TIMEOUT = 1800.0  # seconds for one Orthanc store request

SET_PEER = """
from dicomnodes.models import Peer
Peer.objects.update_or_create(name={name!r}, defaults=dict(ae_title={ae!r}, host="127.0.0.1", port={port},
    may_query=True, may_retrieve=True, is_move_destination=True))
"""
SET_LIMIT = f"""
from dicomnodes.models import DicomServerSettings
s = DicomServerSettings.load(); s.max_outgoing_connections = {PARALLEL}; s.save()
"""
# The parallel case of ours: what a django-q2 worker does with queued jobs.
RUN_JOBS = """
import sys
from dicomnodes.models import Peer, TransferJob
from dicomnodes.transfers.jobs import run_next, submit_job
peer = Peer.objects.get(name={peer!r})
pks = [submit_job(kind={kind!r}, peer=peer, uids=uids, kick_runner=False).pk for uids in {groups!r}]
run_next()
states = list(TransferJob.objects.filter(pk__in=pks).values_list("pk", "state", "done", "last_error"))
print(states)
sys.exit(0 if all(state == "succeeded" for _, state, _, _ in states) else 1)
"""
# First start to last end of the newest N jobs: the jobs' own time.
JOB_SECONDS = """
from dicomnodes.models import TransferJob
jobs = list(TransferJob.objects.order_by("-id")[:{n}])
if jobs and all(j.started_at and j.finished_at for j in jobs):
    print("seconds", (max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)).total_seconds())
"""


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
    job_seconds: float | None = None  # ours: first job start to last job end (TransferJob rows)

    @property
    def job_rate(self) -> float | None:
        return self.instances / self.job_seconds if self.job_seconds else None

    def as_json(self, total_bytes: int) -> dict:
        out = super().as_json(total_bytes)
        out["exit_codes"] = out.pop("storescu_exit_codes")
        return {**out, "job_seconds": self.job_seconds, "job_instances_per_s": self.job_rate}


class TransferPacs(Pacs):
    """Ours with Orthanc declared as a peer and "maximum outgoing
    connections" = PARALLEL (also the default)."""

    orthanc_port = 0

    def shell(self, run: Run, code: str) -> str:
        return self.manage(run, "shell", "-c", code)

    def prepare(self, run):
        super().prepare(run)
        self.shell(run, SET_PEER.format(name="orthanc", ae=Orthanc.ae_title, port=self.orthanc_port) + SET_LIMIT)

    def job_seconds(self, run: Run, n: int) -> float | None:
        out = self.shell(run, JOB_SECONDS.format(n=n))
        return next((float(line.split()[1]) for line in out.splitlines() if line.startswith("seconds ")), None)


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


def ours_cmds(case: Case, groups: list[list[str]], peer: str) -> list[list[str]]:
    manage = [PYTHON, "manage.py"]
    if case.parallel > 1:
        return [[*manage, "shell", "-c", RUN_JOBS.format(peer=peer, kind=case.op, groups=groups)]]
    if case.op == "send":
        return [[*manage, "dicom", "send", peer, *groups[0]]]
    return [[*manage, "dicom", "retrieve", peer, *groups[0], *(["--get"] if case.op == "get" else [])]]


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


def run_case(case: Case, tool: str, ctx: Context, corpus: Corpus, studies: dict) -> TransferResult:
    """A fresh destination, the transfer, the check."""
    result = TransferResult(corpus.count)
    groups = deal(studies, case.parallel)
    keep = ctx.args.keep
    try:
        with contextlib.ExitStack() as stack:
            if tool == "pacs" and case.op != "send":  # ours retrieves into a fresh archive
                dest = TransferPacs(ctx.args.pacs_processes, fsync=not ctx.args.pacs_no_fsync)
                dest.orthanc_port = ctx.orun.port
                drun = stack.enter_context(serving(dest, keep))
                ctx.modality("pacs", dest.ae_title, drun.port)
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
            if tool == "orthanc":
                result.seconds, result.exit_codes = orthanc_store(ctx, groups, drun.workdir)
            elif tool == "dcmtk":
                cmds = dcmtk_cmds(case, groups, studies, corpus, ctx, drun)
                result.seconds, result.exit_codes = run_all(cmds, drun.workdir, DCMTK_TOOL[case.op])
            else:
                archive, arun = (ctx.pacs, ctx.prun) if case.op == "send" else (dest, drun)
                if case.op == "send":
                    ctx.pacs.shell(arun, SET_PEER.format(name="dest", ae=dest.ae_title, port=drun.port))
                cmds = ours_cmds(case, groups, "dest" if case.op == "send" else "orthanc")
                result.seconds, result.exit_codes = run_all(cmds, drun.workdir, "manage", archive.env(arun), REPO)
                result.job_seconds = archive.job_seconds(arun, len(groups))
            timeout = 0 if any(result.exit_codes) else COUNT_TIMEOUT  # no waiting after a failure
            result.received = wait_for_count(dest, drun, corpus.count, timeout)
            if not result.ok:
                logs = "\n".join(f"--- {p.name}\n{tail(p, 12)}" for p in sorted(drun.workdir.glob("*-*.log")))
                result.error = (
                    f"exit codes {result.exit_codes}, received {result.received}/{corpus.count}\n"
                    f"{logs}\n--- {dest.label} ---\n{tail(drun.log)}"
                )
    except (TargetError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
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
    """Rows = cases; inst/s per tool, ours' jobs alone, ours/DCMTK and
    ours/Orthanc (above 1: ours is faster).  '!' marks a failed check."""
    headers = ["case", "DCMTK inst/s", "Orthanc inst/s", "ours inst/s", "ours jobs inst/s", "ours/DCMTK"]
    rows = []
    for case in cases:
        per = results[case.name]
        ours = per.get("pacs")
        jobs = f"{ours.job_rate:.0f}" if ours is not None and ours.job_rate else "—"
        cells = [case.name, fmt_rate(per.get("dcmtk")), fmt_rate(per.get("orthanc")), fmt_rate(ours), jobs]
        for other in ("dcmtk", "orthanc"):
            r = ratio(ours, per.get(other))
            cells.append(f"{r:.2f}" if r is not None else "—")
        rows.append(cells)
    print_aligned([*headers, "ours/Orthanc"], rows)
    print(
        "DCMTK: storescu (send), movescu to a storescp / getscu (move/get from Orthanc); Orthanc: REST store "
        f"to the storescp;\nours: manage.py dicom send|retrieve (×1), {PARALLEL} jobs + one run_next() "
        f"(×{PARALLEL}); 'ours jobs': first job start to last job end (no process start, no polling)."
    )


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
    args = parser.parse_args(argv)
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

    results: dict[str, dict[str, TransferResult]] = {case.name: {} for case in cases}
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
            for case in cases:
                for tool in (t for t in TOOLS if t in args.only and (t != "orthanc" or case.op == "send")):
                    print(f"{case.name:16} {tool:8} ... ", end="", flush=True)
                    result = results[case.name][tool] = run_case(
                        case, tool, ctx, corpora[case.corpus], studies[case.corpus]
                    )
                    if result.rate is not None:
                        print(f"{result.seconds:.2f} s, {result.rate:.0f} inst/s, received {result.received}", end="")
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
    failures += [f"{key} {name}: {r.error}" for name, per in results.items() for key, r in per.items() if not r.ok]
    for failure in failures:
        print(f"\n! {failure}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"transfer-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    report |= {
        "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "environment": env,
        "parallel": PARALLEL,
        "cases": [
            {
                "case": case.name,
                "op": case.op,
                "corpus": case.corpus,
                "parallel": case.parallel,
                "study_groups": deal(studies[case.corpus], case.parallel),
                "results": {k: r.as_json(corpora[case.corpus].total_bytes) for k, r in results[case.name].items()},
                "ratios": {
                    f"pacs/{other}": ratio(results[case.name].get("pacs"), results[case.name].get(other))
                    for other in ("dcmtk", "orthanc")
                },
            }
            for case in cases
        ],
        "failures": failures,
    }
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
