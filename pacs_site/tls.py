"""Checking a TLS certificate and its private key before daphne is asked to use them.

`check_certificate_pair()` returns a list of problems in words an administrator
can act on; the HTTP settings' `clean()` shows them in the admin.  Built on the
`cryptography` package (daphne's TLS stack, pyOpenSSL, uses it too).
"""

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization


class CertificateProblem(ValueError):
    """What is wrong with one of the files; `field` is "certificate" or "key"."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


def _read(path: str, what: str, field: str) -> bytes:
    if not path:
        raise CertificateProblem(field, f"TLS is on: give the path of the {what}.")
    file = Path(path)
    if not file.is_absolute():
        raise CertificateProblem(field, f"Give the {what} as an absolute path (not {path!r}).")
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise CertificateProblem(field, f"The {what} {path} does not exist.") from None
    except IsADirectoryError:
        raise CertificateProblem(field, f"{path} is a folder, not a {what}.") from None
    except PermissionError:
        raise CertificateProblem(field, f"The {what} {path} cannot be read (permission denied).") from None
    except OSError as exc:
        raise CertificateProblem(field, f"The {what} {path} cannot be read: {exc.strerror or exc}.") from None


def load_certificate(path: str) -> x509.Certificate:
    data = _read(path, "certificate file", "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        pass
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateProblem("certificate", f"{path} is not a certificate (PEM expected, .crt).") from None
    raise CertificateProblem(
        "certificate", f"{path} is a DER certificate: convert it to PEM (openssl x509 -inform der)."
    )


def load_private_key(path: str):
    data = _read(path, "key file", "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateProblem("key", f"The key {path} is protected by a password: store it without one.") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateProblem("key", f"{path} is not a private key (PEM expected, .key).") from None


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_certificate_pair(cert_path: str, key_path: str, *, now: dt.datetime | None = None) -> list:
    """Every problem found, as CertificateProblem; [] when daphne can use the pair.

    1. both files are readable (absolute paths, PEM);
    2. the certificate is valid now (not before its start, not after its end);
    3. the key is the certificate's (same public key).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    problems = []
    cert = key = None
    try:
        cert = load_certificate(cert_path)
    except CertificateProblem as exc:
        problems.append(exc)
    try:
        key = load_private_key(key_path)
    except CertificateProblem as exc:
        problems.append(exc)
    if cert is not None:
        if cert.not_valid_after_utc < now:
            problems.append(
                CertificateProblem(
                    "certificate",
                    f"The certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it.",
                )
            )
        elif cert.not_valid_before_utc > now:
            problems.append(
                CertificateProblem(
                    "certificate",
                    f"The certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.",
                )
            )
    if cert is not None and key is not None:
        if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
            problems.append(
                CertificateProblem("key", "This key does not belong to the certificate (another key pair).")
            )
    return problems


def certificate_expiry(cert_path: str) -> dt.datetime | None:
    """When the certificate ends, or None if it cannot be read."""
    try:
        return load_certificate(cert_path).not_valid_after_utc
    except CertificateProblem:
        return None
