"""Configuration as code: every admin setting and the peer list as one JSON
document (`manage.py pacsconfig export|import`).

A document is an object of sections.  Each section is registered once in
`SECTIONS` with the model it stands for: each app adds its own in its
AppConfig.ready() with
`register(SingletonSection("worklist", WorklistSettings))` (settings rows) or
`register(ListSection(...))` (tables), and export and import follow.

Import validates the whole document with the admin's rules (the model's
`full_clean()`), plus: unknown keys and values of the wrong JSON type are
errors, and so is a list entry whose key repeats an earlier one.  Any error
and nothing is written; every problem is reported with its JSON path
(`peers[2].port: ...`).  Sections absent from the document, and keys absent
from an entry, keep their current values.
"""

import copy
import json
from dataclasses import dataclass, field

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction


class ConfigError(Exception):
    """The document has problems; nothing was changed."""

    def __init__(self, problems):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


# --- JSON values and model fields ----------------------------------------------

# Model field class -> the JSON value types it takes.  The first match wins, so
# subclasses (PositiveIntegerField is an IntegerField) need no row of their own.
_JSON_TYPES = [
    (models.BooleanField, (bool,), "true or false"),
    (models.IntegerField, (int,), "an integer"),
    (models.FloatField, (int, float), "a number"),
    (models.CharField, (str,), "a string"),
    (models.TextField, (str,), "a string"),
]
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}


def _json_name(value):
    if value is None:
        return "null"
    return _JSON_NAMES.get(type(value), "a number")


def _type_problem(model_field, value):
    """Why `value` cannot go into `model_field`, or None."""
    if value is None:
        return None if model_field.null else "Expected a value, got null."
    for field_class, types, expected in _JSON_TYPES:
        if isinstance(model_field, field_class):
            break
    else:
        types, expected = (str,), "a string"
    # bool is an int in Python, not in JSON.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    return f"Expected {expected}, got {_json_name(value)}."


