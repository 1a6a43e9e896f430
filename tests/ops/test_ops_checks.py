"""`lane check-config` on good and broken files; the probes of `lane doctor`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web
from tls_kit import make_certs, tls_mosquitto

from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S
from lane.checks import check_config, check_config_main
from lane.config import AuthSection, ConfigError, parse_config
from lane.doctor import (
    Probe,
    probe_acquirer,
    probe_broker,
    probe_camera,
    probe_clock,
    probe_disk,
    probe_mqtt,
    probe_uplink,
)
from lane.transport.mqtt import MqttLink
from sim.acquirer import AcquirerServer
from sim.broker import Mosquitto, free_port
from sim.camera import frame_for
from sim.codes import CodeFactory

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NOW = 1_795_000_000.0  # 2026-11-18, a fixed "now" for the key set checks


@pytest.fixture
def lane_dir(tmp_path: Path) -> Path:
    """The shipped example config with the shipped tariff and a fresh key set: all good."""
    shutil.copy(DEPLOY / "lane.toml.example", tmp_path / "lane.toml")
    edit(tmp_path / "lane.toml", '"tariff.example.toml"', '"tariff.toml"')
    edit(tmp_path / "lane.toml", '"keyset.example.json"', '"keyset.json"')
    shutil.copy(DEPLOY / "tariff.example.toml", tmp_path / "tariff.toml")
    # The lane's own key, as `lane keys new --lane p07/l03 --out lane-key` makes it.
    (tmp_path / "lane-key").mkdir()
    CodeFactory(1).write_keyset(tmp_path / "lane-key" / "keys.json", int(NOW) - 3600, ["p07/l03"])
    CodeFactory(1).write_keyset(tmp_path / "keyset.json", int(NOW) - 3600, ["p07/l03"])
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_the_example_config_passes_in_place_but_for_the_lane_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lane check-config deploy/lane.toml.example`, as shipped, with nothing copied: its one
    problem is the lane's key, which each lane computer makes (no private key is shipped)."""
    found = check_config(DEPLOY / "lane.toml.example")
    missing = DEPLOY / "lane-key" / "lane-p07-l03.key.pem"
    assert found.problems == [f"{missing}: cannot read: No such file or directory"]
    beside = tmp_path / "deploy"
    shutil.copytree(DEPLOY, beside)
    (beside / "lane-key").mkdir()
    CodeFactory(1).write_keyset(beside / "lane-key" / "keys.json", int(time.time()), ["p07/l03"])
    assert check_config_main([str(beside / "lane.toml.example")]) == 0
    assert capsys.readouterr().out.strip().endswith("lane.toml.example: OK")


def test_a_bare_device_index_is_a_camera_source() -> None:
    """`source = 0` (an integer, as the README's V4L2 index reads) is the device "0"."""
    assert parse_config({"camera": {"source": 0}}).camera.source == "0"
    assert parse_config({"camera": {"source": "rtsp://cam/1"}}).camera.source == "rtsp://cam/1"
    with pytest.raises(ConfigError, match=r"camera\.source"):
        parse_config({"camera": {"source": True}})


