"""`python -m converters.decrypt`: open one password-protected ZIP or Office file (PPAP).

Started by `gateway.custody.ppap` inside its own bubblewrap sandbox, one process per attempt,
with rlimits set here before any untrusted byte is parsed. The protocol is deliberately
tiny: stdin carries one JSON line (password and limits; the password never appears on a
command line) and then the file; stdout carries the same kind of file without
encryption; the exit status says what went wrong. The output is not trusted either: the
gateway sends it through the normal sanitizing pipeline.
"""

from __future__ import annotations

import io
import json
import resource
import sys
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

from converters.errors import Bomb, ConversionError, Corrupt, LimitExceeded, Unsupported

#: Exit status for a wrong password; other failures exit with EXIT_CODES[error code].
EXIT_WRONG_PASSWORD = 10
EXIT_CODES = {"unsupported_type": 11, "limit_exceeded": 12, "bomb": 13, "corrupt": 14}
_CHUNK = 64 * 1024
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class WrongPassword(Exception):
    """The password does not open the file."""


@dataclass(frozen=True)
class DecryptLimits:
    max_members: int
    max_bytes: int
    max_ratio: int
    memory_bytes: int
    cpu_seconds: int


def decrypt(untrusted: bytes, password: str, limits: DecryptLimits) -> bytes:
    """The file without its encryption; WrongPassword or a ConversionError otherwise."""
    if untrusted.startswith(b"PK\x03\x04"):
        return _zip(untrusted, password.encode("utf-8"), limits)
    if untrusted.startswith(_OLE_MAGIC):
        return _office(untrusted, password)
    raise Unsupported("neither a ZIP nor an encrypted Office file")


def _zip(untrusted: bytes, password: bytes, limits: DecryptLimits) -> bytes:
    import pyzipper

    out = io.BytesIO()
    try:
        with pyzipper.AESZipFile(io.BytesIO(untrusted)) as src, \
                zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as plain:
            infos = src.infolist()
            if len(infos) > limits.max_members:
                raise LimitExceeded("too many members")
            declared = sum(i.file_size for i in infos)
            budget = min(limits.max_bytes, max(len(untrusted), 1) * limits.max_ratio)
            if declared > budget:
                raise Bomb("declared sizes exceed the limit")
            used = 0
            for info in infos:
                data = _read_member(src, info, password, budget - used)
                used += len(data)
                plain.writestr(info.filename, data)
    except (RuntimeError, zlib.error) as exc:  # pyzipper: "Bad password for file"
        raise WrongPassword() from exc
    except zipfile.BadZipFile as exc:
        # ZipCrypto accepts about 1 in 256 wrong passwords at its check byte; the CRC then
        # fails. Count it as a wrong password rather than calling the file corrupt.
        if "CRC" in str(exc):
            raise WrongPassword() from exc
        raise Corrupt("unreadable ZIP") from exc
    return out.getvalue()


def _read_member(src: zipfile.ZipFile, info: zipfile.ZipInfo, password: bytes,
                 budget: int) -> bytes:
    """One member, counting real bytes: declared sizes may lie."""
    parts: list[bytes] = []
    size = 0
    with src.open(info, pwd=password) as fh:
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            if size > budget:
                raise Bomb("the content expands beyond the limit")
            parts.append(chunk)
    return b"".join(parts)


def _office(untrusted: bytes, password: str) -> bytes:
    import msoffcrypto
    from msoffcrypto import exceptions

    out = io.BytesIO()
    try:
        office = msoffcrypto.OfficeFile(io.BytesIO(untrusted))
        if not office.is_encrypted():
            return untrusted
        office.load_key(password=password)
        office.decrypt(out)
    except (exceptions.InvalidKeyError, exceptions.DecryptionError) as exc:
        raise WrongPassword() from exc
    except Exception as exc:  # msoffcrypto raises assorted errors on unknown layouts
        raise Corrupt("unreadable Office file") from exc
    return out.getvalue()


def _apply_limits(limits: DecryptLimits) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Everything happens in memory and on the pipes: no file may grow, so a hijacked
    # decrypter cannot fill the sandbox's /tmp, whose pages are RAM RLIMIT_AS does not count.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def run(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    header = json.loads(stdin.readline())
    limits = DecryptLimits(**header["limits"])
    _apply_limits(limits)
    data = stdin.read(limits.max_bytes + 1)
    try:
        result = decrypt(data, str(header["password"]), limits)
    except WrongPassword:
        return EXIT_WRONG_PASSWORD
    except MemoryError:
        return EXIT_CODES["limit_exceeded"]
    except ConversionError as exc:
        return EXIT_CODES.get(exc.code, EXIT_CODES["corrupt"])
    stdout.write(result)
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.stdin.buffer, sys.stdout.buffer))
