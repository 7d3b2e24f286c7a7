"""The WADO-RS metadata cache: made once per stored file, made again when
the file changes, the request's root put into its BulkDataURIs."""

import json
import os

import pydicom

from portal.dicomweb.metacache import cache_folder, instance_json_bytes
from tests.support.dicomdata import make_ct


def _cached(path):
    return cache_folder() / path.name[:2] / f"{path.name}.json"


def test_metadata_is_made_once_and_served_from_the_cache_after(data_dir):
    path = make_ct(data_dir / "ab12cd.dcm", patient_name="Cache^First")
    first = json.loads(instance_json_bytes(path, "http://a/bulk"))
    assert first["00100010"]["Value"] == [{"Alphabetic": "Cache^First"}]
    assert first["7FE00010"]["BulkDataURI"] == "http://a/bulk/7FE00010"
    entry = _cached(path)
    stamp, body = entry.read_bytes().split(b"\n", 1)
    # The next answer comes from the entry, not from the file.
    entry.write_bytes(stamp + b"\n" + body.replace(b"Cache^First", b"From^Cache"))
    again = json.loads(instance_json_bytes(path, "http://b/link/bulk"))
    assert again["00100010"]["Value"] == [{"Alphabetic": "From^Cache"}]
    assert again["7FE00010"]["BulkDataURI"] == "http://b/link/bulk/7FE00010", "each request's own root"


def test_a_rewritten_file_is_read_again(data_dir):
    path = make_ct(data_dir / "ef34ab.dcm", patient_name="Before^Change")
    instance_json_bytes(path, "http://a/bulk")
    ds = pydicom.dcmread(path)
    ds.PatientName = "After^Correction^Longer"
    ds.save_as(path)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    answer = json.loads(instance_json_bytes(path, "http://a/bulk"))
    assert answer["00100010"]["Value"] == [{"Alphabetic": "After^Correction^Longer"}]
