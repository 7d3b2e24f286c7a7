"""C-ECHO as a service class user: is a peer there, and does it accept us?

Used by the admin's Echo button and action (and later `manage.py dicom echo`).
Network problems never raise: they come back as an `EchoResult` whose message
says what went wrong in words an administrator can act on.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification
from pynetdicom.status import code_to_category

from dicomnodes.dimse import Status
from dicomnodes.models import DicomServerSettings
from dicomnodes.net import ProtocolError
from dicomnodes.net import commandset as cs
from dicomnodes.net.association import PeerAborted, PeerGone, TimedOut
from dicomnodes.scp import outgoing
from dicomnodes.validators import validate_ae_title

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    round_trip_ms: float | None
    message: str


def echo(peer_or_host, *, port=None, ae_title=None, calling_ae=None, timeout=None) -> EchoResult:
    """Send one C-ECHO to a peer (a `Peer` row) or to a host.

    1. Find host, port and called AE title (arguments override the peer's).
    2. Associate with our AE title as calling AE, proposing Verification only;
       every time-out (connection, ACSE, DIMSE, network) is the service
       time-out of the DICOM server settings unless `timeout` is given.
    3. Send the C-ECHO, time it (`round_trip_ms` is the C-ECHO request to its
       response, not the association), release.
    """
    host, port, called = _target(peer_or_host, port, ae_title)
    if calling_ae is None or timeout is None:
        server = DicomServerSettings.load()
        calling_ae = server.our_ae_title() if calling_ae is None else calling_ae
        timeout = server.service_timeout if timeout is None else timeout
    problem = _invalid_arguments(host, port, called, calling_ae)
    if problem:
        return EchoResult(False, None, problem)
    result = _echo(host, port, called, calling_ae, timeout)
    logger.info("echo %s@%s:%s as %s: %s", called, host, port, calling_ae, result.message)
    return result


def echo_many(peers, *, calling_ae=None, timeout=None, max_workers=8):
    """Echo several peers at once; [(peer, EchoResult)] in the order given.

    In parallel so that ten dead peers take one time-out, not ten.  The
    settings are read here, once: the worker threads do no database work.
    """
    peers = list(peers)
    if calling_ae is None or timeout is None:
        server = DicomServerSettings.load()
        calling_ae = server.our_ae_title() if calling_ae is None else calling_ae
        timeout = server.service_timeout if timeout is None else timeout
    if not peers:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(peers))) as pool:
        results = pool.map(lambda p: echo(p, calling_ae=calling_ae, timeout=timeout), peers)
        return list(zip(peers, results))


def _target(peer_or_host, port, ae_title):
    if isinstance(peer_or_host, str):
        if ae_title is None:
            raise TypeError("echo(host, ...) needs ae_title= (the peer's called AE title)")
        return peer_or_host, 104 if port is None else port, ae_title
    peer = peer_or_host
    return (
        peer.host,
        peer.port if port is None else port,
        peer.ae_title if ae_title is None else ae_title,
    )


def _invalid_arguments(host, port, called, calling):
    if not host:
        return "no host given"
    if not isinstance(port, int) or not 1 <= port <= 65535:
        return f"port {port!r} is not a TCP port (1-65535)"
    for role, title in (("called", called), ("calling", calling)):
        try:
            validate_ae_title(title)
        except ValidationError as exc:
            return f"{role} AE title {title!r}: {' '.join(exc.messages)}"
    return None


def _echo(host, port, called, calling, timeout):
    """On our runtime (`scp.outgoing.connect`), as runscp's own associations."""
    try:
        assoc = outgoing.connect(
            host, port, calling_ae=calling, called_ae=called, contexts=[build_context(Verification)], timeout=timeout
        )
    except outgoing.CannotConnect as exc:
        return EchoResult(False, None, str(exc))
    try:
        context = next(iter(assoc.contexts.values()), None)
        if context is None:
            return EchoResult(
                False, None, "the peer accepted the association but not the Verification SOP class (C-ECHO)"
            )
        request = cs.encode(
            CommandField=cs.C_ECHO_RQ, MessageID=1, AffectedSOPClassUID=Verification, CommandDataSetType=cs.NO_DATA_SET
        )
        sent = time.perf_counter()
        assoc.send_command(context.id, request)
        answer = assoc.next_message()
        round_trip_ms = (time.perf_counter() - sent) * 1000
    except TimedOut:
        return EchoResult(False, None, f"peer did not answer the C-ECHO within {timeout:g} s")
    except PeerAborted:
        return EchoResult(False, None, "the peer aborted the association instead of answering the C-ECHO")
    except (PeerGone, ProtocolError) as exc:
        return EchoResult(False, None, f"the association failed: {getattr(exc, 'reason', exc)}")
    finally:
        outgoing.finish(assoc)
    command = getattr(answer, "command", None)
    if command is None or command.CommandField != cs.C_ECHO_RSP or command.Status is None:
        return EchoResult(False, None, "the peer answered the C-ECHO with something else")
    if command.Status != Status.SUCCESS:
        category = code_to_category(command.Status).lower()
        return EchoResult(False, round_trip_ms, f"echo failed: status 0x{command.Status:04X} ({category})")
    return EchoResult(True, round_trip_ms, f"echo OK in {round_trip_ms:.1f} ms")
