"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered."""

from portal.dicomweb.access import dicomweb_view, error


@dicomweb_view
def retrieve(request, scope, study, series=None, instance=None):
    return error(501, "WADO-RS is being built")


@dicomweb_view
def metadata(request, scope, study, series=None, instance=None):
    return error(501, "WADO-RS is being built")


@dicomweb_view
def frames(request, scope, study, series, instance, frames):
    return error(501, "WADO-RS is being built")


@dicomweb_view
def bulkdata(request, scope, study, series, instance, tag):
    return error(501, "WADO-RS is being built")


@dicomweb_view
def rendered(request, scope, study, series=None, instance=None, frames=None):
    return error(501, "WADO-RS is being built")


@dicomweb_view
def thumbnail(request, scope, study, series=None, instance=None):
    return error(501, "WADO-RS is being built")
