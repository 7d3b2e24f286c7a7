"""Query-string filters of the list endpoints, declared as one table per view.

A view lists its `filter_params`; `ParamFilter` applies those given in the
query string and describes them all in the OpenAPI schema.  Names match
case-insensitively with DICOM wildcards (`*`, `?`) on the upper-cased
column, as C-FIND does; dates are YYYYMMDD or YYYY-MM-DD.  A value that
cannot be a filter value is answered with 400, never ignored.
"""

import datetime
from dataclasses import dataclass
from typing import Callable

from django.db.models import Q, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend
from rest_framework.pagination import PageNumberPagination

import dicomnodes.query.rules  # noqa: F401 - registers the dicom_wildcard lookup


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    apply: Callable[[QuerySet, str, str], QuerySet]  # (queryset, name, value)
    type: str = "string"


def exact(column):
    return lambda qs, name, value: qs.filter(**{column: value})


def number(column):
    def apply(qs, name, value):
        try:
            return qs.filter(**{column: int(value)})
        except ValueError:
            raise ValidationError({name: "A whole number."}) from None

    return apply


def name_pattern(upper_column):
    """A person name: `*` and `?` are wildcards; case does not matter."""

    def apply(qs, name, value):
        value = value.upper()
        if "*" in value or "?" in value:
            return qs.filter(**{f"{upper_column}__dicom_wildcard": value})
        return qs.filter(**{upper_column: value})

    return apply


def parse_date(name, value):
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(value, fmt).strftime("%Y%m%d")
        except ValueError:
            pass
    raise ValidationError({name: "A date: YYYYMMDD or YYYY-MM-DD."})


def date_from(column):
    return lambda qs, name, value: qs.filter(**{f"{column}__gte": parse_date(name, value)})


def date_to(column):
    return lambda qs, name, value: qs.filter(**{f"{column}__lte": parse_date(name, value), f"{column}__gt": ""})


def in_multi_value(column):
    """One value of a backslash-joined list (Modalities in Study "CT\\SR")."""

    def apply(qs, name, value):
        value = value.upper()
        return qs.filter(
            Q(**{column: value})
            | Q(**{f"{column}__startswith": value + "\\"})
            | Q(**{f"{column}__endswith": "\\" + value})
            | Q(**{f"{column}__contains": "\\" + value + "\\"})
        )

    return apply


class ParamFilter(BaseFilterBackend):
    def filter_queryset(self, request, queryset, view):
        for param in getattr(view, "filter_params", ()):
            value = request.query_params.get(param.name, "").strip()
            if value:
                queryset = param.apply(queryset, param.name, value)
        return queryset

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": param.name,
                "required": False,
                "in": "query",
                "description": param.description,
                "schema": {"type": param.type},
            }
            for param in getattr(view, "filter_params", ())
        ]


class Pagination(PageNumberPagination):
    """`?page=N`, 50 a page unless `?page_size=` (at most 500) says otherwise."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
