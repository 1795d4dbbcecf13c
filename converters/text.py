"""Text attachments (.txt, .csv, .tsv and other text/*) re-encoded as UTF-8.

Decoding uses the same charset logic as mail bodies (`converters.charset`), so a CP932
CSV from a municipal system arrives readable. CSV and TSV stay spreadsheets, but every
cell that a spreadsheet would evaluate (starting with = + - @ TAB or CR, or their
full-width forms) is made inert with a leading apostrophe, the OWASP remedy for CSV
injection; plain numbers such as -12.5 are left alone because they cannot run anything.
CSV/TSV get a UTF-8 byte-order mark: without it Japanese Excel reads the file as CP932.
"""

from __future__ import annotations

import csv
import io
import re

from converters.base import Conversion, Rendering
from converters.charset import decode_bytes
from converters.errors import Corrupt
from converters.limits import ConversionPolicy
from converters.names import extensions, stem

_FORMULA_START = frozenset("=+-@\t\r＝＋－＠")
_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)*(?:[eE][+-]?\d+)?")
#: A spreadsheet cell is rarely above a few KB; this bounds the csv module's buffer.
MAX_FIELD_CHARS = 10 * 1024 * 1024


def inert_cell(cell: str) -> tuple[str, bool]:
    """The cell as a spreadsheet will show it but never evaluate it; True when changed."""
    lead = cell.lstrip(" ")
    if lead and lead[0] in _FORMULA_START and not _NUMBER.fullmatch(lead):
        return "'" + cell, True
    return cell, False


def neutralize(text: str, delimiter: str) -> tuple[str, int]:
    """Rewrite CSV/TSV text with formula cells made inert; return it and the count."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    changed = 0
    try:
        for row in csv.reader(io.StringIO(text.replace("\x00", ""), newline=""),
                              delimiter=delimiter):
            cells = []
            for cell in row:
                safe, was_changed = inert_cell(cell)
                cells.append(safe)
                changed += was_changed
            writer.writerow(cells)
    except csv.Error as exc:
        raise Corrupt("unreadable CSV") from exc
    return out.getvalue(), changed


class TextConverter:
    """Text to UTF-8; CSV and TSV with formula injection defused."""

    name = "text"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        text, codec = decode_bytes(untrusted)
        exts = extensions(filename)
        kind = exts[-1] if exts and exts[-1] in {"csv", "tsv"} else "txt"
        notes = [f"decoded as {codec}"] if codec not in {"utf-8", "ascii"} else []
        if kind == "txt":
            data = text.encode("utf-8")
            out = Rendering(f"{stem(filename)}.txt", "text/plain", data)
            return Conversion(outputs=(out,), notes=tuple(notes))
        safe, changed = neutralize(text, "," if kind == "csv" else "\t")
        if changed:
            notes.append(f"{changed} spreadsheet formula cells made inert")
        content_type = "text/csv" if kind == "csv" else "text/tab-separated-values"
        out = Rendering(f"{stem(filename)}.{kind}", content_type, ("\ufeff" + safe).encode())
        return Conversion(outputs=(out,), notes=tuple(notes))
