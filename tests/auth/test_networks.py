"""UnionPay codes, routing codes to networks (real fakes of all three), the `[auth]` network
config and the key files' permission checks."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polling import eventually

from lane.auth import netkeys
from lane.auth.acquirer import (
    AcquirerClient,
    AcquirerProtocolError,
    AcquirerUnavailable,
    PaymentStatus,
    PayRequest,
)
from lane.auth.network_config import Network
from lane.auth.networks import (
    CodeKind,
    NetworkKeys,
    NetworkRouter,
    NoAcquirer,
    WatchedAcquirer,
    build_acquirer,
    code_kind,
)
from lane.auth.paycodes import online_code
from lane.auth.resolver import PaymentState, ResolutionStore
from lane.checks import check_config
from lane.config import ConfigError, parse_config
from scanner.payload import PaymentCodePayload, UnknownPayload, classify
from sim.acquirer import running_acquirer

Keys = dict[str, Any]  # name -> conftest.KeyPair
APP_ID, MCHID, APPID = "2021000000000001", "1900000100", "wx8888888888888888"  # config only
_n = itertools.count(1)


def unionpay() -> str:
    return f"62{next(_n):017d}"


def alipay() -> str:
    return f"28{next(_n):016d}"


def wechat() -> str:
    return f"13{next(_n):016d}"


# -- UnionPay codes ----------------------------------------------------------------------------


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_19_digits_starting_62_are_unionpay_payment_codes(rest: str) -> None:
    payload = classify("62" + rest)
    assert isinstance(payload, PaymentCodePayload) and payload.wallet == "unionpay"


@pytest.mark.parametrize("text", ["62" + "1" * 16, "62" + "1" * 18, "63" + "1" * 17, "6" * 19])
def test_near_misses_are_not_unionpay(text: str) -> None:
    payload = classify(text)
    assert not (isinstance(payload, PaymentCodePayload) and payload.wallet == "unionpay")
    if text.startswith("62"):
        assert isinstance(payload, UnknownPayload)


def test_unionpay_code_is_an_online_payment_code() -> None:
    code = unionpay()
    online = online_code("payment_code", code, b"k" * 32)
    assert online.wire == code and online.account_ref.startswith("unionpay:")
    assert code_kind(code) == "unionpay"
    with pytest.raises(ValueError, match=r"not an online payment code"):
        code_kind("hello")


# -- routing against the three fakes -----------------------------------------------------------


@pytest.fixture
def three_networks(alipay_gateway: Any, wechat_gateway: Any) -> Any:
    """`async with three_networks() as env`: our acquirer (UnionPay, EMV) and both networks'
    fakes, each with its client; `env["fakes"][kind]` is the server for that kind."""

    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[dict[str, Any]]:
        async with (
            running_acquirer(seed=1) as acquirer,
            AcquirerClient(acquirer.url) as union,
            alipay_gateway(seed=2) as (ali, alic),
            wechat_gateway(min_reverse_age_s=0.0, reverse_after_s=0.0, seed=3) as (wx, wxc),
        ):
            fakes = {"unionpay": acquirer, "alipay": ali, "wechat": wx}
            yield {"fakes": fakes, "unionpay": union, "alipay": alic, "wechat": wxc}

    return make


ROUTES: dict[CodeKind, Network] = {
    "alipay": "alipay",
    "wechat": "wechatpay",
    "unionpay": "acquirer",
    "emv": "acquirer",
}


def router(env: dict[str, Any]) -> NetworkRouter:
    """Alipay is asked last about a payment it does not know: the other two first."""
    networks: dict[Network, Any] = {
        "acquirer": env["unionpay"],
        "wechatpay": env["wechat"],
        "alipay": env["alipay"],
    }
    return NetworkRouter(networks, ROUTES)


async def test_each_code_goes_to_its_network(three_networks: Any, net_lane: Any) -> None:
    async with three_networks() as env:
        fakes = env["fakes"]
        async with net_lane(router(env), fakes["unionpay"]) as lane:
            for kind, code in (
                ("alipay", alipay()),
                ("wechat", wechat()),
                ("unionpay", unionpay()),
            ):
                decision = await lane.auth.authorise(lane.request(code))
                assert decision.approved, (kind, decision)
                ids = [p["payment_id"] for p in fakes[kind].payments()]
                assert len(ids) == 1, kind
        assert all(len(f.payments()) == 1 for f in fakes.values())


@pytest.mark.parametrize("kind", ["alipay", "wechat"])
@pytest.mark.parametrize(
    ("fault", "reason"), [("slow_body_rate", "timeout"), ("cut_body_rate", "acquirer_unavailable")]
)
async def test_a_network_answer_stalled_or_cut_mid_body_is_declined_in_time_then_reversed(
    three_networks: Any, net_lane: Any, kind: str, fault: str, reason: str
) -> None:
    async with three_networks() as env, net_lane(router(env), env["fakes"][kind]) as lane:
        fake = env["fakes"][kind]
        fake.update_faults(**{fault: 1.0})  # headers at once, then a byte a second or a cut
        async with asyncio.timeout(10 * 0.4):  # the budget, not the body's minutes
            decision = await lane.auth.authorise(
                lane.request(alipay() if kind == "alipay" else wechat())
            )
        assert (decision.approved, decision.reason) == (False, reason)
        assert [p["charged"] for p in fake.payments()] == [True]  # taken once, in doubt
        fake.update_faults(**{fault: 0.0})
        assert await lane.final(decision.payment_id) is PaymentState.REVERSED
        assert lane.charged_not_reversed() == []


async def test_after_a_restart_the_router_finds_each_payment(three_networks: Any) -> None:
    async with three_networks() as env:
        first = router(env)
        for pid, code in (
            ("pay_" + "1" * 32, alipay()),
            ("pay_" + "2" * 32, wechat()),
            ("pay_" + "3" * 32, unionpay()),
        ):
            answer = await first.pay(PayRequest(pid, code, 300, "CNY", "p07/l03"), 1.0)
            assert answer.status is PaymentStatus.SUCCEEDED
        again = router(env)  # a new process: knows nothing
        for pid, kind in (
            ("pay_" + "1" * 32, "alipay"),
            ("pay_" + "2" * 32, "wechat"),
            ("pay_" + "3" * 32, "unionpay"),
        ):
            assert (await again.query(pid, 1.0)).status is PaymentStatus.SUCCEEDED
            assert (await again.reverse(pid, 1.0)).status is PaymentStatus.REVERSED
            otn = pid.removeprefix("pay_") if kind == "wechat" else pid
            assert env["fakes"][kind].payment(otn).status == "REVERSED"


async def test_a_payment_nobody_knows_is_voided_everywhere(three_networks: Any) -> None:
    async with three_networks() as env:
        r = router(env)
        pid = "pay_" + "9" * 32
        assert (await r.query(pid, 1.0)).status is PaymentStatus.NOT_FOUND
        assert (await r.reverse(pid, 1.0)).status is PaymentStatus.REVERSED
        fakes = env["fakes"]
        assert fakes["alipay"].payment(pid).status == "REVERSED"
        assert fakes["wechat"].payment("9" * 32).status == "REVERSED"
        assert fakes["unionpay"].payment(pid).status == "REVERSED"
        # The void holds: the pay request that was on its way is refused.
        late = await r.pay(PayRequest(pid, alipay(), 300, "CNY", "p07/l03"), 1.0)
        assert late.status is PaymentStatus.REVERSED


async def test_resolver_reverses_through_the_router(three_networks: Any, net_lane: Any) -> None:
    async with three_networks() as env:
        fakes = env["fakes"]
        fakes["wechat"].update_faults(late_success_rate=1.0, late_success_ms=1)
        async with net_lane(router(env), fakes["wechat"]) as lane:
            decision = await lane.auth.authorise(lane.request(wechat(), budget_s=0.2))
            assert decision.reason == "timeout"
            assert await lane.final(decision.payment_id) is PaymentState.REVERSED
            assert lane.charged_not_reversed() == []


async def test_the_router_holds_only_open_payments(three_networks: Any, net_lane: Any) -> None:
    """Settled, declined and reversed payments leave the router's memory; one in doubt stays
    until it is final (payments.sqlite3 holds the network for good)."""
    async with three_networks() as env:
        fakes = env["fakes"]
        r = router(env)
        async with net_lane(r, fakes["unionpay"]) as lane:
            for make in (alipay, wechat, unionpay) * 5:  # settled: the lane recorded each
                req = lane.request(make())
                decision = await lane.auth.authorise(req)
                assert decision.approved, decision
                await lane.auth.settle(req.auth_id)
            fakes["alipay"].update_faults(decline_rate=1.0)
            for _ in range(5):
                decision = await lane.auth.authorise(lane.request(alipay()))
                assert not decision.approved and decision.payment_id is not None
            fakes["alipay"].update_faults(decline_rate=0.0)
            abandoned = lane.request(wechat())
            decision = await lane.auth.authorise(abandoned)
            await lane.auth.abandon(abandoned.auth_id)
            assert await lane.final(decision.payment_id) is PaymentState.REVERSED
            in_doubt = lane.request(alipay())
            decision = await lane.auth.authorise(in_doubt)  # approved, not yet recorded
            assert decision.approved
            assert len(r) == 1  # 21 final payments forgotten
            assert r.reverse_rule(decision.payment_id) == env["alipay"].reverse_rule("")
            asked = {kind: fake.api_requests for kind, fake in fakes.items()}
            await lane.auth.abandon(in_doubt.auth_id)  # still known: reversed on Alipay alone
            assert await lane.final(decision.payment_id) is PaymentState.REVERSED
            after = {kind: fake.api_requests - asked[kind] for kind, fake in fakes.items()}
            assert after == {"unionpay": 0, "wechat": 0, "alipay": 2}
            assert len(r) == 0


# -- which network took a payment, across restarts ---------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "ops" / "fixtures"


async def test_the_network_is_on_disk_before_the_pay_request_leaves(
    three_networks: Any, net_lane: Any, tmp_path: Path
) -> None:
    path = tmp_path / "payments.sqlite3"
    async with three_networks() as env:
        fake = env["fakes"]["alipay"]
        fake.update_faults(hang_rate=1.0)
        async with net_lane(router(env), fake, store=path, resolving=False) as lane:
            paying = asyncio.create_task(lane.auth.authorise(lane.request(alipay(), budget_s=5)))
            await eventually(lambda: fake.api_requests == 1, what="the pay request sent")
            paying.cancel()  # the lane dies with the request on its way
            with contextlib.suppress(asyncio.CancelledError):
                await paying
    (row,) = ResolutionStore(path).in_states(set(PaymentState))  # what the next run finds
    assert (row.state, row.network) == (PaymentState.INTENT, "alipay")


async def test_a_restarted_lane_asks_only_the_network_that_took_the_payment(
    three_networks: Any, net_lane: Any, tmp_path: Path
) -> None:
    path = tmp_path / "payments.sqlite3"
    async with three_networks() as env:
        fakes = env["fakes"]
        fakes["alipay"].update_faults(late_success_rate=1.0, late_success_ms=1)
        async with net_lane(router(env), fakes["alipay"], store=path, resolving=False) as lane:
            decision = await lane.auth.authorise(lane.request(alipay(), budget_s=0.2))
        pid = decision.payment_id
        assert decision.reason == "timeout" and pid is not None  # in doubt; then the lane dies

        def charged() -> bool:
            payment = fakes["alipay"].payment(pid)
            return payment is not None and payment.charged

        await eventually(charged, what="the late success")
        asked = {kind: fake.api_requests for kind, fake in fakes.items()}

        # A new process: a new router that knows nothing, a new store on the same file.
        async with net_lane(router(env), fakes["alipay"], store=path) as again:
            assert await again.final(pid) is PaymentState.REVERSED
        assert fakes["alipay"].payment(pid).status == "REVERSED"  # alipay.trade.cancel
        # One query and one cancel, to Alipay alone (the router would ask the others first).
        after = {kind: fake.api_requests - asked[kind] for kind, fake in fakes.items()}
        assert after == {"unionpay": 0, "wechat": 0, "alipay": 2}


async def test_a_payment_its_network_never_saw_is_voided_there_alone(
    three_networks: Any, net_lane: Any, tmp_path: Path
) -> None:
    """The pay request was lost on its way to WeChat Pay: the next run voids it there, by WeChat
    Pay's rules, and leaves the other networks alone (a v1 row was voided on all three)."""
    path = tmp_path / "payments.sqlite3"
    pid = "pay_" + "7" * 32
    async with three_networks() as env:
        fakes = env["fakes"]
        async with net_lane(router(env), fakes["wechat"], store=path, resolving=False) as lane:
            _, created = await lane.resolver.begin(
                pid,
                auth_id="auth-lost",
                lane=lane.lane,
                amount_minor=450,
                currency="CNY",
                method="payment_code",
                network="wechatpay",
            )
            assert created  # and the lane dies before its pay request arrives
        async with net_lane(router(env), fakes["wechat"], store=path) as again:
            assert await again.final(pid) is PaymentState.REVERSED
        assert fakes["wechat"].payment("7" * 32).status == "REVERSED"
        assert fakes["unionpay"].api_requests == fakes["alipay"].api_requests == 0


