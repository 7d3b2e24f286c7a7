"""`manage.py runpacs`: run every process of the server and keep them running.

A thin supervisor (README command 1): starts the web server (daphne) and the
listeners as child processes, restarts one that crashes (with a back-off),
and stops them all on Ctrl-C / SIGTERM.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from pacs_site.env import envint


def process_table():
    """name -> argv.  Each listener reads its own port from the admin settings;
    the worker runs the queued tasks."""
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    web_port = envint("PACS_WEB_PORT", 3000, minimum=0, maximum=65535)
    table = {
        "scp": manage + ["runscp"],
        "mllp": manage + ["runmllp"],
        # django-q2: delivers the outgoing HL7 status updates and their retries.
        "worker": manage + ["qcluster"],
    }
    if web_port:
        table["web"] = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "::",
            "-p",
            str(web_port),
            "--proxy-headers",
            "pacs_site.asgi:application",
        ]
    return table


class Command(BaseCommand):
    help = "Run the web server, the DICOM and HL7 listeners and the task worker together; Ctrl-C stops them all."

    def add_arguments(self, parser):
        parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(process_table()))

    def handle(self, *args, only=None, **options):
        table = process_table()
        if only:
            wanted = {n.strip() for n in only.split(",")}
            table = {n: argv for n, argv in table.items() if n in wanted}
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        children = {name: self._start(name, argv) for name, argv in table.items()}
        backoff = {name: 1.0 for name in table}
        while not self.stopping:
            time.sleep(0.5)
            for name, proc in list(children.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                self.stderr.write(f"[runpacs] {name} exited with {code}; restarting in {backoff[name]:.0f} s")
                time.sleep(backoff[name])
                backoff[name] = min(backoff[name] * 2, 60)
                children[name] = self._start(name, table[name])
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in children.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"[runpacs] {name} did not stop; killing it")
                proc.kill()
        return "all processes stopped"

    def _start(self, name, argv):
        self.stdout.write(f"[runpacs] starting {name}: {' '.join(argv[1:])}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env)

    def _on_signal(self, signum, frame):
        self.stopping = True
