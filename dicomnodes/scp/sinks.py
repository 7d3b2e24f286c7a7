"""Where a DIMSE message's data set goes while its fragments arrive
(`net.pdata.MessageAssembler` hands them over one by one): a C-STORE's to a
`StoreSink`, an identifier's to a bounded `IdentifierSink`.  Used by runscp's
associations (`acceptor`) and by ours as requestor (`requesting`: C-FIND
answers, C-GET's C-STORE sub-operations)."""

import errno
import functools
import logging
from contextlib import contextmanager

from dicomnodes.archive.ingest import placement
from dicomnodes.archive.spool import SPILL_AT, STREAM_AT, SpoolFile
from dicomnodes.lifecycle import diskguard
from dicomnodes.net import ProtocolError

logger = logging.getLogger(__name__)

MAX_IDENTIFIER = 2**20  # a C-FIND/C-MOVE/C-GET identifier or answer is a few hundred bytes


def request_placement(command, context, *, calling_ae, called_ae):
    """A StoreSink's `placement` for the C-STORE-RQ `command` on `context`:
    where `store_received` will put the instance it names
    (`archive.ingest.placement`), worked out only if the data set passes
    STREAM_AT."""
    return functools.partial(
        placement,
        command.AffectedSOPClassUID or "",
        command.AffectedSOPInstanceUID or "",
        context.transfer_syntax,
        calling_ae=calling_ae,
        called_ae=called_ae,
    )


class StoreSink:
    """The data set of one C-STORE as it arrives: a bytearray up to a
    bound, then a SpoolFile on the storage volume.

    `placement`, when given, says where the instance's file will be: a
    callable returning (file meta bytes, path), asked once the data set
    passes `spool.STREAM_AT`; the spool is then that file itself, and the
    store path links it (`SpoolFile.adopt`); `writeback` (fsync on store)
    has the kernel start writing it to disk as it arrives.  Without it the bound is
    `spool.SPILL_AT` and the spool a temporary file copied again.

    The spool file is on the storage volume, so the disk guard is asked
    before it is made and for every fragment written to it: once it says
    no, the rest of the data set is read and dropped, and `refused` says
    why (the sender gets A700 with it)."""

    def __init__(self, *, discard=False, placement=None, writeback=False):
        self.memory = bytearray()
        self.spool = None
        self.size = 0
        self.discard = discard
        self.refused = None
        self.placement = placement
        self.writeback = writeback  # the file will be synced: start writing it out as it arrives
        self.spill_at = SPILL_AT if placement is None else STREAM_AT

    def __call__(self, fragment):
        self.size += len(fragment)
        if self.discard:
            return
        try:
            if self.spool is not None:
                if self._guard(len(fragment)):
                    self.spool.write(fragment)
                return
            self.memory += fragment
            if len(self.memory) > self.spill_at and self._guard(len(self.memory)):
                self._spill()
        except OSError as exc:  # the disk full (or failing) under the guard's margin
            self._failed(exc)

    def _spill(self):
        if self.placement is None:
            self.spool = SpoolFile(self.memory)
        else:
            prefix, path = self.placement()
            self.spool = SpoolFile(self.memory, prefix=prefix, place_at=path, writeback=self.writeback)
        self.spool.guarded = True  # _guard() counts every byte: store_received must not count them again
        self.memory = None

    def finish(self):
        """The data set is complete: what the spool buffers goes to its
        file.  Returns `refused`: why the store is refused (by the guard,
        or a write that failed now or earlier), or None."""
        if self.spool is not None:
            try:
                self.spool.fileno()  # flushes
            except OSError as exc:
                self._failed(exc)
        return self.refused

    def _failed(self, exc):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.error("a C-STORE's data set could not be written: out of disk space: %s", exc)
            self._refuse("Out of resources: storage is full")
        else:
            logger.error("a C-STORE's data set could not be written: %s", exc)
            self._refuse(f"Out of resources: {exc.strerror or exc}")

    def _guard(self, size):
        refused = diskguard.check(size)
        if refused is None:
            return True
        logger.error("a C-STORE's data set was refused by the disk guard as it arrived: %s", refused)
        self._refuse(refused)
        return False

    def _refuse(self, why):
        """Drop what arrived and the rest of it; the sender gets A700 and `why`."""
        self.refused = why
        self.discard = True
        self.close()
        self.memory, self.spool = bytearray(), None

    @contextmanager
    def contents(self):
        """(the bytes that arrived, the SpoolFile holding them or None): a
        view of the spool's mapping, released on leaving."""
        if self.spool is None:
            yield self.memory, None
            return
        with self.spool.getbuffer() as raw:
            yield raw, self.spool

    def close(self):
        if self.spool is not None:
            self.spool.close()


class IdentifierSink:
    """A C-FIND/C-MOVE/C-GET identifier (bounded: MAX_IDENTIFIER)."""

    def __init__(self):
        self.data = bytearray()

    def __call__(self, fragment):
        if len(self.data) + len(fragment) > MAX_IDENTIFIER:
            raise ProtocolError(f"identifier longer than {MAX_IDENTIFIER} bytes")
        self.data += fragment

    def close(self):
        pass
