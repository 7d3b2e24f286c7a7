"""Admin: the archive settings (disk guard, recycling) with the free space
now, the retention rules with a dry-run preview, and protect / unprotect
actions for patients and studies.  Imported by dicomnodes/admin.py."""

from django.contrib import admin

from dicomnodes.lifecycle import diskguard
from dicomnodes.models import ArchiveSettings
from pacs_site.singleton import SingletonAdmin


@admin.register(ArchiveSettings)
class ArchiveSettingsAdmin(SingletonAdmin):
    fieldsets = [
        ("Disk guard", {"fields": ["free_space", "min_free_mb", "min_free_percent"]}),
        ("Recycling", {"fields": ["max_storage_mb", "max_patients"]}),
    ]
    readonly_fields = ["free_space"]

    @admin.display(description="free space now")
    def free_space(self, obj):
        try:
            status = diskguard.measure()
        except OSError as exc:
            return f"cannot measure the storage volume: {exc.strerror or exc}"
        return f"{status.summary()} (storage volume of {status.path})"
