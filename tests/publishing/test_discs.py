"""Disc content (publishing/discs.py): planning discs by size, and a disc
folder in IHE PDI layout with a DICOMDIR that pydicom and dcmdump read."""

from pathlib import Path

import pydicom
import pytest

from publishing.discs import DISC_ALLOWANCE, DiscError, Item, on_disc, plan_discs, stage_disc
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.publishing import dcmdump_dicomdir, dicomdir_uids, sop_uids


def items(count, size=10_000):
    return [Item(pk=n, path=Path(f"/nowhere/{n}"), size=size) for n in range(count)]


def room_for(count, size=10_000):
    """A disc capacity that holds exactly `count` such items."""
    return DISC_ALLOWANCE + count * items(1, size)[0].cost


def test_files_take_whole_sectors():
    assert on_disc(1) == 2048
    assert on_disc(2048) == 2048
    assert on_disc(2049) == 4096


def test_automatic_mode_chooses_a_cd_when_everything_fits():
    media, discs = plan_discs(items(3), disc_type="auto", cd_capacity=room_for(3), dvd_capacity=room_for(10))
    assert media == "cd"
    assert [len(d) for d in discs] == [3]


def test_automatic_mode_chooses_a_dvd_when_over_cd_capacity():
    media, discs = plan_discs(items(4), disc_type="auto", cd_capacity=room_for(3), dvd_capacity=room_for(10))
    assert media == "dvd"
    assert [len(d) for d in discs] == [4]


def test_over_dvd_capacity_the_job_is_split_into_several_discs_in_order():
    media, discs = plan_discs(items(7), disc_type="auto", cd_capacity=room_for(1), dvd_capacity=room_for(3))
    assert media == "dvd"
    assert [[i.pk for i in d] for d in discs] == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_fixed_cd_type_splits_by_cd_capacity():
    media, discs = plan_discs(items(5), disc_type="cd", cd_capacity=room_for(2), dvd_capacity=room_for(10))
    assert media == "cd"
    assert [len(d) for d in discs] == [2, 2, 1]


def test_the_viewer_is_counted_on_every_disc():
    media, discs = plan_discs(
        items(4), disc_type="dvd", cd_capacity=room_for(1), dvd_capacity=room_for(4), extra=items(1)[0].cost
    )
    assert [len(d) for d in discs] == [3, 1]


def test_an_instance_larger_than_a_disc_is_an_error():
    with pytest.raises(DiscError, match="does not fit"):
        plan_discs(items(1, size=10**6), disc_type="auto", cd_capacity=room_for(1), dvd_capacity=room_for(2))


def test_a_disc_folder_has_a_dicomdir_listing_exactly_its_files(tmp_path):
    files = make_ct_series(tmp_path / "a", 3) + make_ct_series(tmp_path / "b", 2, patient_id="PAT002")
    (tmp_path / "staging").mkdir()
    disc = tmp_path / "staging" / "JOB-1"
    size = stage_disc(disc, files, fileset_id="PACS00001_1", readme="Patient: Jane Doe\n")
    assert dicomdir_uids(disc) == sop_uids(files)
    dump = dcmdump_dicomdir(disc)
    assert dump.count("ReferencedSOPInstanceUIDInFile") == 5
    assert "PACS00001_1" in dump  # the File-set ID
    assert (disc / "README.TXT").read_bytes().decode("utf-8-sig") == "Patient: Jane Doe\r\n"
    assert sorted(p.name for p in disc.iterdir()) == ["DICOM", "DICOMDIR", "README.TXT"]
    assert size >= sum(on_disc(Path(f).stat().st_size) for f in files)
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["JOB-1"]  # no temporary left


def test_the_files_on_the_disc_are_the_stored_files_byte_for_byte(tmp_path):
    files = make_ct_series(tmp_path / "a", 2)
    stage_disc(tmp_path / "disc", files, fileset_id="X", readme="")
    by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in files}
    for path in (tmp_path / "disc" / "DICOM").rglob("IM*"):
        assert path.read_bytes() == by_uid[str(pydicom.dcmread(path).SOPInstanceUID)]


def test_missing_type_1_values_are_invented_for_the_records_only(tmp_path):
    source = make_ct(tmp_path / "ct.dcm")
    ds = pydicom.dcmread(source)
    del ds.StudyID
    del ds.SeriesNumber
    ds.save_as(source)
    stage_disc(tmp_path / "disc", [source], fileset_id="X", readme="")
    assert dicomdir_uids(tmp_path / "disc") == sop_uids([source])
    copied = next((tmp_path / "disc" / "DICOM").rglob("IM*"))
    assert "StudyID" not in pydicom.dcmread(copied)


def test_the_viewer_folder_is_copied_to_the_disc_root_but_never_over_our_files(tmp_path):
    viewer = tmp_path / "viewer"
    (viewer / "bin").mkdir(parents=True)
    (viewer / "bin" / "viewer.exe").write_bytes(b"MZ")
    (viewer / "AUTORUN.INF").write_text("[autorun]\n")
    (viewer / "DICOMDIR").write_text("not ours")
    files = make_ct_series(tmp_path / "a", 1)
    stage_disc(tmp_path / "disc", files, fileset_id="X", readme="", viewer=viewer)
    assert (tmp_path / "disc" / "bin" / "viewer.exe").read_bytes() == b"MZ"
    assert (tmp_path / "disc" / "AUTORUN.INF").exists()
    assert dicomdir_uids(tmp_path / "disc") == sop_uids(files)


def test_an_unreadable_file_fails_the_disc_and_leaves_nothing_behind(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    (tmp_path / "staging").mkdir()
    with pytest.raises(DiscError, match="cannot go into the DICOMDIR"):
        stage_disc(tmp_path / "staging" / "JOB", [bad], fileset_id="X", readme="")
    assert list((tmp_path / "staging").iterdir()) == []
