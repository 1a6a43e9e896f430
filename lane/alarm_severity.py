"""How bad each lane alarm is: one table, shared by the lane (its health message) and the console.

Severity orders what an operator looks at first and colours the plaza tiles:

- `critical`: the lane cannot pass vehicles safely or at all (barrier, broker, queue, stuck,
  camera dark where codes pay).
- `major`: the lane works but something an operator must fix is wrong (back office
  not taking records, acquirer failing or declining many payments, a paid vehicle that did not
  pass).
- `minor`: worth a look, nothing is lost yet (key set ageing, queue filling, a driver waiting).

An alarm code missing from the table is `major`: a new alarm nobody classified is taken
seriously rather than hidden. A few alarms close a lane of one kind and not another: at a closed
road's entry lane they take their severity from `AT_ENTRY_LANE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"


RANK: Mapping[Severity, int] = MappingProxyType(
    {Severity.CRITICAL: 3, Severity.MAJOR: 2, Severity.MINOR: 1}
)

SEVERITY: Mapping[str, Severity] = MappingProxyType(
    {
        "barrier_offline": Severity.CRITICAL,
        "barrier_fault": Severity.CRITICAL,
        "barrier_no_ack": Severity.CRITICAL,
        "barrier_refused": Severity.CRITICAL,
        "barrier_stuck": Severity.CRITICAL,
        # The lane cannot tell where the boom is or whether the device works: closed to payments.
        "barrier_unreadable": Severity.CRITICAL,
        "broker_down": Severity.CRITICAL,
        "lane_stuck": Severity.CRITICAL,
        "queue_full": Severity.CRITICAL,
        "disk_error": Severity.CRITICAL,
        # A hung data directory: no record can be written, so no payment is taken.
        "disk_not_answering": Severity.CRITICAL,
        # A camera that reads no codes: the lane is closed to payments (a payment fault); at an
        # entry lane, which takes none, see AT_ENTRY_LANE.
        "camera_blackout": Severity.CRITICAL,
        # A closed road's entry lane: vehicles without a plate read wait for their ticket.
        "printer_paper_out": Severity.MAJOR,
        "printer_offline": Severity.MAJOR,
        "printer_refused_job": Severity.MAJOR,
        "uplink_stalled": Severity.MAJOR,
        # No connection to the back office's road: records queue on disk, nothing is lost yet.
        "uplink_down": Severity.MAJOR,
        "acquirer_unhealthy": Severity.MAJOR,
        "acquirer_declines": Severity.MAJOR,
        # Every offline token refused for its time: token payers are turned away.
        "clock_suspect": Severity.MAJOR,
        "paid_not_passed": Severity.MAJOR,
        # Paying drivers still pass; one who does not pay passes too (unpaid_passage).
        "barrier_stuck_open": Severity.MAJOR,
        "unpaid_passage": Severity.MAJOR,
        "trust_update_refused": Severity.MAJOR,
        # Every offline token refused: its payers are turned away (online codes go on).
        "keyset_no_token_key": Severity.MAJOR,
        "payment_alipay": Severity.MAJOR,
        "payment_wechatpay": Severity.MAJOR,
        "payment_acquirer": Severity.MAJOR,
        # A partial refund owed to a passenger that the network has not taken yet.
        "refund_failing": Severity.MAJOR,
        # One the network ended unpaid (WeChat Pay ABNORMAL, CLOSED): an operator's refund.
        "refund_unpaid": Severity.MAJOR,
        # A refund's end the queue refused: the back office does not know how it ended yet.
        "refund_unrecorded": Severity.MAJOR,
        # WeChat Pay answers signed by a platform certificate the lane cannot learn are refused.
        "wechatpay_certificates": Severity.MAJOR,
        # Offline tokens are refused while the replay store cannot be written.
        "replay_store_error": Severity.MAJOR,
        # Online payment codes are refused while the payments store cannot be written.
        "payments_store_error": Severity.MAJOR,
        # A metro gate's tap-ins not kept: exits here pay the maximum fare (never ride free).
        "taps_store_error": Severity.MAJOR,
        # Another lane's messages refused (forged, or its key missing from the key set): what
        # it tells this lane (a used token, a tap, a plate binding) is not taken.
        "peer_messages_refused": Severity.MAJOR,
        # This lane's own key is not in the key set: the other lanes refuse what it tells them.
        "lane_key_missing": Severity.MAJOR,
        # The broker refuses a topic the lane publishes (its ACL): those messages are kept
        # and retried, and reach nobody until the ACL is fixed.
        "publish_refused": Severity.MAJOR,
        "attendant_needed": Severity.MINOR,
        # A metro gate refuses another gate's tap-ins stamped ahead of its clock: a clock to set.
        "tap_clock_ahead": Severity.MINOR,
        # auth.accept_unsigned_peers took unsigned messages: a plaza halfway through its upgrade.
        "unsigned_peer_messages": Severity.MINOR,
        "keyset_stale": Severity.MINOR,
        "queue_high_water": Severity.MINOR,
    }
)


# A closed road's entry lane takes no codes (lane.core.road.entry_camera): a camera that reads
# none closes nothing there, the lane goes on issuing tickets. A warning, not a red tile.
AT_ENTRY_LANE: Mapping[str, Severity] = MappingProxyType({"camera_blackout": Severity.MINOR})


def severity_of(code: str, *, entry_lane: bool = False) -> Severity:
    """`entry_lane`: the alarm is a closed road's entry lane's."""
    if entry_lane and code in AT_ENTRY_LANE:
        return AT_ENTRY_LANE[code]
    return SEVERITY.get(code, Severity.MAJOR)


def worst(severities: list[Severity]) -> Severity | None:
    """The most severe of several, or None for none at all."""
    return max(severities, key=RANK.__getitem__, default=None)
