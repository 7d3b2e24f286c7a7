"""`manage.py runmllp`: the HL7 (MLLP) worklist server, kept in line with the
worklist server settings edited in the admin."""

import asyncio
import os
import signal

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from worklist.hl7in import process_message
from worklist.mllp import MllpServer


class Command(BaseCommand):
    help = "Run the HL7 (MLLP) worklist server (port from the worklist server settings)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, help="listen on this port for this run (0 = disabled)")
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between settings checks (default 2)")

    def handle(self, *args, port=None, poll=2.0, **options):
        if port is not None and not 0 <= port <= 65535:
            raise CommandError(f"--port {port}: a port is 0 to 65535 (0 = disabled)")
        if poll <= 0:
            raise CommandError(f"--poll {poll}: must be more than 0 seconds")
        self.shutdown = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        connections.close_all()
        server = MllpServer(process_message, port=port)
        asyncio.run(server.serve(lambda: self.shutdown, poll=poll))
        return f"runmllp (pid {os.getpid()}) stopped: {server.summary()}"

    def _on_signal(self, signum, frame):
        self.shutdown = True
