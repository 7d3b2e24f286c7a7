#!/usr/bin/env python3
"""DICOMweb benchmark: our /dicomweb/ against Orthanc's DICOMweb plugin
(Debian `orthanc-dicomweb`), the same archive in both, one run.

    .venv/bin/python bench/dicomweb.py [--instances N | --quick] [--repeat R] [--no-viewer] [--keep]

1. The archive: bench/query.py's N tiny instances (the index QIDO searches;
   ours bulk-loaded into the index, Orthanc's over storescu) and its
   retrieve study of 600 × 512×512 16-bit CT.
2. STOW-RS: the 600 instances POSTed to each server, 50 per request
   (multipart/related; type="application/dicom"), one request at a time:
   instances per second; every instance must then be there.
3. QIDO-RS: the study searches of bench/query.py (PatientID, UID,
   accession, PatientName=SMI*, a month of StudyDate, the series of a
   study), R times each, alternating between the servers: median and p95
   ms of the whole HTTP exchange, each answer checked.
4. WADO-RS: one 300-instance series of the retrieve study as
   multipart/related (`transfer-syntax=*`), read to the end: MB/s; and its
   metadata: ms, the first time (ours reads the files then) and again.
   R // 3 times (at least 3) each, alternating.
5. Viewer time to first image (bench/viewer.py; ours only: Debian's
   Orthanc has no OHIF plugin, /usr/share/orthanc/plugins/ holds DICOMweb,
   ServeFolders and ModalityWorklists, so its cells show "—"): in Debian's
   Chromium (Playwright), staff log in through the admin's login page
   (the superuser `bench`, created with a known password beside its API
   token), filter the admin's study list to the retrieve study and click
   "Open in viewer"; seconds from the click until the viewer's canvas first
   shows pixels.  VIEWER_REPEAT fresh browser contexts, each opening the
   study twice: cold (empty cache) then warm (OHIF's files cached); medians,
   and when the first QIDO-RS, metadata and frame answers came (printed
   below the table).  `--no-viewer` skips it.

Both servers are started fresh on free ports; the client is `requests`
with one keep-alive session per server.  A table and
bench/results/dicomweb-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import requests
import viewer
from common import REPO, RESULTS_DIR, Orthanc, Pacs, TargetError, git_changes, port_open, print_aligned, send, serving
from query import (
    LOAD_TIMEOUT,
    SEED,
    load_or_build_corpus,
    percentile,
    query_cases,
    retrieve_plan,
    tiny_plan,
)

STOW_BATCH = 50
USERNAME, PASSWORD = "bench", "bench-viewer-passphrase"  # a throw-away server on 127.0.0.1
VIEWER_REPEAT = 3  # browser contexts, each with a cold and a warm opening
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancWeb(Orthanc):
    """Orthanc with its DICOMweb plugin at /dicom-web/."""

    def __init__(self):
        super().__init__({"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})

    def root(self, run):
        return f"http://127.0.0.1:{run.http_port}/dicom-web"

    def session(self, run):
        return requests.Session()


class PacsWeb(Pacs):
    """Ours: `runpacs --only web` on a fresh data folder, the tiny corpus
    bulk-loaded into its index, a superuser with an API token."""

    def __init__(self, corpus, seed):
        super().__init__(processes=1)
        self.corpus, self.seed = corpus, seed
        self.token = ""

    def env(self, run):
        return dict(super().env(run), PACS_WEB_PORT=str(run.http_port))

    def prepare(self, run):
        super().prepare(run)
        out = self.manage(
            run,
            "shell",
            "-c",
            "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
            f"u = User.objects.create_superuser({USERNAME!r}, '', {PASSWORD!r}); "
            "print(Token.objects.create(user=u).key)",
        )
        self.token = out.strip().splitlines()[-1]
        query = Path(__file__).resolve().with_name("query.py")
        argv = [sys.executable, str(query), "--bulk-load", str(self.corpus.root)]
        argv += ["--instances", str(self.corpus.plan.count), "--seed", str(self.seed)]
        env = dict(self.env(run), DJANGO_SETTINGS_MODULE="pacs_site.settings")
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=LOAD_TIMEOUT)
        if proc.returncode != 0:
            raise TargetError(f"bulk load of the index exited {proc.returncode}:\n{proc.stderr.strip()[-3000:]}")

    def command(self, run):
        return [sys.executable, "manage.py", "runpacs", "--only", "web"]

    def ready(self, run):
        return port_open(run.http_port)

    def root(self, run):
        return f"http://127.0.0.1:{run.http_port}/dicomweb"

    def session(self, run):
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        return session


def multipart(paths):
    boundary = uuid.uuid4().hex
    chunks = []
    for path in paths:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(session, root, paths):
    """Seconds to POST `paths`, STOW_BATCH per request."""
    started = time.monotonic()
    for i in range(0, len(paths), STOW_BATCH):
        body, content_type = multipart(paths[i : i + STOW_BATCH])
        answer = session.post(
            f"{root}/studies",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        if answer.status_code != 200:
            raise TargetError(f"STOW-RS answered {answer.status_code}: {answer.text[:300]}")
    return time.monotonic() - started


def qido(session, root, case, label):
    params = dict(case.match)
    path = "/studies"
    if case.level == "SERIES":
        path = f"/studies/{params.pop('StudyInstanceUID')}/series"
    started = time.monotonic()
    # `*` unescaped: Orthanc's plugin does not decode %2A (a wildcard becomes
    # a literal) — browsers and OHIF leave it as is too.
    query = urllib.parse.urlencode(params, safe="*^,")
    answer = session.get(f"{root}{path}?{query}", headers={"Accept": "application/dicom+json"})
    elapsed = time.monotonic() - started
    found = set()
    if answer.status_code == 200:
        uid_tag = "0020000E" if case.level == "SERIES" else "0020000D"
        found = {item[uid_tag]["Value"][0] for item in answer.json()}
    elif answer.status_code != 204:
        raise TargetError(f"{label}: QIDO-RS answered {answer.status_code}: {answer.text[:300]}")
    if found != case.expected:
        raise TargetError(f"{label}: QIDO-RS {case.label}: {len(found)} answers, {len(case.expected)} expected")
    return elapsed


def wado_series(session, root, study, series):
    """(seconds, bytes) to read the series as multipart to the end."""
    started = time.monotonic()
    answer = session.get(
        f"{root}/studies/{study}/series/{series}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        stream=True,
    )
    size = sum(len(chunk) for chunk in answer.iter_content(1 << 20))
    if answer.status_code != 200:
        raise TargetError(f"WADO-RS answered {answer.status_code}")
    return time.monotonic() - started, size


def metadata(session, root, study, series, count):
    started = time.monotonic()
    answer = session.get(
        f"{root}/studies/{study}/series/{series}/metadata", headers={"Accept": "application/dicom+json"}
    )
    elapsed = time.monotonic() - started
    if answer.status_code != 200 or len(answer.json()) != count:
        raise TargetError(f"metadata answered {answer.status_code} with the wrong count")
    return elapsed


def cell(value, name):
    """A table cell: "—" where a server has no figure (Orthanc's viewer)."""
    if value is None:
        return "—"
    return f"{value:.2f}" if " s," in name else f"{value:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000, help="tiny instances in the index (default 100000)")
    parser.add_argument("--quick", action="store_true", help="10000 tiny instances, 5 repeats")
    parser.add_argument("--repeat", type=int, default=15, help="runs of each query (default 15)")
    parser.add_argument("--no-viewer", action="store_true", help="skip the viewer's time to first image")
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.repeat = 10_000, 5
    if not args.no_viewer and not viewer.viewer_present():
        raise SystemExit("the OHIF viewer is not unpacked: run bin/fetch-viewer, or pass --no-viewer")
    tiny = load_or_build_corpus(tiny_plan(args.instances), f"pacs-bench-query-corpus-{args.instances}")
    big = load_or_build_corpus(retrieve_plan(), "pacs-bench-query-retrieve-600")
    big_files = sorted(p for part in big.parts for p in part.iterdir())
    cases = [c for c in query_cases([tiny.plan, big.plan]) if not c.floor]
    study = big.plan.studies[0]
    series = max(study.series, key=lambda s: s.count)

    orthanc, ours = OrthancWeb(), PacsWeb(tiny, SEED)
    results = {"STOW-RS inst/s": {}, "WADO-RS series MB/s": {}, "metadata ms, first": {}, "metadata ms, again": {}}
    results.update({f"QIDO {c.label} ms": {} for c in cases})
    opened = None  # the viewer's openings (bench/viewer.py)
    with serving(orthanc, args.keep) as orun, serving(ours, args.keep) as prun:
        took, codes = send(tiny.parts, 4, orthanc.ae_title, orun.port, orun.workdir)
        if any(codes):
            raise TargetError(f"storescu to Orthanc exited {codes}")
        servers = [
            ("Orthanc", orthanc.session(orun), orthanc.root(orun)),
            ("ours", ours.session(prun), ours.root(prun)),
        ]
        for label, session, root in servers:
            seconds = stow(session, root, big_files)
            results["STOW-RS inst/s"][label] = len(big_files) / seconds
        timings = {(c.label, label): [] for c in cases for label, _, _ in servers}
        for _ in range(args.repeat):
            for case in cases:
                for label, session, root in servers:
                    timings[(case.label, label)].append(qido(session, root, case, label) * 1000)
        wado = {label: [] for label, _, _ in servers}
        meta = {label: [] for label, _, _ in servers}
        for _ in range(max(3, args.repeat // 3)):
            for label, session, root in servers:
                seconds, size = wado_series(session, root, study.uid, series.uid)
                wado[label].append(size / seconds / 2**20)
                meta[label].append(metadata(session, root, study.uid, series.uid, series.count) * 1000)
        if not args.no_viewer:
            base = f"http://127.0.0.1:{prun.http_port}"
            opened = viewer.measure(base, study.uid, USERNAME, PASSWORD, repeat=VIEWER_REPEAT)
    for (case_label, label), values in timings.items():
        results[f"QIDO {case_label} ms"][label] = statistics.median(values)
        results[f"QIDO {case_label} ms"][f"{label} p95"] = percentile(values, 0.95)
    for label in wado:
        results["WADO-RS series MB/s"][label] = statistics.median(wado[label])
        results["metadata ms, first"][label] = meta[label][0]  # ours: made from the files, then cached
        results["metadata ms, again"][label] = statistics.median(meta[label][1:])
    if opened:
        for temperature, marks in opened["median s"].items():
            results[f"viewer first image s, {temperature}"] = {"ours": marks["first image"]}
            results[f"viewer first metadata s, {temperature}"] = {"ours": marks["first metadata answer"]}

    rows = []
    for name, values in results.items():
        o, p = values.get("Orthanc"), values.get("ours")
        better_high = "inst/s" in name or "MB/s" in name
        ratio = (p / o if better_high else o / p) if o and p else None
        rows.append([name, cell(o, name), cell(p, name), f"{ratio:.2f}" if ratio else "—"])
    print(f"\n{args.instances} tiny instances in the index; 600 × 512² retrieve study; {args.repeat} runs per query\n")
    print_aligned(["measure", "Orthanc", "ours", "ours vs Orthanc (>1: ours better)"], rows)
    if opened:
        print("\n" + "\n".join(viewer.summary(opened)))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"dicomweb-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    report = {"results": results, "instances": args.instances, "changes": git_changes()}
    if opened:
        report["viewer"] = opened
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
