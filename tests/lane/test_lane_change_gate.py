"""`[camera] change_gate`: on unless switched off, the pipeline built accordingly, check-config
refusing what is not a boolean and warning when it is off."""

from __future__ import annotations

from pathlib import Path

from lane.checks import check_config
from lane.config import parse_config
from lane.daemon import build
from scanner.change_gate import GateSettings
from scanner.sources import PushSource


async def test_the_lane_builds_its_scanner_with_the_gate_unless_switched_off(
    tmp_path: Path,
) -> None:
    for setting, expected in (({}, GateSettings()), ({"change_gate": False}, None)):
        config = parse_config(
            {
                "lane": {"id": "p01/l01", "data_dir": str(tmp_path / "lane")},
                "camera": setting,
                "auth": {"share_used_tokens": False},  # alone: no lane key
            }
        )
        daemon = await build(config, source=PushSource())
        try:
            assert daemon.pipeline.gate == expected
        finally:
            await daemon.aclose()


def test_check_config_refuses_a_non_boolean_and_warns_when_off(tmp_path: Path) -> None:
    path = tmp_path / "lane.toml"
    path.write_text('[camera]\nsource = "0"\nchange_gate = "sometimes"\n')
    found = check_config(path)
    assert any("camera.change_gate" in p for p in found.problems), found.problems
    path.write_text(
        '[camera]\nsource = "0"\nchange_gate = false\n[auth]\nshare_used_tokens = false\n'
    )
    found = check_config(path)
    assert found.problems == []
    assert any("camera.change_gate: off" in w for w in found.warnings), found.warnings
    path.write_text('[camera]\nsource = "0"\n')
    assert not any("change_gate" in w for w in check_config(path).warnings)


async def test_the_codes_printed_at_the_booth_reach_the_scanner(tmp_path: Path) -> None:
    config = parse_config(
        {
            "lane": {"id": "p01/l01", "data_dir": str(tmp_path / "lane")},
            "camera": {"static_codes": ["https://example.org/help/booth-7"]},
            "auth": {"share_used_tokens": False},
        }
    )
    daemon = await build(config, source=PushSource())
    try:
        assert daemon.pipeline.static_codes == {"https://example.org/help/booth-7"}
    finally:
        await daemon.aclose()


def test_check_config_refuses_a_payment_code_or_an_empty_text_as_printed(tmp_path: Path) -> None:
    path = tmp_path / "lane.toml"
    codes = '["https://x.org/help", "281234567890123456"]'
    path.write_text(f'[camera]\nsource = "0"\nstatic_codes = {codes}\n')
    found = check_config(path)
    assert any(
        "camera.static_codes" in p
        and "code 2 is a payment code (payment_code)" in p
        and "2812345" not in p
        for p in found.problems
    ), found.problems
    path.write_text('[camera]\nsource = "0"\nstatic_codes = [" "]\n')
    assert any("code 1 is empty" in p for p in check_config(path).problems)