def test_the_example_config_is_valid(lane_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert found.problems == []
    assert found.config is not None and found.config.lane.id == "p07/l03"
    assert check_config_main([str(lane_dir / "lane.toml")]) == 0
    assert capsys.readouterr().out.strip().endswith("lane.toml: OK")


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("lane.toml", 'mode = "toll"', 'mode = "toll', "lane.toml: not valid TOML: "),
        (
            "lane.toml",
            "max_tries = 3",
            "max_tries = 3\nmax_trys = 4",
            "lane.max_trys: Extra inputs",
        ),
        (
            "lane.toml",
            "port = 1883",
            'port = "1883x"',
            "broker.port: Input should be a valid integer",
        ),
        ("lane.toml", 'id = "p07/l03"', 'id = "no-slash"', "lane.id: Value error, a lane id is"),
        (
            "tariff.toml",
            "2 = 290",
            "2 = 2.90",
            "tariff.toml: toll.fares.2: must be an integer of minor units",
        ),
        ("tariff.toml", "5 = 820\n", "", "tariff.toml: toll.fares: has no fare for class 5"),
        (
            "lane.toml",
            'keyset = "keyset.json"',
            'keyset = "missing.json"',
            "missing.json: cannot read",
        ),
        ("keyset.json", '"keys"', '"kees"', "keyset.json: keys: is missing"),
        ("lane.toml", 'mode = "toll"', 'mode = "transit-entry"', "this tariff is for toll lanes"),
        (
            "lane.toml",
            "https://acquirer.example.net",
            "acquirer.example.net",
            "auth.acquirer_url: must be",
        ),
        (
            "lane.toml",
            '# deny_list = "deny.json"',
            'deny_list = "lane.toml"',
            "lane.toml: not JSON",
        ),
    ],
)
def test_a_broken_file_is_named_with_the_key_and_the_problem(
    lane_dir: Path, file: str, old: str, new: str, expected: str
) -> None:
    edit(lane_dir / file, old, new)
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert len(found.problems) == 1, found.problems
    assert expected in found.problems[0]
    # every message starts with the file it is about
    assert found.problems[0].startswith(
        str(lane_dir / file) if file != "lane.toml" else str(lane_dir)
    )


@pytest.mark.parametrize(
    ("keyset_body", "deny_body", "expected"),
    [
        ({"issued_at": 2**62}, None, "keyset.json: refused: issued_at 4611686018427387904"),
        ({"issued_at": int(NOW) * 1000}, None, "ahead of this lane's clock"),
        ({"keys": []}, None, "keyset.json: refused: has no keys"),
        (None, {"generation": 2**64 - 1}, "deny.json: refused: generation 18446744073709551615"),
        (None, {"issued_at": int(NOW) + 3600}, "deny.json: refused: issued_at"),
    ],
)
def test_a_trust_file_the_lane_would_refuse_is_a_problem(
    lane_dir: Path, keyset_body: dict[str, Any] | None, deny_body: dict[str, Any] | None,
    expected: str,
) -> None:  # fmt: skip
    """Issue #11 item 6: the bounds of lane.auth.trust, reported before the lane starts."""
    if keyset_body is not None:
        path = lane_dir / "keyset.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **keyset_body}))
    if deny_body is not None:
        deny = {"v": 1, "generation": 3, "accounts": [], **deny_body}
        (lane_dir / "deny.json").write_text(json.dumps(deny))
        edit(lane_dir / "lane.toml", '# deny_list = "deny.json"', 'deny_list = "deny.json"')
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert len(found.problems) == 1, found.problems
    assert expected in found.problems[0]


