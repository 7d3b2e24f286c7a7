"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from portal.dicomweb.access import dicomweb_view, error


@dicomweb_view
def search_studies(request, scope):
    return error(501, "QIDO-RS is being built")


@dicomweb_view
def search_series(request, scope, study=None):
    return error(501, "QIDO-RS is being built")


@dicomweb_view
def search_instances(request, scope, study=None, series=None):
    return error(501, "QIDO-RS is being built")
