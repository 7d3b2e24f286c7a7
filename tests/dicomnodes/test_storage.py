"""Files on disk (dicomnodes/storage.py): where an instance lives, the file
meta we build, and writing through a temporary."""

import errno
import hashlib
import os
import time
import warnings

import pydicom
import pytest

from dicomnodes.archive import storage
from dicomnodes.archive.storage import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    file_meta_bytes,
    instance_path,
    place,
    remove_stale_temporaries,
    write_atomically,
)
from tests.support.dicomdata import make_ct

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def dataset_bytes(path):
    """The bytes after a file's meta group: what an association delivers."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[128 + 4 + 12 + meta.FileMetaInformationGroupLength :]


def temporaries(folder):
    return sorted(folder.rglob("*.tmp"))


# --- instance_path -------------------------------------------------------------


def test_instance_path_is_the_sha256_of_the_uid_in_two_levels(data_dir):
    uid = "1.2.840.113619.2.55.3"
    digest = hashlib.sha256(uid.encode()).hexdigest()
    assert instance_path(uid) == data_dir / "storage" / digest[:2] / digest[2:4] / digest


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2/../../x", "/absolute", "..", ""])
def test_a_hostile_uid_stays_under_the_storage_root(data_dir, uid):
    root = (data_dir / "storage").resolve()
    path = instance_path(uid).resolve()
    assert path.is_relative_to(root)
    assert len(path.relative_to(root).parts) == 3
    assert path.name == hashlib.sha256(uid.encode()).hexdigest()


def test_instance_path_takes_another_root(tmp_path):
    assert instance_path("1.2.3", root=tmp_path).parent.parent.parent == tmp_path


# --- file_meta_bytes -----------------------------------------------------------


def stored_copy(tmp_path, **ae_titles):
    """A make_ct dataset behind a file meta group of ours, read back by pydicom
    with every warning turned into an error.  pydicom does not check the group
    length itself: test_the_group_length_counts_the_rest_of_the_group does."""
    src = make_ct(tmp_path / "src.dcm")
    uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    meta = file_meta_bytes(CT_IMAGE_STORAGE, uid, EXPLICIT_LE, **ae_titles)
    path = tmp_path / "stored.dcm"
    path.write_bytes(meta + dataset_bytes(src))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return meta, pydicom.dcmread(path), uid


def test_our_file_meta_is_read_back_by_pydicom(tmp_path):
    _, ds, uid = stored_copy(tmp_path, source_ae="MODALITY1", receiving_ae="PACS")
    meta = ds.file_meta
    assert meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == uid
    assert meta.TransferSyntaxUID == EXPLICIT_LE
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.FileMetaInformationVersion == b"\x00\x01"


def test_the_file_meta_records_the_calling_and_called_ae(tmp_path):
    _, ds, _ = stored_copy(tmp_path, source_ae="MODALITY1", receiving_ae="PACS_TE")
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY1"  # (0002,0016), odd length padded
    assert ds.file_meta.ReceivingApplicationEntityTitle == "PACS_TE"  # (0002,0018)


def test_the_ae_elements_are_left_out_when_unknown(tmp_path):
    _, ds, _ = stored_copy(tmp_path)
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert "ReceivingApplicationEntityTitle" not in ds.file_meta


def test_the_group_length_counts_the_rest_of_the_group(tmp_path):
    meta, ds, _ = stored_copy(tmp_path, source_ae="MODALITY1", receiving_ae="PACS")
    assert meta.startswith(b"\x00" * 128 + b"DICM")
    assert ds.file_meta.FileMetaInformationGroupLength == len(meta) - 128 - 4 - 12


def test_the_dataset_after_our_file_meta_is_intact(tmp_path):
    _, ds, uid = stored_copy(tmp_path)
    assert ds.SOPInstanceUID == uid
    assert ds.PatientName == "Doe^Jane"
    assert len(ds.PixelData) == 64 * 64 * 2


# --- write_atomically ----------------------------------------------------------


@pytest.fixture(params=["nameless", "named"])
def target(request, tmp_path, monkeypatch):
    """Where a file goes; placed as an O_TMPFILE (this machine's file
    systems have it) and, as where there is none, through a named
    temporary."""
    if request.param == "named":
        monkeypatch.setattr(storage._NAMELESS, "usable", False)
    else:
        assert storage._NAMELESS.usable
    return tmp_path / "storage" / "ab" / "cd" / "abcd"


@pytest.mark.parametrize("fsync", [False, True], ids=["no-fsync", "fsync"])
def test_a_new_file_is_written_from_its_chunks(target, fsync):
    assert write_atomically(target, (b"meta", b"", memoryview(b"-data")), overwrite=False, fsync=fsync) is True
    assert target.read_bytes() == b"meta-data"
    assert temporaries(target.parent) == []


def test_a_second_copy_is_not_written_when_keeping_the_first(target):
    write_atomically(target, (b"first",), overwrite=False, fsync=False)
    assert write_atomically(target, (b"second",), overwrite=False, fsync=False) is False
    assert target.read_bytes() == b"first"
    assert temporaries(target.parent) == []


def test_a_placed_file_is_whole_under_its_name_before_it_is_synced(target):
    placed = place(target, (b"meta", b"-data"))
    assert (placed.is_new, target.read_bytes()) == (True, b"meta-data")  # linked once complete
    assert temporaries(target.parent) == []
    placed.finish(True)
    placed.finish(True)  # once only: the second call has nothing left to do
    assert target.read_bytes() == b"meta-data"


def test_a_file_being_placed_has_no_name_until_it_is_whole(tmp_path, monkeypatch):
    """An O_TMPFILE: while its bytes are written the folder lists nothing,
    so a crash then leaves nothing behind."""
    target = tmp_path / "ab" / "cd" / "abcd"
    seen = []
    write = storage.write_chunks

    def watching(fd, chunks):
        seen.append(sorted(os.listdir(target.parent)))
        write(fd, chunks)
        seen.append(sorted(os.listdir(target.parent)))

    monkeypatch.setattr(storage, "write_chunks", watching)
    place(target, (b"meta", b"-data")).finish(False)

    assert seen == [[], []]
    assert (sorted(os.listdir(target.parent)), target.read_bytes()) == (["abcd"], b"meta-data")
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)


def test_a_forked_process_places_files_through_its_own_descriptors(tmp_path):
    """/proc is opened once; "self" is looked up at each link, so a child
    forked after the parent placed a file links its own."""
    place(tmp_path / "ab" / "cd" / "first", (b"parent",)).finish(False)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its file is there, whole
        try:
            placed = place(tmp_path / "ab" / "cd" / "second", (b"child",))
            placed.finish(False)
            os._exit(0 if placed.is_new and (tmp_path / "ab" / "cd" / "second").read_bytes() == b"child" else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "ab" / "cd" / "first").read_bytes() == b"parent"


def test_placing_a_second_copy_keeps_the_first_and_syncs_the_file_kept(target):
    place(target, (b"first",)).finish(True)
    second = place(target, (b"second",))
    assert (second.is_new, target.read_bytes(), temporaries(target.parent)) == (False, b"first", [])
    target.unlink()  # the kept file is synced, not our temporary: gone, it cannot be
    with pytest.raises(FileNotFoundError):
        second.finish(True)


def test_a_placed_file_that_cannot_be_synced_is_unlinked_and_a_kept_one_stays(target, monkeypatch):
    """A sync that fails (an I/O error; made to fail here, as a disk will not
    on demand) raises, and the file this store wrote goes: it is not on disk
    for sure, and its sender, answered a failure, sends it again."""

    def failing(folder):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage, "_fsync_dir", failing)
    new = place(target, (b"first",))
    with pytest.raises(OSError, match="Input/output"):
        new.finish(True)
    assert not target.exists() and temporaries(target.parent) == []

    place(target, (b"first",)).finish(False)
    kept = place(target, (b"second",))
    with pytest.raises(OSError, match="Input/output"):
        kept.finish(True)
    assert target.read_bytes() == b"first"  # another store's file: not ours to remove


def test_a_second_copy_replaces_the_first_when_overwriting(target):
    write_atomically(target, (b"first",), overwrite=False, fsync=False)
    assert write_atomically(target, (b"second",), overwrite=True, fsync=True) is True
    assert target.read_bytes() == b"second"
    assert temporaries(target.parent) == []


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder nothing can be created in.  Root writes into a read-only
    folder anyway, so for root it is a path whose 'folder' is a file."""
    if os.geteuid() == 0:
        blocker = tmp_path / "blocker"
        blocker.write_bytes(b"a file, not a folder")
        yield blocker
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_an_unwritable_folder_raises_oserror_and_leaves_no_temporary(unwritable_folder, tmp_path):
    with pytest.raises(OSError):
        write_atomically(unwritable_folder / "abcd", (b"data",), overwrite=False, fsync=False)
    assert temporaries(tmp_path) == []
    assert not (unwritable_folder / "abcd").exists()


def test_remove_stale_temporaries_removes_only_old_temporaries(tmp_path):
    folder = tmp_path / "ab" / "cd"
    folder.mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    old_tmp, new_tmp, old_file = folder / ".abcd.1.tmp", folder / ".abcd.2.tmp", folder / "abcd"
    for path in (old_tmp, new_tmp, old_file):
        path.write_bytes(b"x")
    for path in (old_tmp, old_file):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(folder.iterdir()) == sorted([new_tmp, old_file])


def test_remove_stale_temporaries_without_a_storage_folder_removes_nothing(tmp_path):
    assert remove_stale_temporaries(tmp_path / "missing") == 0
