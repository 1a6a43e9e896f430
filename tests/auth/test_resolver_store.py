"""The resolution store: durable intents, the transition table, schema versioning."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from disk_kit import break_table_page

from lane.auth.network_config import Network
from lane.auth.resolution_store import (
    FINAL,
    NETWORKS,
    SCHEMA_VERSION,
    TRANSITIONS,
    IllegalTransition,
    PaymentRow,
    PaymentState,
    ResolutionStore,
    StoreError,
    UnknownPayment,
)

S = PaymentState


def begin(
    store: ResolutionStore, pid: str = "pay_1", now_ms: int = 1000, network: Network = "acquirer"
) -> tuple[PaymentRow, bool]:
    return store.begin(
        pid,
        auth_id=f"auth-{pid}",
        lane="p01/l01",
        amount_minor=450,
        currency="CNY",
        method="payment_code",
        network=network,
        now_ms=now_ms,
    )


def test_intent_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "resolve.db"
    store = ResolutionStore(path)
    begin(store)
    store.close()
    again = ResolutionStore(path)
    row = again.get("pay_1")
    assert row is not None
    assert (row.state, row.amount_minor, row.auth_id) == (S.INTENT, 450, "auth-pay_1")
    assert again.in_states({S.INTENT}) == [row]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    again.close()


def test_the_network_is_written_with_the_intent(tmp_path: Path) -> None:
    path = tmp_path / "resolve.db"
    store = ResolutionStore(path)
    begin(store, "pay_ali", network="alipay")
    # No close: what a crash right after the pay request leaves, read by the next run.
    row = ResolutionStore(path).get("pay_ali")
    assert row is not None and (row.state, row.network) == (S.INTENT, "alipay")
    store.close()


def test_an_intent_without_a_known_network_is_never_written(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    with pytest.raises(StoreError, match="CHECK constraint"):
        begin(store, "pay_x", network="visa")  # type: ignore[arg-type]
    assert store.get("pay_x") is None
    store.close()


def test_every_state_and_network_fits_the_schema(tmp_path: Path) -> None:
    """A state or network added to the code needs a schema step that admits it."""
    path = tmp_path / "r.db"
    store = ResolutionStore(path)
    for network in NETWORKS:
        begin(store, network, network=network)
    assert {r.network for r in store.in_states({S.INTENT})} == set(NETWORKS)
    with sqlite3.connect(path) as db:
        for state in PaymentState:
            db.execute("UPDATE payments SET state = ?", (state.value,))
    store.close()


def test_begin_is_idempotent(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    begin(store)
    store.move("pay_1", S.CHARGED, 2000, acquirer_ref="acq-1")
    row, created = begin(store, "pay_1", now_ms=3000, network="wechatpay")
    assert not created
    assert (row.state, row.acquirer_ref, row.network) == (S.CHARGED, "acq-1", "acquirer")


def test_happy_path_and_illegal_moves(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    begin(store)
    with pytest.raises(IllegalTransition):
        store.move("pay_1", S.SETTLED, 2000)  # never settled before it was charged
    store.move("pay_1", S.CHARGED, 2000, acquirer_ref="acq-1")
    settled = store.move("pay_1", S.SETTLED, 3000)
    assert settled.state is S.SETTLED and settled.acquirer_ref == "acq-1"
    with pytest.raises(IllegalTransition) as err:
        store.move("pay_1", S.GIVEN_UP, 4000)  # a settled payment is never given up
    assert err.value.current is S.SETTLED
    row = store.get("pay_1")
    assert row is not None and (row.state, row.updated_ms) == (S.SETTLED, 3000)
    with pytest.raises(UnknownPayment):
        store.move("nope", S.CHARGED, 1)


def test_final_states_are_final() -> None:
    for state in FINAL:
        assert state in TRANSITIONS[state]  # idempotent
        assert TRANSITIONS[state] == {state}
    assert S.SETTLED not in TRANSITIONS[S.GIVEN_UP]  # once given up, the lane may not record it


def test_attempts_are_counted(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    begin(store)
    store.move("pay_1", S.GIVEN_UP, 2000, reason="timeout")
    store.note_attempt("pay_1", 2500, "acquirer down")
    store.note_attempt("pay_1", 2600, "acquirer down")
    row = store.get("pay_1")
    assert row is not None and (row.attempts, row.reason) == (2, "acquirer down")


def test_prune_removes_only_old_final_rows(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    for pid in ("old_final", "new_final", "old_open"):
        begin(store, pid)
    store.move("old_final", S.DECLINED, 1000, reason="x")
    store.move("new_final", S.DECLINED, 9000, reason="x")
    assert store.prune(before_ms=5000) == 1
    assert store.get("old_final") is None
    assert store.get("new_final") is not None and store.get("old_open") is not None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    ResolutionStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(
        StoreError, match=re.escape(f"{path}: schema version {SCHEMA_VERSION + 1} is newer")
    ):
        ResolutionStore(path)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        ResolutionStore(path)


def test_negative_amount_is_refused_by_the_schema(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    with pytest.raises(StoreError):
        store.begin(
            "p",
            auth_id="a",
            lane="l",
            amount_minor=-1,
            currency="CNY",
            method="emv",
            network="acquirer",
            now_ms=1,
        )
    assert store.get("p") is None


def test_a_refund_owed_is_written_with_the_settle_and_kept_until_made(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "resolve.db")
    for pid in ("pay_1", "pay_2", "pay_3"):
        begin(store, pid)
        store.move(pid, S.CHARGED, 1100)
    with pytest.raises(ValueError, match="no refund of 451"):
        store.move("pay_1", S.SETTLED, 1200, refund_minor=451)  # more than it charged
    assert store.get("pay_1").state is S.CHARGED  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="no refund"):
        store.move("pay_1", S.GIVEN_UP, 1200, refund_minor=100)  # only a settle owes one
    store.move("pay_1", S.SETTLED, 1200, refund_minor=150)
    store.move("pay_2", S.SETTLED, 1200)
    assert [r.payment_id for r in store.refunds_owed()] == ["pay_1"]
    assert store.prune(before_ms=10_000) == 1  # pay_2 only: a refund owed is never pruned
    store.refunded("pay_1", 2000, "SUCCESS")
    store.end_recorded("pay_1", "made:SUCCESS")  # its record is in the queue
    row = store.get("pay_1")
    assert row is not None and (row.refund_minor, row.refunded_ms, row.refund_owed) == (
        150, 2000, False
    )  # fmt: skip
    assert store.refunds_owed() == []
    assert store.prune(before_ms=10_000) == 1
    store.close()


def test_a_refund_in_the_networks_hands_is_kept_over_a_reopen_until_it_ends(
    tmp_path: Path,
) -> None:
    """v4: a refund taken and not finished (PROCESSING), and one ended unpaid (ABNORMAL),
    stay owed, each as it stands, in the file; a number unknown to the network is owed anew."""
    path = tmp_path / "resolve.db"
    store = ResolutionStore(path)
    for pid in ("pay_1", "pay_2"):
        begin(store, pid)
        store.move(pid, S.CHARGED, 1100)
        store.move(pid, S.SETTLED, 1200, refund_minor=150)
    store.refund_sent("pay_1", 1300)
    again = store.refund_sent("pay_1", 1400)  # asked about again: still sent since the first
    unpaid = store.refund_ended_unpaid("pay_2", "ABNORMAL", 1500)
    # Each write hands back the row as it now stands (the resolver's pass reads no more).
    assert again == store.get("pay_1") and again is not None and again.refund_sent_ms == 1300
    assert unpaid == store.get("pay_2") and unpaid is not None and unpaid.refund_failed
    store.close()

    store = ResolutionStore(path)
    first, second = store.refunds_owed()
    assert (first.refund_sent_ms, first.refund_failed, first.refund_processing) == (
        1300, None, True
    )  # fmt: skip
    assert (second.refund_sent_ms, second.refund_failed, second.refund_processing) == (
        1500, "ABNORMAL", False
    )  # fmt: skip
    assert store.prune(before_ms=10_000) == 0  # neither is made: both stay
    row = store.refund_unsent("pay_1", 1600)
    assert row == store.get("pay_1")
    assert row is not None and (row.refund_sent_ms, row.refund_owed) == (None, True)
    store.refunded("pay_2", 1700, "SUCCESS")
    row = store.get("pay_2")
    assert row is not None and (row.refunded_ms, row.refund_failed) == (1700, "ABNORMAL")
    assert store.refund_sent("pay_2", 1800) is None  # made: owed no more, left as it is
    assert [r.payment_id for r in store.refunds_owed()] == ["pay_1"]
    store.close()


def test_a_refund_is_named_by_where_it_stands(tmp_path: Path) -> None:
    """`refund_state`, as `lane refunds` and the simulator say it: owed until asked, failing
    once the network refused it, processing once taken, unpaid with the network's word,
    made."""
    store = ResolutionStore(tmp_path / "resolve.db")
    for pid in ("pay_1", "pay_2", "pay_3"):
        begin(store, pid)
        store.move(pid, S.CHARGED, 1100)
        store.move(pid, S.SETTLED, 1200, refund_minor=150)

    def state(pid: str) -> str:
        row = store.get(pid)
        assert row is not None
        return row.refund_state

    assert state("pay_1") == "owed"
    store.note_attempt("pay_1", 1300, "seller_balance_not_enough")
    store.refund_sent("pay_2", 1300)
    store.refund_ended_unpaid("pay_3", "CLOSED", 1300)
    assert [state(p) for p in ("pay_1", "pay_2", "pay_3")] == [
        "failing", "processing", "unpaid (CLOSED)"
    ]  # fmt: skip
    assert [r.refund_stage for r in store.refunds_owed()] == ["failing", "processing", "unpaid"]
    store.refunded("pay_3", 1400, "SUCCESS")
    assert state("pay_3") == "made"
    store.close()


def test_prune_keeps_a_row_only_while_its_refund_is_owed(tmp_path: Path) -> None:
    """A payment given up after `owe_refund` is reversed whole: its `refund_minor` stays on
    the row but nothing is owed, so it is pruned; settled ones whose refund is owed, in the
    network's hands or ended unpaid stay, and go once it is made."""
    store = ResolutionStore(tmp_path / "resolve.db")
    for pid in ("reversed", "owed", "processing", "unpaid"):
        begin(store, pid)
        store.move(pid, S.CHARGED, 1100)
        store.owe_refund(pid, 150, 1150)
    store.move("reversed", S.GIVEN_UP, 1200, reason="gave_up")
    store.move("reversed", S.REVERSED, 1300, reason="reversed:succeeded")
    for pid in ("owed", "processing", "unpaid"):
        store.move(pid, S.SETTLED, 1200, refund_minor=150)
    store.refund_sent("processing", 1300)
    store.refund_ended_unpaid("unpaid", "ABNORMAL", 1300)
    gone = store.get("reversed")
    assert gone is not None and (gone.refund_minor, gone.refunded_ms) == (150, None)

    assert store.prune(before_ms=10_000) == 1
    assert store.get("reversed") is None
    assert [r.payment_id for r in store.refunds_owed()] == ["owed", "processing", "unpaid"]
    store.refunded("processing", 2000, "SUCCESS")
    store.refund_made_by_hand("unpaid", 2000)
    assert store.prune(before_ms=10_000) == 0  # made: kept until each end is recorded
    for row in store.ends_unrecorded():
        assert row.refund_end is not None
        store.end_recorded(row.payment_id, row.refund_end)
    assert store.prune(before_ms=10_000) == 2
    assert [r.payment_id for r in store.refunds_owed()] == ["owed"]
    store.close()


def test_the_probe_fails_where_a_payment_could_not_begin_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """A page of the payments table broken under a running lane: no payment can begin, and
    the probe that tells the lane the store works again fails too; a prune still commits."""
    path = tmp_path / "payments.sqlite3"
    store = ResolutionStore(path)
    for i in range(50):
        begin(store, f"pay_{i}", now_ms=1000 + i)
    store.probe()
    assert len(store.in_states(set(S))) == 50  # the probe's own payment is gone with it
    break_table_page(path, "payments")
    with pytest.raises(StoreError, match="malformed"):
        begin(store, "pay_late", now_ms=5000)
    store.prune(10**12)  # commits: no proof that a payment could begin
    with pytest.raises(StoreError, match="malformed"):
        store.probe()
    store.close()
