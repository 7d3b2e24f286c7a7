"""`manage.py dicom echo|find|send|retrieve PEER …`: talk to a known DICOM
node from the shell.

PEER is a peer's name or AE title (DICOM node → Peers).  `send` and
`retrieve` queue a transfer job like the admin does and run it here (when
its turn comes: the maximum outgoing connections hold for it too), printing
progress as it goes.  Every action exits non-zero on failure, so scripts can
rely on it.
"""

import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

from dicomnodes.models import Peer, TransferLevel, TransferState
from dicomnodes.transfers.echo import echo
from dicomnodes.transfers.jobs import TransferError, run_next, submit_job
from dicomnodes.transfers.queue import kick
from dicomnodes.transfers.scu import ScuError, find_studies


def peer_named(text):
    peers = list(Peer.objects.filter(Q(name=text) | Q(ae_title=text)))
    if not peers:
        raise CommandError(f"no peer named {text!r} (see DICOM node → Peers)")
    if len(peers) > 1:
        raise CommandError(f"{text!r} names {len(peers)} peers: use the peer's name")
    return peers[0]


class Command(BaseCommand):
    help = "Echo or query a known DICOM node."
    # A command-line client of the transfer queue: Django's system checks
    # (they import every URLconf and admin module) cost it 0.4-0.7 s a run.
    requires_system_checks = []

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        p_echo = sub.add_parser("echo", help="C-ECHO a peer")
        p_echo.add_argument("peer")
        p_find = sub.add_parser("find", help="study-level C-FIND at a peer")
        p_find.add_argument("peer")
        p_find.add_argument("--patient-id", default="")
        p_find.add_argument("--patient-name", default="")
        p_find.add_argument("--accession", default="")
        p_find.add_argument("--date", default="", help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        p_find.add_argument("--modality", default="")
        p_send = sub.add_parser("send", help="send studies (or series) stored here to a peer with C-STORE")
        p_send.add_argument("peer")
        p_send.add_argument("uids", nargs="+", metavar="UID", help="Study Instance UIDs (Series with --series)")
        p_send.add_argument("--series", action="store_true", help="the UIDs are Series Instance UIDs")
        p_get = sub.add_parser("retrieve", help="retrieve studies (or series) from a peer (C-MOVE to us by default)")
        p_get.add_argument("peer")
        p_get.add_argument("uids", nargs="+", metavar="UID", help="Study Instance UIDs (Series with --study)")
        p_get.add_argument("--study", default="", help="the UIDs are series of this Study Instance UID")
        p_get.add_argument("--get", action="store_true", help="use C-GET instead of C-MOVE")
        p_get.add_argument("--destination", default="", help="C-MOVE destination AE title (default: ours)")

    def handle(self, *args, action, peer, **options):
        target = peer_named(peer)
        if action in ("send", "retrieve"):
            return self.transfer(action, target, options)
        if action == "echo":
            result = echo(target)
            if not result.ok:
                raise CommandError(f"{target}: {result.message}")
            return f"{target}: {result.message}"
        try:
            answers = find_studies(
                target,
                patient_id=options["patient_id"],
                patient_name=options["patient_name"],
                accession=options["accession"],
                date=options["date"],
                modality=options["modality"],
            )
        except ScuError as exc:
            raise CommandError(f"{target}: {exc}") from None
        for a in answers:
            cells = [
                str(a.get("StudyDate", "")).ljust(8),
                str(a.get("PatientName", "")).ljust(30),
                str(a.get("PatientID", "")).ljust(16),
                str(a.get("AccessionNumber", "")).ljust(16),
                str(a.get("ModalitiesInStudy", "")).ljust(8),
                str(a.get("StudyInstanceUID", "")),
            ]
            self.stdout.write("  ".join(cells))
        return f"{len(answers)} studies"

    def transfer(self, action, peer, options):
        try:
            if action == "send":
                job = submit_job(
                    kind="send",
                    peer=peer,
                    level=TransferLevel.SERIES if options["series"] else TransferLevel.STUDY,
                    uids=options["uids"],
                    kick_runner=False,
                )
            else:
                job = submit_job(
                    kind="get" if options["get"] else "move",
                    peer=peer,
                    level=TransferLevel.SERIES if options["study"] else TransferLevel.STUDY,
                    uids=options["uids"],
                    study_uid=options["study"],
                    move_destination=options["destination"],
                    kick_runner=False,
                )
        except TransferError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"job #{job.pk} queued: {job.description}")
        job = self.follow(job)
        summary = f"job #{job.pk} {job.get_state_display()}: {job.progress_text() or 'nothing to do'}"
        if job.state == TransferState.SUCCEEDED:
            return summary
        if job.state == TransferState.QUEUED:
            kick()
            raise CommandError(
                f"job #{job.pk}: attempt {job.attempts} failed: {job.last_error}; "
                f"the worker (manage.py qcluster) tries again at {timezone.localtime(job.next_attempt_at):%H:%M:%S}"
            )
        raise CommandError(f"{summary} ({job.last_error})" if job.last_error else summary)

    def follow(self, job):
        """Run the job here when its turn comes (or watch whoever runs it)
        until it ends or waits for a retry; print progress as it changes."""
        runner, shown = None, None
        while True:
            job.refresh_from_db()
            line = f"{job.get_state_display()} {job.progress_text()}".strip()
            if job.state == TransferState.QUEUED and job.attempts == 0:
                line = f"waiting: position {job.queue_position()} in the queue"
            if line != shown:
                self.stdout.write(f"job #{job.pk}: {line}")
                shown = line
            if job.is_finished():
                return job
            if job.state == TransferState.QUEUED and job.attempts and job.next_attempt_at > timezone.now():
                return job  # failed this time; a retry is scheduled
            if job.state == TransferState.QUEUED and (runner is None or not runner.is_alive()):
                runner = threading.Thread(target=run_next, kwargs={"job_id": job.pk}, daemon=True)
                runner.start()
            if runner is not None and runner.is_alive():
                runner.join(0.5)  # back as soon as the job ends here (a sleep added up to 0.5 s to every job)
            else:
                time.sleep(0.5)
