"""The REST API under /api/: the archive, peers, transfers, worklist, burn jobs, tokens.

Staff only (`permissions.py`); the OpenAPI schema is at /api/schema/ and its
Swagger and Redoc pages at /api/docs/ and /api/redoc/.
"""
