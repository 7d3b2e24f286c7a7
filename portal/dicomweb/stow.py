"""STOW-RS (PS3.18 10.5): store instances through the C-STORE path.

`POST /dicomweb/studies[/{study}]` with `multipart/related;
type="application/dicom"`: each part a Part 10 file, read as a stream
(`upload.py`), stored by `archive.ingest.store_received` exactly as a
C-STORE would be (structure walk, quarantine, duplicate policy, the index
writer and its hooks), and answered with the response dataset of PS3.18
Table 10.5.3-1 in DICOM JSON.

1. The request: the Content-Type must be multipart/related of
   application/dicom (415 otherwise; metadata + bulk data STOW is not
   supported), with a boundary (400); a session login must carry the CSRF
   token (403), an API token need not.
2. Each part: its File Meta Information gives the transfer syntax and where
   the dataset starts; with a study in the URL, an instance of another
   study is refused (A900) before anything is written; then
   `store_received`, and the part's spool file is closed.
3. The answer: 200 all stored, 202 some failed, 409 none stored; a
   duplicate is referenced as C-STORE answers it (0000: the archive holds
   the instance).  A "study received" event per study for the dashboard;
   publishing (burning) is left to DICOM associations, as for C-GET.
"""

import collections
import logging
from concurrent.futures import ThreadPoolExecutor

from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.utils.http import parse_header_parameters
from pydicom import Dataset
from pydicom.sequence import Sequence
from rest_framework.authentication import TokenAuthentication

from dicomnodes.archive.header import UnreadableDataset
from dicomnodes.archive.index import Outcome
from dicomnodes.archive.ingest import (
    read_checked_header,  # the header store_received reads, to check the study first
    store_received,
)
from dicomnodes.archive.notifications import study_received
from dicomnodes.archive.storage import file_meta_bytes
from dicomnodes.dimse import Status
from dicomnodes.models import DicomServerSettings, DuplicatePolicy, Study
from dicomnodes.transfers.retrieve import index_writer
from pacs_site.models import EventKind
from portal.dicomweb import upload
from portal.dicomweb.access import dicomweb_view, error

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/dicom+json"
CHANGE_PERMISSION = "dicomnodes.change_instance"
CALLING_AE = "STOW-RS"
MAX_BOUNDARY = 200
IN_FLIGHT = 4  # parts being stored at once (Pipeline)

# PS3.18 10.5.3 (Table 10.5.3-1), Failure Reason (0008,1197) values; the
# store path's own statuses (C000, A700, 0110) pass through as they are.
STUDY_MISMATCH = Status.IDENTIFIER_DOES_NOT_MATCH  # A900: not of the study in the URL
CANNOT_UNDERSTAND = Status.CANNOT_UNDERSTAND  # C000: not a Part 10 file, not application/dicom
OUT_OF_RESOURCES = Status.OUT_OF_RESOURCES  # A700: a part above upload.MAX_PART
PROCESSING_FAILURE = Status.PROCESSING_FAILURE  # 0110: an error of ours


@dicomweb_view
def store(request, scope, study=None):
    refusal = _check_request(request)
    if refusal is not None:
        return refusal
    boundary = parse_header_parameters(request.META["CONTENT_TYPE"])[1]["boundary"]
    user = _user(request)
    context = StoreContext.for_user(user)
    answer = Answer(request, study)
    try:
        with Pipeline(answer, study, context) as pipeline:
            for part in upload.read_parts(request, boundary):
                pipeline.store(part)
    except upload.TooLarge as exc:
        if not answer.referenced and not answer.failed:
            return error(413, str(exc))
        answer.cut_short(str(exc))
    except upload.MalformedBody as exc:
        if not answer.referenced and not answer.failed:
            return error(400, f"malformed multipart body: {exc}")
        answer.cut_short(str(exc))
    if not answer.referenced and not answer.failed:
        return error(400, "the body holds no part")
    answer.announce(context.calling_ae)
    return answer.response()


