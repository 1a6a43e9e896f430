"""How the lane's own MQTT clients reach `[broker]`, built from the config in one place:
`lane run`'s barrier link (`barrier.link.BarrierLink` takes it whole) and uplink (which
carries the messages to the other lanes too) and `lane doctor`'s broker probe connect with
exactly these settings (address, credentials, TLS, keepalive), so the doctor cannot fail a
broker the daemon would connect to, nor pass one it would not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lane.transport.mqtt import Credentials, MqttLink
from lane.transport.tls import CaFile


class CaFileError(OSError):
    """`broker.tls_ca_file` cannot be read as a CA file; the text names the setting and file."""


class BrokerSettings(Protocol):
    """What `BrokerLink.of` reads of the config's `[broker]` (lane.config.BrokerSection)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def tls_ca_file(self) -> Path | None: ...
    @property
    def keepalive_s(self) -> int: ...


@dataclass(frozen=True)
class BrokerLink:
    host: str
    port: int
    credentials: Credentials | None = None
    # Read again at each connection attempt when it changed (a CA rotated under a running lane).
    tls: CaFile | None = None
    keepalive_s: int = 10

    @classmethod
    def of(cls, broker: BrokerSettings) -> BrokerLink:
        """The settings of `broker`; reads `tls_ca_file` (CaFileError when it is no CA file)."""
        creds = None
        if broker.username:
            creds = Credentials(broker.username, broker.password or "")
        ca = broker.tls_ca_file
        tls = None
        if ca is not None:
            try:
                tls = CaFile.load(ca)
            except OSError as exc:  # ssl.SSLError is one: a file that holds no CA
                raise CaFileError(f"broker.tls_ca_file {ca}: {exc.strerror or exc}") from exc
        return cls(broker.host, broker.port, creds, tls, broker.keepalive_s)

    def link(self, client_id: str, **options: Any) -> MqttLink:
        """A link with these settings; `options` are the rest of MqttLink's (subscriptions,
        handler, session_expiry, ...)."""
        return MqttLink(
            self.host,
            self.port,
            client_id,
            credentials=self.credentials,
            tls=self.tls,
            keepalive=self.keepalive_s,
            **options,
        )
