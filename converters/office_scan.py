"""What an Office file carried: macros, DDE, OLE objects, external links, remote templates.

The rendering never contains any of it (LibreOffice prints pages; macros never run), but
staff and the audit trail must know that the original was active content: the findings go
into the report and the notice. Encrypted files raise `errors.Encrypted` before any
conversion is tried, so that they are held for release like encrypted PDFs and PPAP zips.

Findings are stable strings: office:vba-macro, office:xlm-macro, office:dde,
office:ole-object, office:activex, office:external-link, office:remote-template,
office:odf-macro.
"""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
from dataclasses import dataclass

import msoffcrypto
import olefile
from oletools import rtfobj
from oletools.olevba import VBA_Parser

from converters import errors
from converters.base import Conversion
from converters.limits import ConversionPolicy

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: Any one XML part read for scanning; real documents stay far below, bombs stop here.
MAX_PART_BYTES = 32 * 1024 * 1024
MAX_PARTS_SCANNED = 2000

_DDE_XML = re.compile(rb"(<w:instrText[^>]*>\s*|w:instr=\"\s*)DDE(AUTO)?\b|<ddeLink\b", re.I)
_DDE_RTF = re.compile(rb"\\fldinst[^}]{0,200}?\bDDE(AUTO)?\b", re.I)
_RTF_LINK = re.compile(rb"\\objautlink|\\objlink|\\INCLUDEPICTURE|\\INCLUDETEXT", re.I)
_EXTERNAL_REL = re.compile(rb"<Relationship\b[^>]*>", re.I)


@dataclass(frozen=True)
class ScanResult:
    """`container` is how the file is built: ooxml, odf, ole or rtf ("" when unknown)."""

    container: str
    findings: tuple[str, ...]


class OfficeScanConverter:
    """`scan` as a registry converter, so that it can run in the sandbox worker.

    It renders nothing: its Conversion carries the findings and, in `extra`, the container
    kind; `scan_result_from` turns that back into a ScanResult for `OfficeConverter`.
    """

    name = "office_scan"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        result = scan(untrusted)
        return Conversion(findings=result.findings, extra={"container": result.container})


def scan_result_from(conversion: Conversion) -> ScanResult:
    return ScanResult(conversion.extra.get("container", ""), conversion.findings)


def scan(untrusted: bytes) -> ScanResult:
    """Inspect without executing anything; raise Encrypted for password-protected files."""
    if untrusted.startswith(OLE_MAGIC):
        return ScanResult("ole", _scan_ole(untrusted))
    if untrusted.startswith(b"PK\x03\x04"):
        return _scan_zip(untrusted)
    if untrusted.lstrip()[:5].lower() == b"{\\rtf":
        return ScanResult("rtf", _scan_rtf(untrusted))
    return ScanResult("", ())


def _scan_ole(untrusted: bytes) -> tuple[str, ...]:
    # Encrypted OOXML is an OLE container too (EncryptionInfo + EncryptedPackage).
    try:
        encrypted = msoffcrypto.OfficeFile(io.BytesIO(untrusted)).is_encrypted()
    except Exception:  # msoffcrypto raises bare Exception subclasses on unknown layouts
        encrypted = False
    if encrypted:
        raise errors.Encrypted("office")
    findings: set[str] = set()
    try:
        ole = olefile.OleFileIO(io.BytesIO(untrusted))
    except OSError as exc:
        raise errors.Corrupt("ole container unreadable") from exc
    try:
        streams = ["/".join(path) for path in ole.listdir(streams=True, storages=True)]
        if ole.exists("EncryptionInfo"):
            raise errors.Encrypted("office")
        if any(s.startswith("ObjectPool") or s.startswith("MBD") for s in streams):
            findings.add("office:ole-object")
        if ole.exists("WordDocument"):
            word = ole.openstream("WordDocument").read(MAX_PART_BYTES)
            if b"D\x00D\x00E\x00" in word or re.search(rb"\bDDE(AUTO)?\b", word):
                findings.add("office:dde")
    finally:
        ole.close()
    findings.update(_macros(untrusted))
    return tuple(sorted(findings))


