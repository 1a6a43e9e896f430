"""Which acquirer takes which code: Alipay, WeChat Pay, or our acquirer API (UnionPay, EMV).

`NetworkRouter` is itself an `Acquirer`: the authoriser and the resolver do not know there is
more than one. A pay call is routed by the code's kind (`scanner.payload.classify`); the router
remembers where each payment went, so its query and reversal go there too, until the resolver
sees the payment final and drops it (`forget`): the memory holds open payments only. The
authoriser records that network (`network_for`) with the intent to pay, and after a restart
the resolver hands it back (`remember`) before it queries or reverses. A payment without one
(written before payments.sqlite3 v2, or by a network no longer configured) is looked for on
each network in turn; one nobody knows is voided on every network (a pay request still on its way
to any of them is then refused, where the network supports it; the daily reconciliation finds
the rest).

`NetworkKeys.load` reads the routed networks' keys once, at start, from files with permission
checks (`netkeys.read_secret`), never from the config text (and WeChat Pay's downloaded platform
certificates from the lane's data directory); `build_acquirer` makes the lane's acquirer from
`[auth]` and those keys, each network watched by `WatchedAcquirer` for the operator's alarm,
and the background work the networks need while the lane runs (`BuiltNetworks.upkeep`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import netkeys
from lane.auth.acquirer import (
    Acquirer,
    AcquirerClient,
    AcquirerProtocolError,
    AcquirerResult,
    AcquirerTimeout,
    AcquirerUnavailable,
    AlarmSink,
    OneNetwork,
    PaymentStatus,
    PayRequest,
    RefundAnswer,
    RefundRefused,
    RefundRequest,
    RequestObserver,
    ReverseRule,
)
from lane.auth.alipay import AlipayClient
from lane.auth.network_config import AlipaySection, Network, RoutesSection, WeChatPaySection
from lane.auth.wechatpay import WeChatPayClient
from lane.auth.wechatpay_trust import (
    CertificateFiles,
    CertificateUnansweredError,
    FixedPlatformKey,
    PlatformCertificates,
    PlatformTrust,
    Sleep,
    load_certificate_files,
)
from scanner.payload import EmvPayload, PaymentCodePayload, classify

T = TypeVar("T")
log = logging.getLogger("lane.auth.networks")

CodeKind = Literal["alipay", "wechat", "unionpay", "emv"]


class AuthSection(Protocol):
    """What the networks read of the lane's `[auth]` config (`lane.config.AuthSection`)."""

    @property
    def acquirer_url(self) -> str | None: ...
    @property
    def routes(self) -> RoutesSection: ...
    @property
    def alipay(self) -> AlipaySection | None: ...
    @property
    def wechatpay(self) -> WeChatPaySection | None: ...


class NoAcquirer(OneNetwork):
    """The acquirer port of a lane configured without one: every call is unavailable at once,
    so every online code follows the offline policy, as it would in an acquirer outage."""

    network = "acquirer"
    reason = "no acquirer configured"

    def reverse_rule(self, payment_id: str) -> ReverseRule:
        return ReverseRule()

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        raise AcquirerUnavailable(self.reason)

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        raise AcquirerUnavailable(self.reason)

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        raise AcquirerUnavailable(self.reason)

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        raise AcquirerUnavailable(self.reason)

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        raise AcquirerUnavailable(self.reason)


class UnroutableCodeError(ValueError):
    """A code of no online kind reached the router (the authoriser checks kinds first)."""


def code_kind(code: str) -> CodeKind:
    payload = classify(code)
    if isinstance(payload, PaymentCodePayload):
        return payload.wallet
    if isinstance(payload, EmvPayload):
        return "emv"
    raise UnroutableCodeError(f"not an online payment code ({payload.kind})")