async def test_a_payment_of_a_v1_file_is_looked_for_on_each_network(
    three_networks: Any, net_lane: Any, tmp_path: Path
) -> None:
    """Rows from before the network was recorded keep the old behaviour: ask each network (and
    void what nobody knows on all of them)."""
    path = tmp_path / "payments.sqlite3"
    shutil.copy(FIXTURES / "payments_v1.sqlite", path)
    in_doubt = ["pay_" + f"{n:032x}" for n in (1, 2)]  # left open by a crash; given up
    async with three_networks() as env:
        fakes = env["fakes"]
        async with net_lane(router(env), fakes["unionpay"], store=path) as lane:
            for pid in in_doubt:
                assert await lane.final(pid) is PaymentState.REVERSED
        for pid in in_doubt:
            assert fakes["unionpay"].payment(pid).status == "REVERSED"
            assert fakes["alipay"].payment(pid).status == "REVERSED"
            assert fakes["wechat"].payment(pid.removeprefix("pay_")).status == "REVERSED"


async def test_a_payment_of_a_network_no_longer_routed_is_looked_for_on_each(
    three_networks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with three_networks() as env:
        pid = "pay_" + "5" * 32
        paid = await env["alipay"].pay(PayRequest(pid, alipay(), 300, "CNY", "p07/l03"), 1.0)
        assert paid.status is PaymentStatus.SUCCEEDED
        # The lane was reconfigured: WeChat codes go to the acquirer, WeChat Pay is gone.
        r = NetworkRouter(
            {"acquirer": env["unionpay"], "alipay": env["alipay"]}, {**ROUTES, "wechat": "acquirer"}
        )
        with caplog.at_level(logging.WARNING):
            r.remember(pid, "wechatpay")
        assert "recorded for WeChat Pay, which is not configured" in caplog.text
        assert (await r.query(pid, 1.0)).status is PaymentStatus.SUCCEEDED  # found on Alipay
        assert (await r.reverse(pid, 1.0)).status is PaymentStatus.REVERSED


# -- config, key files -------------------------------------------------------------------------


def network_config(tmp: Path, keys: Keys, **routes: str) -> dict[str, Any]:
    ali_key, _ = keys["merchant"].write(tmp, "merchant")
    _, ali_pub = keys["alipay"].write(tmp, "alipay")
    _, wx_pub = keys["wechat"].write(tmp, "wechat")
    return {
        "auth": {
            "acquirer_url": "http://127.0.0.1:9",
            "routes": routes,
            "alipay": {
                "app_id": APP_ID,
                "private_key_file": str(ali_key),
                "alipay_public_key_file": str(ali_pub),
            },
            "wechatpay": {
                "mchid": MCHID,
                "appid": APPID,
                "serial_no": "S1",
                "private_key_file": str(ali_key),
                "platform_public_key_file": str(wx_pub),
                "platform_serial": "P1",
            },
        }
    }


async def test_build_acquirer_from_config(tmp_path: Path, network_keys: Keys) -> None:
    cfg = parse_config(
        network_config(tmp_path, network_keys, alipay="alipay", wechat="wechatpay")
    ).auth
    async with aiohttp.ClientSession() as session:
        built = build_acquirer(cfg, NetworkKeys.load(cfg), session)
        assert isinstance(built.acquirer, NetworkRouter)
        assert built.upkeep == ()  # public-key mode: WeChat Pay's key does not rotate
        plain = parse_config({"auth": {"acquirer_url": "http://x"}}).auth
        plain_built = build_acquirer(plain, NetworkKeys.load(plain), session)
        assert isinstance(plain_built.acquirer, AcquirerClient)


def test_a_route_to_an_unconfigured_network_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"routes.unionpay = 'alipay' needs an \[auth.alipay\]"):
        parse_config({"auth": {"routes": {"unionpay": "alipay"}}})
    with pytest.raises(ConfigError, match=r"routes\.emv"):
        parse_config({"auth": {"routes": {"emv": "visa"}}})


