"""C-FIND answers encoded straight to bytes, for the association runtime.

`matching.iter_results()` builds one pydicom Dataset per matching row and
the runtime then encodes it with pydicom; for a C-FIND with many answers
pydicom's write_dataset was three quarters of the time and building the
Datasets most of the rest (cProfile on the bench index).  In-process on
the 100,000-instance index of bench/query.py, PatientName=SMI* (242
answers) took 535 ms that way, 37 ms this way, 13 of them SQL (a loaded
2-core machine).  `iter_answers()` yields the same answers as bytes:

1. once per query, an `AnswerLayout`: the elements of every answer in tag
   order, each either constant (SpecificCharacterSet, QueryRetrieveLevel,
   RetrieveAETitle, InstanceAvailability, keys returned empty — the latter
   encoded once by pydicom, so sequences, private and binary keys come out
   exactly as pydicom writes them) or read from one column of the row;
2. per row, from `values_list` tuples (no dict per row): each column's
   value as text in UTF-8 (ISO_IR 192, the answers' character set), padded
   to even length, behind its pre-built header.

The bytes are those of `matching._raw_response()` encoded by pydicom, which
a test checks against pydicom's own encoding of `matching._response()` on
a wide set of answers (tests/dicomnodes/test_find_answers.py).  What the
layout does not cover — a stored column of a binary VR, a constant pydicom
cannot encode — takes that path for the whole query; a value it cannot
write exactly (not encodable in UTF-8, longer than an explicit VR's 2-byte
length) takes it for that one answer.  Either way the answer is what it
was before this module.
"""

import logging

from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as encode_dataset

from dicomnodes.net.elements import PADDING, ElementCoder, ValueTooLong, pad
from dicomnodes.query.matching import Query, _raw_response, iter_results, window

logger = logging.getLogger(__name__)

CHARACTER_SET = "ISO_IR 192"  # what every answer is written in (matching's module docstring)


class Unusual(Exception):
    """The answers of this query cannot all be written by the layout."""


class AnswerLayout:
    """The elements of a query's answers, in tag order (see the module docstring)."""

    def __init__(self, query: Query, *, retrieve_ae_title: str, implicit_vr: bool):
        self.query = query
        self.retrieve_ae_title = retrieve_ae_title
        self.implicit_vr = implicit_vr
        self.columns = list(dict.fromkeys(f.column for f in query.fields if f.column))
        self.fetched = self.columns or ["pk"]  # values_list() of nothing would read every column
        position = {column: i for i, column in enumerate(self.columns)}
        constants = {
            0x00080005: ("CS", CHARACTER_SET),
            0x00080052: ("CS", query.level),
            0x00080054: ("AE", retrieve_ae_title),
        }
        if query.wants_availability:
            constants[0x00080056] = ("CS", "ONLINE")
        elements = {}  # tag -> bytes (constant) or (column position, ElementCoder)
        for f in query.fields:
            if f.vr not in PADDING:
                if f.column:
                    raise Unusual(f"a stored column of VR {f.vr}")
                elements[f.tag] = self._empty(f.tag, f.vr)
            elif f.column:
                elements[f.tag] = (position[f.column], ElementCoder(f.tag, f.vr, implicit=implicit_vr), PADDING[f.vr])
            else:
                elements[f.tag] = ElementCoder(f.tag, f.vr, implicit=implicit_vr).encode(b"")
        for tag, (vr, text) in constants.items():
            elements[tag] = ElementCoder(tag, vr, implicit=implicit_vr).encode(pad(vr, text.encode("utf-8")))
        # Neighbouring constants joined: fewer parts to join per answer.
        self._parts = []
        for tag in sorted(elements):
            part = elements[tag]
            if isinstance(part, bytes) and self._parts and isinstance(self._parts[-1], bytes):
                self._parts[-1] += part
            else:
                self._parts.append(part)

    def _empty(self, tag, vr) -> bytes:
        """A key returned empty whose VR is not text, as pydicom writes it."""
        ds = Dataset()
        ds.add(DataElement(tag, vr, empty_value_for_VR(vr)))
        try:
            encoded = encode_dataset(ds, self.implicit_vr, True)
        except Exception as exc:  # pynetdicom returns None for most failures, not all
            raise Unusual(f"pydicom cannot write an empty {vr}: {exc}") from None
        if encoded is None:
            raise Unusual(f"pydicom cannot write an empty {vr}")
        return encoded

    def encode(self, row) -> bytes | None:
        """The answer of one `values_list` row of `self.fetched`."""
        try:
            out = []
            for part in self._parts:
                if isinstance(part, bytes):
                    out.append(part)
                    continue
                index, coder, padding = part
                value = row[index]
                raw = b"" if value is None else str(value).encode("utf-8")
                out.append(coder.encode(raw + padding if len(raw) % 2 else raw))
            return b"".join(out)
        except (UnicodeEncodeError, ValueTooLong):
            return self._through_pydicom(dict(zip(self.columns, row, strict=False)))

    def _through_pydicom(self, row) -> bytes | None:
        ds = _raw_response(self.query, row, self.retrieve_ae_title, self.implicit_vr)
        return encode_dataset(ds, self.implicit_vr, True)


def iter_answers(query: Query, *, limit: int = 0, offset: int = 0, retrieve_ae_title: str, implicit_vr: bool):
    """The answers of `matching.iter_results(…, implicit_vr=…)`, each as the
    bytes of its identifier in little endian (implicit or explicit VR);
    None for one pydicom cannot encode either."""
    try:
        layout = AnswerLayout(query, retrieve_ae_title=retrieve_ae_title, implicit_vr=implicit_vr)
    except Unusual as exc:
        logger.debug("C-FIND answers through pydicom: %s", exc)
        for ds in iter_results(
            query, limit=limit, offset=offset, retrieve_ae_title=retrieve_ae_title, implicit_vr=implicit_vr
        ):
            yield encode_dataset(ds, implicit_vr, True)
        return
    rows = window(query.queryset.values_list(*layout.fetched), limit=limit, offset=offset)
    for row in rows.iterator(chunk_size=200):
        yield layout.encode(row)
