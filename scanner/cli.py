"""`lane scan IMAGE... [--decoder zxing|pyzbar|cascade] [--json]`: read QR codes in image files.

One JSON line per file: {"file", "codes": [{"text", "kind", "decoder", "ms"}]}; `--json` adds
the classification details (wallet, reason, polygon, EMV fields with the PAN masked). A file
that cannot be read gets {"file", "error"}; every file is processed and the exit code is 1 if
any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from scanner.decoders import DECODER_NAMES, Decoder, make_decoder
from scanner.detection import Detection, as_gray
from scanner.emv import EmvPayload
from scanner.payload import PaymentCodePayload, UnknownPayload, classify
from scanner.sources import read_image


def main(argv: list[str], out: TextIO | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    stream = out if out is not None else sys.stdout
    failed = False
    for name in args.images:
        # Each image is a view of its own: a fresh decoder, so the cascade's per-camera state
        # (the deblur pass's frame gating and memory of fruitless spots) does not carry over.
        line = scan_file(Path(name), make_decoder(args.decoder), details=args.json)
        failed |= "error" in line
        print(json.dumps(line, ensure_ascii=False), file=stream, flush=True)
    return 1 if failed else 0


def scan_file(path: Path, decoder: Decoder, *, details: bool = False) -> dict[str, Any]:
    if not path.is_file():
        return {"file": str(path), "error": "no such file"}
    image = read_image(path)
    if image is None:
        return {"file": str(path), "error": "not a readable image"}
    gray = as_gray(image)
    started = time.perf_counter()
    try:
        detections = decoder.decode(gray)
    except Exception as exc:  # a decoder bug must not stop the other files
        return {"file": str(path), "error": f"decoder failed: {exc.__class__.__name__}: {exc}"}
    ms = round((time.perf_counter() - started) * 1000.0, 2)
    return {"file": str(path), "codes": [_code(d, ms, details) for d in detections]}


def _code(d: Detection, ms: float, details: bool) -> dict[str, Any]:
    payload = classify(d.text)
    code: dict[str, Any] = {"text": d.text, "kind": payload.kind, "decoder": d.decoder, "ms": ms}
    if not details:
        return code
    code["polygon"] = [list(p) for p in d.polygon]
    if isinstance(payload, PaymentCodePayload):
        code["wallet"] = payload.wallet
    elif isinstance(payload, UnknownPayload):
        code["reason"] = payload.reason
    elif isinstance(payload, EmvPayload):
        code["emv"] = {
            "pan": payload.masked_pan,
            "applications": [
                {"adf_name": a.adf_name, "label": a.label} for a in payload.applications
            ],
            "application_label": payload.application_label,
            "expiry": payload.expiry,
            "language": payload.language,
            "cryptogram": payload.cryptogram,
            "atc": payload.atc,
        }
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lane scan", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to decode")
    parser.add_argument(
        "--decoder",
        choices=DECODER_NAMES,
        default="cascade",
        help="zxing-cpp alone, ZBar alone, or zxing-cpp with fallbacks (default)",
    )
    parser.add_argument(
        "--json", action="store_true", help="add payload details (wallet, reason, polygon, EMV)"
    )
    return parser
