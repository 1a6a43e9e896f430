"""What speaking a payment network costs the lane per call, beyond our acquirer API (prints
figures; asserts nothing).

    .venv/bin/python -m bench.networks [n=500]

Per call, on the lane's side: Alipay builds the parameters, signs them (RSA-2048, SHA256withRSA),
then cuts the response object out of the answer and verifies Alipay's signature; WeChat Pay
builds the body, signs the request message into the Authorization header, then verifies the
answer's signature. The network's own half (its signature over the answer) is made once,
outside the timing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from bench import args as bench_args
from lane.auth import alipay_wire, netkeys, wechatpay_wire


def _keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def alipay_call(merchant: rsa.RSAPrivateKey, network: rsa.RSAPrivateKey) -> Callable[[], None]:
    body = json.dumps(
        {
            "code": "10000",
            "msg": "Success",
            "trade_no": "2026113022001",
            "out_trade_no": "pay_" + "a" * 32,
            "total_amount": "4.50",
        }
    )
    answer = (
        f'{{"alipay_trade_pay_response":{body},"sign":"{netkeys.sign(network, body.encode())}"}}'
    )
    network_pub = network.public_key()

    def call() -> None:
        biz = alipay_wire.pay_biz("pay_" + "a" * 32, "281234567890123456", 450, "p07/l03")
        params = alipay_wire.request_params("2021000000000001", alipay_wire.Method.PAY, biz, 0.0)
        params["sign"] = netkeys.sign(merchant, alipay_wire.signing_content(params).encode())
        signed = alipay_wire.split_response(answer, alipay_wire.Method.PAY)
        assert signed.sign is not None and netkeys.verify(
            network_pub, signed.text.encode(), signed.sign
        )
        alipay_wire.result(alipay_wire.Method.PAY, signed.body, "pay_" + "a" * 32)

    return call


def wechat_call(merchant: rsa.RSAPrivateKey, network: rsa.RSAPrivateKey) -> Callable[[], None]:
    answer = json.dumps(
        {"trade_state": "SUCCESS", "transaction_id": "4200001", "out_trade_no": "a" * 32}
    )
    stamp, nonce = "1796000000", "593BEC0C930BF1AFEB40B4A08C8FB242"
    signature = netkeys.sign(network, wechatpay_wire.answer_message(stamp, nonce, answer).encode())
    network_pub = network.public_key()
    merchant_ids = wechatpay_wire.Merchant("1900000100", "wx1", "10.0.0.7")

    def call() -> None:
        body = wechatpay_wire.codepay_body(merchant_ids, "a" * 32, "134567890123456789", 450, "l")
        text = json.dumps(body, separators=(",", ":"))
        message = wechatpay_wire.request_message(
            "POST", wechatpay_wire.CODEPAY_PATH, stamp, nonce, text
        )
        wechatpay_wire.authorization(
            "1900000100", "S1", nonce, stamp, netkeys.sign(merchant, message.encode())
        )
        check = wechatpay_wire.answer_message(stamp, nonce, answer).encode()
        assert netkeys.verify(network_pub, check, signature)
        wechatpay_wire.result(wechatpay_wire.Call.PAY, 200, json.loads(answer), "pay_1")

    return call


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("n", type=int, nargs="?", default=500, help="calls timed per network")
    n = parser.parse_args().n
    merchant, network = _keys()
    print(f"payment networks: the lane's share of one call, {n} calls each")
    for name, call in (
        ("alipay", alipay_call(merchant, network)),
        ("wechatpay", wechat_call(merchant, network)),
    ):
        times = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        p99 = times[min(n - 1, int(0.99 * n))]
        print(f"  {name:<10} p50 {statistics.median(times):6.2f} ms   p99 {p99:6.2f} ms")


if __name__ == "__main__":
    main()
