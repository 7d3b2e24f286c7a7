"""The WADO-RS metadata cache: made once per stored file, made again when
the file changes, the request's root put into its BulkDataURIs."""

import json
import os

import pydicom

from portal.dicomweb import metacache
from portal.dicomweb.metacache import cache_folder, instance_json_bytes
from tests.support.dicomdata import make_ct
from tests.support.processes import wait_until


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


def test_the_web_process_writes_entries_in_a_thread_after_the_answer(data_dir, monkeypatch):
    """As under daphne (PACS_METADATA_CACHE_THREAD): the answer does not
    wait for the entry, which is there soon after, and served next time."""
    monkeypatch.setattr(metacache, "_writer", metacache.Writer())
    path = make_ct(data_dir / "cd56ef.dcm", patient_name="In^Thread")
    first = json.loads(instance_json_bytes(path, "http://a/bulk"))
    assert first["00100010"]["Value"] == [{"Alphabetic": "In^Thread"}]
    entry = _cached(path)
    wait_until(entry.exists, 10, message="the cache entry written by the thread")
    stamp, body = entry.read_bytes().split(b"\n", 1)
    entry.write_bytes(stamp + b"\n" + body.replace(b"In^Thread", b"From^Cache"))
    again = json.loads(instance_json_bytes(path, "http://a/bulk"))
    assert again["00100010"]["Value"] == [{"Alphabetic": "From^Cache"}]
