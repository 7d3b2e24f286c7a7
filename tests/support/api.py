"""Archive rows for the API tests (tests/portal/test_api_*.py); their
personas are fixtures in tests/portal/conftest.py."""

import shutil
import uuid

from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import IndexItem, apply_batch
from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance
from tests.support.dicomdata import make_ct


def archived(folder, **make_ct_arguments) -> Instance:
    """A generated CT image stored and indexed as runscp would (file under
    its hashed name, rows by `apply_batch`); returns its Instance row."""
    source = make_ct(folder / f"{uuid.uuid4().hex}.dcm", size=8, **make_ct_arguments)
    header = read_header_file(source)
    target = instance_path(header.sop_instance_uid)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    apply_batch([IndexItem(header=header, file_size=source.stat().st_size, file_is_new=True, overwrite=False)])
    return Instance.objects.select_related("series__study").get(sop_instance_uid=header.sop_instance_uid)
