"""Who may do what: the known peers and the unknown-AE policy, as one snapshot.

`runscp` reloads the snapshot every few seconds; handlers only read it.
"""

import logging
import socket
import threading
import time
from dataclasses import dataclass

from dicomnodes.dimse import service_of
from dicomnodes.models import Peer
from pacs_site.listeners import peer_address

logger = logging.getLogger(__name__)

_RESOLVE_TTL = 60.0
_resolved: dict = {}
_resolved_lock = threading.Lock()


def resolve(host: str) -> frozenset:
    """Addresses a host name resolves to (cached for a minute)."""
    now = time.monotonic()
    with _resolved_lock:
        hit = _resolved.get(host)
        if hit and hit[0] > now:
            return hit[1]
    try:
        addrs = frozenset(peer_address(ai[4][0]) for ai in socket.getaddrinfo(host, None))
    except OSError as exc:
        logger.warning("cannot resolve peer host %s: %s", host, exc)
        addrs = frozenset()
    with _resolved_lock:
        _resolved[host] = (now + _RESOLVE_TTL, addrs)
    return addrs


@dataclass(frozen=True, slots=True)
class PeerRule:
    ae_title: str
    host: str
    port: int
    check_host: bool
    may_store: bool
    may_query: bool
    may_retrieve: bool
    is_move_destination: bool


@dataclass(frozen=True)
class AccessPolicy:
    unknown_may_echo_and_store: bool
    peers: tuple = ()

    @classmethod
    def load(cls, server_settings):
        rules = tuple(
            PeerRule(
                p.ae_title,
                p.host,
                p.port,
                p.check_host,
                p.may_store,
                p.may_query,
                p.may_retrieve,
                p.is_move_destination,
            )
            for p in Peer.objects.all()
        )
        return cls(unknown_may_echo_and_store=server_settings.unknown_ae_may_echo_and_store, peers=rules)

    def peers_for(self, calling_ae: str, address: str):
        """The peer rows that match this caller (AE title, and host if checked)."""
        named = [p for p in self.peers if p.ae_title == calling_ae]
        if not named:
            return named
        address = peer_address(address)
        return [p for p in named if not p.check_host or address in resolve(p.host)]

    def is_known(self, calling_ae: str, address: str) -> bool:
        return bool(self.peers_for(calling_ae, address))

    def may_associate(self, calling_ae: str, address: str, abstract_syntaxes=()) -> bool:
        """Whether the caller may use at least one of the services it proposes
        (all of them are checked again per request).  A caller that may do
        none of them is rejected as "calling AE title not recognised"."""
        if not abstract_syntaxes:
            return self.unknown_may_echo_and_store or self.is_known(calling_ae, address)
        checks = {
            "find": self.may_query,
            "move": self.may_move,
            "get": self.may_get,
            "echo": self.may_echo,
            "store": self.may_store,
        }
        wanted = {service_of(uid) for uid in abstract_syntaxes}
        return any(checks[service](calling_ae, address) for service in wanted)

    def may_echo(self, calling_ae: str, address: str) -> bool:
        return self.unknown_may_echo_and_store or self.is_known(calling_ae, address)

    def may_store(self, calling_ae: str, address: str) -> bool:
        peers = self.peers_for(calling_ae, address)
        if peers:
            return any(p.may_store for p in peers)
        return self.unknown_may_echo_and_store

    def may_query(self, calling_ae: str, address: str) -> bool:
        return any(p.may_query for p in self.peers_for(calling_ae, address))

    def may_get(self, calling_ae: str, address: str) -> bool:
        return any(p.may_retrieve for p in self.peers_for(calling_ae, address))

    def may_move(self, calling_ae: str, address: str) -> bool:
        """A known peer that may query or retrieve may ask for a C-MOVE (to
        a declared destination only: see move_destination)."""
        return any(p.may_query or p.may_retrieve for p in self.peers_for(calling_ae, address))

    def move_destination(self, ae_title: str, caller_address: str = ""):
        """The peer to send a C-MOVE's images to, or None (then A801).

        Several peers may share an AE title on different hosts: the one on
        the caller's own host wins, else the first by name."""
        candidates = [p for p in self.peers if p.ae_title == ae_title and p.is_move_destination]
        caller = peer_address(caller_address) if caller_address else ""
        for p in candidates:
            if caller and caller in resolve(p.host):
                return p
        return candidates[0] if candidates else None
