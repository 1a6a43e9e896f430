"""What the lane display shows, in one place (the texts a driver reads)."""

from __future__ import annotations

from lane.core.actions import ShowOnDisplay

ASSISTANCE = "Please wait for assistance"
# A lane that takes no payments (a fault, or an attendant closed it).
LANE_CLOSED = ShowOnDisplay(("Lane closed", "Please use another lane"))
LANE_OPEN = ShowOnDisplay(("Lane open",), ttl_s=3.0)
THANK_YOU = ShowOnDisplay(("Thank you", "Have a good journey"), ttl_s=5.0)


def seen_on_display(text: list[str], *, offline: bool, accepting: bool | None) -> list[str]:
    """What a display shows by its contract (docs/barrier.md, "DisplayMessage"), for the views
    of it (the console's, the simulator's): "Lane closed" while the lane is `offline` (its
    will), whatever text it left; else the lane's `text` while it lives (empty: none left, or
    the lane said it has none); else "Lane closed" while the lane takes no payments, nothing
    (the display's idle text) while it does or does not say."""
    if offline:
        return list(LANE_CLOSED.lines)
    if text:
        return text
    return list(LANE_CLOSED.lines) if accepting is False else []


def not_accepted(reason: str) -> ShowOnDisplay:
    """A fare-gate passenger's code refused: they are no longer served, the next one is."""
    return ShowOnDisplay(("Not accepted", reason), ttl_s=3.0)


def class_waits(vehicle_class: int) -> ShowOnDisplay:
    """A vehicle the lane has no fare for: the attendant (or a corrected class) decides."""
    return ShowOnDisplay((f"Class {vehicle_class}", ASSISTANCE))


def record_wait(*, paid: bool) -> ShowOnDisplay:
    """A vehicle whose record is on its way to disk when a payment fault comes (a hung disk, a
    full queue): the barrier still opens for it once the record is written, so it waits (not
    `paid`: an attendant opened for it)."""
    return ShowOnDisplay((*(("Paid",) if paid else ()), "Please wait"))


def paid_wait(ttl_s: float, *, gate: bool, paid: bool) -> ShowOnDisplay:
    """A vehicle that paid (not `paid`: an attendant opened for it, an entry lane let it on)
    and that a fault keeps the barrier from opening for: it waits (until the fault clears, or
    its refund); "use another lane" is for drivers who have not paid. `gate`: a metro fare
    gate's passenger, who has no barrier in front of them."""
    barrier = "Gate" if gate else "Barrier"
    lines = ("Paid",) if paid else ()
    return ShowOnDisplay((*lines, f"{barrier} out of order", "Please wait"), ttl_s)
