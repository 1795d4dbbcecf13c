"""Word, Excel, PowerPoint, OpenDocument and RTF -> PDF (LibreOffice, warm) -> page images.

Order matters: the file is scanned first (findings, and encrypted files refused before
LibreOffice ever sees them), then converted by a warm sandboxed instance from the pool,
then rendered exactly like a PDF attachment. Spreadsheets print every visible sheet; the
sheet names go into the notes so that staff know what the images contain.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import PurePosixPath

from converters import errors
from converters.base import Conversion
from converters.limits import ConversionPolicy
from converters.office_pool import OfficePool
from converters.office_render import render_office_pdf
from converters.office_scan import ScanResult, scan

#: Extensions passed on to LibreOffice as a type hint; anything else goes without one
#: (LibreOffice sniffs content anyway, the hint only helps ambiguous legacy formats).
OFFICE_SUFFIXES = frozenset({
    ".doc", ".docx", ".docm", ".dot", ".dotx", ".dotm",
    ".xls", ".xlsx", ".xlsm", ".xlsb", ".xlt", ".xltx", ".xltm",
    ".ppt", ".pptx", ".pptm", ".pot", ".potx", ".potm", ".pps", ".ppsx",
    ".odt", ".ods", ".odp", ".ott", ".ots", ".otp", ".rtf",
})

#: Detected MIME types (libmagic on content, lower-cased as the registry does) this converter
#: accepts; see docs/office-archives.md.
MIME_TYPES = (
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template",
    "application/vnd.ms-word.document.macroenabled.12",
    "application/vnd.ms-word.template.macroenabled.12",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
    "application/vnd.ms-excel.sheet.macroenabled.12",
    "application/vnd.ms-excel.sheet.binary.macroenabled.12",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
    "application/vnd.ms-powerpoint.presentation.macroenabled.12",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/rtf",
    "text/rtf",
    "application/cdfv2",  # libmagic's name for OLE2 files it cannot tell apart (xls, ppt)
    "application/x-ole-storage",
    "application/encrypted",  # libmagic's name for password-protected OOXML: scan says so
)

#: First-level folders that make a ZIP an OOXML document, and the type each means.
_OOXML_ROOTS = {
    "word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_ODF_TYPES = (
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
)


def refine_zip_type(untrusted: bytes) -> str | None:
    """The Office type of a ZIP libmagic called application/zip, or None for a real archive.

    libmagic recognises OOXML only when [Content_Types].xml is the first entry; other
    writers put it elsewhere, and such a document must still be rendered, not unpacked.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(untrusted)) as z:
            names = z.namelist()[:5000]
            if "[Content_Types].xml" in names:
                for prefix, mime in _OOXML_ROOTS.items():
                    if any(n.startswith(prefix) for n in names):
                        return mime
            if "mimetype" in names:
                declared = z.read("mimetype")[:100].decode("ascii", "replace").strip()
                return declared if declared in _ODF_TYPES else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None
    return None


def safe_suffix(untrusted_filename: str) -> str:
    """The extension as a LibreOffice hint, only from the allow-list (never a path part)."""
    suffix = PurePosixPath(untrusted_filename.replace("\\", "/")).suffix.lower()
    return suffix if suffix in OFFICE_SUFFIXES else ""


Scanner = Callable[[bytes], ScanResult]
Renderer = Callable[[bytes, str, ConversionPolicy], Conversion]


class OfficeConverter:
    """The Converter for Office-like documents. Holds (does not own) a warm `OfficePool`.

    It runs in the gateway process, not in the per-attachment sandbox worker: the pool
    must outlive single conversions, and LibreOffice is sandboxed by the pool itself. The
    two steps that parse untrusted bytes in Python are seams: `scanner` (oletools) and
    `renderer` (the PDF LibreOffice wrote) default to in-process calls; the gateway
    passes functions that run them in the converter sandbox instead
    (`office_scan:OfficeScanConverter` and the PDF converter).
    """

    name = "office"

    def __init__(self, pool: OfficePool, scanner: Scanner = scan,
                 renderer: Renderer = render_office_pdf) -> None:
        self.pool = pool
        self.scanner = scanner
        self.renderer = renderer

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        """Scan, convert in the sandboxed pool, render; raise a ConversionError otherwise."""
        if len(untrusted) > policy.limits.file_bytes:
            raise errors.LimitExceeded("office file too large")
        found = self.scanner(untrusted)
        pdf, reply = self.pool.convert(untrusted, safe_suffix(filename), policy.limits.max_pages)
        if not reply.get("ok"):
            if reply.get("error") == "encrypted":
                raise errors.Encrypted("office")
            raise errors.Corrupt("office document could not be opened")
        rendered = self.renderer(pdf, filename, policy)
        notes = _page_cap_notes(rendered, policy.limits.max_pages)
        sheets = [str(s) for s in reply.get("sheets") or []]
        hidden = [str(s) for s in reply.get("hidden_sheets") or []]
        if hidden:
            notes.insert(0, "hidden sheets not rendered: " + ", ".join(hidden))
        if sheets:
            notes.insert(0, "sheets: " + ", ".join(sheets))
        return Conversion(
            outputs=rendered.outputs,
            findings=found.findings,
            notes=tuple(notes),
            pages=rendered.pages,
            extra={"office_kind": str(reply.get("kind", "")), "container": found.container},
        )


def _page_cap_notes(rendered: Conversion, max_pages: int) -> list[str]:
    """The renderer's notes, with its page-cap note replaced by an honest one.

    LibreOffice exports at most max_pages + 1 pages (a 10,000-row sheet must not be
    printed whole just to be cut), so the renderer's "of N pages" total is not the
    document's: only "there is more" is known.
    """
    total = int(rendered.extra.get("total_pages", rendered.pages) or 0)
    notes = [n for n in rendered.notes if not (n.startswith("pages ") and "not rendered" in n)]
    if total > max_pages:
        notes.append(f"pages after {max_pages} not rendered")
    return notes