class Pipeline:
    """Parts stored IN_FLIGHT at a time, answered in their order.

    Each store waits for its file's fsync and its index commit; with
    several in flight the index writer commits them together (group commit)
    and the fsyncs overlap, while the next part is read.  Memory: at most
    IN_FLIGHT + 1 parts of up to 4 MB each (larger ones are spool files).
    The stores touch no database connection of their own (the index writer
    thread writes), so the pool's threads need no connection handling.
    """

    def __init__(self, answer, study, context):
        self.answer, self.study, self.context = answer, study, context
        self.pending = collections.deque()
        self.pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="stow")

    def store(self, part):
        self.pending.append((part, self.pool.submit(store_part, part, self.study, self.context)))
        while len(self.pending) >= IN_FLIGHT:
            self._answer_oldest()

    def _answer_oldest(self):
        part, future = self.pending.popleft()
        try:
            self.answer.add(part, *future.result())
        finally:
            part.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Also when the body broke: what was read is answered.
        try:
            while self.pending:
                self._answer_oldest()
        finally:
            self.pool.shutdown()
        return False


def _check_request(request):
    """A refusal (415, 400, 403), or None."""
    content_type, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    part_type = params.get("type", "application/dicom").lower()
    if content_type.lower() != "multipart/related" or part_type != "application/dicom":
        return error(415, 'send multipart/related; type="application/dicom" (Part 10 files)')
    boundary = params.get("boundary", "")
    # RFC 2046 allows 70 characters; Orthanc's DICOMweb plugin sends 73.
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        return error(400, "the Content-Type has no valid boundary")
    accept = request.headers.get("Accept", "")
    if accept and not any(
        t.split(";")[0].strip() in ("*/*", "application/*", MEDIA_TYPE, "application/json") for t in accept.split(",")
    ):
        return error(406, f"the answer is {MEDIA_TYPE}")
    if request.user.is_authenticated:
        # A session (cookie) login: a page of another site could post with it.
        # (urls.py exempts the path so that API tokens need no CSRF token.)
        return CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    return None


def _user(request):
    """The account behind the request (access.py let it through)."""
    if request.user.is_authenticated:
        return request.user
    found = TokenAuthentication().authenticate(request)
    return found[0]


class StoreContext:
    """What every part of one request is stored with."""

    def __init__(self, *, calling_ae, overwrite, settings):
        self.calling_ae = calling_ae
        self.overwrite = overwrite
        self.settings = settings
        self.called_ae = settings.our_ae_title()

    @classmethod
    def for_user(cls, user):
        settings = DicomServerSettings.load()
        # Only someone who may change instances replaces a stored one, as
        # only a known peer does over DICOM; anyone else's duplicate is kept first.
        overwrite = settings.duplicate_policy == DuplicatePolicy.OVERWRITE and user.has_perm(CHANGE_PERMISSION)
        return cls(calling_ae=calling_ae_of(user), overwrite=overwrite, settings=settings)


def calling_ae_of(user):
    """The user name as an AE title (the "calling AE" of what is stored):
    16 characters of printable ASCII without backslash, else STOW-RS."""
    name = "".join(c for c in user.get_username() if " " <= c <= "~" and c != "\\").strip()[:16].strip()
    return name or CALLING_AE


def store_part(part, study, context):
    """(status, comment, StoreResult or None) of one part."""
    if part.content_type.split(";")[0].strip().lower() != "application/dicom":
        return CANNOT_UNDERSTAND, f"a part of type {part.content_type!r}: only application/dicom is stored", None
    if part.problem:
        return CANNOT_UNDERSTAND, part.problem, None
    if part.cut:
        return OUT_OF_RESOURCES, f"larger than {upload.MAX_PART} bytes", None
    meta, settings = part.meta, context.settings
    max_inflated = settings.max_inflated_mb * 2**20
    with part.dataset() as raw:
        if study is not None:
            other = _other_study(raw, meta, study, max_inflated)
            if other:
                return STUDY_MISMATCH, "Study Instance UID mismatch", None
        try:
            result = store_received_part(raw, meta, part.spool, context, max_inflated)
        except Exception:
            # One part's surprise must not lose the answer for the parts stored before it.
            logger.exception("STOW-RS: storing a part failed")
            return PROCESSING_FAILURE, "processing failure", None
    return result.status, result.comment, result


