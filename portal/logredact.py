"""Patient-link tokens kept out of every log line.

A patient link's DICOMweb root carries its token in the path
(`/dicomweb/t/<token>/…`): daphne's access log (portal/daphne_server.py)
and Django's request log ("Not Found: <path>", "Gone: <path>") would
print it.  `HideLinkTokens` is a filter on the log handlers
(pacs_site/settings.py LOGGING) that puts "…" in its place.
"""

import logging
import re

LINK_ROOT = re.compile(r"/dicomweb/t/[^/?\s]*")
MARK = "/dicomweb/t/"


def hide_tokens(text: str) -> str:
    return LINK_ROOT.sub(MARK + "…", text)


class HideLinkTokens(logging.Filter):
    def filter(self, record):
        if MARK in str(record.msg) or any(MARK in str(a) for a in _args(record)):
            record.msg, record.args = hide_tokens(record.getMessage()), ()
        return True


def _args(record):
    args = record.args
    if isinstance(args, dict):
        return args.values()
    return args or ()
