"""One catalogue of conversion failures: each has a stable code and a message safe to show.

The message never contains untrusted bytes or internal detail: it goes into the notice
that staff read and into the JSON report.
"""

from __future__ import annotations

from typing import ClassVar


class ConversionError(Exception):
    """A conversion that did not produce a harmless rendering. The original is quarantined."""

    code: ClassVar[str] = "conversion_failed"
    message: ClassVar[str] = "the file could not be converted"
    #: True when the original is held for release (e.g. encrypted, PPAP) rather than refused.
    holdable: ClassVar[bool] = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.message)
        self.detail = detail


class Blocked(ConversionError):
    code = "blocked_type"
    message = "this kind of file is never delivered"


class DeceptiveName(Blocked):
    code = "deceptive_name"
    message = "the file name disguises the kind of file (hidden characters or a double extension)"


class Unsupported(ConversionError):
    code = "unsupported_type"
    message = "no converter for this kind of file"
    #: An unknown type may be legitimate (a CAD drawing): held for an operator's approval.
    holdable = True


class Corrupt(ConversionError):
    code = "corrupt"
    message = "the file is damaged and could not be read"


class Encrypted(ConversionError):
    code = "encrypted"
    message = "the file is encrypted; it can be released when the password is given"
    holdable = True


class LimitExceeded(ConversionError):
    code = "limit_exceeded"
    message = "the file exceeds a size, page, pixel or member limit"


class Bomb(LimitExceeded):
    code = "bomb"
    message = "the file expands far beyond its size (a compression bomb)"


class Timeout(ConversionError):
    code = "timeout"
    message = "the conversion took too long and was stopped"


class SandboxFailure(ConversionError):
    code = "sandbox_failure"
    message = "the converter stopped unexpectedly"


CATALOGUE: dict[str, type[ConversionError]] = {
    cls.code: cls
    for cls in (
        ConversionError, Blocked, DeceptiveName, Unsupported, Corrupt, Encrypted,
        LimitExceeded, Bomb, Timeout, SandboxFailure,
    )
}


def from_code(code: str, detail: str = "") -> ConversionError:
    """Rebuild an error from its code (the sandbox sends codes, never pickled objects)."""
    return CATALOGUE.get(code, ConversionError)(detail)
