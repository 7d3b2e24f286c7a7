"""Putting files into the archive the way runscp does (file in storage, index
rows), without a network: for tests about what is done with the archive."""

import shutil

from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import IndexItem, apply_batch
from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance


def archive_files(paths, *, called_ae="PACS", calling_ae="MODALITY1", association=None):
    """Copy the files into storage and index them; their Instance rows."""
    items = []
    for path in paths:
        header = read_header_file(path)
        target = instance_path(header.sop_instance_uid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        items.append(
            IndexItem(
                header,
                file_size=target.stat().st_size,
                file_is_new=True,
                overwrite=False,
                called_ae=called_ae,
                calling_ae=calling_ae,
                association_id=association.pk if association else None,
            )
        )
    apply_batch(items)
    uids = [item.header.sop_instance_uid for item in items]
    return list(Instance.objects.filter(sop_instance_uid__in=uids).select_related("series__study"))