def _macros(untrusted: bytes) -> set[str]:
    found: set[str] = set()
    try:
        parser = VBA_Parser("document", data=untrusted)
    except Exception:  # olevba raises its own FileOpenError and assorted parse errors
        return found
    try:
        if parser.detect_vba_macros():
            found.add("office:vba-macro")
        if parser.detect_xlm_macros():
            found.add("office:xlm-macro")
    except Exception:  # a malformed project still counts as "carried macros"
        found.add("office:vba-macro")
    finally:
        parser.close()
    return found


def _scan_zip(untrusted: bytes) -> ScanResult:
    try:
        zf = zipfile.ZipFile(io.BytesIO(untrusted))
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise errors.Corrupt("office zip unreadable") from exc
    with zf:
        if "mimetype" in names or "META-INF/manifest.xml" in names:
            return ScanResult("odf", _scan_odf(zf, names))
        return ScanResult("ooxml", _scan_ooxml(zf, names, untrusted))


def _read(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        with zf.open(name) as f:
            return f.read(MAX_PART_BYTES)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        if "encrypt" in str(exc).lower():
            raise errors.Encrypted("office") from exc
        raise errors.Corrupt("office part unreadable") from exc


def _scan_ooxml(zf: zipfile.ZipFile, names: list[str], untrusted: bytes) -> tuple[str, ...]:
    findings: set[str] = set()
    lowered = [n.lower() for n in names]
    if any(n.endswith("vbaproject.bin") for n in lowered):
        findings.add("office:vba-macro")
        findings.update(_macros(untrusted))
    if any("/macrosheets/" in n for n in lowered):
        findings.add("office:xlm-macro")
    if any("/embeddings/" in n for n in lowered):
        findings.add("office:ole-object")
    if any("/activex/" in n for n in lowered):
        findings.add("office:activex")
    if any("/externallinks/" in n for n in lowered):
        findings.add("office:external-link")
    for name in names[:MAX_PARTS_SCANNED]:
        low = name.lower()
        if low.endswith(".rels"):
            findings.update(_external_rels(_read(zf, name)))
        elif (low.endswith(".xml") and ("word/" in low or "externallink" in low)
              and _DDE_XML.search(_read(zf, name))):
            findings.add("office:dde")
    return tuple(sorted(findings))


def _external_rels(rels: bytes) -> set[str]:
    """Relationships that reach outside the file. Plain hyperlinks are not findings."""
    found: set[str] = set()
    for rel in _EXTERNAL_REL.findall(rels):
        if b'TargetMode="External"' not in rel:
            continue
        if b"/attachedTemplate" in rel:
            found.add("office:remote-template")
        elif b"/hyperlink" not in rel:
            found.add("office:external-link")
    return found


def _scan_odf(zf: zipfile.ZipFile, names: list[str]) -> tuple[str, ...]:
    findings: set[str] = set()
    manifest = _read(zf, "META-INF/manifest.xml") if "META-INF/manifest.xml" in names else b""
    if b"encryption-data" in manifest:
        raise errors.Encrypted("odf")
    if any(n.startswith(("Basic/", "Scripts/")) for n in names):
        findings.add("office:odf-macro")
    if any(n.startswith("Object ") or n.startswith("ObjectReplacements/") for n in names):
        findings.add("office:ole-object")
    return tuple(sorted(findings))


def _scan_rtf(untrusted: bytes) -> tuple[str, ...]:
    findings: set[str] = set()
    parser = rtfobj.RtfObjParser(untrusted)
    # rtfobj is a heuristic parser; its failure is not a finding (the \\object test below is)
    with contextlib.suppress(Exception):
        parser.parse()
    if parser.objects or b"\\object" in untrusted:
        findings.add("office:ole-object")
    if _DDE_RTF.search(untrusted):
        findings.add("office:dde")
    if _RTF_LINK.search(untrusted):
        findings.add("office:external-link")
    return tuple(sorted(findings))
