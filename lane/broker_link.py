"""How the lane's own MQTT clients reach `[broker]`, built from the config in one place:
`lane run`'s barrier link and uplink and `lane doctor`'s broker probe connect with exactly
these settings (address, credentials, TLS, keepalive), so the doctor cannot fail a broker the
daemon would connect to, nor pass one it would not."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from lane.config import BrokerSection
from lane.transport.mqtt import Credentials, MqttLink, tls_context


@dataclass(frozen=True)
class BrokerLink:
    host: str
    port: int
    credentials: Credentials | None
    tls: ssl.SSLContext | None
    keepalive_s: int

    @classmethod
    def of(cls, broker: BrokerSection) -> BrokerLink:
        """The settings of `broker`; reads `tls_ca_file` (OSError when it is no CA file)."""
        creds = None
        if broker.username:
            creds = Credentials(broker.username, broker.password or "")
        ca = broker.tls_ca_file
        tls = tls_context(str(ca)) if ca is not None else None
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
