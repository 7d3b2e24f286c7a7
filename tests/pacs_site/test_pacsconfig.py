"""Configuration as code: `manage.py pacsconfig export|import` and
`pacs_site.config_io` behind it.

Personas: `MODALITY` (a CT scanner that stores to us), `STRANGER` (an AE
title nobody configured).
"""

import io
import json
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from dicomnodes.models import DicomServerSettings, DuplicatePolicy, Peer
from pacs_site.config_io import ConfigError, export_config, import_config
from tests.support.processes import BASE_DIR, MODALITY, STRANGER, server_env, wait_until

AE_CHARS = (
    "An AE title may hold only printable ASCII characters: no spaces, "
    "no control characters, no backslash, no accented letters."
)


def export_text():
    out = io.StringIO()
    call_command("pacsconfig", "export", stdout=out)
    return out.getvalue()


def write(tmp_path, document, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def peer(name, ae_title, host, port=104, **rights):
    return {"name": name, "ae_title": ae_title, "host": host, "port": port, **rights}


@pytest.fixture
def configured(db):
    """Settings off their defaults and three peers."""
    row = DicomServerSettings.load()
    row.ae_title = "ARCHIVE"
    row.port = 4242
    row.service_timeout = 12
    row.duplicate_policy = DuplicatePolicy.OVERWRITE
    row.unknown_ae_may_echo_and_store = False
    row.save()
    Peer.objects.create(name="CT room 1", ae_title=MODALITY, host="10.0.0.1", may_query=True, check_host=True)
    Peer.objects.create(name="CT room 2", ae_title=MODALITY, host="10.0.0.2", port=11112, notes="night shift")
    Peer.objects.create(
        name="Viewer",
        ae_title="VIEWER",
        host="viewer.example",
        may_store=False,
        is_move_destination=True,
        check_host=False,
    )
    return row


def test_export_writes_every_setting_and_peer_with_the_documented_names(configured):
    document = json.loads(export_text())
    assert list(document) == [
        "retention",
        "dicom",
        "peers",
        "worklist",
        "hl7_destinations",
        "http",
        "publishing",
        "publishers",
    ]
    settings_fields = {f.name for f in DicomServerSettings._meta.concrete_fields} - {"id", "updated_at"}
    assert set(document["dicom"]) == settings_fields
    assert document["dicom"]["ae_title"] == "ARCHIVE"
    assert document["peers"][2] == {
        "name": "Viewer",
        "ae_title": "VIEWER",
        "host": "viewer.example",
        "port": 104,
        "can_store": False,
        "can_query": False,
        "can_retrieve": False,
        "move_destination": True,
        "check_host": False,
        "notes": "",
    }


def test_the_other_apps_settings_round_trip_too(configured, tmp_path):
    from portal.models import HttpSettings
    from publishing.models import Publisher
    from worklist.models import HL7Destination

    http = HttpSettings.load()
    http.institution, http.web_port = "General Hospital", 8443
    http.save()
    Publisher.objects.create(name="Robot 1", kind="epson", job_folder=str(tmp_path), is_default=True)
    HL7Destination.objects.create(name="RIS", host="ris.example", port=2576)
    saved = export_config()
    assert saved["http"]["institution"] == "General Hospital"
    assert [p["name"] for p in saved["publishers"]] == ["Robot 1"]
    HttpSettings.objects.update(institution="Elsewhere", web_port=3000)
    Publisher.objects.all().delete()
    HL7Destination.objects.update(port=9999)
    import_config(saved)
    assert (HttpSettings.load().institution, HttpSettings.load().web_port) == ("General Hospital", 8443)
    assert Publisher.objects.get().job_folder == str(tmp_path)
    assert HL7Destination.objects.get().port == 2576
    assert export_config() == saved


def test_the_hl7_sender_limits_and_any_sender_round_trip_and_a_bad_sender_list_is_refused(db):
    from worklist.models import WorklistSettings

    WorklistSettings.objects.update_or_create(
        pk=1, defaults={"allowed_senders": "10.1.0.0/16\nRIS^HOSP", "frame_timeout": 12, "max_connections": 5}
    )
    DicomServerSettings.objects.update_or_create(pk=1, defaults={"trust_any_sender": True})
    saved = export_config()
    assert saved["worklist"]["allowed_senders"] == "10.1.0.0/16\nRIS^HOSP"
    assert (saved["worklist"]["frame_timeout"], saved["worklist"]["max_connections"]) == (12, 5)
    assert saved["dicom"]["trust_any_sender"] is True

    WorklistSettings.objects.update(allowed_senders="", frame_timeout=30, max_connections=32)
    DicomServerSettings.objects.update(trust_any_sender=False)
    import_config(saved)
    assert export_config() == saved

    with pytest.raises(ConfigError) as caught:
        import_config({"worklist": {**saved["worklist"], "allowed_senders": "ris.example.org"}})
    assert caught.value.problems[0].startswith("worklist.allowed_senders: line 1:")


def test_export_to_stdout_is_one_json_document(configured):
    text = export_text()
    assert text.endswith("}\n")
    assert [p["name"] for p in json.loads(text)["peers"]] == ["CT room 1", "CT room 2", "Viewer"]


def test_export_to_a_file_writes_the_same_document(configured, tmp_path):
    path = tmp_path / "pacs.json"
    call_command("pacsconfig", "export", str(path), stdout=io.StringIO())
    assert json.loads(path.read_text()) == export_config()


def test_an_export_imported_after_changes_restores_settings_and_peers(configured, tmp_path):
    saved = tmp_path / "pacs.json"
    call_command("pacsconfig", "export", str(saved), stdout=io.StringIO())
    before = export_config()
    row = DicomServerSettings.load()
    row.ae_title, row.fsync_on_store = "CHANGED", False
    row.save()
    Peer.objects.filter(name="CT room 1").update(may_query=False, notes="edited")
    Peer.objects.filter(name="Viewer").delete()
    Peer.objects.create(name="Added later", ae_title="NEW", host="10.9.9.9")

    call_command("pacsconfig", "import", str(saved), stdout=io.StringIO())

    assert export_config() == before


def test_an_import_replaces_updates_and_deletes_peers(configured):
    kept_pk = Peer.objects.get(host="10.0.0.1").pk
    summary = import_config(
        {
            "peers": [
                peer("CT room 1, renamed", MODALITY, "10.0.0.1", can_query=False),
                peer("MR", "MR1", "10.0.0.7", can_retrieve=True),
            ]
        }
    )
    assert summary == ["peers: 1 created, 1 updated, 2 deleted, 0 unchanged"]
    rows = {p.host: p for p in Peer.objects.all()}
    assert set(rows) == {"10.0.0.1", "10.0.0.7"}
    assert rows["10.0.0.1"].pk == kept_pk, "matched by AE title, host and port: updated, not re-created"
    assert (rows["10.0.0.1"].name, rows["10.0.0.1"].may_query) == ("CT room 1, renamed", False)
    assert rows["10.0.0.1"].check_host, "keys absent from an entry keep their values"
    assert (rows["10.0.0.7"].may_retrieve, rows["10.0.0.7"].may_store) == (True, True), "new peers get defaults"


def test_absent_sections_are_left_as_they_are(configured):
    assert import_config({"dicom": {"port": 11112}}) == ["dicom: updated"]
    assert Peer.objects.count() == 3
    assert import_config({"peers": []}) == ["peers: 0 created, 0 updated, 3 deleted, 0 unchanged"]
    row = DicomServerSettings.load()
    assert (row.ae_title, row.port, row.service_timeout) == ("ARCHIVE", 11112, 12)


def test_importing_the_current_configuration_changes_nothing(configured):
    assert import_config(export_config()) == [
        "retention: unchanged",
        "dicom: unchanged",
        "peers: 0 created, 0 updated, 0 deleted, 3 unchanged",
        "worklist: unchanged",
        "hl7_destinations: 0 created, 0 updated, 0 deleted, 0 unchanged",
        "http: unchanged",
        "publishing: unchanged",
        "publishers: 0 created, 0 updated, 0 deleted, 0 unchanged",
    ]


def test_an_import_with_several_errors_names_each_by_its_path_and_changes_nothing(configured):
    before = export_config()
    with pytest.raises(ConfigError) as caught:
        import_config(
            {
                "dicom": {"ae_title": "BAD TITLE", "colour": "blue", "service_timeout": 0},
                "peers": [
                    peer("CT", "CT1", "10.0.0.1"),
                    peer("Bad title", "CT 2", "10.0.0.2"),
                    peer("Bad port", "CT3", "10.0.0.3", port=70000),
                    peer("CT again", "CT1", "10.0.0.1", fax="+41 00 000"),
                ],
            }
        )
    assert caught.value.problems == [
        "dicom.colour: Unknown key.",
        f"dicom.ae_title: {AE_CHARS}",
        "dicom.service_timeout: Ensure this value is greater than or equal to 1.",
        f"peers[1].ae_title: {AE_CHARS}",
        "peers[2].port: Ensure this value is less than or equal to 65535.",
        "peers[3].fax: Unknown key.",
        "peers[3]: Same ae_title, host, port as peers[0].",
    ]
    assert export_config() == before


def test_values_of_the_wrong_json_type_are_errors(configured):
    with pytest.raises(ConfigError) as caught:
        import_config(
            {
                "dicom": {"port": "104", "debug": 1, "find_result_limit": True},
                "peers": [peer("CT", 7, "10.0.0.1", can_store="yes"), "not a peer"],
            }
        )
    assert caught.value.problems == [
        "dicom.port: Expected an integer, got a string.",
        "dicom.debug: Expected true or false, got an integer.",
        "dicom.find_result_limit: Expected an integer, got a boolean.",
        "peers[0].ae_title: Expected a string, got an integer.",
        "peers[0].can_store: Expected true or false, got a string.",
        "peers[1]: Expected an object, got a string.",
    ]
    assert Peer.objects.count() == 3


def test_unknown_sections_and_sections_of_the_wrong_shape_are_errors(configured):
    with pytest.raises(ConfigError) as caught:
        import_config({"worklists": {}, "dicom": [], "peers": {}})
    assert caught.value.problems == [
        "worklists: Unknown section.",
        "dicom: Expected an object, got an array.",
        "peers: Expected an array, got an object.",
    ]


def test_a_peer_missing_its_name_is_an_error(db):
    with pytest.raises(ConfigError) as caught:
        import_config({"peers": [{"ae_title": "CT1", "host": "10.0.0.1"}]})
    assert caught.value.problems == ["peers[0].name: This field cannot be blank."]


def test_the_same_ae_title_on_another_host_or_port_is_another_peer(db):
    import_config(
        {"peers": [peer("A", "CT1", "10.0.0.1"), peer("B", "CT1", "10.0.0.2"), peer("C", "CT1", "10.0.0.1", 105)]}
    )
    assert Peer.objects.filter(ae_title="CT1").count() == 3


def test_the_command_prints_every_problem_and_exits_non_zero(configured, transactional_db, data_dir, tmp_path):
    path = write(tmp_path, {"peers": [peer("CT", "CT 1", "10.0.0.1", port=70000), {"name": "x", "colour": 1}]})
    proc = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "pacsconfig", "import", str(path)],
        cwd=BASE_DIR,
        env=server_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [
        f"CommandError: {path}: 5 problem(s), nothing changed:",
        f"peers[0].ae_title: {AE_CHARS}",
        "peers[0].port: Ensure this value is less than or equal to 65535.",
        "peers[1].colour: Unknown key.",
        "peers[1].ae_title: This field cannot be blank.",
        "peers[1].host: This field cannot be blank.",
    ]
    assert Peer.objects.count() == 3


def test_the_command_refuses_a_file_that_is_not_json(db, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"peers": [')
    with pytest.raises(CommandError, match="broken.json is not a JSON document"):
        call_command("pacsconfig", "import", str(path))


def test_a_running_runscp_follows_an_import(scp, tmp_path):
    assert scp.echo(calling=STRANGER).returncode == 0
    document = export_config()
    document["dicom"]["unknown_ae_may_echo_and_store"] = False
    document["peers"] = [peer("CT", MODALITY, "127.0.0.1")]
    call_command("pacsconfig", "import", str(write(tmp_path, document)), stdout=io.StringIO())
    wait_until(lambda: scp.echo(calling=STRANGER).returncode != 0, 10, message="runscp to refuse the stranger")
    assert scp.echo(calling=MODALITY).returncode == 0
