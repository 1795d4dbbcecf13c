"""The two keys of clean-and-keep-editable (issue 20, docs/cdr.md), as sandbox converters.

Key one, `CdrConverter`: the original OOXML or PDF rebuilt without active content
(`converters.cdr_ooxml`, `converters.cdr_pdf`); it returns the cleaned file and what it
removed. Key two, `CdrCheckConverter`: a different sandboxed child, one that never held
the original, reads only the cleaned file and passes it only if our own scanners and
oletools find nothing active in it; it names the sha256 of what it checked, so that the
gateway delivers exactly the bytes that passed. A converter hijacked by the original can
make key one return anything; it still has to get past key two, which never saw it.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections import Counter

import pikepdf
import pypdfium2 as pdfium

from converters import errors
from converters.base import Conversion, Rendering
from converters.cdr_ooxml import (
    ALLOWED_TYPES,
    WEB_LINK,
    clean_ooxml,
    is_xml,
    parse_xml,
    read_package,
)
from converters.cdr_pdf import clean_pdf
from converters.limits import ConversionPolicy
from converters.office_scan import scan
from converters.pdfscan import document_features, names_in

PDF_TYPE = "application/pdf"


class CdrConverter:
    name = "cdr"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        if untrusted.startswith(b"%PDF") or b"%PDF-" in untrusted[:1024]:
            pdf = clean_pdf(untrusted, policy.links)
            data, content_type, removed = pdf.data, PDF_TYPE, pdf.removed
        elif untrusted.startswith(b"PK\x03\x04"):
            package = clean_ooxml(untrusted, policy.links)
            data, content_type, removed = package.data, package.content_type, package.removed
        else:
            raise errors.Unsupported("only OOXML and PDF files can be cleaned and kept")
        return Conversion(outputs=(Rendering("cleaned", content_type, data),),
                          findings=tuple(f"cdr:{k}={n}" for k, n in sorted(removed.items())))


class CdrCheckConverter:
    """Passes a cleaned file or raises `CheckFailed`; reads nothing but that file."""

    name = "cdr_check"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        pdf = untrusted.startswith(b"%PDF")
        found = _pdf_findings(untrusted) if pdf else _ooxml_findings(untrusted)
        if found:
            raise CheckFailed(", ".join(sorted(found))[:300])
        return Conversion(extra={"sha256": hashlib.sha256(untrusted).hexdigest()})


class CheckFailed(errors.ConversionError):
    code = "cdr_check_failed"
    message = "the cleaned file did not pass the second check"


def _pdf_findings(cleaned: bytes) -> set[str]:
    """Our PDF scanner's names over every object's dictionary (as qpdf reads them, out of
    object streams too; not over stream data, where an image's bytes can spell "/AA"),
    pdfium's own view of the document, and our cleaner once more: anything it would still
    remove is a finding."""
    try:
        with pikepdf.open(io.BytesIO(cleaned)) as pdf:
            found = names_in(b"\n".join(_dictionary(obj) for obj in pdf.objects))
    except (pikepdf.PdfError, ValueError) as exc:
        raise errors.Corrupt("the cleaned PDF does not open") from exc
    doc = pdfium.PdfDocument(cleaned)
    try:
        found |= set(document_features(doc))
    finally:
        doc.close()
    again = clean_pdf(cleaned, "keep").removed
    found |= {f"pdf:{kind}" for kind in again if not kind.startswith("link-")}
    return found


def _dictionary(obj: pikepdf.Object) -> bytes:
    if isinstance(obj, pikepdf.Stream):
        return bytes(obj.stream_dict.unparse(resolved=True))
    if isinstance(obj, pikepdf.Dictionary | pikepdf.Array):
        return bytes(obj.unparse(resolved=True))
    return b""


def _ooxml_findings(cleaned: bytes) -> set[str]:
    found = set(scan(cleaned).findings)
    package = read_package(cleaned)
    found |= {f"part:{t or name}" for name, t in package.types.items()
              if t not in ALLOWED_TYPES}
    for name, data in package.parts.items():
        if is_xml(package.types.get(name, "")) or name.endswith(".xml"):
            parse_xml(data, name)  # raises on a DTD or an entity
    again: Counter[str] = clean_ooxml(cleaned, "keep").removed
    found |= {f"ooxml:{kind}" for kind in again}
    found |= _oletools_findings(cleaned)
    return found


def _oletools_findings(cleaned: bytes) -> set[str]:
    """oletools' own view: VBA (olevba, mraptor), OLE objects, external relationships and
    custom UI (oleobj). Hyperlinks to the web are what the link policy left."""
    from oletools import mraptor, oleobj
    from oletools.olevba import VBA_Parser

    found: set[str] = set()
    with tempfile.NamedTemporaryFile(suffix=".zip") as scratch:  # the sandbox's own /tmp
        scratch.write(cleaned)
        scratch.flush()
        parser = VBA_Parser(scratch.name, data=cleaned)
        try:
            if parser.detect_vba_macros() or parser.detect_xlm_macros():
                found.add("olevba:macros")
                raptor = mraptor.MacroRaptor(parser.get_vba_code_all_modules() or "")
                raptor.scan()
                if raptor.suspicious:
                    found.add("mraptor:suspicious")
        finally:
            parser.close()
        xml_parser = oleobj.XmlParser(scratch.name)
        for kind, target in oleobj.find_external_relationships(xml_parser):
            if kind != "hyperlink" or not WEB_LINK.match(str(target).strip()):
                found.add(f"oleobj:{kind}")
        if any(True for _ in oleobj.find_customUI(xml_parser)):
            found.add("oleobj:customUI")
        if any(ole is not None for ole in oleobj.find_ole(scratch.name, cleaned, xml_parser)):
            found.add("oleobj:ole")
    return found
