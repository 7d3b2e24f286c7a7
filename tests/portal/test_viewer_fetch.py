"""bin/fetch-viewer's pieces without the network (portal/viewer/fetch.py):
the integrity check, what is unpacked and how its paths are rebased."""

import gzip
import io
import tarfile

from portal.viewer import fetch


def tarball(path, files):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_the_integrity_is_npms_sha512_string(tmp_path):
    path = tmp_path / "x.tgz"
    path.write_bytes(b"abc")

    # printf abc | openssl dgst -sha512 -binary | base64
    assert fetch.sri_sha512(path) == (
        "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
    )


def test_only_dist_is_unpacked_without_the_dropped_parts_and_nothing_escapes(tmp_path):
    source = tarball(
        tmp_path / "app.tgz",
        {
            "package/README.md": b"r",
            "package/dist/index.html": b'<script src="/app-config.js"></script>',
            "package/dist/assets/logo.svg": b"<svg/>",
            "package/dist/app.bundle.0123456789abcdef.js": b"var a = 1;\n" * 200,
            "package/dist/ort/ort.all.js": b"x" * 100,
            "package/dist/dicom-microscopy-viewer/a.wasm": b"w",
            "package/dist/../../evil": b"e",
        },
    )
    into = tmp_path / "out"

    fetch.unpack(source, into)

    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert found == [
        "app.tgz",
        "out/app.bundle.0123456789abcdef.js",
        "out/app.bundle.0123456789abcdef.js.gz",  # above 1 kB: a gzip copy
        "out/assets/logo.svg",
        "out/index.html",
    ]
    packed = (into / "app.bundle.0123456789abcdef.js.gz").read_bytes()
    assert gzip.decompress(packed) == b"var a = 1;\n" * 200


def test_the_site_root_paths_move_below_the_mount():
    html = b'<link href="/app.bundle.css"><script>window.PUBLIC_URL="/"</script><a href="//cdn.example">'
    js = b'(() => {\n__webpack_require__.p = "/";\n})();'
    css = b"@font-face{src:url(/a34f.woff2)}"
    manifest = b'{"start_url": "/", "icons": [{"src": "/assets/a.png"}]}'

    assert fetch.rebase("index.html", html) == (
        b'<link href="/viewer/app.bundle.css"><script>window.PUBLIC_URL="/viewer/"</script><a href="//cdn.example">'
    )
    assert (
        fetch.rebase("8097.bundle.8ae6404ba94890a0.js", js) == b'(() => {\n__webpack_require__.p = "/viewer/";\n})();'
    )
    assert fetch.rebase("app.bundle.css", css) == b"@font-face{src:url(/viewer/a34f.woff2)}"
    assert (
        fetch.rebase("manifest.json", manifest)
        == b'{"start_url": "/viewer/", "icons": [{"src": "/viewer/assets/a.png"}]}'
    )
    assert fetch.rebase("assets/logo.svg", b'<svg href="/x"/>') == b'<svg href="/x"/>'
