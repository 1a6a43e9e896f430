"""The runner's port to a closed road's lane devices: the entry lane's ticket desk, the exit
lane's trip desk (docs/closed-road.md), and a metro gate's tap desk (an exit priced by
tap-in). A lane of another mode has none, and the core never
asks it; should it, the answers say so (no pass signed, no fare), so the core still hears back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from lane.auth.trip_pricing import unpriced
from lane.core.actions import IssuePass, MarkPassUsed, PriceTrip, ReleasePass
from lane.core.events import TicketIssued, TripPriced
from lane.core.names import TripSource
from lane.tap_desk import TapDesk
from lane.ticket_desk import TicketDesk
from lane.trip_desk import TripDesk


class RoadDesks:
    def __init__(
        self,
        tickets: TicketDesk | None = None,
        trips: TripDesk | None = None,
        taps: TapDesk | None = None,
    ) -> None:
        self.tickets = tickets
        self.trips = trips
        self.taps = taps

    async def issue(self, request: IssuePass) -> AsyncIterator[TicketIssued]:
        if self.tickets is None:
            yield TicketIssued(request.issue_id, None, False, "this lane issues no passes")
            return
        async for ticket in self.tickets.issue(request):
            yield ticket

    async def price(self, request: PriceTrip) -> TripPriced:
        if request.source is TripSource.CODE and self.taps is not None:
            return await self.taps.price(request)
        if self.trips is None:
            return unpriced(request.trip_id, "No fare at this lane", "not an exit lane")
        return await self.trips.price(request)

    async def mark_used(self, action: MarkPassUsed) -> None:
        if self.taps is not None:
            await self.taps.mark_used(action)  # a tap-in: a metro gate has no trip desk
        elif self.trips is not None:
            await self.trips.mark_used(action)

    async def release(self, action: ReleasePass) -> None:
        if self.taps is not None:
            await self.taps.release(action)
        elif self.trips is not None:
            await self.trips.release(action)
