"""`manage.py checkports`: the troubleshooting checklist for the listeners.

For each listener: is its port 0 (disabled), free, held by this server, or
held by another program (PID and name)?  Then every address of the machine.
"""

import os

from django.core.management.base import BaseCommand

from dicomnodes.models import DicomServerSettings
from pacs_site.env import envint
from pacs_site.ports import listeners_on, machine_addresses, port_is_free
from portal.models import HttpSettings
from worklist.models import WorklistSettings


def listener_ports():
    """(listener, port, where the port is set) for every listener we have."""
    http = HttpSettings.load()
    web_where = "environment: PACS_WEB_PORT" if os.environ.get("PACS_WEB_PORT") else "admin: HTTP server settings"
    rows = [
        ("DICOM (runscp)", DicomServerSettings.load().port, "admin: DICOM server settings"),
        ("HL7 (runmllp)", WorklistSettings.load().hl7_port, "admin: worklist server settings"),
        (
            "web (daphne)" + (" HTTPS" if http.tls_enabled else ""),
            envint("PACS_WEB_PORT", http.web_port, minimum=0, maximum=65535),
            web_where,
        ),
    ]
    return rows


def port_status(port):
    """(state, detail) — state is one of disabled, free, ours, other, unavailable."""
    if port == 0:
        return "disabled", "port 0: the listener is switched off"
    holders = listeners_on(port)
    if holders:
        ours = [h for h in holders if h.is_ours]
        others = [h for h in holders if not h.is_ours]
        if others:
            detail = ", ".join(f"PID {h.pid} {h.name} ({h.cmdline[:80]})" for h in others)
            return "other", f"held by another program: {detail}"
        return "ours", "held by this server: " + ", ".join(f"PID {h.pid}" for h in ours)
    if port_is_free(port):
        return "free", "free: nothing listens; is the listener running?"
    return "unavailable", "cannot be bound (reserved, or no permission to see who holds it)"


class Command(BaseCommand):
    help = "Check the listeners' ports (free, ours, or held by another program) and list the machine's addresses."

    def handle(self, *args, **options):
        problems = 0
        self.stdout.write("Listeners")
        for name, port, where in listener_ports():
            state, detail = port_status(port)
            if state in ("other", "unavailable"):
                problems += 1
            self.stdout.write(f"  {name:<16} port {port:<5}  {state.upper():<11} {detail}  [{where}]")
        self.stdout.write("")
        self.stdout.write("Addresses of this machine (the listeners bind all of them, IPv4 and IPv6):")
        for iface, family, address in machine_addresses():
            self.stdout.write(f"  {iface:<12} {family}  {address}")
        if problems:
            self.stdout.write("")
            self.stdout.write(
                self.style.WARNING(
                    f"{problems} port(s) held by another program: stop it, or choose another port in the admin."
                )
            )
