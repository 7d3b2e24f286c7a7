"""`manage.py doctor`: is this server healthy?  The disk (free space and the
disk guard's minimum), the database (engine, reachable, migrations applied)
and the listeners (`checkports`' port states).  Exits with status 1 when
something is wrong, so that a script or a monitor can run it.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

from dicomnodes.lifecycle import diskguard
from pacs_site.management.commands.checkports import listener_ports, port_status

# Port states (checkports.port_status) that are wrong for a running server.
LISTENER_PROBLEMS = {
    "free": "nothing listens: start the server (runpacs), or set the port to 0",
    "other": "another program holds the port",
    "unavailable": "the port cannot be bound",
}


class Command(BaseCommand):
    help = "Check the disk, the database and the listeners; exit status 1 when something is wrong."

    def handle(self, *args, **options):
        problems = []
        database_ok = self._database(problems)
        self._disk(problems, database_ok)
        if database_ok:
            self._listeners(problems)
        self.stdout.write("")
        if problems:
            for problem in problems:
                self.stdout.write(self.style.ERROR(f"PROBLEM: {problem}"))
            raise CommandError(f"{len(problems)} problem(s) found")
        self.stdout.write(self.style.SUCCESS("All checks passed."))

    def _line(self, ok, text):
        self.stdout.write(f"  {'OK  ' if ok else 'FAIL'}  {text}")

    def _database(self, problems) -> bool:
        """Reachable and migrated; True when it can be asked for the settings."""
        self.stdout.write("Database")
        db = settings.DATABASES["default"]
        self.stdout.write(f"  engine {connection.vendor} ({db['ENGINE']}), name {db['NAME']}")
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError as exc:
            self._line(False, f"not reachable: {exc}")
            problems.append(f"database not reachable: {exc}")
            return False
        self._line(True, "reachable")
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            names = ", ".join(f"{m.app_label}.{m.name}" for m, _backwards in plan[:5])
            self._line(False, f"{len(plan)} migration(s) not applied: {names}{'…' if len(plan) > 5 else ''}")
            problems.append(f"{len(plan)} migration(s) not applied: run manage.py migrate")
            return False
        self._line(True, "every migration applied")
        return True

    def _disk(self, problems, database_ok):
        self.stdout.write("Disk")
        if database_ok:
            limits = diskguard.load_limits()
        else:
            self.stdout.write("  (archive settings not readable: the default minimum is used)")
            limits = diskguard.Limits()
        try:
            status = diskguard.measure(limits)
        except OSError as exc:
            self._line(False, f"cannot measure the storage volume: {exc}")
            problems.append(f"storage volume not measurable: {exc}")
            return
        text = f"storage volume of {status.path}: {status.summary()}"
        if status.is_low():
            self._line(False, text + " — stores are refused (disk guard)")
            problems.append(f"storage volume under its minimum: {status.summary()}")
        elif status.is_near():
            self._line(True, text + " — WARNING: within twice the minimum")
        else:
            self._line(True, text)

    def _listeners(self, problems):
        self.stdout.write("Listeners")
        for name, port, where in listener_ports():
            state, detail = port_status(port)
            ok = state not in LISTENER_PROBLEMS
            self._line(ok, f"{name:<16} port {port:<5}  {state.upper():<11} {detail}  [{where}]")
            if not ok:
                problems.append(f"{name} on port {port}: {LISTENER_PROBLEMS[state]}")