def test_private_key_readable_by_others_is_refused(
    tmp_path: Path, network_keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    raw = network_config(tmp_path, network_keys, alipay="alipay")
    key_file = Path(raw["auth"]["alipay"]["private_key_file"])
    key_file.chmod(0o644)
    cfg = parse_config(raw).auth
    with caplog.at_level(logging.DEBUG), pytest.raises(netkeys.KeyFileError) as err:
        NetworkKeys.load(cfg)
    assert str(key_file) in str(err.value) and "0644" in str(err.value)
    assert "PRIVATE KEY" not in str(err.value) + caplog.text
    key_file.chmod(0o600)
    assert NetworkKeys.load(cfg).alipay is not None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
            "not an unencrypted",
        )
    ],
)
def test_unusable_private_key_file_never_shows_its_content(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(netkeys.KeyFileError, match=match) as err:
        netkeys.load_private_key(path)
    assert "not a key" not in str(err.value)


def test_public_key_forms(tmp_path: Path, network_keys: Keys) -> None:
    _, pem = network_keys["alipay"].write(tmp_path, "alipay")
    body = b"".join(line for line in pem.read_bytes().splitlines() if b"-----" not in line)
    bare = tmp_path / "alipay-bare.pub"
    bare.write_bytes(body)  # how Alipay's console hands its key out: Base64, no armour
    assert (
        netkeys.load_public_key(bare).public_numbers()
        == network_keys["alipay"].public.public_numbers()
    )
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"hello")
    with pytest.raises(netkeys.KeyFileError, match=r"junk\.pub"):
        netkeys.load_public_key(junk)


