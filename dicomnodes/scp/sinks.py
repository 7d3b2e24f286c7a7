"""Where a DIMSE message's data set goes while its fragments arrive
(`net.pdata.MessageAssembler` hands them over one by one): a C-STORE's to a
`StoreSink`, an identifier's to a bounded `IdentifierSink`.  Used by runscp's
associations (`acceptor`) and by ours as requestor (`requesting`: C-FIND
answers, C-GET's C-STORE sub-operations)."""

from contextlib import contextmanager

from dicomnodes.archive.spool import SPILL_AT, SpoolFile
from dicomnodes.lifecycle import diskguard
from dicomnodes.net import ProtocolError

MAX_IDENTIFIER = 2**20  # a C-FIND/C-MOVE/C-GET identifier or answer is a few hundred bytes


class StoreSink:
    """The data set of one C-STORE as it arrives: a bytearray up to
    SPILL_AT, then a SpoolFile (a temporary file in the storage folder).

    The spool file is on the storage volume, so the disk guard is asked
    before it is made and for every fragment written to it: once it says
    no, the rest of the data set is read and dropped, and `refused` says
    why (the sender gets A700 with it)."""

    def __init__(self, *, discard=False):
        self.memory = bytearray()
        self.spool = None
        self.size = 0
        self.discard = discard
        self.refused = None

    def __call__(self, fragment):
        self.size += len(fragment)
        if self.discard:
            return
        if self.spool is not None:
            if self._guard(len(fragment)):
                self.spool.write(fragment)
            return
        self.memory += fragment
        if len(self.memory) > SPILL_AT and self._guard(len(self.memory)):
            self.spool = SpoolFile(self.memory)
            self.memory = None

    def _guard(self, size):
        self.refused = diskguard.check(size)
        if self.refused is None:
            return True
        self.discard = True
        self.close()
        self.memory, self.spool = bytearray(), None
        return False

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
