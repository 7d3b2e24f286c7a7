"""Our requests on an association we opened (`outgoing.connect`): C-FIND,
C-MOVE and C-GET, with their responses read as they come — and for a
C-GET the C-STORE sub-operations the peer sends back on the same
association, each handed to `on_store` and answered.

`Requestor` owns the association's data sinks: a response's identifier
goes to a bounded `IdentifierSink`, a sub-operation's data set to a
`StoreSink` (memory up to 4 MiB, then a spool file; with `store_as`, up
to 64 KiB, then its own file), in the order the
messages arrive.
"""

import io
from collections import deque

from pydicom.uid import UID
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.dsutils import encode as encode_dataset

from dicomnodes.dimse import PENDING_STATUSES, Status
from dicomnodes.net import UNEXPECTED_PDU, ProtocolError
from dicomnodes.net import commandset as cs
from dicomnodes.net.association import RELEASE
from dicomnodes.scp import outgoing
from dicomnodes.scp.sinks import IdentifierSink, StoreSink, request_placement


class NoContext(Exception):
    """The peer accepted no presentation context for what we want to ask."""


class Requestor:
    """`store_as` = (calling AE, called AE), for a requestor that stores the
    C-STORE sub-operations it receives (C-GET) as from the peer to us: each
    data set is then written into its own file as it arrives (`StoreSink`,
    `request_placement`; `writeback` when it will be synced)."""

    def __init__(self, *, store_as=None, writeback=False):
        self.store_as = store_as
        self.writeback = writeback
        self.assoc = None
        self._sinks = deque()  # sinks opened, in the order of their messages
        self._message_id = 0

    def connect(self, host, port, **kwargs):
        """outgoing.connect with this requestor's sinks; returns the association."""
        self.assoc = outgoing.connect(host, port, open_sink=self._open_sink, **kwargs)
        return self.assoc

    def _open_sink(self, assoc, context_id, command):
        if command.CommandField != cs.C_STORE_RQ:
            sink = IdentifierSink()
        elif self.store_as is None or context_id not in assoc.contexts:
            sink = StoreSink()
        else:
            calling_ae, called_ae = self.store_as
            where = request_placement(command, assoc.contexts[context_id], calling_ae=calling_ae, called_ae=called_ae)
            sink = StoreSink(placement=where, writeback=self.writeback)
        self._sinks.append(sink)
        return sink

    def _next_id(self):
        self._message_id = self._message_id % 65535 + 1
        return self._message_id

    def context(self, sop_class):
        for cx in self.assoc.contexts.values():
            if cx.abstract_syntax == sop_class and cx.scu_role:
                return cx
        raise NoContext(f"the peer accepted no context for {sop_class}")

    # --- requests ----------------------------------------------------------------------

    def find(self, sop_class, identifier):
        """(response command, answer Dataset or None) for each response."""
        return self._request(cs.C_FIND_RQ, cs.C_FIND_RSP, sop_class, identifier)

    def move(self, sop_class, identifier, destination):
        return self._request(cs.C_MOVE_RQ, cs.C_MOVE_RSP, sop_class, identifier, MoveDestination=destination)

    def get(self, sop_class, identifier, on_store):
        """`on_store(command, context, sink)` stores a sub-operation and
        returns (status, Error Comment or None)."""
        return self._request(cs.C_GET_RQ, cs.C_GET_RSP, sop_class, identifier, on_store=on_store)

    def _request(self, field, response_field, sop_class, identifier, *, on_store=None, **extra):
        context = self.context(sop_class)
        syntax = UID(context.transfer_syntax)
        message_id = self._next_id()
        command = cs.encode(
            CommandField=field,
            MessageID=message_id,
            AffectedSOPClassUID=sop_class,
            Priority=cs.PRIORITY_MEDIUM,
            CommandDataSetType=cs.DATA_SET_PRESENT,
            **extra,
        )
        data = encode_dataset(identifier, syntax.is_implicit_VR, syntax.is_little_endian)
        if data is None:
            raise ValueError("the identifier cannot be encoded")
        self.assoc.send_command(context.id, command)
        self.assoc.send_data(context.id, data)
        while True:
            message = self.assoc.next_message()
            if message is RELEASE:
                raise ProtocolError("A-RELEASE-RQ while our request was being answered", abort_reason=UNEXPECTED_PDU)
            got = message.command
            sink = self._sinks.popleft() if got.has_data_set() else None
            try:
                if got.CommandField == cs.C_STORE_RQ and on_store is not None:
                    self._answer_store(message, sink, on_store)
                    continue
                if got.CommandField != response_field or got.MessageIDBeingRespondedTo != message_id:
                    raise ProtocolError(f"unexpected DIMSE message 0x{got.CommandField or 0:04X} while awaiting ours")
                answer = None
                if sink is not None:
                    answer = decode_dataset(
                        io.BytesIO(bytes(sink.data)), syntax.is_implicit_VR, syntax.is_little_endian
                    )
            finally:
                if sink is not None:
                    sink.close()
            yield got, answer
            if got.Status not in PENDING_STATUSES:
                return

    def _answer_store(self, message, sink, on_store):
        command = message.command
        context = self.assoc.contexts.get(message.context_id)
        if context is None:
            raise ProtocolError(f"presentation context {message.context_id} was not accepted")
        if sink is None:
            raise ProtocolError("C-STORE-RQ without a data set")
        if sink.finish():  # refused: the disk guard or a failed write, while the data set was spooled
            code, comment = Status.OUT_OF_RESOURCES, sink.refused
        else:
            code, comment = on_store(command, context, sink)
        response = cs.response_template(cs.C_STORE_RSP, context.abstract_syntax).render(
            command.MessageID,
            int(code),
            instance_uid=command.AffectedSOPInstanceUID,
            error_comment=comment if code != Status.SUCCESS else None,
        )
        self.assoc.send_command(message.context_id, response)

    def cancel(self, sop_class):
        """A C-CANCEL of our last request."""
        context = self.context(sop_class)
        command = cs.encode(
            CommandField=cs.C_CANCEL_RQ, MessageIDBeingRespondedTo=self._message_id, CommandDataSetType=cs.NO_DATA_SET
        )
        self.assoc.send_command(context.id, command)

    def finish(self):
        if self.assoc is not None:
            outgoing.finish(self.assoc)
            self.assoc = None