# -- the operator's alarm ----------------------------------------------------------------------


async def test_a_failing_network_raises_an_alarm_that_clears_itself(three_networks: Any) -> None:
    alarms: list[tuple[str, str | None]] = []
    async with three_networks() as env:
        ali = WatchedAcquirer(env["alipay"], "alipay", lambda c, m: alarms.append((c, m)))
        fake = env["fakes"]["alipay"]
        fake.update_faults(error_rate=1.0)
        for pid in ("pay_w1", "pay_w2"):  # a long outage is one alarm, not one per vehicle
            with pytest.raises(AcquirerUnavailable):
                await ali.pay(PayRequest(pid, alipay(), 300, "CNY", "p07/l03"), 1.0)
        assert [(c, (m or "").split(":")[0]) for c, m in alarms] == [
            ("payment_alipay", "Alipay unreachable")
        ]
        fake.update_faults(error_rate=0.0)
        assert (await ali.query("pay_w1", 1.0)).status is PaymentStatus.NOT_FOUND
        assert alarms[-1] == ("payment_alipay", None)  # cleared by the next good answer


async def test_an_untrusted_network_says_so(wechat_gateway: Any) -> None:
    alarms: list[tuple[str, str | None]] = []
    async with wechat_gateway(signer="impostor") as (_, client):
        watched = WatchedAcquirer(client, "wechatpay", lambda c, m: alarms.append((c, m)))
        with pytest.raises(AcquirerProtocolError):
            await watched.query("pay_" + "e" * 32, 1.0)
    ((code, message),) = alarms
    assert code == "payment_wechatpay"
    assert message is not None and "WeChat Pay answers cannot be trusted" in message
    assert "bad signature" in message


