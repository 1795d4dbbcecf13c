"""A tiny PDF writer for files that must contain exactly what we say (JavaScript actions).

reportlab builds the rich documents; this builds the hostile-shaped ones object by object,
so that the active features are written literally and a test can find them.
"""

from __future__ import annotations


def assemble_pdf(objects: list[bytes]) -> bytes:
    """Number `objects` from 1 (object 1 is the catalog) and add a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def _stream(content: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"


def javascript_pdf() -> bytes:
    """One page of text; /OpenAction and a named script that only call app.alert."""
    text = b"BT /F1 20 Tf 72 760 Td (mugaika sample: this PDF carries JavaScript) Tj ET\n" \
        b"BT /F1 12 Tf 72 730 Td (The script only calls app.alert.) Tj ET"
    script = b"<< /Type /Action /S /JavaScript /JS (app.alert\\('mugaika sample: harmless'\\);) >>"
    return assemble_pdf([
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R"
        b" /Names << /JavaScript << /Names [(hello) 5 0 R] >> >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 6 0 R >> >> /AA << /O 5 0 R >> >>",
        _stream(text),
        script,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])
