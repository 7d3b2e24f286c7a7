"""Creating, finding and linking study tokens.

The clear token exists only in the return value of `create_token()` (and in
the link given to the patient); the database keeps its SHA-256.
"""

import re
from dataclasses import dataclass

from portal.models import HttpSettings, StudyToken, TokenScope, hash_token, new_clear_token, token_expiry

# What a token looks like (URL-safe base64); anything else is not looked up.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")


@dataclass(frozen=True)
class NewToken:
    row: StudyToken
    clear: str  # shown once, never stored
    url: str


def create_token(study, *, scope=TokenScope.STUDY, created_by=None, http=None) -> NewToken:
    """A new token for `study` (or all its patient's studies), expiring at the
    study date + the configured accessibility."""
    http = http or HttpSettings.load()
    clear = new_clear_token()
    row = StudyToken(study=study, scope=scope, created_by=created_by, token_hash=hash_token(clear))
    row.expires_at = token_expiry(study, http.study_accessibility, created_at=row.created_at)
    row.save()
    return NewToken(row, clear, token_url(clear, http))


def lookup(clear: str) -> StudyToken | None:
    """The token row for a clear token (revoked or expired ones too), or None."""
    if not clear or not _TOKEN_RE.fullmatch(clear):
        return None
    return StudyToken.objects.select_related("study").filter(token_hash=hash_token(clear)).first()


def token_url(clear: str, http=None) -> str:
    """The full link: http(s)://<web server name or public IP>:<port>/token?<token>."""
    http = http or HttpSettings.load()
    return f"{http.base_url()}/token?{clear}"
