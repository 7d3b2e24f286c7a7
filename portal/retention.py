"""What portal prunes daily (see pacs_site/retention.py): the preview cache
(PACS_DATA_DIR/cache/previews; a deleted preview is rendered again when a
page asks for it)."""

from pathlib import Path

from django.conf import settings

from pacs_site.retention import prune_folder, register_pruner


def preview_cache() -> Path:
    return Path(settings.PACS_DATA_DIR) / "cache" / "previews"


def prune_previews(row) -> str:
    return str(prune_folder(preview_cache(), days=row.preview_days, max_mb=row.preview_max_mb))


register_pruner("preview cache", prune_previews)
