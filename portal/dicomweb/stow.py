"""STOW-RS (PS3.18 10.5): store instances through the C-STORE path."""

from portal.dicomweb.access import dicomweb_view, error


@dicomweb_view
def store(request, scope, study=None):
    return error(501, "STOW-RS is being built")