def _other_study(raw, meta, study, max_inflated):
    """Whether the dataset names a study other than `study` (an unreadable
    one is left to the store path, which refuses and quarantines it)."""
    head = file_meta_bytes(meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid)
    try:
        header = read_checked_header(
            head, raw, meta.transfer_syntax_uid, meta.sop_class_uid, meta.sop_instance_uid, max_inflated
        )
    except UnreadableDataset:
        return False
    return header.study_instance_uid != study


def store_received_part(raw, meta, spool, context, max_inflated):
    settings = context.settings
    return store_received(
        raw,
        meta.transfer_syntax_uid,
        sop_class_uid=meta.sop_class_uid,
        sop_instance_uid=meta.sop_instance_uid,
        called_ae=context.called_ae,
        calling_ae=context.calling_ae,
        association_id=None,
        overwrite=context.overwrite,
        fsync=settings.fsync_on_store,
        writer=index_writer(),
        wait_timeout=max(settings.service_timeout, 30),
        max_inflated=max_inflated,
        spool=spool,
    )


class Answer:
    """The response dataset (PS3.18 Table 10.5.3-1), built part by part."""

    def __init__(self, request, study):
        self.request = request
        self.study = study
        self.referenced = []
        self.failed = []
        self.studies = set()  # referenced
        self.received = set()  # stored into (not only duplicates)

    def add(self, part, status, comment, result):
        meta = part.meta
        if status == Status.SUCCESS:
            item = _reference(meta.sop_class_uid or "", result.sop_instance_uid)
            item.RetrieveURL = self._url(
                "instance",
                study=result.study_instance_uid,
                series=result.series_instance_uid,
                instance=result.sop_instance_uid,
            )
            self.referenced.append(item)
            self.studies.add(result.study_instance_uid)
            if result.outcome != Outcome.DUPLICATE:
                self.received.add(result.study_instance_uid)
            return
        item = _reference(meta.sop_class_uid if meta else "", meta.sop_instance_uid if meta else "")
        item.FailureReason = int(status)
        self.failed.append(item)
        logger.warning("STOW-RS: a part failed with 0x%04X: %s", int(status), comment)

    def cut_short(self, problem):
        """The body broke after some parts: the rest failed, unnamed."""
        item = _reference("", "")
        item.FailureReason = int(CANNOT_UNDERSTAND)
        self.failed.append(item)
        logger.warning("STOW-RS: the body broke after %d parts: %s", len(self.referenced) + len(self.failed), problem)

    def announce(self, source):
        """A "study received" event per study stored into (the dashboard)."""
        if not self.received:
            return
        open_study = DicomServerSettings.load().open_transferred_studies
        for row in Study.objects.filter(study_instance_uid__in=self.received).order_by("pk"):
            study_received(row, source=source, kind=EventKind.STUDY_RECEIVED, open_study=open_study)

    def response(self):
        ds = Dataset()
        study = self.study or (next(iter(self.studies)) if len(self.studies) == 1 else None)
        if study:
            ds.RetrieveURL = self._url("study", study=study)
        if self.failed:
            ds.FailedSOPSequence = Sequence(self.failed)
        ds.ReferencedSOPSequence = Sequence(self.referenced)
        status = 200 if not self.failed else 202 if self.referenced else 409
        return JsonResponse(ds.to_json_dict(), status=status, content_type=MEDIA_TYPE)

    def _url(self, name, **kwargs):
        return self.request.build_absolute_uri(reverse(f"dicomweb:{name}", kwargs=kwargs))


def _reference(sop_class_uid, sop_instance_uid):
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item
