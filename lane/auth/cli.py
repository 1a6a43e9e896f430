"""`lane keys`, `lane token`, `lane pass`: make keys, issue and check offline tokens and passes.

    keys new --kid K --alg ed25519|es256 --out DIR [--issuer I] [--valid-days 365]
             [--plaza P]   (an entry plaza's pass key: use "pass", docs/closed-road.md)
             [--lane P/L]  (a lane's key for its messages to other lanes: use "lane",
                            auth.lane_key; docs/tokens.md, "Lane keys")
    keys check FILE
    token issue --key PRIV.pem --kid K (--issuer I | --compact) --account A [--ttl 60] [--png F]
    token verify --keys keyset.json [--deny deny.json] [--skew 5] [--max-lifetime 900] TEXT
    pass issue --key PLAZA.pem --kid K --plaza P --lane L --class C [--plate X] [--png out.png]
    pass verify --keys keyset.json [--skew 5] [--max-age-days 30] TEXT

Exit codes: 0 done (or token/pass accepted), 1 refused, 2 usage or file error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lane.auth.cose import Alg, PrivateKey
from lane.auth.deny import DenyList, DenyListError, load_deny_list
from lane.auth.issuer import parse_private_key
from lane.auth.keys import (
    IssuerKey,
    KeySet,
    KeySetError,
    KeyUse,
    keyset_to_json,
    load_keyset,
)
from lane.auth.netkeys import KeyFileError
from lane.auth.passes import EntryPass, PassRefused, issue_pass, verify_pass
from lane.auth.tokens import (
    DEFAULT_MAX_LIFETIME_S,
    PHONE_TOKEN_TTL_S,
    TokenAccepted,
    issue_compact_token,
    issue_token,
    qr_ec_level,
    verify_token,
)
from lane.wire.utc import utc_text

KEYSET_FILE = "keyset.json"
_SAFE_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CliError(Exception):
    """A problem to report in one line, exit code 2."""


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors by exiting
        return exc.code if isinstance(exc.code, int) else 2
    try:
        result: int = args.run(args)
    except (CliError, KeySetError, DenyListError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lane", description="offline token tooling")
    groups = parser.add_subparsers(dest="group", required=True)

    keys = groups.add_parser("keys", help="issuer signing keys and key set files")
    keys_cmds = keys.add_subparsers(dest="cmd", required=True)
    new = keys_cmds.add_parser(
        "new", help="make a key pair and add its public key to DIR's key set"
    )
    new.add_argument("--kid", required=True, help="key id ([A-Za-z0-9._-], used as file name)")
    new.add_argument("--alg", required=True, choices=[a.value for a in Alg])
    new.add_argument("--out", required=True, type=Path, help="directory for the files")
    new.add_argument("--issuer", help="bind the key to this token issuer (iss)")
    new.add_argument("--plaza", help="make an entry pass key of this plaza (not a token key)")
    new.add_argument(
        "--lane",
        help="make the key lane P/L signs its messages to other lanes with (auth.lane_key)",
    )
    new.add_argument("--not-before", type=int, help="unix seconds (default: now)")
    new.add_argument("--valid-days", type=float, default=365.0)
    new.set_defaults(run=_keys_new)
    check = keys_cmds.add_parser("check", help="validate a key set file and list its keys")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_keys_check)

    token = groups.add_parser("token", help="issue or verify offline tokens")
    token_cmds = token.add_subparsers(dest="cmd", required=True)
    issue = _signer(token_cmds, "sign a token and print its QR text", _token_issue)
    issue.add_argument("--issuer", help="iss of a v1 token")
    issue.add_argument(
        "--compact",
        action="store_true",
        help="a compact v2 token (QR version 5-L; the key set binds the key to its issuer)",
    )
    issue.add_argument("--account", required=True)
    issue.add_argument(
        "--ttl",
        type=int,
        default=PHONE_TOKEN_TTL_S,
        help=f"seconds of validity (default {PHONE_TOKEN_TTL_S}: a phone's code)",
    )
    issue.add_argument("--iat", type=int, help="issued-at, unix seconds (default: now)")
    verify = _verifier(token_cmds, "verify QR text against a key set", _token_verify)
    verify.add_argument("--deny", type=Path, help="deny list JSON")
    verify.add_argument(
        "--max-lifetime",
        type=int,
        default=DEFAULT_MAX_LIFETIME_S,
        help=f"longest exp - iat accepted, s (default {DEFAULT_MAX_LIFETIME_S}, as a lane)",
    )

    entry = groups.add_parser("pass", help="issue or verify entry passes (closed roads)")
    pass_cmds = entry.add_subparsers(dest="cmd", required=True)
    issue = _signer(pass_cmds, "sign an entry pass (the plaza's key)", _pass_issue)
    issue.add_argument("--plaza", required=True)
    issue.add_argument("--lane", required=True)
    issue.add_argument("--class", dest="vehicle_class", required=True, type=int)
    issue.add_argument("--plate", help="bind the pass to this plate")
    issue.add_argument("--at", type=int, help="time of entry, unix seconds (default: now)")
    verify = _verifier(pass_cmds, "verify a pass against a key set, offline", _pass_verify)
    verify.add_argument("--max-age-days", type=float, default=30.0, help="pass lifetime")
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Run: TypeAlias = Callable[[argparse.Namespace], int]


def _signer(commands: Commands, what: str, run: Run) -> argparse.ArgumentParser:
    """`issue`: the options every signing command has."""
    issue = commands.add_parser("issue", help=what)
    issue.add_argument("--key", required=True, type=Path, help="private key PEM")
    issue.add_argument("--kid", required=True)
    issue.add_argument("--png", type=Path, help="also write the QR code to this image")
    issue.set_defaults(run=run)
    return issue


def _verifier(commands: Commands, what: str, run: Run) -> argparse.ArgumentParser:
    """`verify`: the options every offline verification has."""
    verify = commands.add_parser("verify", help=what)
    verify.add_argument("--keys", required=True, type=Path, help="key set JSON")
    verify.add_argument("--skew", type=float, default=5.0, help="clock skew allowed, s")
    verify.add_argument("--now", type=float, help="unix seconds (default: now)")
    verify.add_argument("text")
    verify.set_defaults(run=run)
    return verify


def _keys_new(args: argparse.Namespace) -> int:
    kid: str = args.kid
    if not _SAFE_KID.fullmatch(kid):
        raise CliError(f"--kid {kid!r}: use 1..64 of A-Z a-z 0-9 . _ -")
    if args.valid_days <= 0:
        raise CliError("--valid-days must be positive")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / f"{kid}.key.pem"
    keyset_path = out / KEYSET_FILE
    if key_path.exists():
        raise CliError(f"{key_path}: exists; refusing to overwrite a private key")
    now = int(time.time())
    current = load_keyset(keyset_path) if keyset_path.exists() else KeySet(now)
    if kid.encode() in current.keys:
        raise CliError(f"{keyset_path}: already has a key {kid!r}")

    alg = Alg(args.alg)
    private: PrivateKey = (
        Ed25519PrivateKey.generate()
        if alg is Alg.ED25519
        else ec.generate_private_key(ec.SECP256R1())
    )
    not_before = now if args.not_before is None else args.not_before
    not_after = not_before + int(args.valid_days * 86400)
    entry = IssuerKey(
        kid.encode(), alg, private.public_key(), not_before, not_after, args.issuer,
        *_use_of(args),
    )  # fmt: skip
    keyset = KeySet.of(max(now, current.issued_at + 1), [*current.keys.values(), entry])

    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    tmp = keyset_path.with_suffix(".json.tmp")
    tmp.write_text(keyset_to_json(keyset), encoding="utf-8")
    tmp.replace(keyset_path)
    print(f"private key: {key_path}")
    print(f"key set:     {keyset_path} ({len(keyset.keys)} keys)")
    print(f"valid:       {utc_text(not_before)} .. {utc_text(not_after)}")
    return 0


def _use_of(args: argparse.Namespace) -> tuple[KeyUse, str | None, str | None]:
    """What the new key signs, and for which plaza or lane (`IssuerKey`'s last three)."""
    if args.plaza is not None and args.lane is not None:
        raise CliError("--plaza makes a pass key, --lane a lane key: give one")
    if args.issuer is not None and (args.plaza or args.lane) is not None:
        made = "--plaza makes a pass key" if args.plaza else "--lane makes a lane key"
        raise CliError(f"{made}, which has no token --issuer")
    if args.lane is not None:
        plaza, sep, rest = args.lane.partition("/")
        if not (plaza and sep and rest) or "/" in rest:
            raise CliError(f"--lane {args.lane!r}: a lane id plaza/lane")
        return KeyUse.LANE, None, args.lane
    return (KeyUse.TOKEN, None, None) if args.plaza is None else (KeyUse.PASS, args.plaza, None)


def _keys_check(args: argparse.Namespace) -> int:
    keyset = load_keyset(args.file)
    print(f"{args.file}: issued {utc_text(keyset.issued_at)}, {len(keyset.keys)} keys")
    for key in keyset.keys.values():
        issuer = f" issuer {key.issuer}" if key.issuer else ""
        if key.use is KeyUse.PASS:
            issuer = f" pass key of plaza {key.plaza}"
        if key.use is KeyUse.LANE:
            issuer = f" lane key of {key.lane}"
        print(
            f"  {key.kid_text}: {key.alg.value}{issuer}"
            f" valid {utc_text(key.not_before)} .. {utc_text(key.not_after)}"
        )
    return 0


def _load_private_key(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return parse_private_key(data, path)
    except KeyFileError as exc:
        raise CliError(str(exc)) from None


def _token_issue(args: argparse.Namespace) -> int:
    if args.ttl <= 0:
        raise CliError("--ttl must be positive")
    if args.compact == (args.issuer is not None):
        raise CliError("give --issuer for a v1 token or --compact for a v2 one (not both)")
    private = _load_private_key(args.key)
    iat = int(time.time()) if args.iat is None else args.iat
    try:
        if args.compact:
            text = issue_compact_token(private, args.kid, args.account, iat, iat + args.ttl)
        else:
            text = issue_token(
                private, args.kid, args.issuer, args.account, iat, iat + args.ttl, os.urandom(16)
            )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.png is not None:
        write_qr_png(text, args.png)
    print(text)
    # On stderr, so scripts that take the token from stdout are unaffected.
    print(
        f"valid {args.ttl} s, until {utc_text(iat + args.ttl)} (--ttl to change)",
        file=sys.stderr,
    )
    if args.ttl > DEFAULT_MAX_LIFETIME_S:
        # Issued all the same: a lane may be set to a longer cap (auth.max_token_lifetime_s).
        print(
            f"warning: a lifetime of {args.ttl} s is over the {DEFAULT_MAX_LIFETIME_S} s a lane "
            "accepts by default; lanes refuse it as lifetime_too_long unless their "
            "auth.max_token_lifetime_s allows it",
            file=sys.stderr,
        )
    return 0


def write_qr_png(text: str, path: Path, scale: int = 8) -> None:
    # Imported here: OpenCV takes a while to load and only this command needs it.
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import zxingcpp  # noqa: PLC0415

    # The level a phone uses: M for v1 (glare and thumbs), L for v2 (its point is version 5).
    level = qr_ec_level(text)
    barcode = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level=level)
    image = np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=scale))
    if not cv2.imwrite(str(path), image):
        raise CliError(f"{path}: cannot write the image (check the directory and extension)")


