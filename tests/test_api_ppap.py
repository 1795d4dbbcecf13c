"""PPAP: the requester gives the ZIP password; the decrypted mail goes to be sanitized.

The decrypter here is a real one built on pyzipper, run in-process; in the gateway the
lead wires the sandboxed one from the converters (same `Decrypter` signature).
"""

from __future__ import annotations

import email
import hashlib
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

import pytest
import pyzipper

from gateway.custody.audit import Actor
from gateway.custody.quarantine import (
    BadPassword,
    PasswordLimit,
    Replacement,
    WrongPassword,
    replace_parts,
)
from gateway.custody.stores import SqlStores
from gateway.pipeline.notice import render_notice
from gateway.settings import Settings
from tests.api_helpers import Api, build_api
from tests.store_helpers import envelope_for, hold_message

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")

PASSWORD = "Kz7-m2Qp"
CONTENT = "令和8年度 予算案\n".encode()


def _encrypted_zip() -> bytes:
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(PASSWORD.encode())
        zf.writestr("yosan.txt", CONTENT)
    return buf.getvalue()


def zip_decrypter(data: bytes, filename: str | None, password: str) -> bytes:
    out = io.BytesIO()
    with pyzipper.AESZipFile(io.BytesIO(data)) as zf, zipfile.ZipFile(out, "w") as plain:
        zf.setpassword(password.encode())
        for name in zf.namelist():
            try:
                plain.writestr(name, zf.read(name))
            except RuntimeError as exc:  # pyzipper: "Bad password for file"
                raise WrongPassword() from exc
    return out.getvalue()


def _mail_with_zip() -> bytes:
    msg = EmailMessage()
    msg["From"] = "kyoku@partner.co.jp"
    msg["To"] = "clerk@example.lg.jp"
    msg["Subject"] = "予算案（パスワードは別送）"
    msg.set_content("添付をご確認ください。\n")
    msg.add_attachment(_encrypted_zip(), maintype="application", subtype="zip", filename="yosan.zip")
    return msg.as_bytes()


def _hold_ppap(stores: SqlStores, settings: Settings) -> bytes:
    """Through the real pipeline: the converters mark the encrypted ZIP releasable."""
    raw = _mail_with_zip()
    result = hold_message(stores, settings, "P1", raw, envelope_for(sender="kyoku@partner.co.jp"))
    [held] = [a for a in result.report.actions if a.filename == "yosan.zip"]
    assert held.releasable and held.quarantined
    return raw


@pytest.fixture
def ppap_api(stores: SqlStores, settings: Settings) -> Iterator[Api]:
    api = build_api(stores, settings, decrypt=zip_decrypter)
    _hold_ppap(stores, settings)
    yield api


