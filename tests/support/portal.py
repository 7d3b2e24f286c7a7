"""Helpers for the portal tests: studies stored as the SCP stores them, a
running web process (`manage.py runpacs --only web`), self-signed certificates.

Personas: a patient with a token, a stranger guessing tokens.
"""

import datetime as dt
import ipaddress
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dicomnodes.models import Study
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct_series
from tests.support.processes import BASE_DIR, RunningProcess, server_env, wait_until


def store_study(tmp_path, *, series=2, per_series=3, **ct_args) -> Study:
    """A CT study written to storage (where runscp puts files) and indexed."""
    from pydicom.uid import generate_uid

    study_uid = ct_args.pop("study_uid", None) or generate_uid()
    paths = []
    for number in range(1, series + 1):
        folder = tmp_path / f"made-{study_uid[-12:]}-{number}"
        paths += make_ct_series(folder, per_series, study_uid=study_uid, series_number=number, **ct_args)
    return index_files(paths)


def index_files(paths) -> Study:
    """Copy DICOM files of one study into storage and index them; the study."""
    return archive_files(paths)[0].series.study


def self_signed(folder: Path, *, name="localhost", days=30, not_before=None, key=None):
    """(certificate path, key path) of a fresh self-signed certificate for
    `name` and 127.0.0.1."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    not_before = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}-{cert.serial_number}.crt", folder / f"{name}-{cert.serial_number}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def fetch(url, *, context=None, timeout=5):
    """(status, headers, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@dataclass
class RunningWeb(RunningProcess):
    proc: subprocess.Popen
    log_path: Path
    stopped: bool = field(default=False)


def start_runpacs_web(data_dir, log_path, *, poll=0.5) -> RunningWeb:
    """`manage.py runpacs --only web`: the web process as README command 1
    runs it, following the HTTP settings (not PACS_WEB_PORT)."""
    env = server_env(data_dir)
    env.pop("PACS_WEB_PORT", None)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set for Playwright in the test process only
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "runpacs", "--only", "web", "--poll", str(poll)],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return RunningWeb(proc, log_path)


def wait_for_web(url, web, *, context=None, timeout=30):
    def answers():
        assert web.proc.poll() is None, f"runpacs exited:\n{web.log()}"
        try:
            fetch(url, context=context, timeout=2)
            return True
        except OSError:
            return False

    wait_until(answers, timeout, 0.2, f"the web server at {url}")
