"""Per-address rate limit for token lookups (guessing tokens must be slow).

A fixed one-minute window counted in Django's cache.  The web server is one
daphne process, so the default per-process memory cache is enough; with
several web processes, configure a shared cache (CACHES, e.g. Redis).
"""

import time

from django.conf import settings
from django.core.cache import cache

from pacs_site.listeners import address_group


def limit_per_minute() -> int:
    return getattr(settings, "PACS_TOKEN_LOOKUPS_PER_MINUTE", 30)


def client_address(request) -> str:
    """The address lookups are counted for (`address_group`: IPv6 per /64)."""
    return address_group(request.META.get("REMOTE_ADDR") or "unknown")


def over_limit(request) -> bool:
    """Count one lookup for the request's address; True once the address has
    made more than the limit in the current minute."""
    limit = limit_per_minute()
    if limit <= 0:
        return False
    key = f"portal:lookups:{client_address(request)}:{int(time.time() // 60)}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add() and incr()
        cache.set(key, 1, timeout=120)
        count = 1
    return count > limit
