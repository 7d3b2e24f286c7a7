"""`manage.py runpacs`: run every process of the server and keep them running.

A thin supervisor (README command 1): starts the web server (daphne) and the
listeners as child processes, restarts one that crashes (with a back-off),
and stops them all on Ctrl-C / SIGTERM.

The web process follows the HTTP settings (admin): every `--poll` seconds
the port and TLS files are read again, and a change restarts daphne with the
new ones (port 0: no web process).  The listeners follow their own settings.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from dicomnodes import aetitle
from pacs_site.listeners import SettingsFollower, StartRefused
from portal.webprocess import load_web_config, web_argv, web_problems

WEB = "web"


def process_table():
    """name -> argv of the children that always run: the two listeners (each
    follows its own port in the admin settings and idles on port 0) and the
    django-q2 worker.  The web process is not here: `_follow_web` starts it
    from the HTTP settings."""
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    return {
        "scp": manage + ["runscp"],
        "mllp": manage + ["runmllp"],
        # django-q2: transfer jobs, burn-job staging and submission, outgoing
        # HL7 status updates, and the schedules (retries, housekeeping).
        "worker": manage + ["qcluster"],
    }


class _Output:
    """The follower's log lines on runpacs's own output, like its other lines."""

    def __init__(self, command):
        self.command = command

    def info(self, form, *args):
        self.command.stdout.write("[runpacs] " + form % args)

    def error(self, form, *args):
        self.command.stderr.write("[runpacs] " + form % args)


class Command(BaseCommand):
    help = "Run the web server, the DICOM and HL7 listeners and the task worker together; Ctrl-C stops them all."

    def add_arguments(self, parser):
        names = [*process_table(), WEB]
        parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(names))
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between HTTP settings checks (default 2)")
        parser.add_argument(
            "--ae-title",
            help="our AE title for this run in every process, instead of the stored one (sets PACS_AE_TITLE)",
        )

    def handle(self, *args, only=None, poll=2.0, ae_title=None, **options):
        if ae_title is not None:
            try:
                aetitle.set_override(ae_title)  # the children inherit the environment
            except ValidationError as exc:
                raise CommandError(f"--ae-title {ae_title!r}: {' '.join(exc.messages)}") from None
        table = process_table()
        wanted = {n.strip() for n in only.split(",")} if only else {*table, WEB}
        table = {n: argv for n, argv in table.items() if n in wanted}
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        children = {name: self._start(name, argv) for name, argv in table.items()}
        backoff = {name: 1.0 for name in [*table, WEB]}
        follow_web = WEB in wanted
        web = SettingsFollower(
            start=lambda port, config: self._start_web(children, table, config),
            stop=lambda: self._stop_web(children, table),
            idle="web server disabled (port 0)",
            log=_Output(self),
        )
        web_config = None  # the HTTP settings last read; None: not read yet
        next_check = 0.0
        while not self.stopping:
            if follow_web and time.monotonic() >= next_check:
                web_config = self._follow_web(web, web_config)
                next_check = time.monotonic() + poll
            time.sleep(0.5)
            for name, proc in list(children.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                self.stderr.write(f"[runpacs] {name} exited with {code}; restarting in {backoff[name]:.0f} s")
                time.sleep(backoff[name])
                backoff[name] = min(backoff[name] * 2, 60)
                children[name] = self._start(name, table[name])
        self._stop_all(children)
        return "all processes stopped"

    def _follow_web(self, web, last):
        """Start, restart or stop the web process when its settings changed.

        1. read the HTTP settings (and the TLS files' modification times);
        2. changed since the `last` read: say so;
        3. `web` (a SettingsFollower) stops the running daphne and starts one
           with the new settings, unless the port is 0 or the TLS files are
           unusable (said once; never a silent fallback to plain http).
        """
        config = load_web_config(last)
        if last is not None and config != last:
            self.stdout.write(f"[runpacs] web settings changed: {last.describe()} -> {config.describe()}")
        web.follow(config.port, config)
        return config

    def _start_web(self, children, table, config):
        problems = web_problems(config)
        if problems:
            raise StartRefused(f"web server not started: {' '.join(problems)} (fix it in the HTTP settings)")
        table[WEB] = web_argv(config)
        children[WEB] = self._start(WEB, table[WEB])

    def _stop_web(self, children, table):
        self._stop(WEB, children.pop(WEB))
        table.pop(WEB, None)

    def _start(self, name, argv):
        shown = " ".join(argv[1:])
        self.stdout.write(f"[runpacs] starting {name}: {shown}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env)

    def _stop(self, name, proc, timeout=15):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stderr.write(f"[runpacs] {name} did not stop; killing it")
            proc.kill()
            proc.wait()

    def _stop_all(self, children):
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

    def _on_signal(self, signum, frame):
        self.stopping = True
