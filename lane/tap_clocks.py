"""Which gates of a metro line stamp their taps ahead of this gate's clock (docs/closed-road.md,
"Metro").

A tap-in stamped more than `auth.skew_s` after this gate's clock is refused (lane.tap_desk):
kept, it would be its account's latest tap-in long after, and every real one of that account
would price as it. Refused, its passenger pays the maximum fare at an exit here, so the
operator must see it: `tap_clock_ahead` names each gate heard ahead (its clock is ahead, this
gate's is behind, or something claims to be that gate), with how far ahead its first such tap
was. A gate's name goes once one of its taps is stamped within `auth.skew_s` of this gate's
clock again, either side: that gate's clock (or this one's) is right again. A tap stamped
longer ago than that (queued while the broker was away) says nothing about a clock now. A name
goes too once no tap of that gate has come stamped ahead for `quiet_s` (the tap-ins'
retention): every tap-in it had refused is past its retention by then, and a name no tap
comes from again (forged, or a gate taken out of the line) would otherwise stay for ever.

Pure: the desk hands in each tap's gate and time and its own clock; no I/O, no clock read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CLOCK_ALARM = "tap_clock_ahead"


@dataclass
class GateClocks:
    skew_s: float  # auth.skew_s: the most a tap may be stamped after this gate's clock
    quiet_s: float  # the tap-ins' retention: a gate with no tap ahead for this long goes
    ahead: dict[str, float] = field(default_factory=dict)  # gate: its first tap's lead (s)
    last: dict[str, float] = field(default_factory=dict)  # gate: when its latest one was heard

    def heard(self, gate: str, ts: float, now: float) -> bool:
        """A tap of `gate` stamped `ts` (unix s), heard at `now`: True when it is stamped
        more than the skew ahead (a tap-in is refused)."""
        self.forget_quiet(now)
        lead = ts - now
        if lead > self.skew_s:
            self.ahead.setdefault(gate, lead)
            self.last[gate] = now
            return True
        if lead >= -self.skew_s:
            self.ahead.pop(gate, None)
            self.last.pop(gate, None)
        return False

    def forget_quiet(self, now: float) -> None:
        """Forget the gates no tap stamped ahead has come from for `quiet_s` by `now`."""
        for gate, at in list(self.last.items()):
            if now - at >= self.quiet_s:
                del self.ahead[gate], self.last[gate]

    def text(self) -> str | None:
        """The alarm's text while a gate is ahead, else None."""
        if not self.ahead:
            return None
        gates = ", ".join(f"{gate} ({lead:.0f} s)" for gate, lead in sorted(self.ahead.items()))
        skew = f"{self.skew_s:g} s"
        return (
            f"tap-ins refused (their exits here pay the maximum fare): taps stamped ahead of this"
            f" gate's clock by more than auth.skew_s ({skew}) from {gates}: that gate's clock is"
            f" ahead, this gate's behind, or something claims to be that gate; clears once its"
            f" taps are stamped within {skew} of this gate's clock, or none comes stamped ahead"
            f" for {self.quiet_s:g} s"
        )
