"""Delivery to the LGWAN side over STARTTLS, with the certificate check as configured."""

from __future__ import annotations

import datetime
import smtplib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Gateway, Sink, plain_message


def self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lgwan-mail.example.lg.jp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


@pytest.fixture
def tls_sink(tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tls_context=self_signed(tmp_path)).start()
    yield s
    s.stop()


def _send(gw: Gateway, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
        client.sendmail("a@example.com", ["staff@example.lg.jp"], plain_message(body=body))


def test_starttls_used_when_offered(make_gateway: Callable[..., Gateway], tls_sink: Sink) -> None:
    gw = make_gateway(tls_sink.port, MUGAIKA_DOWNSTREAM_STARTTLS="opportunistic",
                      MUGAIKA_DOWNSTREAM_VERIFY_CERT="false")
    _send(gw, "暗号化経路")
    got = tls_sink.wait(1)[0]
    assert got.tls, "delivered in clear although the downstream offered STARTTLS"


def test_unverifiable_certificate_defers_when_checking(make_gateway: Callable[..., Gateway],
                                                        tls_sink: Sink) -> None:
    gw = make_gateway(tls_sink.port, MUGAIKA_DOWNSTREAM_STARTTLS="opportunistic",
                      MUGAIKA_DOWNSTREAM_VERIFY_CERT="true")
    _send(gw, "検証")
    gw.wait_for_spool("deferred")
    assert tls_sink.received == []


def test_required_starttls_refuses_clear_downstream(make_gateway: Callable[..., Gateway],
                                                     sink: Sink) -> None:
    gw = make_gateway(sink.port, MUGAIKA_DOWNSTREAM_STARTTLS="required")
    _send(gw, "平文禁止")
    gw.wait_for_spool("deferred")
    assert sink.received == []
