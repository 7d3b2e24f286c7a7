"""Our AE title for this run: one definition read by every process.

The title stored in the DICOM server settings, unless the run overrides it:
`runpacs --ae-title X` and `runscp --ae-title X` put X in the environment
variable PACS_AE_TITLE, which every process they start inherits (runscp's
workers, the django-q2 worker, the web process); a process started on its
own (`qcluster`, `manage.py dicom`) reads the same variable.  Code asks
`DicomServerSettings.our_ae_title()`, never `.ae_title`: when only runscp
knew the override, it answered to X while publishing compared the called AE
with the stored title (X_E burned nothing) and transfer jobs called peers as
the stored title.
"""

import os

from django.core.exceptions import ImproperlyConfigured, ValidationError

from dicomnodes.validators import validate_ae_title

ENV = "PACS_AE_TITLE"


def override():
    """The AE title this run answers to instead of the stored one, or None."""
    raw = os.environ.get(ENV, "")
    if not raw:
        return None
    try:
        validate_ae_title(raw)
    except ValidationError as exc:
        raise ImproperlyConfigured(f"{ENV}={raw!r}: {' '.join(exc.messages)}") from None
    return raw


def set_override(title):
    """Make `title` our AE title in this process and every process it starts
    from now on (ValidationError if it is not a valid AE title)."""
    validate_ae_title(title)
    os.environ[ENV] = title
