"""`manage.py dicom echo|find PEER …`: talk to a known DICOM node from the shell.

PEER is a peer's name or AE title (DICOM node → Peers).  Exits non-zero on
failure, so scripts can rely on it.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from dicomnodes.echo import echo
from dicomnodes.models import Peer
from dicomnodes.scu import ScuError, find_studies


def peer_named(text):
    peers = list(Peer.objects.filter(Q(name=text) | Q(ae_title=text)))
    if not peers:
        raise CommandError(f"no peer named {text!r} (see DICOM node → Peers)")
    if len(peers) > 1:
        raise CommandError(f"{text!r} names {len(peers)} peers: use the peer's name")
    return peers[0]


class Command(BaseCommand):
    help = "Echo or query a known DICOM node."

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

    def handle(self, *args, action, peer, **options):
        target = peer_named(peer)
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
