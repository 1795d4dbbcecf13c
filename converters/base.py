"""The one small interface every converter implements.

A converter takes untrusted bytes and returns a `Conversion`: harmless renderings it built
from scratch, and, for containers (archives, forwarded mail, Outlook files), the members
it found, which the caller treats as top-level attachments one level deeper.
Failures are raised as `converters.errors.ConversionError` subclasses, never returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from converters.limits import ConversionPolicy


@dataclass(frozen=True)
class Rendering:
    """One output file, rebuilt by us (page images, an image-only PDF, UTF-8 text)."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Member:
    """A file found inside a container, with its decoded path (e.g. CP932 names fixed)."""

    path: str
    data: bytes


@dataclass(frozen=True)
class Conversion:
    """What a converter produced."""

    outputs: tuple[Rendering, ...] = ()
    members: tuple[Member, ...] = ()
    #: Active content the original carried (e.g. "pdf:JavaScript", "office:vba-macro").
    findings: tuple[str, ...] = ()
    #: Facts for the notice (e.g. "pages 51-80 not rendered", "sheets: 予算, 実績").
    notes: tuple[str, ...] = ()
    pages: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class Converter(Protocol):
    """Converts one content kind. `name` is how the sandbox and metrics refer to it."""

    name: str

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        """Render `untrusted` harmlessly or raise a `ConversionError`."""
        ...
