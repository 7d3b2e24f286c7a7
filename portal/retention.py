"""What portal prunes daily (see pacs_site/retention.py): the preview cache
(PACS_DATA_DIR/cache/previews; a deleted preview is rendered again when a
page asks for it) and the DICOMweb metadata cache (cache/metadata), with
the preview cache's limits."""

from pathlib import Path

from django.conf import settings

from pacs_site.retention import prune_folder, register_pruner


def preview_cache() -> Path:
    return Path(settings.PACS_DATA_DIR) / "cache" / "previews"


def prune_previews(row) -> str:
    return str(prune_folder(preview_cache(), days=row.preview_days, max_mb=row.preview_max_mb))


def prune_metadata(row) -> str:
    """WADO-RS metadata kept per instance (portal/dicomweb/metacache.py):
    made again from the file when asked for."""
    folder = Path(settings.PACS_DATA_DIR) / "cache" / "metadata"
    return str(prune_folder(folder, days=row.preview_days, max_mb=row.preview_max_mb))


register_pruner("preview cache", prune_previews)
register_pruner("DICOMweb metadata cache", prune_metadata)