async def test_no_acquirer_configured_is_no_alarm(network_keys: Keys, tmp_path: Path) -> None:
    cfg = parse_config(network_config(tmp_path, network_keys, alipay="alipay")).auth
    cfg = cfg.model_copy(update={"acquirer_url": None})
    async with aiohttp.ClientSession() as session:
        built = build_acquirer(
            cfg, NetworkKeys.load(cfg), session, alarm=lambda c, m: None
        ).acquirer
        assert isinstance(built, NetworkRouter)
        networks = built._networks  # the wiring itself is what is under test
        assert isinstance(networks["alipay"], WatchedAcquirer)
        assert isinstance(networks["acquirer"], NoAcquirer)
        assert built.network_for(unionpay()) == "acquirer"


async def test_no_acquirer_is_unavailable_at_once_so_codes_follow_the_offline_policy() -> None:
    """Not a client of an address where nothing listens: a type that never touches the network."""
    cfg = parse_config({}).auth
    async with aiohttp.ClientSession() as session:
        built = build_acquirer(cfg, NetworkKeys.load(cfg), session).acquirer
    assert isinstance(built, NoAcquirer)
    with pytest.raises(AcquirerUnavailable, match="no acquirer configured"):
        await built.pay(PayRequest("pid-1", "281234567890123456", 450, "CNY", "p01/l01"), 1.0)
    for call in (built.query, built.reverse):
        with pytest.raises(AcquirerUnavailable):
            await call("pid-1", 1.0)


def test_check_config_reports_network_problems(tmp_path: Path, network_keys: Keys) -> None:
    raw = network_config(tmp_path, network_keys, wechat="wechatpay")
    key_file = Path(raw["auth"]["wechatpay"]["private_key_file"])
    key_file.chmod(0o640)
    wx = raw["auth"]["wechatpay"]
    path = tmp_path / "lane.toml"
    path.write_text(
        # A lane on its own: it tells no other lane anything, so it needs no lane key.
        '[auth]\nacquirer_url = "http://127.0.0.1:9"\nshare_used_tokens = false\n'
        '[auth.routes]\nwechat = "wechatpay"\n'
        "[auth.wechatpay]\n" + "".join(f'{k} = "{v}"\n' for k, v in wx.items())
    )
    problems = check_config(path).problems
    assert any("mode 0640" in p and str(key_file) in p for p in problems)
    assert any("wechatpay charge in CNY, but the fares are in EUR" in p for p in problems)
    key_file.chmod(0o600)
    path.write_text(path.read_text() + '[fares]\ncurrency = "CNY"\n')
    assert check_config(path).problems == []