def _pass_issue(args: argparse.Namespace) -> int:
    private = _load_private_key(args.key)
    at = int(time.time()) if args.at is None else args.at
    entry = EntryPass(args.plaza, args.lane, at, args.vehicle_class, os.urandom(12), args.plate)
    try:
        text = issue_pass(private, args.kid.encode(), entry)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.png is not None:
        write_qr_png(text, args.png)
    print(text)
    return 0


def _pass_verify(args: argparse.Namespace) -> int:
    keys = load_keyset(args.keys)
    now = time.time() if args.now is None else args.now
    verdict = verify_pass(args.text, keys, now, args.skew, args.max_age_days * 86400)
    if isinstance(verdict, PassRefused):
        print(f"refused: {verdict.reason.value}: {verdict.detail}")
        return 1
    e = verdict.entry
    print(
        f"accepted: pass_id={e.pass_hex} plaza={e.plaza} lane={e.lane}"
        f" entered={utc_text(e.entered_at)} class={e.vehicle_class} plate={e.plate or '-'}"
        f" kid={verdict.kid.decode('utf-8', 'backslashreplace')}"
    )
    return 0


def _token_verify(args: argparse.Namespace) -> int:
    keys = load_keyset(args.keys)
    deny = load_deny_list(args.deny) if args.deny is not None else DenyList.empty()
    now = time.time() if args.now is None else args.now
    verdict = verify_token(args.text, keys, deny, now, args.skew, args.max_lifetime)
    if isinstance(verdict, TokenAccepted):
        print(
            f"accepted: token_id={verdict.token_id} issuer={verdict.issuer}"
            f" account={verdict.account_ref} iat={verdict.iat} exp={verdict.exp}"
            f" kid={verdict.kid.decode('utf-8', 'backslashreplace')}"
        )
        return 0
    print(f"refused: {verdict.reason.value}: {verdict.detail}")
    return 1
