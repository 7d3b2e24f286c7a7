"""Admin: delete patients, studies, series and instances (with their files).

"Delete selected … with their files" on the four archive lists, for users
with the model's delete permission.  It asks first, on a page that shows
what goes (counts, size, open patient links, pending burn jobs, queued or
running transfers, studies that lose only part of their images), then
deletes as dicomnodes/lifecycle/deletion.py does.  Django's own "Delete
selected" stays off: the archive's ModelAdmins deny `has_delete_permission`
(deleting rows without their files would orphan the files).
"""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from dicomnodes.lifecycle import deletion

# model name -> the Selection keyword its primary keys go to
_KEYWORDS = {"patient": "patients", "study": "studies", "series": "series", "instance": "instances"}
# Rows listed by name on the confirmation page, at most.
LISTED = 50


def _may_delete(modeladmin, request):
    opts = modeladmin.opts
    return request.user.has_perm(f"{opts.app_label}.delete_{opts.model_name}")


def delete_with_files(modeladmin, request, queryset):
    """Confirm, then delete the selected rows and their files."""
    if not _may_delete(modeladmin, request):
        raise PermissionDenied
    opts = modeladmin.opts
    pks = list(queryset.values_list("pk", flat=True))
    sel = deletion.selection(**{_KEYWORDS[opts.model_name]: pks})
    if request.POST.get("post") == "yes":
        done = deletion.delete_chosen(
            _KEYWORDS[opts.model_name],
            pks,
            actor=request.user.get_username(),
            actor_kind="user",
            reason=request.POST.get("reason", "")[:255],
            address=request.META.get("REMOTE_ADDR", ""),
        )
        modeladmin.message_user(request, f"Deleted {done.describe()}.", messages.SUCCESS)
        return None
    what = deletion.summarize(sel)
    rows = list(queryset[:LISTED])
    return TemplateResponse(
        request,
        "admin/dicomnodes/delete_with_files.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": f"Delete {opts.verbose_name_plural} with their files",
            "opts": opts,
            "rows": rows,
            "more": len(pks) - len(rows),
            "pks": pks,
            "summary": what,
            "warnings": [(label, n) for label, n in what.impacts if n],
        },
    )


delete_with_files.short_description = "Delete selected %(verbose_name_plural)s with their files"


class DeletionAdminMixin:
    """Mixed into the Patient, Study, Series and Instance ModelAdmins
    (dicomnodes/admin.py): adds the action for users who may delete."""

    def get_actions(self, request):
        actions = super().get_actions(request)
        if actions is None or self.actions is None or not _may_delete(self, request):
            return actions
        actions["delete_with_files"] = (
            delete_with_files,
            "delete_with_files",
            self._get_action_description(delete_with_files, "delete_with_files"),
        )
        return actions
