"""A throw-away Orthanc (Debian package) for tests: the remote PACS persona."""

import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import free_port, port_accepts, wait_until


@dataclass
class RunningOrthanc:
    aet: str
    dicom_port: int
    http_port: int
    proc: subprocess.Popen

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path, payload, *, method="POST"):
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def empty(self):
        """Delete everything it holds (one Orthanc serves many tests)."""
        for patient in self.get("/patients"):
            self.post(f"/patients/{patient}", None, method="DELETE")
        assert self.count_instances() == 0

    def knows(self, name, ae_title, port, host="127.0.0.1"):
        """Declare (or move) a DICOM modality: who may query it, where its C-MOVEs go."""
        self.post(f"/modalities/{name}", {"AET": ae_title, "Host": host, "Port": port}, method="PUT")

    def count_instances(self):
        return self.get("/statistics")["CountInstances"]

    def instance_files(self):
        """{SOP Instance UID: file bytes} of everything Orthanc holds."""
        files = {}
        for oid in self.get("/instances"):
            tags = self.get(f"/instances/{oid}/simplified-tags")
            files[tags["SOPInstanceUID"]] = self.get(f"/instances/{oid}/file")
        return files


# Debian's orthanc-dicomweb package (PEERS.md): the official DICOMweb plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def start_orthanc(workdir: Path, *, aet="ORTHANC", modalities=None, dicomweb_servers=None):
    """Start Orthanc with a config of our own; `modalities`: {name: [AE, host, port]}.

    With `dicomweb_servers` ({name: {"Url": …, "HttpHeaders": {…}}}, possibly
    empty) the DICOMweb plugin is loaded: Orthanc serves /dicom-web/ and is a
    client of those servers (`POST /dicom-web/servers/{name}/qido`, `/retrieve`, `/stow`)."""
    exe = shutil.which("Orthanc")
    if exe is None:
        pytest.fail("Orthanc is not installed: README's test command installs Debian's orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": modalities or {},
        "DicomAlwaysAllowStore": True,
    }
    if dicomweb_servers is not None:
        if not DICOMWEB_PLUGIN.exists():
            pytest.fail("the Orthanc DICOMweb plugin is not installed: README's test command installs orthanc-dicomweb")
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers}
    (workdir / "config.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")
    proc = subprocess.Popen(
        [exe, str(workdir / "config.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin:/usr/sbin"},
    )
    orthanc = RunningOrthanc(aet, dicom_port, http_port, proc)
    wait_until(lambda: port_accepts(http_port) and port_accepts(dicom_port), 30, message="Orthanc")
    return orthanc


def stop_orthanc(orthanc):
    orthanc.proc.terminate()
    try:
        orthanc.proc.wait(20)
    except subprocess.TimeoutExpired:
        orthanc.proc.kill()
