"""The one small interface every converter implements.

A converter takes untrusted bytes and returns a `Conversion`: raw pixels of the pages or
pictures it rendered, UTF-8 text, and, for containers (archives, forwarded mail, Outlook
files), the members it found, which the caller treats as top-level attachments one level
deeper. Only that crosses back from the sandbox: the files delivered are encoded from the
pixels by trusted code that never saw the original (`converters.package`).
Failures are raised as `converters.errors.ConversionError` subclasses, never returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from converters.limits import ConversionPolicy
from converters.pixels import Pixels


@dataclass(frozen=True)
class Rendering:
    """One output file. Out of a converter: UTF-8 text only (checked again by trusted
    code); out of `converters.package`: also page images and image-only PDFs."""

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

    #: Text renderings (text/plain, text/csv, text/tab-separated-values).
    outputs: tuple[Rendering, ...] = ()
    #: Pages of one document, or pictures (`Pixels.picture`), in order. May be produced
    #: while they are read (a PDF's pages stream out as they are rendered): read it once.
    images: Iterable[Pixels] = ()
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
