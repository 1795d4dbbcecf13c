"""dkimpy's hot spots replaced (gateway.pipeline.dkimpy_speed): each replacement gives
dkimpy's own answer, checked against the original on valid, tampered and malformed input.
A difference here would change a DKIM verdict, so every case compares both."""

from __future__ import annotations

import base64
import hashlib
import importlib

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import dkimpy_speed

_KEYS = {bits: rsa.generate_private_key(public_exponent=65537, key_size=bits)
         for bits in (1024, 2048)}


def _public(key: rsa.RSAPrivateKey) -> dict[str, int]:
    numbers = key.public_key().public_numbers()
    return {"modulus": numbers.n, "publicExponent": numbers.e}


def _both(hashed_with: str, data: bytes, signature: bytes, public: dict[str, int]) -> bool:
    fast = dkimpy_speed.rsa_verify(hashlib.new(hashed_with, data), signature, public)
    original = dkimpy_speed.DKIMPY_VERIFY(hashlib.new(hashed_with, data), signature, public)
    assert fast is original
    return fast


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("name", ["sha256", "sha1"])
def test_rsa_verify_agrees_with_dkimpy(bits: int, name: str) -> None:
    key = _KEYS[bits]
    algorithm = hashes.SHA256() if name == "sha256" else hashes.SHA1()
    signature = key.sign(b"signed headers", padding.PKCS1v15(), algorithm)
    assert _both(name, b"signed headers", signature, _public(key)) is True
    assert _both(name, b"changed headers", signature, _public(key)) is False
    other = _public(_KEYS[3072 - bits])  # the other key: 2048 for 1024 and back
    assert _both(name, b"signed headers", signature, other) is False
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert _both(name, b"signed headers", flipped, _public(key)) is False


def test_odd_shapes_get_dkimpys_own_answer() -> None:
    """A signature of the wrong length, a short key, a modulus-sized garbage signature."""
    key = _KEYS[2048]
    signature = key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    assert _both("sha256", b"x", b"\x00" + signature, _public(key)) is True  # dkimpy accepts
    assert _both("sha256", b"x", signature[1:], _public(key)) is False
    assert _both("sha256", b"x", b"\xff" * 256, _public(key)) is False
    tiny = {"modulus": (1 << 255) + 1, "publicExponent": 65537}  # too small for a digest
    with pytest.raises(dkim.crypto.DigestTooLargeError):  # dkimpy's error, as before
        dkimpy_speed.rsa_verify(hashlib.sha256(b"x"), b"\x01" * 32, tiny)


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("name", ["sha256", "sha1"])
def test_rsa_sign_gives_dkimpys_bytes(bits: int, name: str) -> None:
    """PKCS #1 v1.5 signatures are deterministic: OpenSSL's must be dkimpy's, byte for
    byte, from the key dict dkimpy parses out of the PEM the seal is configured with."""
    pem = _KEYS[bits].private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    private = dkimpy_speed.parse_pem_private_key(pem)
    assert dkimpy_speed.parse_pem_private_key(pem) is private  # parsed once
    assert private == dkimpy_speed.DKIMPY_PEM(pem)
    for data in (b"", b"signed headers", "本文".encode() * 100):
        fast = dkimpy_speed.rsa_sign(hashlib.new(name, data), private)
        assert fast == bytes(dkimpy_speed.DKIMPY_SIGN(hashlib.new(name, data), private))
        assert _both(name, data, fast, _public(_KEYS[bits])) is True


_LINE = st.sampled_from([
    b"From: a@example.jp", b"Subject: =?utf-8?b?5Lya6K2w?=", b" folded", b"\tfolded",
    b"", b"From a@b Mon Jan 1", b"not a field", b"X-\x80: 8bit", b"body text", b"a\rb",
    b"DKIM-Signature: v=1; d=example.jp", b":", b"  ",
])
_END = st.sampled_from([b"\r\n", b"\n", b"\r", b""])


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_LINE, _END), max_size=12))
def test_rfc822_parse_agrees_with_dkimpy(lines: list[tuple[bytes, bytes]]) -> None:
    message = b"".join(line + end for line, end in lines)
    try:
        expected = dkimpy_speed.DKIMPY_PARSE(message)
    except Exception as e:  # MessageFormatError, or IndexError for a leading fold
        with pytest.raises(type(e)):
            dkimpy_speed.rfc822_parse(message)
        return
    assert dkimpy_speed.rfc822_parse(message) == expected


def test_rfc822_parse_on_real_mail_shapes() -> None:
    for message in (b"A: 1\r\nB: 2\r\n\r\nbody\r\nline\r\n", b"A: 1\n\nbody\nline\n",
                    b"A: 1\r\n\r\nmixed\nends\r\n", b"\r\nno header", b"A: 1\r\nB: 2",
                    b"A: 1\r\n b\r\n\r\n\r\n\r\n"):
        assert dkimpy_speed.rfc822_parse(message) == dkimpy_speed.DKIMPY_PARSE(message)


def test_key_records_parse_once_and_bad_ones_raise_every_time() -> None:
    public = _KEYS[2048].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    first = dkimpy_speed.evaluate_pk(b"s1._domainkey.example.jp.", record)
    assert dkimpy_speed.evaluate_pk(b"s1._domainkey.example.jp.", record) is first
    assert first[:2] == dkimpy_speed.DKIMPY_EVALUATE_PK(b"s1._domainkey.example.jp.", record)[:2]
    for _ in range(2):
        with pytest.raises(dkim.KeyFormatError):
            dkimpy_speed.evaluate_pk(b"s1._domainkey.example.jp.", b"v=DKIM1; p=bm90IGEga2V5")


def test_installed_where_dkimpy_calls_them() -> None:
    importlib.import_module("gateway.pipeline.sender_auth")  # which installs them

    assert dkim.RSASSA_PKCS1_v1_5_verify is dkimpy_speed.rsa_verify
    assert dkim.RSASSA_PKCS1_v1_5_sign is dkimpy_speed.rsa_sign
    assert dkim.parse_pem_private_key is dkimpy_speed.parse_pem_private_key
    assert dkim.rfc822_parse is dkimpy_speed.rfc822_parse
    assert dkim.evaluate_pk is dkimpy_speed.evaluate_pk
