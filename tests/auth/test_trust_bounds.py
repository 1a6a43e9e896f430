"""Trust updates are bounded (issue #11 item 6): the pure judge, then the verifier that holds
what was adopted. The daemon over a real broker: tests/ops/test_ops_trust_updates.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lane.auth.deny import DenyList, decode_deny_list, encode_deny_list
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet, KeySetError, decode_keyset, encode_keyset
from lane.auth.replay import ReplayStore
from lane.auth.trust import (
    DEFAULT_MAX_STEP,
    MAX_GENERATION,
    UpdateKind,
    Verdict,
    judge_deny,
    judge_keyset,
)
from lane.config import AuthSection
from lane.verifier import TokenVerifier

NOW = 1_800_000_000
SKEW = 30.0
STEP = 1000
ISSUER = TokenIssuer.generate(kid=b"k1")
ROTATED = TokenIssuer.generate(kid=b"k2")
ABSURD = [2**62, 2**64 - 1, NOW * 1000, NOW + int(SKEW) + 1]  # the last: just beyond the skew


def keyset(issued_at: int, *issuers: TokenIssuer) -> KeySet:
    return KeySet.of(issued_at, [i.public() for i in issuers or (ISSUER,)])


# -- the judge (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "incoming", "verdict"),
    [
        (keyset(NOW - 100), keyset(NOW - 10), Verdict.ADOPT),
        (keyset(NOW - 100), keyset(NOW + int(SKEW)), Verdict.ADOPT),  # at the skew: fine
        (keyset(NOW - 100), keyset(NOW - 100), Verdict.NOT_NEWER),  # a retained re-delivery
        (keyset(NOW - 100), keyset(NOW - 200), Verdict.NOT_NEWER),
        (keyset(NOW - 100), KeySet(NOW, {}), Verdict.EMPTY),
        (KeySet(0, {}), KeySet(NOW, {}), Verdict.EMPTY),
        *((keyset(NOW - 100), keyset(t), Verdict.FUTURE_DATED) for t in ABSURD),
        *((KeySet(0, {}), keyset(t), Verdict.FUTURE_DATED) for t in ABSURD),
    ],
)
def test_key_set_table(held: KeySet, incoming: KeySet, verdict: Verdict) -> None:
    assert judge_keyset(held, incoming, NOW, SKEW).verdict is verdict


@pytest.mark.parametrize(
    ("held", "incoming", "verdict"),
    [
        (0, 1, Verdict.ADOPT),
        (0, 42, Verdict.ADOPT),
        (0, NOW, Verdict.ADOPT),  # a back office that numbers lists by Unix seconds
        (0, MAX_GENERATION, Verdict.ADOPT),
        (0, MAX_GENERATION + 1, Verdict.GENERATION_JUMP),
        (0, NOW * 1000, Verdict.GENERATION_JUMP),  # milliseconds for seconds
        (0, 2**62, Verdict.GENERATION_JUMP),
        (0, 2**64 - 1, Verdict.GENERATION_JUMP),
        (42, 42 + STEP, Verdict.ADOPT),
        (42, 43 + STEP, Verdict.GENERATION_JUMP),
        (42, 2**62, Verdict.GENERATION_JUMP),
        (42, 42, Verdict.NOT_NEWER),
        (42, 7, Verdict.NOT_NEWER),
    ],
)
def test_deny_list_generation_table(held: int, incoming: int, verdict: Verdict) -> None:
    current = DenyList.empty() if held == 0 else DenyList.of(held, [])
    assert judge_deny(current, DenyList.of(incoming, []), NOW, SKEW, STEP).verdict is verdict


@pytest.mark.parametrize("issued_at", ABSURD)
def test_a_future_dated_deny_list_is_refused(issued_at: int) -> None:
    judged = judge_deny(DenyList.of(1, []), DenyList.of(2, [], issued_at), NOW, SKEW, STEP)
    assert judged.verdict is Verdict.FUTURE_DATED
    assert "auth.skew_s" in judged.detail
    assert judged.retry_later


def test_refusals_say_what_and_which_setting() -> None:
    far = judge_keyset(KeySet(0, {}), keyset(2**62), NOW, SKEW)
    assert far.refused and "4611686018427387904 (no real date)" in far.detail
    ms = judge_keyset(KeySet(0, {}), keyset(NOW * 1000), NOW, SKEW)
    assert "no real date" in ms.detail  # the year 58 000 is not a date anyone means
    soon = judge_keyset(KeySet(0, {}), keyset(NOW + 3600), NOW, SKEW)
    assert "2027-01-15T09:00:00Z" in soon.detail and "3600 s ahead" in soon.detail
    jump = judge_deny(DenyList.of(5, []), DenyList.of(5 + STEP + 1, []), NOW, SKEW, STEP)
    assert "auth.max_generation_step" in jump.detail and not jump.retry_later


def test_the_config_default_is_the_judges() -> None:
    assert AuthSection().max_generation_step == DEFAULT_MAX_STEP


sane_or_absurd = st.one_of(
    st.integers(min_value=NOW - 86_400, max_value=NOW),
    st.sampled_from(ABSURD),
    st.integers(min_value=0, max_value=2**64 - 1),
)


@settings(max_examples=300, deadline=None)
@given(issued=st.lists(sane_or_absurd, max_size=12))
def test_no_key_set_sequence_blocks_the_next_sane_one(issued: list[int]) -> None:
    """Whatever came before, the held set is never dated beyond now + skew, so a set issued
    now (and newer than the held one) is always adopted."""
    held = KeySet(0, {})
    for t in issued:
        if judge_keyset(held, keyset(t), NOW, SKEW).verdict is Verdict.ADOPT:
            held = keyset(t)
    assert held.issued_at <= NOW + SKEW
    nxt = held.issued_at + 1  # the issuer's next set, judged once the lane's clock is there
    assert judge_keyset(held, keyset(nxt), max(NOW, nxt), SKEW).verdict is Verdict.ADOPT


@settings(max_examples=300, deadline=None)
@given(generations=st.lists(st.integers(min_value=1, max_value=2**64 - 1), max_size=12))
def test_no_deny_list_sequence_jumps_beyond_the_bound(generations: list[int]) -> None:
    held = DenyList.empty()
    for g in generations:
        before = held.generation
        if judge_deny(held, DenyList.of(g, []), NOW, SKEW, STEP).verdict is Verdict.ADOPT:
            held = DenyList.of(g, [])
            assert held.generation - before <= (STEP if before else MAX_GENERATION)
    # The back office's next list (one more than the held one) is always taken.
    nxt = DenyList.of(held.generation + 1, [])
    assert judge_deny(held, nxt, NOW, SKEW, STEP).verdict is Verdict.ADOPT


# -- the verifier: what the lane holds ------------------------------------------------------


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verifier(tmp_path: Path, wall: Wall) -> TokenVerifier:
    v = TokenVerifier(
        "p07/l01",
        KeySet(0, {}),
        DenyList.empty(),
        ReplayStore(tmp_path / "replay.db"),
        SKEW,
        clock=wall,
        max_generation_step=STEP,
    )
    v.update_keys(keyset(NOW - 3600), "file keyset.json")  # as the daemon loads its file
    return v


MQTT_KEYS = "mqtt lane/p07/keys"
MQTT_DENY = "mqtt lane/p07/deny"


@pytest.mark.parametrize("poison", [2**62, 2**64 - 1, NOW * 1000])
async def test_after_a_poisoned_key_set_a_rotation_still_removes_the_old_key(
    tmp_path: Path, poison: int
) -> None:
    wall = Wall(NOW)
    v = verifier(tmp_path, wall)
    judged = v.update_keys(decode_keyset(encode_keyset(keyset(poison, ROTATED))), MQTT_KEYS)
    assert judged.verdict is Verdict.FUTURE_DATED
    assert v.keys.get(b"k2") is None  # the poisoned set was not taken
    alarm = v.refusal_text()
    assert alarm is not None and MQTT_KEYS in alarm and "future_dated" in alarm
    assert v.refused_counts == {(UpdateKind.KEYSET, Verdict.FUTURE_DATED): 1}
    # The back office rotates: k1 removed, k2 added. The lane takes it.
    assert v.update_keys(keyset(NOW - 5, ROTATED), MQTT_KEYS).verdict is Verdict.ADOPT
    assert not (await v.verify(ISSUER.token("acct-1", NOW - 10), NOW)).approved
    assert (await v.verify(ROTATED.token("acct-1", NOW - 10), NOW)).approved
    assert v.refusal_text() is None  # the source is sane again: the alarm clears


async def test_after_a_poisoned_deny_list_a_later_list_still_denies(tmp_path: Path) -> None:
    wall = Wall(NOW)
    v = verifier(tmp_path, wall)
    assert v.update_deny(DenyList.of(10, []), MQTT_DENY).verdict is Verdict.ADOPT
    poisoned = decode_deny_list(encode_deny_list(DenyList.of(2**64 - 1, [])))
    assert v.update_deny(poisoned, MQTT_DENY).verdict is Verdict.GENERATION_JUMP
    assert v.update_deny(DenyList.of(11, ["acct-bad"]), MQTT_DENY).verdict is Verdict.ADOPT
    assert (await v.verify(ISSUER.token("acct-bad", NOW - 10), NOW)).reason == "denied_account"
    assert v.refusal_text() is None


async def test_an_empty_key_set_never_wipes_the_keys(tmp_path: Path) -> None:
    v = verifier(tmp_path, Wall(NOW))
    assert v.update_keys(KeySet(NOW, {}), MQTT_KEYS).verdict is Verdict.EMPTY
    assert (await v.verify(ISSUER.token("acct-1", NOW - 10), NOW)).approved
    alarm = v.refusal_text()
    assert alarm is not None and "remove every key" in alarm


def test_a_set_dated_ahead_is_taken_once_the_lane_clock_gets_there(tmp_path: Path) -> None:
    """A lane that booted with its clock behind (no RTC, NTP not yet synced) refuses a sane
    set for now, and takes it without a re-delivery once its clock has been set."""
    wall = Wall(NOW - 86_400 * 30)
    v = verifier(tmp_path, wall)  # the file set, dated NOW - 3600, is refused for now...
    assert v.keys.keys == {}
    assert v.refused_counts[(UpdateKind.KEYSET, Verdict.FUTURE_DATED)] == 1
    alarm = v.refusal_text()
    wall.t += 1
    v.retry_pending()
    v.retry_pending()  # the same copy, judged again: counted, logged and worded once
    assert v.refused_counts[(UpdateKind.KEYSET, Verdict.FUTURE_DATED)] == 1
    assert v.refusal_text() == alarm
    wall.t = NOW  # ... NTP steps the clock
    v.retry_pending()
    assert v.keys.issued_at == NOW - 3600
    assert v.refusal_text() is None


def test_an_unreadable_update_is_refused_and_cleared_by_the_next_good_one(tmp_path: Path) -> None:
    v = verifier(tmp_path, Wall(NOW))
    with pytest.raises(KeySetError) as caught:
        decode_keyset(b"garbage", MQTT_KEYS)
    v.update_unreadable(UpdateKind.KEYSET, MQTT_KEYS, caught.value)
    assert v.refused_counts == {(UpdateKind.KEYSET, Verdict.INVALID): 1}
    assert v.update_keys(keyset(NOW - 3600), MQTT_KEYS).verdict is Verdict.NOT_NEWER
    assert v.refusal_text() is None  # a sane copy from the same source: the cause is gone


def test_refusals_of_two_sources_are_kept_apart(tmp_path: Path) -> None:
    v = verifier(tmp_path, Wall(NOW))
    v.update_keys(keyset(2**62), "file keyset.json")
    v.update_deny(DenyList.of(2**62, []), MQTT_DENY)
    text = v.refusal_text()
    assert text is not None and "file keyset.json" in text and MQTT_DENY in text
    v.forget_source(MQTT_DENY)  # the retained copy was deleted
    text = v.refusal_text()
    assert text is not None and MQTT_DENY not in text


def test_a_pending_set_is_replaced_by_its_sources_next_update(tmp_path: Path) -> None:
    """A set dated a day ahead waits; the back office's correction on the same topic replaces
    it, so it can never come back a day later over a rotation made in between."""
    wall = Wall(NOW)
    v = verifier(tmp_path, wall)
    assert v.update_keys(keyset(NOW + 86_400, ROTATED), MQTT_KEYS).retry_later
    assert v.update_keys(keyset(NOW, ISSUER), MQTT_KEYS).verdict is Verdict.ADOPT
    wall.t = NOW + 2 * 86_400
    v.retry_pending()
    assert v.keys.issued_at == NOW and v.keys.get(b"k2") is None
