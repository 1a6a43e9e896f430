"""The `[auth.routes]`, `[auth.alipay]` and `[auth.wechatpay]` config sections.

They belong to the payment networks (`lane.auth.networks` reads them); the lane's config
(`lane.config.AuthSection`) composes them, so `lane.auth` never imports the shell.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, model_validator

from lane.auth.wechatpay_certs import MIN_REFRESH_INTERVAL_S


class _NetworkSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Network = Literal["acquirer", "alipay", "wechatpay"]


class RoutesSection(_NetworkSection):
    """Which acquirer takes each kind of online code (docs/acquirer.md)."""

    alipay: Network = Field("acquirer", description="Alipay payment codes (25-30, 16-24 digits)")
    wechat: Network = Field("acquirer", description="WeChat Pay payment codes (10-15, 18 digits)")
    unionpay: Network = Field("acquirer", description="UnionPay QR payment codes (62, 19 digits)")
    emv: Network = Field("acquirer", description="EMVCo consumer-presented QR payloads")


class AlipaySection(_NetworkSection):
    gateway_url: str = Field(
        "https://openapi.alipay.com/gateway.do", description="Alipay OpenAPI gateway"
    )
    app_id: str = Field(description="The merchant app's id", pattern=r"^[0-9]{16}$")
    private_key_file: Path = Field(description="The app's RSA2 private key, PEM, mode 0600")
    alipay_public_key_file: Path = Field(description="Alipay's public key (PEM or Base64)")


class WeChatPaySection(_NetworkSection):
    """The merchant, and how WeChat Pay's answers are verified: public-key mode (a fixed
    platform public key) or certificate mode (rotating platform certificates, downloaded with
    the APIv3 key); docs/acquirer.md, "Platform certificates"."""

    base_url: str = Field("https://api.mch.weixin.qq.com", description="WeChat Pay API v3")
    mchid: str = Field(description="Merchant id", pattern=r"^[0-9]{6,32}$")
    appid: str = Field(description="The app id bound to the merchant", min_length=1)
    serial_no: str = Field(description="Serial of the merchant API certificate", min_length=1)
    private_key_file: Path = Field(description="Merchant API private key, PEM, mode 0600")
    platform_public_key_file: Path | None = Field(
        None, description="Public-key mode: WeChat Pay's platform public key (微信支付公钥), PEM"
    )
    platform_serial: str | None = Field(
        None, description="Public-key mode: its id (PUB_KEY_ID_...)", min_length=1
    )
    platform_certificate_file: Path | None = Field(
        None, description="Certificate mode: the platform certificate(s) trusted first, PEM"
    )
    apiv3_key_file: Path | None = Field(
        None, description="Certificate mode: the APIv3 key (32 characters), mode 0600"
    )
    reverse_after_s: float = Field(
        18.0, ge=0, le=600, description="Reverse no sooner than this after the intent"
    )
    certificate_retry_s: float = Field(
        MIN_REFRESH_INTERVAL_S,
        ge=1,
        le=3600,
        description="Certificate mode: an answer's unknown certificate is downloaded at most"
        " this often, and the idle lane looks this often whether a download is due",
    )
    device_ip: IPvAnyAddress = Field(
        IPv4Address("127.0.0.1"), description="This lane computer's address (payer_client_ip)"
    )

    @model_validator(mode="after")
    def _one_way_to_verify(self) -> Self:
        public = {"platform_public_key_file": self.platform_public_key_file,
                  "platform_serial": self.platform_serial}  # fmt: skip
        certs = {"platform_certificate_file": self.platform_certificate_file,
                 "apiv3_key_file": self.apiv3_key_file}  # fmt: skip
        modes = (("public-key mode", public), ("certificate mode", certs))
        used = [(name, keys) for name, keys in modes if any(v is not None for v in keys.values())]
        if len(used) != 1:
            raise ValueError(
                "set either platform_public_key_file and platform_serial (public-key mode, a"
                " PUB_KEY_ID_... key) or platform_certificate_file and apiv3_key_file"
                " (certificate mode, rotating platform certificates)"
                + (", not both" if used else "")
            )
        name, keys = used[0]
        missing = [k for k, v in keys.items() if v is None]
        if missing:
            given = next(k for k, v in keys.items() if v is not None)
            raise ValueError(f"{given} ({name}) needs {missing[0]} too")
        return self

    @property
    def certificate_mode(self) -> bool:
        return self.platform_certificate_file is not None
