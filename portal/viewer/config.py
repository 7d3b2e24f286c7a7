"""OHIF's `window.config`, built per request: the staff viewer reads
/dicomweb/ with its study list; a patient link's viewer reads only
/dicomweb/t/<token>/ and has no study list.

OHIF's own `app-config.js` holds functions (error handlers, URL
transforms); ours is plain data, so it is written as JSON.
"""

import json
from urllib.parse import urlencode

from portal.viewer.fetch import MOUNT

STAFF_BASENAME = MOUNT.rstrip("/")  # "/viewer": OHIF routes (/viewer/viewer?…) below it
LINK_BASENAME = f"{MOUNT}link"  # "/viewer/link": a patient link's viewer


def data_source(root: str) -> dict:
    """OHIF's DICOMweb data source on one of our roots (no trailing slash)."""
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "PACS server",
            "name": "pacs",
            "qidoRoot": root,
            "wadoRoot": root,
            "wadoUriRoot": root,
            # Our QIDO answers includefield and wildcards (C-FIND's matching
            # rules); frames come from WADO-RS, thumbnails rendered by it.
            "qidoSupportsIncludeField": True,
            "supportsWildcard": True,
            "supportsFuzzyMatching": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }


def app_config(*, root: str, basename: str, study_list: bool) -> dict:
    return {
        "routerBasename": basename,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": study_list,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source(root)],
    }


def staff_config(origin: str) -> dict:
    return app_config(root=f"{origin}/dicomweb", basename=STAFF_BASENAME, study_list=True)


def link_config(origin: str, clear_token: str) -> dict:
    return app_config(root=f"{origin}/dicomweb/t/{clear_token}", basename=LINK_BASENAME, study_list=False)


def as_script(config: dict) -> str:
    """`window.config = …;` safe inside an inline <script> as well."""
    text = json.dumps(config, indent=1).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"window.config = {text};\n"


def study_route(study_uids, *, series_uid: str = "") -> str:
    """The OHIF route (below a basename) that opens studies, and a series first."""
    query = {"StudyInstanceUIDs": ",".join(study_uids)}
    if series_uid:
        query["initialSeriesInstanceUID"] = series_uid
    return "/viewer?" + urlencode(query)


def study_url(study_uid: str, *, series_uid: str = "") -> str:
    """The staff viewer's page for a study (or one of its series)."""
    return STAFF_BASENAME + study_route([study_uid], series_uid=series_uid)


def url_of(row) -> str:
    """The staff viewer's page for a Study or a Series row."""
    if hasattr(row, "series_instance_uid"):
        return study_url(row.study.study_instance_uid, series_uid=row.series_instance_uid)
    return study_url(row.study_instance_uid)
