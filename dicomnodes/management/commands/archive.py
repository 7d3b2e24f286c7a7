"""`manage.py archive delete|verify`: delete from the archive, check it.

    archive delete --study UID… | --series UID… | --patient ID [--issuer X] | --older-than DAYS
                   [--dry-run] [--reason TEXT]
    archive verify [--report-only]

`delete` lists what goes (each study, whole or in part, then the totals,
patient links, burn jobs and transfers it touches) and deletes it as the
admin does (dicomnodes/lifecycle/deletion.py): rows in one transaction,
files after the commit, one audit event.  `--dry-run` prints the same list
and deletes nothing.  `--older-than` takes the studies whose newest
instance was received more than DAYS days ago, except protected studies
and the studies of protected patients.

`verify` unlinks the files an interrupted deletion left, indexes files
without a row (as runscp's start does) and reports rows without a file
(dicomnodes/archive/verify.py).  It exits non-zero when something was wrong.
"""

import getpass

from django.core.management.base import BaseCommand, CommandError

from dicomnodes.archive.verify import verify
from dicomnodes.lifecycle import deletion
from dicomnodes.models import Patient, Series, Study


class Command(BaseCommand):
    help = "Delete studies, series or patients with their files (delete), or check files against the index (verify)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        p_del = sub.add_parser("delete", help="delete studies, series or patients with their files")
        what = p_del.add_mutually_exclusive_group(required=True)
        what.add_argument("--study", nargs="+", metavar="UID", help="Study Instance UIDs")
        what.add_argument("--series", nargs="+", metavar="UID", help="Series Instance UIDs")
        what.add_argument("--patient", metavar="ID", help="a Patient ID: all its studies")
        what.add_argument("--older-than", type=int, metavar="DAYS", help="studies last received over DAYS days ago")
        p_del.add_argument("--issuer", default=None, help="Issuer of Patient ID (with --patient)")
        p_del.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
        p_del.add_argument("--reason", default="", help="recorded in the audit event")
        p_ver = sub.add_parser("verify", help="check the stored files against the index")
        p_ver.add_argument("--report-only", action="store_true", help="index no file, only report")

    def handle(self, *args, action, **options):
        if action == "verify":
            return self.verify(repair=not options["report_only"])
        return self.delete(options)

    # --- delete ---------------------------------------------------------------------------

    def delete(self, options):
        """In batches of deletion.CHOSEN_PER_TRANSACTION studies (or series):
        each listed, then deleted in a transaction of its own; the totals
        at the end."""
        listed, done = deletion.Summary(), deletion.Deleted()
        for sel in self.selections(options):
            what = deletion.summarize(sel)
            if what.is_empty():
                continue
            self.list(sel, what)
            deletion.add_counts(listed, what)
            if not options["dry_run"]:
                actor = f"{getpass.getuser()} (manage.py archive)"
                gone = deletion.delete(sel, actor=actor, actor_kind="user", reason=options["reason"])
                deletion.add_counts(done, gone)
        if listed.is_empty():
            return "nothing to delete"
        if options["dry_run"]:
            return f"dry run: would delete {listed.describe()}"
        return f"deleted {done.describe()}"

    def selections(self, options):
        sel = self.selection(options)
        for kind in ("studies", "series"):
            pks = getattr(sel, kind)
            if len(pks) > deletion.CHOSEN_PER_TRANSACTION:
                step = deletion.CHOSEN_PER_TRANSACTION
                return [deletion.selection(**{kind: pks[i : i + step]}) for i in range(0, len(pks), step)]
        return [sel]

    def selection(self, options):
        if options["issuer"] is not None and not options["patient"]:
            raise CommandError("--issuer goes with --patient")
        if options["study"]:
            return deletion.selection(studies=_pks(Study, "study_instance_uid", options["study"], "studies"))
        if options["series"]:
            return deletion.selection(series=_pks(Series, "series_instance_uid", options["series"], "series"))
        if options["patient"]:
            patients = Patient.objects.filter(patient_id=options["patient"])
            if options["issuer"] is not None:
                patients = patients.filter(issuer_of_patient_id=options["issuer"])
            found = list(patients.values_list("pk", "issuer_of_patient_id"))
            if not found:
                raise CommandError(f"no patient with ID {options['patient']!r}")
            if len(found) > 1:
                issuers = ", ".join(repr(issuer) for _, issuer in found)
                raise CommandError(f"{len(found)} patients have this ID (issuers {issuers}): give --issuer")
            return deletion.selection(patients=[found[0][0]])
        days = options["older_than"]
        if days < 1:
            raise CommandError("--older-than takes a number of days of 1 or more")
        old = deletion.studies_older_than(days).filter(protected=False, patient_record__protected=False)
        return deletion.selection(studies=list(old.values_list("pk", flat=True)))

    def list(self, sel, what):
        touched = Study.objects.filter(study_instance_uid__in=what.study_uids).order_by("study_date", "pk")
        whole = set(deletion.scope_of(sel).studies.values_list("pk", flat=True))
        for study in touched:
            part = "" if study.pk in whole else "  (part of it)"
            self.stdout.write(
                f"{study.study_instance_uid}  {study.patient_id}  {study.study_date or '--------'}  "
                f"{study.modalities_in_study or '-'}  {study.num_instances} instances  "
                f"{study.study_description}{part}"
            )
        self.stdout.write(f"total: {what.describe()}")
        for label, count in what.impacts:
            if count:
                self.stdout.write(f"  {label}: {count}")

    # --- verify ---------------------------------------------------------------------------

    def verify(self, *, repair):
        report = verify(repair=repair)
        for relative, why in report.skipped:
            self.stderr.write(f"not an instance: {relative}: {why}")
        for uid in report.missing_uids:
            self.stderr.write(f"row without its file: {uid}")
        summary = (
            f"{report.files} files: {report.unlinked} files of deleted instances removed, "
            f"{report.orphans} without a row ({report.indexed} indexed now), {len(report.skipped)} not instances; "
            f"{report.missing} rows without their file"
        )
        if report.missing:
            summary += " (`manage.py reindex` deletes those rows)"
        if not report.is_clean():
            raise CommandError(summary)
        return summary


def _pks(model, column, uids, noun):
    found = dict(model.objects.filter(**{f"{column}__in": uids}).values_list(column, "pk"))
    unknown = [uid for uid in uids if uid not in found]
    if unknown:
        raise CommandError(f"no {noun} with these UIDs: {' '.join(unknown)}")
    return list(found.values())
