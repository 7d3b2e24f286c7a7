"""C-FIND responders by information model, so that runscp answers queries
of models other apps own (worklist registers "WORKLIST") without
dicomnodes importing them.

A responder is `responder(identifier, *, caller, config, cancelled)` and
yields (status, dataset) pairs like `dicomnodes.scp.qr.answer_find`:
pending results, then at most one final status; `cancelled()` says whether
the peer sent a C-CANCEL.
"""

_RESPONDERS = {}


def register_find_responder(model, responder):
    """Answer C-FIND of information model `model` with `responder` (once per model)."""
    if _RESPONDERS.get(model, responder) is not responder:
        raise ValueError(f"a C-FIND responder for {model!r} is registered already")
    _RESPONDERS[model] = responder


def find_responder(model):
    """The registered responder of `model`, or None."""
    return _RESPONDERS.get(model)