class NetworkRouter:
    """`networks` by name, and which of them takes each kind of code (`[auth.routes]`)."""

    def __init__(
        self, networks: Mapping[Network, Acquirer], routes: Mapping[CodeKind, Network]
    ) -> None:
        self._networks = dict(networks)
        self._routes = dict(routes)
        # payment_id -> the network that has it, while the payment is open: the resolver
        # drops it once final (`forget`) and hands it back from payments.sqlite3 (`remember`).
        self._where: dict[str, Network] = {}

    def network_for(self, code: str) -> Network:
        return self._routes[code_kind(code)]

    def remember(self, payment_id: str, network: Network) -> None:
        if self._where.get(payment_id) == network:
            return
        self._where[payment_id] = network
        if network not in self._networks:  # the config changed since: look everywhere
            log.warning(
                "payment recorded for %s, which is not configured: asking each network",
                NETWORK_NAMES[network],
                extra={"payment_id": payment_id, "network": network},
            )

    def forget(self, payment_id: str) -> None:
        self._where.pop(payment_id, None)

    def __len__(self) -> int:
        """How many payments the router holds a network for (bounded by the open ones)."""
        return len(self._where)

    def reverse_rule(self, payment_id: str) -> ReverseRule:
        network = self._known(payment_id)
        if network is not None:
            return network.reverse_rule(payment_id)
        rules = [n.reverse_rule(payment_id) for n in self._networks.values()]  # the strictest
        graces = [r.pending_grace_s for r in rules if r.pending_grace_s is not None]
        return ReverseRule(
            min_age_s=max(r.min_age_s for r in rules),
            pending_grace_s=max(graces) if len(graces) == len(rules) else None,
        )

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        name = self.network_for(request.code)
        self._where[request.payment_id] = name
        return await self._networks[name].pay(request, timeout_s)

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        network = self._known(payment_id)
        if network is not None:
            return await network.query(payment_id, timeout_s)
        found = await self._find(payment_id, timeout_s)
        if found is None:
            return AcquirerResult(payment_id, PaymentStatus.NOT_FOUND)
        return found[1]

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        network = self._known(payment_id)
        if network is None:
            found = await self._find(payment_id, timeout_s)
            if found is None:  # nobody has it: void it everywhere
                networks = self._networks.values()
                results = [await n.reverse(payment_id, timeout_s) for n in networks]
                return results[0]
            network = found[0]
        return await network.reverse(payment_id, timeout_s)

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        """Only a settled payment is refunded, and the resolver hands its recorded network back
        first (`remember`); one it cannot place is looked for like a query."""
        network = await self._refunder(request.payment_id, timeout_s)
        return await network.refund(request, timeout_s)

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        network = await self._refunder(request.payment_id, timeout_s)
        return await network.refund_status(request, timeout_s)

    async def _refunder(self, payment_id: str, timeout_s: float) -> Acquirer:
        network = self._known(payment_id)
        if network is None:
            found = await self._find(payment_id, timeout_s)
            if found is None:
                raise RefundRefused("trade_not_exist", "no network knows this payment")
            network = found[0]
        return network

    def _known(self, payment_id: str) -> Acquirer | None:
        name = self._where.get(payment_id)
        return None if name is None else self._networks.get(name)

    async def _find(
        self, payment_id: str, timeout_s: float
    ) -> tuple[Acquirer, AcquirerResult] | None:
        for name, network in self._networks.items():
            answer = await network.query(payment_id, timeout_s)
            if answer.status is not PaymentStatus.NOT_FOUND:
                self._where[payment_id] = name
                return network, answer
        return None


NETWORK_NAMES: dict[Network, str] = {
    "acquirer": "the acquirer",
    "alipay": "Alipay",
    "wechatpay": "WeChat Pay",
}


UNANSWERED = "certificate_unanswered"  # WatchedAcquirer's state: the download got no answer


