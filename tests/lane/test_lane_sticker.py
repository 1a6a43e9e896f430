"""A real lane with a QR sticker on its booth, the simulator's camera pushing frames: the sticker,
hidden by a truck for longer than the dedup window and seen again, costs the vehicle present
no try and shows it nothing; a driver's own QR (no payment code either) is refused with the
reason, as before (lane.core.static_codes, scanner.change_gate.printed_here)."""

from __future__ import annotations

import time
from pathlib import Path

from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show

from lane.core.static_codes import STATIC_CODE
from scanner.change_gate import KNOWN_AFTER_S, STEADY_AFTER
from sim.broker import Mosquitto
from sim.render import render_frame
from sim.scene import Scene

DEDUP_S = 0.3  # the scanner reports a code again once it was out of view this long
STICKER = "https://example.org/help/booth-7"
PERSONAL = "https://example.org/card/alice"
BOOTH = render_frame(Scene(None, sticker=STICKER), 1)
TRUCK = render_frame(Scene(None), 2)  # the sticker hidden
PHONE = render_frame(Scene(PERSONAL, distance=1.6, angle_deg=15.0, sticker=STICKER), 3)


def ignored_as_static(lane: Lane) -> bool:
    return any(n["reason"] == STATIC_CODE for n in named(lane, "scan_ignored"))


def shown(lane: Lane) -> list[str]:
    return [line for d in named(lane, "display") for line in d["lines"]]


async def test_a_sticker_seen_again_spends_no_try_and_a_drivers_own_qr_is_refused(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(
        tmp_path, mosquitto, lane_id, camera={"dedup_window_s": DEDUP_S}
    ) as lane:
        pipeline = lane.daemon.pipeline
        # An idle booth since KNOWN_AFTER_S ago (frames the camera took then, and now): the
        # sticker stayed put, the change gate knows it and lets its view pass.
        then = time.monotonic() - KNOWN_AFTER_S
        await eventually(
            lambda: pipeline.stats().decoded >= STEADY_AFTER,
            every=0.03,
            between=lambda: lane.source.put(BOOTH, then),
        )
        decoded = pipeline.stats().decoded
        await show(lane, BOOTH, lambda: pipeline.stats().decoded > decoded)
        await show(lane, BOOTH, lambda: pipeline.stats().skipped > 0)
        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        # A truck parks in front of the sticker for longer than the dedup window, then leaves.
        hidden_at = time.monotonic()
        await show(lane, TRUCK, lambda: time.monotonic() - hidden_at > 3 * DEDUP_S)
        await show(lane, BOOTH, lambda: ignored_as_static(lane))
        assert named(lane, "code_refused") == []
        assert not any("Payment refused" in line for line in shown(lane))
        vehicle = lane.daemon.runner.state.vehicle
        assert vehicle is not None and vehicle.tries == 0
        # The driver holds up their own QR: refused with the reason, the tries counted down.
        await show(lane, PHONE, lambda: named(lane, "code_refused"))
        assert [n["reason"] for n in named(lane, "code_refused")] == ["not a payment code"]
        await eventually(lambda: "Try another code (2 left)" in shown(lane))