def _exportable(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _settable_fields(model, renames):
    """[(JSON name, model field)] of every field a user edits, in model order."""
    return [(renames.get(f.name, f.name), f) for f in model._meta.concrete_fields if f.editable and not f.primary_key]


def _clean_problems(obj, path, fields, skip):
    """The model's own validation (as the admin runs it), as path: message lines."""
    try:
        obj.full_clean(exclude=skip)
    except ValidationError as exc:
        json_names = {f.name: name for name, f in fields}
        problems = []
        for model_name, messages in exc.message_dict.items():
            for message in messages:
                if model_name == NON_FIELD_ERRORS:
                    if not any(message in p for p in problems):  # model.clean() repeating a field validator
                        problems.append(f"{path}: {message}")
                else:
                    problems.append(f"{path}.{json_names.get(model_name, model_name)}: {message}")
        return problems
    return []


def _assign(obj, entry, path, fields):
    """Put the entry's values on `obj`; (type problems, fields to leave out of full_clean)."""
    problems, skip = [], []
    for name, model_field in fields:
        if name not in entry:
            continue
        problem = _type_problem(model_field, entry[name])
        if problem:
            problems.append(f"{path}.{name}: {problem}")
            skip.append(model_field.name)
        else:
            setattr(obj, model_field.attname, entry[name])
    return problems, skip


def _unknown_keys(entry, path, fields):
    known = {name for name, _ in fields}
    return [f"{path}.{key}: Unknown key." for key in entry if key not in known]


def _snapshot(obj, fields):
    return {f.attname: getattr(obj, f.attname) for _, f in fields}


# --- Sections ----------------------------------------------------------------------


@dataclass
class SingletonSection:
    """One settings row (a `SingletonModel`) as one JSON object."""

    name: str
    model: type
    renames: dict = field(default_factory=dict)  # model field name -> JSON name

    @property
    def fields(self):
        return _settable_fields(self.model, self.renames)

    def export(self):
        row = self.model.load()
        return {name: _exportable(f.value_from_object(row)) for name, f in self.fields}

    def plan(self, value, path):
        """((the row, whether it changed), problems); nothing is written."""
        if not isinstance(value, dict):
            return None, [f"{path}: Expected an object, got {_json_name(value)}."]
        row = self.model.load()
        before = _snapshot(row, self.fields)
        problems = _unknown_keys(value, path, self.fields)
        type_problems, skip = _assign(row, value, path, self.fields)
        problems += type_problems + _clean_problems(row, path, self.fields, skip)
        return (row, _snapshot(row, self.fields) != before), problems

    def apply(self, plan):
        row, changed = plan
        if not changed:
            return f"{self.name}: unchanged"
        row.save()
        return f"{self.name}: updated"


@dataclass
class ListSection:
    """A table as a JSON array; entries are matched to rows by `key`.

    Import makes the table what the document says: rows matched by key are
    updated, new keys created, rows the document does not name deleted.
    """

    name: str
    model: type
    key: tuple  # JSON names that identify an entry
    renames: dict = field(default_factory=dict)  # model field name -> JSON name
    ordering: tuple = ()

    @property
    def fields(self):
        return _settable_fields(self.model, self.renames)

    def export(self):
        rows = self.model.objects.order_by(*self.ordering) if self.ordering else self.model.objects.all()
        return [{name: _exportable(f.value_from_object(row)) for name, f in self.fields} for row in rows]

    def plan(self, value, path):
        """([(each row the table will hold, whether it changed)], problems); nothing is written."""
        if not isinstance(value, list):
            return None, [f"{path}: Expected an array, got {_json_name(value)}."]
        fields = self.fields
        by_name = dict(fields)
        # Locked so that an admin edit between here and apply() cannot create
        # a row with a key we are about to create too (PostgreSQL; SQLite's
        # BEGIN IMMEDIATE already serialises writers).
        existing = {self._key_of(row, by_name): row for row in self.model.objects.select_for_update()}
        seen, rows, problems = {}, [], []
        for i, entry in enumerate(value):
            entry_path = f"{path}[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{entry_path}: Expected an object, got {_json_name(entry)}.")
                continue
            key = self._key_of_entry(entry, by_name)
            # A copy: two entries with one key must not edit the same object.
            row = copy.copy(existing[key]) if key in existing else self.model()
            before = _snapshot(row, fields) if row.pk else None
            problems += _unknown_keys(entry, entry_path, fields)
            type_problems, skip = _assign(row, entry, entry_path, fields)
            problems += type_problems + _clean_problems(row, entry_path, fields, skip)
            if key is not None and key in seen:
                described = ", ".join(self.key)
                problems.append(f"{entry_path}: Same {described} as {path}[{seen[key]}].")
            elif key is not None:
                seen[key] = i
            rows.append((row, before is None or _snapshot(row, fields) != before))
        return rows, problems

    def apply(self, plan):
        keep = [row.pk for row, _ in plan if row.pk]
        _, by_model = self.model.objects.exclude(pk__in=keep).delete()
        deleted = by_model.get(self.model._meta.label, 0)  # not the rows that cascaded
        created = sum(1 for row, _ in plan if not row.pk)
        updated = sum(1 for row, changed in plan if row.pk and changed)
        for row, changed in plan:
            if changed:
                row.save()
        unchanged = len(plan) - created - updated
        return f"{self.name}: {created} created, {updated} updated, {deleted} deleted, {unchanged} unchanged"

    def _key_of(self, row, by_name):
        return tuple(getattr(row, by_name[name].attname) for name in self.key)

    def _key_of_entry(self, entry, by_name):
        """The entry's key (defaults for absent parts), or None when a part has the wrong type."""
        parts = []
        for name in self.key:
            model_field = by_name[name]
            value = entry.get(name, model_field.get_default())
            if _type_problem(model_field, value):
                return None
            parts.append(value)
        return tuple(parts)


SECTIONS = {}


def register(section):
    """Add a section to export and import (once, e.g. in an AppConfig.ready())."""
    if section.name in SECTIONS:
        raise ValueError(f"configuration section {section.name!r} is registered twice")
    SECTIONS[section.name] = section


# --- The document ---------------------------------------------------------------------


def export_config():
    """Every registered section, as a JSON-ready dict."""
    return {name: section.export() for name, section in SECTIONS.items()}


def dumps(document):
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def import_config(document):
    """Validate the whole document, then apply it in one transaction.

    1. Each section present builds what it would write (`plan`), collecting
       every problem instead of stopping at the first.
    2. Any problem: raise ConfigError with all of them; nothing is written.
    3. Otherwise every section writes its plan; returns one summary line each.
    """
    if not isinstance(document, dict):
        raise ConfigError([f"(document): Expected an object, got {_json_name(document)}."])
    with transaction.atomic():
        problems = [f"{name}: Unknown section." for name in document if name not in SECTIONS]
        plans = {}
        for name, section in SECTIONS.items():
            if name in document:
                plans[name], section_problems = section.plan(document[name], name)
                problems += section_problems
        if problems:
            raise ConfigError(problems)
        return [SECTIONS[name].apply(plan) for name, plan in plans.items()]
