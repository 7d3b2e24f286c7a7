"""Hand-written SQL for the statements of the ingest hot path.

Measured on these machines: through the ORM, a steady-state commit of one
instance (find existing, insert, two counter updates) cost 2.6 ms of Python,
mostly query compilation; the same statements through Django's cursor
wrapper, 0.60 ms for the whole group commit of one instance; through the
driver's own cursor (`execute` below: no CursorWrapper, no "%s" -> "?"
rewrite, statements built once, values adapted only where a field needs it)
0.34-0.49 ms, of which SQLite's COMMIT is 0.14 ms (1000 single-instance
commits, `apply_batch` timed in-process, three runs).  Table and column
names come from the models and values are adapted by the model fields, so
SQLite and PostgreSQL both work.  Everything else uses the ORM.

These statements run on the thread's connection inside Django's transaction
(`transaction.atomic`), or inside `transaction()` below when nothing else
of the batch needs the ORM, and bypass Django's query log.
"""

import threading
from asyncio import _get_running_loop
from contextlib import contextmanager
from functools import cache

from django.db import DEFAULT_DB_ALIAS, connection, connections, models

from dicomnodes.models import Instance

_INSTANCE_FIELDS = [
    "sop_instance_uid",
    "series",
    "sop_class_uid",
    "instance_number",
    "transfer_syntax_uid",
    "file_size",
    "called_ae",
    "calling_ae",
    "association",
    "received_at",
]
_fields = [Instance._meta.get_field(name) for name in _INSTANCE_FIELDS]
_qn = connection.ops.quote_name
# Fields whose Python value the driver cannot take as it is (a datetime for
# SQLite, a UUID key): adapted by the model field; the others pass through.
_PLAIN = (models.CharField, models.IntegerField)


def _needs_prep(field) -> bool:
    target = field.target_field if field.is_relation else field
    return not isinstance(target, _PLAIN)


_prep = [_needs_prep(f) for f in _fields]


@cache
def marks(n: int) -> str:
    """n placeholders in the driver's parameter style."""
    mark = "?" if connection.vendor == "sqlite" else "%s"
    return ", ".join([mark] * n)


_thread = threading.local()


def thread_connection():
    """This thread's connection (Django's wrapper), as `connections[...]`
    gives it.  That is an asgiref Local look-up, 1.6 µs on these machines,
    and a commit of one instance made about ten.  Outside an event loop the
    Local is a plain thread-local whose wrapper stays the same for the
    thread's life (Django keeps it; only its DB-API connection comes and
    goes), so it is kept in a plain threading.local (0.05 µs).  Inside a
    running loop (DJANGO_ALLOW_ASYNC_UNSAFE: Playwright's sync API in the
    browser tests) the Local is a context variable: Django's own look-up."""
    if _get_running_loop() is not None:
        return connections[DEFAULT_DB_ALIAS]
    try:
        return _thread.wrapper
    except AttributeError:
        wrapper = _thread.wrapper = connections[DEFAULT_DB_ALIAS]
        return wrapper


def opened_connection():
    """`thread_connection()`, connected (ensure_connection() only when it is
    not: the call and its async check cost more than the test)."""
    wrapper = thread_connection()
    if wrapper.connection is None:
        wrapper.ensure_connection()
    return wrapper


def execute(sql: str, params=(), *, many=False):
    """Run `sql` (placeholders from `marks`) on the driver's cursor of the
    thread's connection; the rows for a SELECT."""
    cursor = opened_connection().connection.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
            return None
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None
    finally:
        cursor.close()


class _Transaction:
    __slots__ = ("rolled_back", "cursor")

    def __init__(self, cursor):
        self.cursor = cursor
        self.rolled_back = False

    def roll_back(self):
        """End the transaction now, writing nothing."""
        if not self.rolled_back:
            self.rolled_back = True
            self.cursor.execute("ROLLBACK")


def _begin(wrapper) -> str:
    """The BEGIN Django's atomic() issues on this connection: on SQLite
    with the `transaction_mode` option (ours: IMMEDIATE, settings.py),
    BEGIN IMMEDIATE, which takes the write lock at once, waiting up to the
    busy time-out.  A plain (deferred) BEGIN would read first and upgrade
    at the first write, and in WAL mode that upgrade fails at once with
    "database is locked" when another connection committed in between."""
    mode = getattr(wrapper, "transaction_mode", None) if wrapper.vendor == "sqlite" else None
    return f"BEGIN {mode}" if mode else "BEGIN"


@contextmanager
def transaction():
    """A transaction of raw statements only (`execute`, and what is built on
    it) on the thread's connection, which Django keeps in autocommit: BEGIN
    as Django's atomic() begins (`_begin`), then COMMIT, or ROLLBACK on an
    exception or `roll_back()`.  Django
    knows nothing of it, so no ORM call may run inside (its atomic() would
    BEGIN again); Django's transaction.atomic() costs 21.6 µs where this
    costs 1.5 µs (timeit, SQLite)."""
    wrapper = opened_connection()
    if wrapper.in_atomic_block:
        raise RuntimeError("rawsql.transaction() inside Django's atomic()")
    done = _Transaction(wrapper.connection.cursor())
    try:
        done.cursor.execute(_begin(wrapper))
        try:
            yield done
        except BaseException:
            done.roll_back()
            raise
        if not done.rolled_back:
            try:
                done.cursor.execute("COMMIT")
            except BaseException:
                done.roll_back()  # SQLite keeps the transaction open when a deferred constraint fails COMMIT
                raise
    finally:
        done.cursor.close()


def existing_instances(uids):
    """{SOP Instance UID: series pk} for the UIDs that are already indexed."""
    uids = list(uids)
    if not uids:
        return {}
    return dict(execute(_existing_sql(len(uids)), uids))


@cache
def _existing_sql(n):
    return "SELECT {uid}, {series} FROM {table} WHERE {uid} IN ({marks})".format(
        uid=_qn("sop_instance_uid"),
        series=_qn(Instance._meta.get_field("series").column),
        table=_qn(Instance._meta.db_table),
        marks=marks(n),
    )


def insert_instances(rows):
    """Insert instance rows given as dicts keyed like _INSTANCE_FIELDS
    (`series` and `association` hold primary keys)."""
    if not rows:
        return
    # The thread's connection itself, not the `connection` proxy: every
    # attribute the fields read of the proxy is a thread-local look-up
    # (half of this function's time, measured).
    wrapper = thread_connection()
    params = [
        [
            f.get_db_prep_save(row[name], wrapper) if prep else row[name]
            for f, name, prep in zip(_fields, _INSTANCE_FIELDS, _prep)
        ]
        for row in rows
    ]
    execute(_insert_sql(), params, many=True)


@cache
def _insert_sql():
    return "INSERT INTO {table} ({columns}) VALUES ({marks})".format(
        table=_qn(Instance._meta.db_table),
        columns=", ".join(_qn(f.column) for f in _fields),
        marks=marks(len(_fields)),
    )


def increment(model, pk, **deltas):
    """UPDATE model SET field = field + delta, ... WHERE pk = pk."""
    deltas = {k: v for k, v in deltas.items() if v}
    if not deltas:
        return
    execute(_increment_sql(model, tuple(deltas)), [*deltas.values(), pk])


@cache
def _increment_sql(model, names):
    mark = marks(1)
    columns = [_qn(model._meta.get_field(name).column) for name in names]
    sets = ", ".join(f"{column} = {column} + {mark}" for column in columns)
    return f"UPDATE {_qn(model._meta.db_table)} SET {sets} WHERE {_qn(model._meta.pk.column)} = {mark}"