def test_every_problem_is_reported_at_once(
    lane_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(lane_dir / "tariff.toml", "2 = 290", "2 = 2.90")
    (lane_dir / "keyset.json").unlink()
    edit(lane_dir / "lane.toml", "username =", 'password = "x"\n# username =')
    edit(lane_dir / "lane.toml", 'password = "change-this-password"', "")
    assert check_config_main([str(lane_dir / "lane.toml")]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any("tariff.toml: toll.fares.2" in line for line in lines)
    assert any("keyset.json: cannot read" in line for line in lines)
    assert any("broker.password: set without broker.username" in line for line in lines)
    assert lines[-1].endswith("lane.toml: 3 problems")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "Input should be greater than 0"),
        ("-900", "Input should be greater than 0"),
        ("604801", "Input should be less than or equal to 604800"),  # over 7 days
        ("900.0", "Input should be a valid integer"),
        ("true", "Input should be a valid integer"),
        ('"15m"', "Input should be a valid integer"),
    ],
)
def test_a_token_lifetime_cap_out_of_bounds_is_a_problem(
    lane_dir: Path, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(lane_dir / "lane.toml", "skew_s = 30\n", f"skew_s = 30\nmax_token_lifetime_s = {value}\n")
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert found.problems == [f"{lane_dir / 'lane.toml'}: auth.max_token_lifetime_s: {expected}"]
    assert check_config_main([str(lane_dir / "lane.toml")]) == 1
    assert "auth.max_token_lifetime_s" in capsys.readouterr().out


def test_the_token_lifetime_cap_is_taken_and_a_cap_under_a_phones_token_is_warned_of(
    lane_dir: Path,
) -> None:
    assert AuthSection().max_token_lifetime_s == DEFAULT_MAX_LIFETIME_S
    edit(lane_dir / "lane.toml", "skew_s = 30\n", "skew_s = 30\nmax_token_lifetime_s = 604800\n")
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert found.ok and found.config is not None
    assert found.config.auth.max_token_lifetime_s == 604800
    assert not any("max_token_lifetime_s" in w for w in found.warnings)
    edit(lane_dir / "lane.toml", "= 604800", "= 59")
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert found.ok  # a warning: a lane may mean to refuse offline tokens
    expected = (
        f"{lane_dir / 'lane.toml'}: auth.max_token_lifetime_s: 59 s is shorter than the 60 s "
        "tokens issuers make; every offline token would be refused"
    )
    assert expected in found.warnings


def test_warnings_do_not_fail_the_check(lane_dir: Path) -> None:
    CodeFactory(1).write_keyset(lane_dir / "keyset.json", int(NOW) - 30 * 86400)
    edit(lane_dir / "lane.toml", 'source = "0"', 'source = "push"')
    found = check_config(lane_dir / "lane.toml", now=NOW)
    assert found.ok
    assert any("30.0 days old" in w and "keyset_stale" in w for w in found.warnings)
    assert any("camera.source: 'push'" in w for w in found.warnings)


def test_the_cli_routes_check_config(lane_dir: Path) -> None:
    edit(lane_dir / "tariff.toml", "2 = 290", "2 = 2.90")
    done = subprocess.run(
        [sys.executable, "-m", "lane", "check-config", str(lane_dir / "lane.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "toll.fares.2: must be an integer of minor units" in done.stdout


# --- doctor ---------------------------------------------------------------------------------


@pytest.fixture
def frames(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0001.png"), frame_for("hello", "clear", rng=1, size=(320, 180)))
    yield folder


async def test_camera_probe(frames: Path, tmp_path: Path) -> None:
    ok = await probe_camera(f"{frames}/", 5)
    assert (ok.status, ok.name) == ("OK", "camera") and "320x180 frame" in ok.detail
    dark = tmp_path / "dark"
    dark.mkdir()
    cv2.imwrite(str(dark / "0001.png"), np.zeros((90, 160, 3), np.uint8))
    assert (await probe_camera(f"{dark}/", 5)).status == "WARN"
    missing = await probe_camera(str(tmp_path / "no-such-video.mp4"), 5)
    assert missing.status == "FAIL" and "cannot open" in missing.detail
    assert (await probe_camera("push", 5)).status == "WARN"


async def test_broker_probe(mosquitto: Mosquitto, tmp_path: Path) -> None:
    def config(port: int) -> object:
        return parse_config({"broker": {"port": port}})

    ok = await probe_broker(config(mosquitto.port), 5)  # type: ignore[arg-type]
    assert ok.status == "OK" and "MQTT connected (anonymous)" in ok.detail
    down = await probe_broker(config(free_port()), 5)  # type: ignore[arg-type]
    assert down.status == "FAIL" and "cannot connect" in down.detail
    strict = Mosquitto(port=free_port(), workdir=tmp_path, extra_config="allow_anonymous false")
    strict.start()
    try:
        refused = await probe_broker(config(strict.port), 2)  # type: ignore[arg-type]
    finally:
        strict.stop()
    assert refused.status == "FAIL" and "TCP works but MQTT refused" in refused.detail


async def test_the_uplinks_own_broker_is_probed_too(mosquitto: Mosquitto) -> None:
    """`[uplink]` host and port apart from `[broker]`: the doctor probes where the uplink
    connects as well, by its name; the same broker is probed once."""
    same = parse_config({"broker": {"port": mosquitto.port}})
    assert await probe_uplink(same, 5) == []
    nowhere = free_port()
    apart = parse_config({"broker": {"port": mosquitto.port}, "uplink": {"port": nowhere}})
    (down,) = await probe_uplink(apart, 5)
    assert (down.status, down.name) == ("FAIL", "uplink")
    assert down.detail.startswith(f"127.0.0.1:{nowhere}: cannot connect"), down.detail
    (up,) = await probe_uplink(
        parse_config({"broker": {"port": nowhere}, "uplink": {"port": mosquitto.port}}), 5
    )
    assert (up.status, up.name) == ("OK", "uplink") and "MQTT connected" in up.detail


@pytest.mark.parametrize(
    ("uplink", "key"),
    [({"port": 0}, "uplink.port"), ({"port": 65536}, "uplink.port"), ({"host": ""}, "uplink.host")],
)
def test_the_uplinks_own_broker_address_is_checked_at_load(
    uplink: dict[str, Any], key: str
) -> None:
    """Refused naming the key, not met at the first connect: an empty host never resolves, the
    lane ran with its uplink down for good and an alarm naming the broker ':1883'."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config({"uplink": uplink})


async def test_broker_probe_connects_over_tls_as_the_daemon_does(tmp_path: Path) -> None:
    """The probe built its own link and left `broker.tls_ca_file` out: on a TLS listener it
    spoke plain MQTT and reported 'MQTT refused', a refusal the daemon, which connects over
    TLS, would not get. It connects as the daemon does (BrokerLink): verified against the CA
    file, refused by a broker the CA did not sign, and a file that is no CA is named."""
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca = make_certs(other_dir)["ca"]
    with tls_mosquitto(tmp_path) as (broker, port, ca):

        def probe(ca_file: Path) -> Coroutine[Any, Any, Probe]:
            broker_section = {"host": broker.host, "port": port, "tls_ca_file": str(ca_file)}
            return probe_broker(parse_config({"broker": broker_section}), 5)

        ok = await probe(ca)
        assert ok.status == "OK", ok.detail
        assert ok.detail.startswith(f"{broker.host}:{port}: MQTT connected (anonymous) over TLS")
        wrong = await probe(other_ca)
        assert wrong.status == "FAIL" and "CERTIFICATE_VERIFY_FAILED" in wrong.detail, wrong
        not_a_ca = await probe(tmp_path / "key.pem")
    assert (not_a_ca.status, not_a_ca.detail.split(": ", 2)[:2]) == (
        "FAIL",
        [f"{broker.host}:{port}", f"broker.tls_ca_file {tmp_path / 'key.pem'}"],
    )


async def test_broker_probe_names_what_stopped_the_mqtt_client(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """A link that stops, where a refused CONNECT would retry, is named by what stopped it, not
    blamed on the broker once the timeout has passed ("MQTT refused: no CONNACK"). How the
    transport stops on an aiomqtt or paho release it refuses (InternalsChangedError, named by
    library, version and pin: tests/test_paho_internals.py); here paho refuses a filter."""
    where = f"{mosquitto.host}:{mosquitto.port}"
    link = MqttLink(mosquitto.host, mosquitto.port, f"doctor-{lane_id}", [("a/#/b", 1)])
    stopped = await probe_mqtt(link, "(anonymous)", 10)
    assert (stopped.status, stopped.detail) == (
        "FAIL",
        f"{where}: TCP works but the MQTT client stopped: ValueError: Invalid subscription filter.",
    )


async def test_acquirer_probe() -> None:
    acquirer = AcquirerServer()
    url = await acquirer.start()
    try:
        ok = await probe_acquirer(url, 5)
    finally:
        await acquirer.stop()
    assert ok.status == "OK" and "reachable (HTTP" in ok.detail
    assert (await probe_acquirer(f"http://127.0.0.1:{free_port()}", 5)).status == "FAIL"
    assert (await probe_acquirer(None, 5)).status == "WARN"

    async def broken(_r: web.Request) -> web.Response:
        return web.Response(status=502)

    app = web.Application()
    app.router.add_get("/", broken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert (await probe_acquirer(f"http://127.0.0.1:{port}/", 5)).status == "WARN"
    finally:
        await runner.cleanup()


def test_disk_probe(tmp_path: Path) -> None:
    ok = probe_disk(tmp_path, 1_000_000)
    assert ok.status == "OK" and "writable" in ok.detail
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    later = probe_disk(tmp_path / "lane" / "data", 1_000_000)
    assert later.status == "OK" and "will be created" in later.detail
    assert not (tmp_path / "lane").exists()
    huge = probe_disk(tmp_path, 10**18)
    assert huge.status == "WARN" and "lower uplink.max_bytes" in huge.detail


def test_clock_probe() -> None:
    assert probe_clock(0.0, tool=lambda _cmd: None).status == "FAIL"  # 1970: a dead RTC
    unknown = probe_clock(NOW, tool=lambda _cmd: None)
    assert unknown.status == "OK" and "sync state unknown" in unknown.detail
    chrony = (
        "A29FC87B,ntp1,3,1795000000.1,-0.000123,0.0001,0.0002,1.1,0.0,0.01,0.02,0.03,64.2,Normal\n"
    )
    synced = probe_clock(NOW, tool=lambda cmd: chrony if cmd[0] == "chronyc" else None)
    assert synced.status == "OK" and "offset -0.1 ms, normal" in synced.detail
    adrift = chrony.replace("-0.000123", "2.5")
    assert probe_clock(NOW, tool=lambda c: adrift if c[0] == "chronyc" else None).status == "WARN"
    unsynced = probe_clock(NOW, tool=lambda c: "no\n" if c[0] == "timedatectl" else None)
    assert unsynced.status == "WARN" and "not synchronised" in unsynced.detail


def test_doctor_command(mosquitto: Mosquitto, frames: Path, tmp_path: Path) -> None:
    conf = tmp_path / "lane.toml"
    conf.write_text(
        f'[lane]\ndata_dir = "data"\n[broker]\nport = {mosquitto.port}\n'
        f'[camera]\nsource = "{frames}/"\n'
    )

    def doctor() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lane", "doctor", "--config", str(conf), "--timeout", "3"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = doctor()
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[:2] for line in lines] == [
        ["OK", "config"], ["OK", "camera"], ["OK", "broker"], ["WARN", "acquirer"],
        ["OK", "disk"], ["OK", "clock"], ["OK", "install"],
    ]  # fmt: skip
    conf.write_text(conf.read_text().replace(f"port = {mosquitto.port}", f"port = {free_port()}"))
    done = doctor()
    assert done.returncode == 1
    assert any(line.startswith("FAIL broker") for line in done.stdout.splitlines())


def test_doctor_refuses_a_broken_config(tmp_path: Path) -> None:
    conf = tmp_path / "lane.toml"
    conf.write_text("[lane]\nid = 5\n")
    done = subprocess.run(
        [sys.executable, "-m", "lane", "doctor", "--config", str(conf)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL config") and "lane.id" in done.stdout


def test_the_example_config_documents_every_setting() -> None:
    from lane.config import LaneConfig  # noqa: PLC0415

    text = (DEPLOY / "lane.toml.example").read_text()
    sections = re.split(r"^\[(\w+)\]$", text, flags=re.MULTILINE)
    bodies = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert set(bodies) == set(LaneConfig.model_fields)
    for name, info in LaneConfig.model_fields.items():
        model = info.default_factory()  # type: ignore[misc,call-arg]
        for key in type(model).model_fields:
            assert re.search(rf"^(# )?{key} = ", bodies[name], re.MULTILINE), f"[{name}] {key}"


def test_the_placeholder_password_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = check_config(DEPLOY / "lane.toml.example")
    assert any("broker.password: still the example's placeholder" in w for w in found.warnings)
    conf = tmp_path / "lane.toml"
    conf.write_text(
        f'[lane]\ndata_dir = "{tmp_path}"\n[camera]\nsource = "push"\n'
        f'[broker]\nport = {free_port()}\nusername = "controller"\n'
        'password = "change-this-password"\n'
    )
    from lane.checks import doctor_main  # noqa: PLC0415

    doctor_main(["--config", str(conf), "--timeout", "1"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("WARN config") and "placeholder 'change-this-password'" in first
    conf.write_text(conf.read_text().replace("change-this-password", "s3cret-of-this-lane"))
    doctor_main(["--config", str(conf), "--timeout", "1"])
    assert capsys.readouterr().out.startswith("OK   config")
