"""Robot job and status files (publishing/robots.py): PTBurn .JRQ/.PTM and
its status file, TD Bridge .JDF/.JCF and TDBStatus.txt."""

import os

from publishing import robots
from publishing.models import JobState
from tests.support.publishing import job_file_lines


def a_spec(**values):
    fields = dict(
        job_id="PACS00007-ABC123-1",
        data_folder=r"\\PACS\publishing\PACS00007-ABC123-1",
        media="cd",
        volume="PACS00007_1",
        copies=2,
        robot_name="Publisher 0",
        label=r"C:\labels\pacs.tdd",
        merge_values=[("patient_name", "Doe Jane"), ("disc", "Disc 1 of 1")],
    )
    fields.update(values)
    return robots.JobSpec(**fields)


def test_a_td_bridge_job_is_a_jdf_of_upper_case_keys_without_spaces(tmp_path):
    spec = a_spec(merge_file=r"\\PACS\publishing\PACS00007-ABC123-1-label.txt")
    path = robots.write_job("epson", tmp_path, spec)
    assert path.name == "PACS00007-ABC123-1.JDF"
    assert job_file_lines(path) == [
        "JOB_ID=PACS00007-ABC123-1",
        "PUBLISHER=Publisher 0",
        "COPIES=2",
        "DISC_TYPE=CD",
        "FORMAT=JOLIET",
        r"DATA=\\PACS\publishing\PACS00007-ABC123-1",
        "VOLUME_LABEL=PACS00007_1",
        r"LABEL=C:\labels\pacs.tdd",
        r"REPLACE_FIELD=\\PACS\publishing\PACS00007-ABC123-1-label.txt",
        "",
    ]
    assert robots.merge_file_text(spec) == "PATIENT_NAME=Doe Jane\r\nDISC=Disc 1 of 1\r\n"


def test_a_ptburn_job_is_a_jrq_with_merge_fields_in_order(tmp_path):
    path = robots.write_job("primera", tmp_path, a_spec(media="dvd", robot_name=""))
    assert path.name == "PACS00007-ABC123-1.JRQ"
    assert job_file_lines(path) == [
        "JobID=PACS00007-ABC123-1",
        "ClientID=PACS",
        "Importance=4",
        "Copies=2",
        "DiscType=DVDR",
        r"Data=\\PACS\publishing\PACS00007-ABC123-1",
        "VolumeName=PACS00007_1",
        r"PrintLabel=C:\labels\pacs.tdd",
        "MergeField=Doe Jane",
        "MergeField=Disc 1 of 1",
        "",
    ]


def test_without_a_label_template_nothing_is_printed(tmp_path):
    lines = job_file_lines(robots.write_job("primera", tmp_path, a_spec(label="")))
    assert not [line for line in lines if line.startswith(("PrintLabel", "MergeField"))]


def test_a_value_cannot_start_a_new_line_in_the_job_file(tmp_path):
    path = robots.write_job("epson", tmp_path, a_spec(robot_name="Robot\r\nDATA=C:\\Windows"))
    assert "DATA=C:\\Windows" not in job_file_lines(path)
    assert "PUBLISHER=Robot DATA=C:\\Windows" in job_file_lines(path)


def test_names_outside_the_code_page_are_replaced_not_fatal(tmp_path):
    spec = a_spec(merge_values=[("patient_name", "Γιώργος Παπαδόπουλος")])
    lines = job_file_lines(robots.write_job("primera", tmp_path, spec))
    assert "MergeField=" + "?" * 7 + " " + "?" * 12 in lines
    (tmp_path / "greek").mkdir()
    greek = robots.write_job("primera", tmp_path / "greek", spec, encoding="cp1253")  # a Greek Windows PC
    assert "MergeField=Γιώργος Παπαδόπουλος" in greek.read_bytes().decode("cp1253").split("\r\n")


def test_job_files_appear_whole_under_their_final_name(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((src, dst, open(src, "rb").read()))
        real_replace(src, dst)

    monkeypatch.setattr(robots.os, "replace", spy)
    robots.write_job("epson", tmp_path, a_spec())
    robots.write_cancel("primera", tmp_path, "PACS00007-ABC123-1")
    (src, dst, data), (src2, dst2, _) = renames
    assert src.parent == dst.parent == tmp_path
    assert src.suffix == ".TMP" and dst.suffix == ".JDF"  # TD Bridge only picks up .JDF
    assert data == dst.read_bytes() and data.endswith(b"\r\n")
    assert src2.suffix == ".TMP" and dst2.suffix == ".PTM"
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".JDF", ".PTM"]


