"""WADO-URI (PS3.18 9): one object by its UIDs, for older viewers."""

from portal.dicomweb.access import dicomweb_view, error


@dicomweb_view
def wado_uri(request, scope):
    return error(501, "WADO-URI is being built")