def test_right_password_sends_decrypted_mail_to_sanitizing(ppap_api: Api) -> None:
    """No approval needed: the decrypted ZIP re-enters the pipeline as an inbound mail."""
    response = ppap_api.client.post("/api/quarantine/P1/release", headers=ppap_api.as_("operator"),
                                    json={"password": PASSWORD})
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "released"
    [(raw, envelope)] = ppap_api.spool.put_calls
    assert envelope.kind == "inbound" and envelope.rcpt_tos == ("clerk@example.lg.jp",)
    assert envelope.extra == {"ppap_release_of": "P1"}
    msg = email.message_from_bytes(raw)
    [part] = [p for p in msg.walk() if p.get_filename() == "yosan.zip"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        assert zf.read("yosan.txt") == CONTENT
        assert not any(info.flag_bits & 0x1 for info in zf.infolist())  # not encrypted
    assert msg["From"] == "kyoku@partner.co.jp"  # the sender's headers travel unchanged
    audit = ppap_api.client.get("/api/audit", headers=ppap_api.as_("auditor")).json()["items"]
    assert audit[0]["action"] == "quarantine.release_password"


def test_wrong_passwords_are_counted_and_limited(ppap_api: Api) -> None:
    """Five wrong guesses lock the entry: even the right password is refused afterwards."""
    headers = ppap_api.as_("operator")
    for left in (4, 3, 2, 1, 0):
        wrong = ppap_api.client.post("/api/quarantine/P1/release", headers=headers,
                                     json={"password": "guess"})
        assert wrong.status_code == 400, wrong.json()
        assert f"{left} attempts left" in wrong.json()["message"]
    locked = ppap_api.client.post("/api/quarantine/P1/release", headers=headers,
                                  json={"password": PASSWORD})
    assert locked.status_code == 429
    assert ppap_api.spool.put_calls == []
    detail = ppap_api.client.get("/api/quarantine/P1", headers=headers).json()
    assert detail["password_failures"] == 5 and detail["status"] == "held"
    audit = ppap_api.client.get("/api/audit", params={"action": "quarantine.password_wrong"},
                                headers=ppap_api.as_("auditor")).json()
    assert audit["total"] == 5


def test_parallel_wrong_passwords_get_exactly_the_limit_of_tries(
    stores: SqlStores, settings: Settings
) -> None:
    """40 guesses at once against a limit of 5: 5 reach the decrypter, 35 are refused.

    Each guess takes a while to decrypt, as a real one does in its sandbox; checking the
    count first and adding to it afterwards let 29 of 40 through.
    """
    tried: list[str] = []
    lock = threading.Lock()

    def slow_decrypter(data: bytes, filename: str | None, password: str) -> bytes:
        with lock:
            tried.append(password)
        time.sleep(0.05)
        return zip_decrypter(data, filename, password)

    api = build_api(stores, settings, decrypt=slow_decrypter)
    _hold_ppap(stores, settings)
    service = api.app.state.context.quarantine
    actor = Actor("op", "operator", "test")

    def guess(n: int) -> str:
        try:
            service.release_with_password("P1", actor, f"guess-{n}")
        except (BadPassword, PasswordLimit) as refused:
            return refused.code
        return "released"

    with ThreadPoolExecutor(max_workers=40) as pool:
        outcomes = list(pool.map(guess, range(40)))
    assert len(tried) == settings.ppap_max_password_attempts == 5
    assert outcomes.count("password_attempts_exhausted") == 35
    detail = api.client.get("/api/quarantine/P1", headers=api.as_("operator")).json()
    assert detail["password_failures"] == 5 and detail["status"] == "held"
    audit = api.client.get("/api/audit", params={"action": "quarantine.password_wrong"},
                           headers=api.as_("auditor")).json()
    assert audit["total"] == 5


def test_password_release_needs_an_encrypted_part(api: Api, settings: Settings) -> None:
    """Without a decrypter wired, or without a releasable part, the answer is 409."""
    from tests.store_helpers import hold_message

    hold_message(api.stores, settings, "Q1")
    response = api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"),
                               json={"password": "x"})
    assert response.status_code == 409
    assert response.json()["code"] == "password_release_unavailable"


def test_replacement_only_hits_the_held_part() -> None:
    """A part is swapped only when its content is exactly what was held."""
    raw = _mail_with_zip()
    data = _attachment(raw)
    good = replace_parts(raw, {"2": Replacement(hashlib.sha256(data).hexdigest(), b"PLAIN")})
    assert _attachment(good) == b"PLAIN"
    with pytest.raises(ValueError):
        replace_parts(raw, {"1": Replacement(hashlib.sha256(data).hexdigest(), b"x")})
    with pytest.raises(ValueError):
        replace_parts(raw, {"7": Replacement(hashlib.sha256(data).hexdigest(), b"x")})


def _attachment(raw: bytes) -> bytes:
    [part] = [p for p in email.message_from_bytes(raw).walk() if p.get_filename()]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def test_under_ppap_refuse_the_right_password_opens_nothing(
        stores: SqlStores, settings: Settings) -> None:
    """PPAP 廃止: the encrypted ZIP is held for the record, the notice says passwords are
    not taken, and a sender's accomplice who knows the password cannot release it."""
    refusing = settings.model_copy(update={"ppap": "refuse"})
    result = hold_message(stores, refusing, "P2", _mail_with_zip(),
                          envelope_for(sender="kyoku@partner.co.jp"))
    [held] = [a for a in result.report.actions if a.filename == "yosan.zip"]
    assert held.quarantined and not held.releasable and held.code == "ppap_refused"
    assert "パスワード付きファイルは組織の方針により受け取りません" in render_notice(
        result.report, refusing)
    api = build_api(stores, refusing, decrypt=zip_decrypter)
    with api.client:
        response = api.client.post("/api/quarantine/P2/release", headers=api.as_("operator"),
                                   json={"password": PASSWORD})
    assert response.status_code == 409, response.json()
    assert api.spool.put_calls == []