def test_cancel_files_follow_each_vendor(tmp_path):
    jcf = robots.write_cancel("epson", tmp_path, "PACS00007-ABC123-1")
    assert jcf.name == "PACS00007-ABC123-1.JCF"
    assert jcf.read_bytes() == b"[CANCEL]\r\nJOB_ID=PACS00007-ABC123-1\r\n"
    ptm = robots.write_cancel("primera", tmp_path, "PACS00007-ABC123-1")
    assert ptm.name == "PACS00007-ABC123-1.PTM"  # the same base name as the .JRQ
    assert ptm.read_bytes() == b"Message=ABORT\r\nClientID=PACS\r\n"


TDB_STATUS = """[ACTIVE_JOB]
JOB1=B
[COMPLETE_JOB]
JOB1=A
JOB2=C
[A]
PUBLISHER=Publisher 0
STATUS=4
PUBLICATION_NUMBER=1
COMPLETION_NUMBER=1
ERRORDISC_NUMBER=0
ERROR=
[B]
STATUS=1
ERROR=
[C]
STATUS=5
COMPLETION_NUMBER=0
ERRORDISC_NUMBER=1
ERROR=0301
[PUBLISHER1]
NAME=Publisher 0
INK_C=76
"""


def test_td_bridge_status_codes_map_to_job_states():
    done = robots.status_from_file("epson", TDB_STATUS, "A")
    assert (done.state, done.good, done.bad) == (JobState.DONE, 1, 0)
    assert robots.status_from_file("epson", TDB_STATUS, "B").state == JobState.SUBMITTED
    failed = robots.status_from_file("epson", TDB_STATUS, "C")
    assert (failed.state, failed.bad) == (JobState.FAILED, 1)
    assert "completed abnormally" in failed.text and "0301" in failed.text
    assert robots.status_from_file("epson", TDB_STATUS, "UNKNOWN").state is None


PT_STATUS = """[JobList]
Job0=J2
[CompletedJobs]
Job0=J1
[System]
SystemStatus=OK
[J1]
JobID=J1
GoodDiscs=2
BadDiscs=0
CurrentStatus=The job is complete
JobState=2
[J2]
JobID=J2
GoodDiscs=0
BadDiscs=0
CurrentStatus=Recording disc 1
JobState=1
"""


def test_ptburn_status_sections_map_to_job_states():
    done = robots.status_from_file("primera", PT_STATUS, "J1")
    assert (done.state, done.good, done.text) == (JobState.DONE, 2, "The job is complete")
    burning = robots.status_from_file("primera", PT_STATUS, "J2")
    assert (burning.state, burning.text) == (JobState.BURNING, "Recording disc 1")


def test_a_renamed_job_file_is_final_even_before_the_status_file_says_so(tmp_path):
    (tmp_path / "Status").mkdir()
    (tmp_path / "Status" / "ptstatus.TXT").write_text(PT_STATUS.replace("JobState=1", "JobState=0"))
    (tmp_path / "J2.ERR").write_text("")
    status = robots.read_status("primera", "J2", job_folder=tmp_path)
    assert status.state == JobState.FAILED


def test_the_status_file_is_found_in_a_configured_folder_by_robot_name(tmp_path):
    (tmp_path / "Disc Publisher XRP.txt").write_text(PT_STATUS)
    found = robots.find_status_file("primera", tmp_path / "hot", str(tmp_path), "Disc Publisher XRP")
    assert found == tmp_path / "Disc Publisher XRP.txt"
    assert (
        robots.read_status(
            "primera", "J1", job_folder=tmp_path / "hot", status_location=str(tmp_path), robot_name="Disc Publisher XRP"
        ).state
        == JobState.DONE
    )


def test_robot_paths_map_the_staging_folder_to_the_robots_share(tmp_path):
    local = tmp_path / "staging" / "JOB-1"
    assert robots.robot_path(local, tmp_path / "staging", r"\\PACS\publishing") == r"\\PACS\publishing\JOB-1"
    assert robots.robot_path(local, tmp_path / "staging", "D:\\burn") == r"D:\burn\JOB-1"
    assert robots.robot_path(local, tmp_path / "staging", "") == str(local)
