"""DICOM over TLS (PS3.15 B.1, the BCP 195 profiles): the server context of
runscp's TLS port, made from the DICOM server settings' certificate, key and
optional client CA certificates.

TLS 1.2 at least.  With client CA certificates, a peer must present a
certificate one of them signed (mutual authentication, as PS3.15 B.1
describes); without, any peer may connect over TLS (as a web server does).
The context is made again when a file changes (its path or mtime), so a
renewed certificate is used from the next connection on.
"""

import os
import ssl
import threading

_lock = threading.Lock()
_cached = {}  # (paths, mtimes) -> SSLContext


def _stamp(path):
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def server_context(certificate, key, client_ca="") -> ssl.SSLContext:
    """The SSLContext for accepted connections (raises OSError/ssl.SSLError
    when the files cannot be used: the admin checks them first)."""
    wanted = (certificate, key, client_ca, _stamp(certificate), _stamp(key), _stamp(client_ca))
    with _lock:
        context = _cached.get(wanted)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(certificate, key)
            if client_ca:
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
            _cached.clear()
            _cached[wanted] = context
        return context
