"""A frozen camera, judged by the vehicles it must see (pure: every time is a parameter).

An encoder or a driver that froze repeats its last picture at full rate: frames arrive, the
change gate lets each pass as the empty view, and the lane looks alive. A working camera may
repeat one too: an RTSP camera with a long group of pictures and strong noise reduction, on a
static night scene, sends identical pictures of an idle lane until something moves. Only a
vehicle says that something must move: its arrival changes the picture, and while it is at
the pay point its driver moves in view. So a picture unchanged while nobody is there is no
fault; one that stays the same across a vehicle's arrival, or for `after_s` while a vehicle
is there, is (the shell raises `camera_blackout` with the text, `lane/daemon.py`). Found, it
holds until a newer picture differs: the vehicle leaving removes no cause, and a lane reopened
under a camera still frozen would invite the next driver to show a code nobody reads.

Times are the lane's monotonic clock: frames are stamped on it, and so is the arrival (the
entry loop going occupied). A frame is compared with the one looked at before it, once a
second (`scanner.pipeline.FRESH_CHECK_S`): `changed_at` is when the newest frame that differed
was taken, `looked_at` when the newest frame compared was. Judged on frames alone: no frame
at all is the capture's stall, said by its own rule (`scanner.health.StallWatch`).
"""

from __future__ import annotations

# Frames taken for this long after an arrival all showing the picture of before it: frozen.
# The first look after the arrival (within a second) compares a frame of the vehicle with one
# of the lane before it; the next one catches a vehicle that reached the view a moment after
# the loop; a third second for the frame's way through the capture.
ARRIVAL_CHANGE_S = 3.0


def frozen_picture(
    changed_at: float | None,
    looked_at: float | None,
    arrived_at: float | None,
    after_s: float,
    *,
    loop: bool = True,
    told: tuple[float, str] | None = None,
) -> str | None:
    """The text of a frozen picture (`camera_blackout`'s cause), or None.

    `arrived_at`: when the vehicle there now arrived, None while the pay point is empty;
    `loop`: the lane has an entry loop. One that has none (a metro gate) is never told when a
    change is due: there any picture unchanged for `after_s` is frozen. `told`: the verdict
    said before, as (`changed_at` then, its text): it stands until a picture differs again."""
    if changed_at is None or looked_at is None:
        return None
    if told is not None and changed_at <= told[0]:
        return told[1]
    same = f"camera frozen: the same picture for over {after_s:g} s"
    if not loop:
        return same if looked_at - changed_at >= after_s else None
    if arrived_at is None:
        return None
    if changed_at < arrived_at:
        waited = min(ARRIVAL_CHANGE_S, after_s)
        if looked_at - arrived_at >= waited:
            return f"camera frozen: the picture did not change as a vehicle arrived ({waited:g} s)"
        return None
    if looked_at - changed_at >= after_s:
        return f"{same} with a vehicle at the pay point"
    return None
