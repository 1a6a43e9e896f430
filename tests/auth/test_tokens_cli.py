from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import cv2
import pytest
import zxingcpp

from lane.auth.cli import main
from lane.auth.deny import DenyList, deny_list_to_json
from lane.auth.keys import load_keyset


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_new_then_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "keys"
    code, out, _ = run(
        ["keys", "new", "--kid", "k2026", "--alg", "ed25519", "--out", str(out_dir),
         "--issuer", "wallet.example", "--not-before", "1800000000", "--valid-days", "10"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    private = out_dir / "k2026.key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    first = load_keyset(out_dir / "keyset.json")
    key = first.get(b"k2026")
    assert key is not None
    assert (key.not_before, key.not_after, key.issuer) == (1800000000, 1800864000, "wallet.example")

    code, _, _ = run(
        ["keys", "new", "--kid", "k2027", "--alg", "es256", "--out", str(out_dir)], capsys
    )
    assert code == 0
    second = load_keyset(out_dir / "keyset.json")
    assert set(second.keys) == {b"k2026", b"k2027"}
    assert second.supersedes(first)

    code, _, err = run(
        ["keys", "new", "--kid", "k2027", "--alg", "es256", "--out", str(out_dir)], capsys
    )
    assert code == 2 and "refusing to overwrite" in err
    code, _, err = run(
        ["keys", "new", "--kid", "../x", "--alg", "es256", "--out", str(out_dir)], capsys
    )
    assert code == 2 and "--kid" in err

    code, out, _ = run(["keys", "check", str(out_dir / "keyset.json")], capsys)
    assert code == 0 and "k2026: ed25519 issuer wallet.example" in out and "k2027: es256" in out


@pytest.mark.parametrize("alg", ["ed25519", "es256"])
def test_issue_png_scan_and_verify(
    alg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["keys", "new", "--kid", "k1", "--alg", alg, "--out", str(tmp_path)], capsys)
    png = tmp_path / "token.png"
    code, out, err = run(
        ["token", "issue", "--key", str(tmp_path / "k1.key.pem"), "--kid", "k1",
         "--issuer", "wallet.example", "--account", "acct-9", "--ttl", "30", "--png", str(png)],
        capsys,
    )  # fmt: skip
    assert code == 0
    # The lifetime is stated (on stderr: stdout is the token alone, for scripts).
    assert err.startswith("valid 30 s, until 20") and "--ttl" in err
    assert "warning" not in err
    text = out.strip()
    assert text.startswith("LT1:")
    # Read back with the format set the lane scanner uses (QR Model 2 only).
    model2 = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCodeModel2)
    found = zxingcpp.read_barcodes(cv2.imread(str(png)), formats=model2)
    assert [b.text for b in found] == [text]

    keyset = str(tmp_path / "keyset.json")
    code, out, _ = run(["token", "verify", "--keys", keyset, text], capsys)
    assert code == 0 and "accepted" in out and "account=acct-9" in out
    later = str(time.time() + 3600)
    code, out, _ = run(["token", "verify", "--keys", keyset, "--now", later, text], capsys)
    assert code == 1 and out.startswith("refused: expired")

    deny = tmp_path / "deny.json"
    deny.write_text(deny_list_to_json(DenyList.of(3, ["acct-9"])))
    code, out, _ = run(["token", "verify", "--keys", keyset, "--deny", str(deny), text], capsys)
    assert code == 1 and "denied_account" in out


def test_issue_compact_png_scan_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["keys", "new", "--kid", "k1", "--alg", "ed25519", "--out", str(tmp_path),
         "--issuer", "wallet.example"], capsys)  # fmt: skip
    png = tmp_path / "token.png"
    key = str(tmp_path / "k1.key.pem")
    code, out, _ = run(
        ["token", "issue", "--key", key, "--kid", "k1", "--compact", "--account", "acct-9",
         "--png", str(png)],
        capsys,
    )  # fmt: skip
    assert code == 0
    text = out.strip()
    assert text.startswith("LT2:") and len(text) <= 154
    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (45 * 8, 45 * 8)  # version 5 (37 modules) + quiet zone, 8 px each
    model2 = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCodeModel2)
    found = zxingcpp.read_barcodes(image, formats=model2)
    assert [(b.text, b.ec_level) for b in found] == [(text, "L")]
    code, out, _ = run(["token", "verify", "--keys", str(tmp_path / "keyset.json"), text], capsys)
    assert code == 0 and "issuer=wallet.example account=acct-9" in out

    code, _, err = run(
        ["token", "issue", "--key", key, "--kid", "k1", "--compact", "--account", "a" * 12],
        capsys,
    )
    assert code == 2 and err.startswith("error: compact token would be")
    for both_or_neither in (["--compact", "--issuer", "w"], []):
        code, _, err = run(
            ["token", "issue", "--key", key, "--kid", "k1", "--account", "a", *both_or_neither],
            capsys,
        )
        assert code == 2 and "give --issuer for a v1 token or --compact" in err


def test_verify_refuses_a_token_living_longer_than_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["keys", "new", "--kid", "k1", "--alg", "ed25519", "--out", str(tmp_path)], capsys)
    code, out, err = run(
        ["token", "issue", "--key", str(tmp_path / "k1.key.pem"), "--kid", "k1",
         "--issuer", "wallet.example", "--account", "acct-9", "--ttl", "3600"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "warning: a lifetime of 3600 s is over the 900 s a lane accepts by default" in err
    verify = ["token", "verify", "--keys", str(tmp_path / "keyset.json"), out.strip()]
    code, out, _ = run(verify, capsys)  # the lane's default cap: 900 s
    assert code == 1
    assert out.strip() == "refused: lifetime_too_long: lifetime 3600 s (exp - iat), cap 900 s"
    code, out, _ = run([*verify[:2], "--max-lifetime", "3600", *verify[2:]], capsys)
    assert code == 0 and out.startswith("accepted:")


def test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_key = tmp_path / "k.pem"
    bad_key.write_text("not a key")
    code, _, err = run(
        ["token", "issue", "--key", str(bad_key), "--kid", "k", "--issuer", "i", "--account", "a"],
        capsys,
    )
    assert code == 2 and err.startswith(f"error: {bad_key}: not an unencrypted PEM private key")
    keyset = tmp_path / "keyset.json"
    keyset.write_text(json.dumps({"v": 1, "issued_at": 0, "keys": [{"kid": "k"}]}))
    code, _, err = run(["token", "verify", "--keys", str(keyset), "LT1:"], capsys)
    assert code == 2 and "keys[0].alg: is missing" in err
    code, _, err = run(["keys", "check", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "cannot read" in err
    assert run(["token"], capsys)[0] == 2
    assert run(["bogus"], capsys)[0] == 2
