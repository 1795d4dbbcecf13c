"""Word, Excel, PowerPoint, OpenDocument and RTF -> PDF (LibreOffice, warm) -> page images.

Order matters: the file is scanned first (findings, and encrypted files refused before
LibreOffice ever sees them), then converted by a warm sandboxed instance from the pool,
then rendered exactly like a PDF attachment. Spreadsheets print every visible sheet; the
sheet names go into the notes so that staff know what the images contain.
"""

from __future__ import annotations

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
        # The PDF is bounded like any converter's output: LibreOffice may be the attacker's.
        pdf, reply = self.pool.convert(untrusted, safe_suffix(filename), policy.limits.max_pages,
                                       policy.limits.max_output_bytes)
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
            images=rendered.images,
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