class WatchedAcquirer:
    """An acquirer whose failures are an operator's alarm, cleared by its next good answer.

    `payment_<network>` is raised when the network cannot be reached (connection, 5xx) or
    answers something that cannot be trusted (bad signature, unknown key, our request refused),
    with a text saying which; timeouts and declines are business as usual. Only changes are
    reported, so a long outage is one alarm, not one per vehicle. An answer refused because
    WeChat Pay's certificate download got no answer says so, and clears as soon as a download
    is answered (the idle lane's look too), not only at the next call's good answer.
    """

    def __init__(self, inner: Acquirer, network: Network, alarm: AlarmSink) -> None:
        self._inner = inner
        self._code = f"payment_{network}"
        self._name = NETWORK_NAMES[network]
        self._alarm = alarm
        self._state: str | None = None
        self._answers = 0  # certificate downloads answered, as the platform last told
        if isinstance(inner, WeChatPayClient) and isinstance(inner.platform, PlatformCertificates):
            inner.platform.when_answered(self._download_answered)

    def reverse_rule(self, payment_id: str) -> ReverseRule:
        return self._inner.reverse_rule(payment_id)

    def network_for(self, code: str) -> Network:
        return self._inner.network_for(code)

    def remember(self, payment_id: str, network: Network) -> None:
        self._inner.remember(payment_id, network)

    def forget(self, payment_id: str) -> None:
        self._inner.forget(payment_id)

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        return await self._watch(self._inner.pay(request, timeout_s))

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        return await self._watch(self._inner.query(payment_id, timeout_s))

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        return await self._watch(self._inner.reverse(payment_id, timeout_s))

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        return await self._watch(self._inner.refund(request, timeout_s))

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        return await self._watch(self._inner.refund_status(request, timeout_s))

    async def _watch(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            result = await call
        except AcquirerUnavailable as exc:
            self._set(
                "unreachable", f"{self._name} unreachable: online codes follow the policy ({exc})"
            )
            raise
        except CertificateUnansweredError as exc:
            # A download answered since the one this call gave up on has cleared the alarm
            # already (the call's end can come after it): raising it again would hold it on
            # an idle lane until WeChat Pay's next answer.
            if exc.answers < self._answers:
                raise
            stalls = isinstance(exc.unanswered, AcquirerTimeout)
            self._set(
                UNANSWERED,
                f"{self._name} answers signed by its new platform certificate are refused: the"
                f" certificate download {'stalls' if stalls else 'fails'} ({exc.unanswered});"
                " online codes follow the policy until a download answers",
            )
            raise
        except AcquirerProtocolError as exc:
            self._set(
                "untrusted", f"{self._name} answers cannot be trusted: check its keys ({exc})"
            )
            raise
        self._set(None, None)
        return result

    def _download_answered(self, answers: int) -> None:
        self._answers = answers
        if self._state == UNANSWERED:
            self._set(None, None)

    def _set(self, state: str | None, message: str | None) -> None:
        # The state, not the text (which names each call), decides: one alarm per outage.
        if state != self._state:
            self._state = state
            self._alarm(self._code, message)


@dataclass(frozen=True)
class WeChatPayKeys:
    private: rsa.RSAPrivateKey
    platform: FixedPlatformKey | CertificateFiles  # public-key or certificate mode


@dataclass(frozen=True)
class NetworkKeys:
    """The keys of the configured networks, read once at start (a bad file stops the lane)."""

    alipay: tuple[rsa.RSAPrivateKey, rsa.RSAPublicKey] | None = None
    wechatpay: WeChatPayKeys | None = None

    @classmethod
    def load(cls, auth: AuthSection, state_dir: Path | None = None) -> NetworkKeys:
        """Raises netkeys.KeyFileError naming the file (never showing its content).
        `state_dir`: the lane's data directory, where WeChat Pay's downloaded platform
        certificates are kept (None: they are not, as for `lane check-config`)."""
        ali, wx = auth.alipay, auth.wechatpay
        used = set(auth.routes.model_dump().values())
        return cls(
            alipay=None
            if ali is None or "alipay" not in used
            else (
                netkeys.load_private_key(ali.private_key_file),
                netkeys.load_public_key(ali.alipay_public_key_file),
            ),
            wechatpay=None
            if wx is None or "wechatpay" not in used
            else WeChatPayKeys(
                netkeys.load_private_key(wx.private_key_file), _platform(wx, state_dir)
            ),
        )


def _platform(wx: WeChatPaySection, state_dir: Path | None) -> FixedPlatformKey | CertificateFiles:
    if wx.platform_certificate_file is not None and wx.apiv3_key_file is not None:
        return load_certificate_files(wx.platform_certificate_file, wx.apiv3_key_file, state_dir)
    # The section's validator requires one mode complete: here, public-key mode.
    assert wx.platform_public_key_file is not None and wx.platform_serial is not None
    key = netkeys.load_public_key(wx.platform_public_key_file)
    return FixedPlatformKey(wx.platform_serial, key)


# Background work of a network while the lane runs, given the lane's "nothing in progress"
# and the lane's sleep (its clock).
Upkeep = Callable[[Callable[[], bool], Sleep], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class BuiltNetworks:
    acquirer: Acquirer
    upkeep: tuple[Upkeep, ...] = ()  # WeChat Pay's certificate downloads, in certificate mode


def build_acquirer(
    auth: AuthSection,
    keys: NetworkKeys,
    session: aiohttp.ClientSession,
    wall: Callable[[], float] = time.time,
    alarm: AlarmSink | None = None,
    *,
    observe: RequestObserver | None = None,
) -> BuiltNetworks:
    """The lane's acquirer per `[auth]`: one client, or a router over several; each watched
    for the operator when `alarm` is given, each request told to `observe` (the metrics)."""

    def watched(name: Network, client: Acquirer) -> Acquirer:
        # No acquirer configured is a choice (codes follow the policy), not a fault.
        unset = name == "acquirer" and auth.acquirer_url is None
        return client if alarm is None or unset else WatchedAcquirer(client, name, alarm)

    r = auth.routes
    routes: dict[CodeKind, Network] = {
        "alipay": r.alipay,
        "wechat": r.wechat,
        "unionpay": r.unionpay,
        "emv": r.emv,
    }
    # One client per network, however many kinds of code it takes.
    clients = {
        name: _make(name, auth, keys, session, wall, alarm, observe)
        for name in dict.fromkeys(routes.values())
    }
    upkeep = tuple(
        partial(c.platform.keep, c.download_certificates)
        for c in clients.values()
        if isinstance(c, WeChatPayClient) and isinstance(c.platform, PlatformCertificates)
    )
    made = {name: watched(name, client) for name, client in clients.items()}
    if len(made) == 1:
        return BuiltNetworks(next(iter(made.values())), upkeep)
    return BuiltNetworks(NetworkRouter(made, routes), upkeep)


def _make(  # noqa: PLR0917 - build_acquirer's arguments, handed on
    name: Network,
    auth: AuthSection,
    keys: NetworkKeys,
    session: aiohttp.ClientSession,
    wall: Callable[[], float],
    alarm: AlarmSink | None,
    observe: RequestObserver | None,
) -> Acquirer:
    if name == "alipay":
        return alipay_client(auth, keys, session, wall, observe=observe)
    if name == "wechatpay":
        return wechatpay_client(auth, keys, session, wall, alarm, observe=observe)
    if auth.acquirer_url is None:
        log.warning("no acquirer configured: online codes follow the offline policy")
        return NoAcquirer()
    return AcquirerClient(auth.acquirer_url, session, observe)


def alipay_client(
    auth: AuthSection,
    keys: NetworkKeys,
    session: aiohttp.ClientSession,
    wall: Callable[[], float] = time.time,
    *,
    observe: RequestObserver | None = None,
) -> AlipayClient:
    # The config refuses a route to an unconfigured network and NetworkKeys loads every routed
    # one: callers ask only for a network whose keys are loaded.
    assert auth.alipay is not None and keys.alipay is not None
    ali = auth.alipay
    return AlipayClient(
        ali.gateway_url, ali.app_id, *keys.alipay, session, wall=wall, observe=observe
    )


def wechatpay_client(
    auth: AuthSection,
    keys: NetworkKeys,
    session: aiohttp.ClientSession,
    wall: Callable[[], float] = time.time,
    alarm: AlarmSink | None = None,
    *,
    observe: RequestObserver | None = None,
) -> WeChatPayClient:
    assert auth.wechatpay is not None and keys.wechatpay is not None
    wx = auth.wechatpay
    held = keys.wechatpay.platform
    platform: PlatformTrust = (
        held
        if isinstance(held, FixedPlatformKey)
        else PlatformCertificates(held, wall=wall, alarm=alarm, retry_s=wx.certificate_retry_s)
    )
    return WeChatPayClient(
        wx.base_url,
        mchid=wx.mchid,
        appid=wx.appid,
        serial_no=wx.serial_no,
        private_key=keys.wechatpay.private,
        platform=platform,
        session=session,
        reverse_after_s=wx.reverse_after_s,
        device_ip=str(wx.device_ip),
        wall=wall,
        observe=observe,
    )
