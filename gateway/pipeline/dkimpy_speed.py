"""dkimpy's hot spots, replaced by equivalents that give the same results faster
(issue 21's speed bar, docs/sender-auth.md "Speed").

dkimpy is pure Python. Verifying one DKIM signature on typical mail cost 0.5 ms of CPU,
most of it in three places, measured with cProfile on bench/bench_auth.py's signed mix:

- the RSA operation: `pow()` on Python integers, 0.15 ms; OpenSSL (through
  `cryptography`, already pinned) verifies the same PKCS #1 v1.5 signature in 0.02 ms;
- `rfc822_parse` splits the *whole message* into a list of lines to find the header and
  rejoins the body with CRLF (0.1 ms on 10 KB); only the header section needs splitting,
  and the body's line ends are normalised by one `re.sub` (or not at all when they are
  CRLF already);
- the key record, parsed (tag list, base64, ASN.1) twice per message: once when we fetch
  it (`sender_auth._verify` tells a missing key from a bad one) and again in dkimpy.

Our ARC seal (`gateway.pipeline.arc_seal`, optional) signs twice a message with dkimpy's
private-key RSA, also Python integers: about 6 ms a sealed message. OpenSSL signs the
same bytes (PKCS #1 v1.5 signatures are deterministic) in a fraction of that, and the PEM
key is parsed once, not per message.

Each replacement hands anything outside the ordinary shape to dkimpy's own code, so the
results are dkimpy's by construction; tests/test_dkimpy_speed.py checks them against the
originals on valid, tampered and malformed input. `install()` puts them in place.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import dkim
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

#: The originals, for everything the fast paths do not take and for the tests.
DKIMPY_VERIFY = dkim.RSASSA_PKCS1_v1_5_verify
DKIMPY_PARSE: Callable[[bytes], tuple[list[list[bytes]], bytes]] = dkim.rfc822_parse
DKIMPY_EVALUATE_PK = dkim.evaluate_pk
DKIMPY_SIGN = dkim.RSASSA_PKCS1_v1_5_sign
DKIMPY_PEM = dkim.parse_pem_private_key

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}
#: Shorter keys go to dkimpy, which refuses them (`minkey`) with its own error.
_MIN_FAST_BITS = 1024
#: The first empty line, where dkimpy's line split (on CRLF or LF) ends the header.
_BLANK_LINE = re.compile(rb"(?:\A|\n)\r?\n")
_LINE_END = re.compile(rb"\r?\n")


@functools.lru_cache(maxsize=256)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def rsa_verify(hashed: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """`dkim.crypto.RSASSA_PKCS1_v1_5_verify` by OpenSSL: True when `signature` is the
    PKCS #1 v1.5 signature of `hashed`'s digest under the key. A key below 1024 bits, a
    signature not exactly the modulus's length, another digest or a key OpenSSL will not
    load go to dkimpy's own code (its errors, its answers)."""
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    digest = _DIGESTS.get(getattr(hashed, "name", ""))
    size = (modulus.bit_length() + 7) // 8
    if digest is None or modulus.bit_length() < _MIN_FAST_BITS or len(signature) != size:
        return bool(DKIMPY_VERIFY(hashed, signature, public_key))
    try:
        key = _public_key(modulus, exponent)
        key.verify(signature, hashed.digest(), padding.PKCS1v15(), utils.Prehashed(digest()))
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):  # an odd key: dkimpy decides
        return bool(DKIMPY_VERIFY(hashed, signature, public_key))
    return True


@functools.lru_cache(maxsize=16)
def _private_key(n: int, e: int, d: int, p: int, q: int, dp: int, dq: int,
                 qinv: int) -> rsa.RSAPrivateKey:
    return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qinv, rsa.RSAPublicNumbers(e, n)).private_key()


def rsa_sign(hashed: Any, private_key: dict[str, int]) -> bytes:
    """`dkim.crypto.RSASSA_PKCS1_v1_5_sign` by OpenSSL: the same bytes (the scheme is
    deterministic). Keys and digests outside the ordinary go to dkimpy's own code."""
    k = private_key
    digest = _DIGESTS.get(getattr(hashed, "name", ""))
    if digest is None or k["modulus"].bit_length() < _MIN_FAST_BITS:
        return bytes(DKIMPY_SIGN(hashed, private_key))
    try:
        key = _private_key(k["modulus"], k["publicExponent"], k["privateExponent"],
                           k["prime1"], k["prime2"], k["exponent1"], k["exponent2"],
                           k["coefficient"])
    except (ValueError, TypeError, UnsupportedAlgorithm):  # a key OpenSSL refuses
        return bytes(DKIMPY_SIGN(hashed, private_key))
    return key.sign(hashed.digest(), padding.PKCS1v15(), utils.Prehashed(digest()))


def rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """`dkim.rfc822_parse`, splitting only the header section into lines: (fields, body
    with CRLF line ends). Same fields, same body, same MessageFormatError."""
    blank = _BLANK_LINE.search(message)
    if blank is None:  # no body: dkimpy's own, on the header alone anyway
        return DKIMPY_PARSE(message)
    headers, _ = DKIMPY_PARSE(message[:blank.start()] + b"\n\n")
    body = message[blank.end():]
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LINE_END.sub(b"\r\n", body)
    return headers, body


def install() -> None:
    """Put the replacements where dkimpy's verification calls them (its module's
    globals). Idempotent."""
    dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify
    dkim.RSASSA_PKCS1_v1_5_sign = rsa_sign
    dkim.parse_pem_private_key = parse_pem_private_key
    dkim.rfc822_parse = rfc822_parse
    dkim.evaluate_pk = evaluate_pk


#: One parse per key record (name, text) instead of two per message; a record that does
#: not parse raises every time (lru_cache keeps no exceptions).
evaluate_pk = functools.lru_cache(maxsize=256)(DKIMPY_EVALUATE_PK)
#: The seal's PEM key, parsed once (dkimpy parses it for every signature).
parse_pem_private_key = functools.lru_cache(maxsize=16)(DKIMPY_PEM)
