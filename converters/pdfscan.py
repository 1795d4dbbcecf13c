"""Which active PDF features a file carries, for the report (they never reach the output).

Two views, because each misses things: a scan of the name tokens in the file and in its
object streams (where PDF 1.5+ hides dictionaries, compressed), with `#xx` escapes
decoded so `/J#61vaScript` counts; and pdfium's own counts (JavaScript actions, embedded
files, XFA forms) on the parsed document. The scan is bounded in bytes inflated.
"""

from __future__ import annotations

import ctypes
import re
import zlib

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

_NAMES = {
    b"JavaScript": "pdf:JavaScript", b"JS": "pdf:JavaScript",
    b"OpenAction": "pdf:OpenAction", b"Launch": "pdf:Launch",
    b"EmbeddedFile": "pdf:EmbeddedFile", b"EmbeddedFiles": "pdf:EmbeddedFile",
    b"XFA": "pdf:XFA", b"RichMedia": "pdf:RichMedia", b"AA": "pdf:AA",
}


def _spelled(name: bytes) -> bytes:
    """A pattern for `name` with any of its characters written as a `#xx` escape."""
    def char(c: int) -> bytes:
        hexes = b"".join(b"[%s%s]" % (h.encode(), h.upper().encode()) for h in f"{c:02x}")
        return b"(?:" + re.escape(bytes([c])) + b"|#" + hexes + b")"
    return b"".join(char(c) for c in name)


#: The names we look for, however escaped, as whole name tokens. One regex matched in C:
#: a Python step per name token in the file cost about 2 ms a page.
_NAME = re.compile(rb"/(" + b"|".join(_spelled(n) for n in sorted(_NAMES, key=len, reverse=True))
                   + rb")(?![^\s/<>\[\]()%{}])")
_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_OBJSTM = re.compile(rb"/Type\s*/ObjStm\b[^>]*?>*\s*stream\r?\n", re.S)
#: Inflate at most this much of object streams in total (a bomb gets nowhere).
MAX_INFLATED = 64 * 1024 * 1024
#: Object streams are scanned in at most this many bytes of the file.
MAX_SCANNED = 256 * 1024 * 1024


def names_in(data: bytes) -> set[str]:
    return {_NAMES[_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), name)]
            for name in _NAME.findall(data)}


def _object_streams(untrusted: bytes) -> list[bytes]:
    """Inflated object streams, within the inflation budget."""
    budget = MAX_INFLATED
    streams: list[bytes] = []
    for match in _OBJSTM.finditer(untrusted[:MAX_SCANNED]):
        if budget <= 0:
            break
        inflater = zlib.decompressobj()
        try:
            chunk = inflater.decompress(untrusted[match.end():match.end() + budget], budget)
        except zlib.error:
            continue
        budget -= len(chunk)
        streams.append(chunk)
    return streams


def active_features(untrusted: bytes) -> tuple[str, ...]:
    """Features named anywhere in the file or its object streams (may over-report)."""
    found = names_in(untrusted[:MAX_SCANNED])
    for stream in _object_streams(untrusted):
        found |= names_in(stream)
    return tuple(sorted(found))


def document_features(doc: pdfium.PdfDocument) -> tuple[str, ...]:
    """Features pdfium itself sees in the parsed document."""
    found: set[str] = set()
    if pdfium_c.FPDFDoc_GetJavaScriptActionCount(doc.raw) > 0:
        found.add("pdf:JavaScript")
    if doc.count_attachments() > 0:
        found.add("pdf:EmbeddedFile")
    if doc.get_formtype() in (pdfium_c.FORMTYPE_XFA_FULL, pdfium_c.FORMTYPE_XFA_FOREGROUND):
        found.add("pdf:XFA")
    return tuple(sorted(found))


def merge(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({f for group in groups for f in group}))


#: Bounds on what a page may make us copy into the text file.
MAX_LINKS_PER_PAGE = 200
MAX_URI_BYTES = 2048


def link_targets(doc: pdfium.PdfDocument, page: pdfium.PdfPage) -> list[str]:
    """The URI targets of a page's link annotations, so staff keep the links they need.

    Only URI actions are read (never Launch or JavaScript); each is decoded as ASCII with
    replacement, since a URI is ASCII by definition.
    """
    targets: list[str] = []
    position = ctypes.c_int(0)
    link = pdfium_c.FPDF_LINK()
    while (len(targets) < MAX_LINKS_PER_PAGE
           and pdfium_c.FPDFLink_Enumerate(page.raw, ctypes.byref(position), ctypes.byref(link))):
        action = pdfium_c.FPDFLink_GetAction(link)
        if not action or pdfium_c.FPDFAction_GetType(action) != pdfium_c.PDFACTION_URI:
            continue
        size = pdfium_c.FPDFAction_GetURIPath(doc.raw, action, None, 0)
        if size <= 1:
            continue
        buffer = ctypes.create_string_buffer(min(size, MAX_URI_BYTES))
        pdfium_c.FPDFAction_GetURIPath(doc.raw, action, buffer, len(buffer))
        uri = buffer.value.decode("ascii", "replace")
        if uri and uri not in targets:
            targets.append(uri)
    return targets
