"""`lane scan` as scanner.cli.main: one JSON line per image, errors reported, exit code."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import cv2
from scanner_testkit import BLURRED, EMVCO_SAMPLE, frame_with, qr_image

from scanner.cli import main
from scanner.detection import as_gray
from sim.render import render_frame


def run(argv: list[str]) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def write(tmp_path: Path, name: str, text: str | None) -> str:
    path = tmp_path / name
    image = frame_with(qr_image(text) if text else None, width=640, height=480, at=(100, 60))
    assert cv2.imwrite(str(path), image)
    return str(path)


def test_plain_output(tmp_path: Path) -> None:
    pay = write(tmp_path, "pay.png", "281234567890123456")
    empty = write(tmp_path, "empty.png", None)
    code, lines = run([pay, empty])
    assert code == 0
    assert lines[0]["file"] == pay
    [read] = lines[0]["codes"]
    assert {k: read[k] for k in ("text", "kind", "decoder")} == {
        "text": "281234567890123456",
        "kind": "payment_code",
        "decoder": "zxing",
    }
    assert isinstance(read["ms"], float)
    assert set(read) == {"text", "kind", "decoder", "ms"}
    assert lines[1] == {"file": empty, "codes": []}


def test_json_details(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "wechat.png", "134567890123456789"),
        write(tmp_path, "emv.png", EMVCO_SAMPLE),
        write(tmp_path, "url.png", "https://example.com/"),
    ]
    code, lines = run([*files, "--json", "--decoder", "pyzbar"])
    assert code == 0
    wechat, emv, url = (line["codes"][0] for line in lines)
    assert wechat["wallet"] == "wechat" and wechat["decoder"] == "pyzbar"
    assert len(wechat["polygon"]) == 4
    assert emv["kind"] == "emv"
    assert emv["emv"]["pan"] == "123456******3458"
    assert emv["emv"]["cryptogram"] == "584FD385FA234BCC"
    assert emv["emv"]["application_label"] == "Product1"
    assert "1234567890123458" not in json.dumps(emv["emv"])
    assert url["kind"] == "unknown" and url["reason"] == "not a payment code"


def test_bad_files_are_reported_and_the_rest_processed(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    good = write(tmp_path, "good.png", "281234567890123456")
    missing = str(tmp_path / "missing.png")
    code, lines = run([missing, str(broken), good])
    assert code == 1
    assert lines[0] == {"file": missing, "error": "no such file"}
    assert lines[1] == {"file": str(broken), "error": "not a readable image"}
    assert lines[2]["codes"][0]["text"] == "281234567890123456"


def test_usage_errors_return_2() -> None:
    assert main(["--decoder", "opencv", "x.png"], out=io.StringIO()) == 2
    assert main([], out=io.StringIO()) == 2


def test_every_image_gets_the_whole_cascade(tmp_path: Path) -> None:
    """Images are separate views: the deblur pass, which looks at one camera frame in four,
    tries each of them."""
    gray = as_gray(render_frame(BLURRED, 1))
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"blurred-{i}.png"))
        assert cv2.imwrite(paths[-1], gray)
    code, lines = run(paths)
    assert code == 0
    assert [[c["decoder"] for c in line["codes"]] for line in lines] == [["zxing+deblur"]] * 5
