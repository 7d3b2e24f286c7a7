"""Validation shared by models, forms and commands."""

import re

from django.core.exceptions import ValidationError

# PS3.5 6.2, VR AE: at most 16 characters of the default repertoire (ASCII),
# no backslash, no control characters.  We also refuse spaces: leading and
# trailing ones are not significant, and peers disagree about inner ones.
_AE_RE = re.compile(r"[\x21-\x5b\x5d-\x7e]{1,16}")


def validate_ae_title(value):
    if not isinstance(value, str) or not value:
        raise ValidationError("An AE title needs 1 to 16 characters.", code="ae_empty")
    if len(value) > 16:
        raise ValidationError(
            "An AE title has at most 16 characters (this one has %(n)d).",
            code="ae_length",
            params={"n": len(value)},
        )
    if not _AE_RE.fullmatch(value):
        raise ValidationError(
            "An AE title may hold only printable ASCII characters: no spaces, "
            "no control characters, no backslash, no accented letters.",
            code="ae_chars",
        )


def is_valid_ae_title(value):
    try:
        validate_ae_title(value)
    except ValidationError:
        return False
    return True


_DELAY_RE = re.compile(r"(\d+)([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_delays(text):
    """ "1m 5m 15m 1h" -> [60, 300, 900, 3600]; ValueError says what is wrong."""
    delays = []
    for word in (text or "").replace(",", " ").split():
        match = _DELAY_RE.fullmatch(word.strip().lower())
        if not match:
            raise ValueError(f"{word!r} is not a delay: write a number and s, m or h (e.g. 5m)")
        seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
        if not 1 <= seconds <= 7 * 86400:
            raise ValueError(f"{word!r}: a delay is between 1 s and 7 days")
        delays.append(seconds)
    if len(delays) > 20:
        raise ValueError("at most 20 retries")
    return delays


def validate_retry_delays(value):
    try:
        parse_delays(value)
    except ValueError as exc:
        raise ValidationError(str(exc), code="retry_delays") from None
