"""Socket options for the associations we open (pynetdicom leaves Nagle on).

With Nagle's algorithm on, every C-STORE of a C-MOVE waits ~40 ms for the
peer's delayed ACK (measured: 31 → several hundred instances/s for 512×512 CT).
"""

import socket

from pynetdicom import evt


def _set_nodelay(event):
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # closed already, or not TCP


# Pass in `evt_handlers` of AE.associate(): TCP_NODELAY as soon as we connect.
NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, _set_nodelay)]
