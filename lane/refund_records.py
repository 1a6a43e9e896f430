"""The resolver's refund ends into the lane's record queue (the shell's side of
lane.auth.refund_ends): each a `refund` record, appended once under the id derived from its
refund number and end, then forwarded at once like every other record."""

from __future__ import annotations

from collections.abc import Callable

from lane.auth.refund_ends import RefundEnd, RefundNotRecorded, refund_draft, refund_record_id
from uplink.queue import QueueError
from uplink.queue_thread import QueueThread


class RefundRecords:
    """`await RefundRecords(queue, wake)(end)`: the resolver's `record_end`. `wake` tells the
    forwarder a record is on disk."""

    def __init__(self, queue: QueueThread, wake: Callable[[], None]) -> None:
        self._queue = queue
        self._wake = wake

    async def __call__(self, end: RefundEnd) -> None:
        record_id = refund_record_id(end.refund_id, end.key)
        try:
            record = await self._queue.append_once(refund_draft(end), record_id)
        except QueueError as exc:  # full or failing: the resolver keeps the end, asks again
            raise RefundNotRecorded(str(exc)) from exc
        if record is not None:  # None: a run before this one appended it
            self._wake()
