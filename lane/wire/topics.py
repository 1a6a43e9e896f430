"""The MQTT topic vocabulary of a lane (see the README's protocol section)."""

from __future__ import annotations

import unicodedata

# `plaza/lane`: two topic levels of word characters and `-`. A lane's topics then hold no
# wildcard and exactly the levels the ACL patterns expect (`uplink/%u/records` can only match a
# user whose name is a lane id: deploy/mosquitto/plaza.acl). `[lane] id` was checked by the
# pattern `^[\w-]+/[\w-]+$` run in pydantic's Rust regex, whose `\w` is Unicode's word class
# (UTS #18), and lanes are deployed under it: Python's `re` leaves out the combining marks of
# Thai, Devanagari or an accent typed as one, so the class is spelt out here.
_WORD_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nl", "Mn", "Mc", "Me", "Nd", "Pc"})
_JOINERS = frozenset("\u200c\u200d")
# The circled and squared Latin letters: symbols that Unicode counts as alphabetic.
_SYMBOL_LETTERS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))

SENSORS = ("entry_loop", "safety_loop", "exit_loop", "light_curtain", "classifier")


def is_lane_id(text: str) -> bool:
    levels = text.split("/")
    return len(levels) == 2 and all(map(is_level, levels))


def is_level(text: str) -> bool:
    """One level of a lane id (a plaza, or a lane within it)."""
    return bool(text) and all(map(_lane_id_char, text))


def _lane_id_char(char: str) -> bool:
    if char == "-" or char in _JOINERS or unicodedata.category(char) in _WORD_CATEGORIES:
        return True
    return any(low <= ord(char) <= high for low, high in _SYMBOL_LETTERS)


def check_lane_id(text: str) -> str:
    """`text` if it is a lane id; ValueError saying what one is otherwise (`[lane] id`, the
    tools' `--lane`)."""
    if not is_lane_id(text):
        raise ValueError(f"a lane id is plaza/lane (letters, digits, _ and -), not {text!r}")
    return text


def barrier_cmd(lane: str) -> str:
    return f"lane/{lane}/barrier/cmd"


def barrier_ack(lane: str) -> str:
    return f"lane/{lane}/barrier/ack"


def barrier_state(lane: str) -> str:
    return f"lane/{lane}/barrier/state"


def device_query(lane: str) -> str:
    """Controller → device, QoS 1, never retained: publish a DeviceSnapshot now."""
    return f"lane/{lane}/device/query"


def device_snapshot(lane: str) -> str:
    """Device → controller and watchers, QoS 1, not retained: the device's whole truth."""
    return f"lane/{lane}/device/snapshot"


def boom_words(lane: str) -> frozenset[str]:
    """What a barrier device says of its boom and of the commands it was given: its acks,
    states and snapshots (a lane that cannot read them does not know where the boom is)."""
    return frozenset({barrier_ack(lane), barrier_state(lane), device_snapshot(lane)})


def io(lane: str, sensor: str) -> str:
    return f"lane/{lane}/io/{sensor}"


def io_all(lane: str) -> str:
    return f"lane/{lane}/io/+"


def display(lane: str) -> str:
    return f"lane/{lane}/display"


def status(lane: str) -> str:
    return f"lane/{lane}/status"


def events(lane: str) -> str:
    return f"lane/{lane}/events"


def attendant(lane: str) -> str:
    return f"lane/{lane}/attendant"


def uplink_records(lane: str) -> str:
    return f"uplink/{lane}/records"


def uplink_acks(lane: str) -> str:
    return f"uplink/{lane}/acks"


def sensor_of(topic: str) -> str | None:
    """The sensor name of an io topic, or None when the topic is not one."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[0] == "lane" and parts[-2] == "io":
        return parts[-1]
    return None


# The ANPR camera's reading on the lane I/O topics: lane/{id}/io/plate (barrier.peripherals).
PLATE = "plate"


def printer_print(lane: str) -> str:
    """Controller → printer, QoS 1, never retained: a PrintJob (an ESC/POS stream)."""
    return f"lane/{lane}/printer/print"


def printer_ack(lane: str) -> str:
    """Printer → controller, QoS 1: a PrintAck per job (printed, or why not)."""
    return f"lane/{lane}/printer/ack"


def printer_status(lane: str) -> str:
    """Printer → controller and watchers, QoS 1, retained: the PrinterStatus."""
    return f"lane/{lane}/printer/status"


def road_plate(plate: str) -> str:
    """Entry lane → exit lanes, QoS 1, retained: the entry pass (its `LP1:` text) bound to this
    plate (normalised: letters and digits, upper case); emptied once the pass has exited."""
    return f"road/plates/{plate}"


ROAD_PLATES = "road/plates/+"


def plate_of(topic: str) -> str | None:
    """The plate of a road_plate topic, or None when the topic is not one."""
    head, _, plate = topic.rpartition("/")
    return plate if head == "road/plates" and plate else None


def line_taps(line: str) -> str:
    """Metro gates of a line, QoS 1, not retained: every approved `tap_in` and `tap_out`
    record (the uplink `Record`, encoded), so an exit gate prices by the passenger's open
    tap-in offline and a tap-in exits once along the line (docs/closed-road.md#metro)."""
    return f"line/{line}/taps"
