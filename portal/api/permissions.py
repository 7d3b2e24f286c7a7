"""Who may use the API: staff, with the model permission the admin asks for.

Reads need the model's view permission (`dicomnodes.view_study`,
`dicomnodes.view_instance` for the stored files, ...), writes the add,
change or delete permission (`dicomnodes.change_peer`,
`worklist.add_worklistitem`, ...), exactly as in the admin: a staff account
without permissions sees nothing of the archive.  A view's extra actions name
theirs in `action_permissions`.  The API root and its schema pages only need
staff status.
"""

from rest_framework.permissions import BasePermission, DjangoModelPermissions


class IsStaff(BasePermission):
    message = "Staff only."

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class StaffModelPermissions(DjangoModelPermissions):
    """Staff with the model permission: view to read, add/change/delete to
    write; an extra action names its own.

    `action_permissions = {"cancel": ["change"]}` on a view: the `cancel`
    action needs `<app>.change_<model>`, whatever the HTTP method.
    """

    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.add_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }

    def has_permission(self, request, view):
        if not IsStaff().has_permission(request, view):
            return False
        verbs = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if verbs is None:
            return super().has_permission(request, view)
        opts = self._queryset(view).model._meta
        return request.user.has_perms([f"{opts.app_label}.{verb}_{opts.model_name}" for verb in verbs])
