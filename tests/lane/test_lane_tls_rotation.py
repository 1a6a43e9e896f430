"""The broker's CA rotated under a running lane (docs/operations.md, "Rotating the broker's
CA"): against a real mosquitto with a TLS listener, the daemon in this process."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from polling import eventually
from test_lane_daemon import running_lane
from test_lane_heal import back_and_paying
from tls_kit import make_certs, tls_mosquitto

TLS_FAILED = "TLS: certificate verify failed: "


async def test_a_ca_rotated_under_a_running_lane_is_taken_once_its_file_is_replaced(
    tmp_path: Path, lane_id: str
) -> None:
    """The broker restarted with a certificate from a new CA: the lane is down, its
    `broker_down` says the TLS failure; the CA file gone half-way through the rotation is said
    too, and the lane keeps retrying with the CA it had; once the new CA file is in place
    both links connect by themselves (the CA file was read once, at start: the lane retried
    with the old CA until restarted)."""
    work = tmp_path / "broker"
    work.mkdir()
    with tls_mosquitto(work) as (broker, tls_port, first_ca):
        lane_ca = tmp_path / "lane-ca.pem"
        shutil.copy(first_ca, lane_ca)
        settings = {"port": tls_port, "tls_ca_file": str(lane_ca)}
        async with running_lane(tmp_path, broker, lane_id, broker=settings) as lane:
            daemon, runner = lane.daemon, lane.daemon.runner
            await eventually(daemon.uplink.connected.is_set)
            new_dir = tmp_path / "new"
            new_dir.mkdir()
            new = make_certs(new_dir)
            for name in ("server", "key"):  # the files the broker's listener names
                shutil.copy(new[name], work / f"{name}.pem")
            await asyncio.to_thread(broker.restart)
            await eventually(
                lambda: TLS_FAILED in runner.alarms.get("broker_down", ""),
                within=15,
                what="broker_down naming the TLS failure",
            )
            assert runner.alarms["broker_down"].startswith("controller lost the MQTT broker: ")
            assert "broker_down" in runner.state.faults  # closed to payments while it lasts
            lane_ca.unlink()
            unreadable = f"CA file {lane_ca} unreadable (No such file or directory)"
            await eventually(
                lambda: unreadable in runner.alarms.get("broker_down", ""),
                within=15,
                what="broker_down naming the missing CA file",
            )
            assert TLS_FAILED in runner.alarms["broker_down"]  # the last good CA, still tried
            assert (daemon.link.mqtt.stopped, daemon.uplink.stopped) == (None, None)
            staged = tmp_path / "lane-ca.pem.new"
            shutil.copy(new["ca"], staged)
            staged.replace(lane_ca)
            await back_and_paying(lane)
