"""Fetch the pinned OHIF viewer once: `bin/fetch-viewer` (README commands 1
and 2 call it) runs `python -m portal.viewer.fetch`.

1. `vendor/ohif/<version>/` with its `.integrity` marker equal to the pin:
   nothing to do (no network).
2. `npm pack @ohif/app@<version>` into `vendor/ohif/cache/` (npm's own cache
   answers a second fetch without the network), and the tarball's SHA-512
   checked against `pin.INTEGRITY`; a mismatch deletes it and stops.
3. Only `package/dist/` is unpacked, without the parts a DICOMweb image
   viewer never loads (`DROPPED`), into a temporary folder.
4. The build's absolute paths are moved under `MOUNT` (`rebase`): OHIF is
   built for the site root, and we serve it at /viewer/ beside /dicomweb/.
5. Text and wasm files get a gzip copy beside them (`<name>.gz`, served to
   browsers that accept gzip: a CT study's first load asks for 26.5 MB of
   them, DEFLATE makes that about a quarter).
6. The folder is renamed into place (a half-unpacked viewer is never
   served), the marker written, the tarball deleted.

Pure stdlib: it runs before Django is set up.
"""

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from portal.viewer import pin

BASE_DIR = Path(__file__).resolve().parents[2]
VENDOR_DIR = BASE_DIR / "vendor" / "ohif"
MOUNT = "/viewer/"
PACKAGE = "@ohif/app"
DIST = "package/dist/"
# Measured on 3.13.2 (204 MB unpacked dist/): `ort/` is onnxruntime-web for
# the optional AI segmentation tools (136 MB), `dicom-microscopy-viewer/` the
# whole-slide microscopy mode's decoders (20 MB).  Opening CT, MR and CR
# studies requests neither (tests/viewer/test_viewer_browser.py fails on any
# 404 under /viewer/); those two tools answer 404 instead.
DROPPED = ("ort/", "dicom-microscopy-viewer/")
COMPRESSED = (".js", ".css", ".html", ".json", ".svg", ".wasm", ".map", ".txt")
# What this module makes of a release: a change here unpacks it again.
LAYOUT = 2

# What the build writes with the site root baked in: the webpack public path
# in every entry and worker bundle, index.html's links and PUBLIC_URL, the
# stylesheet's font URLs and the web manifest's icons.
_WEBPACK_PUBLIC_PATH = re.compile(rb'__webpack_require__\.p = "/";')
_HTML_ROOT_REFS = re.compile(rb'((?:src|href)=")/(?!/)')
_HTML_PUBLIC_URL = re.compile(rb'window\.PUBLIC_URL="/"')
_CSS_ROOT_URLS = re.compile(rb"url\(/(?!/)")
_MANIFEST_ROOT_REFS = re.compile(rb'("(?:src|start_url)": ")/(?!/)')


class FetchError(Exception):
    pass


def viewer_dir(version: str = pin.VERSION) -> Path:
    return VENDOR_DIR / version


def is_present(version: str = pin.VERSION, integrity: str = pin.INTEGRITY) -> bool:
    marker = viewer_dir(version) / ".integrity"
    return marker.is_file() and marker.read_text().strip() == _marker(integrity)


def _marker(integrity: str) -> str:
    return f"{integrity} layout {LAYOUT}"


def sri_sha512(path: Path) -> str:
    """The file's Subresource-Integrity string, as npm's `integrity`."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def npm_pack(version: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is missing: install Node.js (Debian: apt-get install npm) to fetch the viewer")
    done = subprocess.run(
        [npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(into)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise FetchError(f"npm pack {PACKAGE}@{version} failed: {done.stderr.strip()[-500:]}")
    return into / json.loads(done.stdout)[0]["filename"]


def rebase(name: str, data: bytes, mount: str = MOUNT) -> bytes:
    """`data` (the file at `name` in dist/) with its site-root paths under `mount`."""
    prefix = mount.encode()
    if name.endswith(".js"):
        return _WEBPACK_PUBLIC_PATH.sub(b'__webpack_require__.p = "' + prefix + b'";', data)
    if name == "index.html":
        data = _HTML_PUBLIC_URL.sub(b'window.PUBLIC_URL="' + prefix + b'"', data)
        return _HTML_ROOT_REFS.sub(rb"\1" + prefix, data)
    if name.endswith(".css"):
        return _CSS_ROOT_URLS.sub(b"url(" + prefix, data)
    if name == "manifest.json":
        return _MANIFEST_ROOT_REFS.sub(rb"\1" + prefix, data)
    return data


def _dist_name(member: tarfile.TarInfo) -> str | None:
    """The member's path inside dist/, or None for anything to leave out
    (outside dist/, dropped, not a plain file, or escaping the folder)."""
    if not member.name.startswith(DIST) or not member.isfile():
        return None
    name = member.name[len(DIST) :]
    parts = name.split("/")
    if not name or name.startswith(DROPPED) or any(p in ("", ".", "..") for p in parts):
        return None
    return name


def unpack(tarball: Path, into: Path, *, mount: str = MOUNT) -> int:
    """Write dist/ (less DROPPED, rebased) under `into`; returns the bytes written."""
    written = 0
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            name = _dist_name(member)
            if name is None:
                continue
            data = rebase(name, archive.extractfile(member).read(), mount)
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written += len(data)
            if name.endswith(COMPRESSED) and len(data) >= 1024:
                target.with_name(target.name + ".gz").write_bytes(gzip.compress(data, 6, mtime=0))
    return written


def fetch(version: str = pin.VERSION, integrity: str = pin.INTEGRITY) -> str:
    """Make `viewer_dir(version)` hold the pinned viewer; returns a one-line summary."""
    final = viewer_dir(version)
    if is_present(version, integrity):
        return f"OHIF viewer {version} already in {final}"
    tarball = npm_pack(version, VENDOR_DIR / "cache")
    found = sri_sha512(tarball)
    if found != integrity:
        tarball.unlink()
        raise FetchError(f"{tarball.name}: integrity {found} is not the pinned {integrity}")
    temp = VENDOR_DIR / f".{version}.partial"
    shutil.rmtree(temp, ignore_errors=True)
    size = unpack(tarball, temp)
    if not (temp / "index.html").is_file():
        raise FetchError(f"{tarball.name} has no {DIST}index.html")
    (temp / ".integrity").write_text(_marker(integrity) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temp, final)
    tarball.unlink()
    return f"OHIF viewer {version} fetched into {final} ({size / 1e6:.0f} MB; left out: {', '.join(DROPPED)})"


def main() -> int:
    try:
        print(fetch())
    except FetchError as exc:
        print(f"fetch-viewer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
