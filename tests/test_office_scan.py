"""What an Office file carried is recorded: DDE, remote templates, external links, objects."""

from __future__ import annotations

import io
import zipfile

import openpyxl
import pytest

from converters import errors
from converters.office_scan import scan
from tests.office_helpers import docm_with_vba, japanese_docx, vba_project_bin

DDE_RUNS = (b'<w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve">'
            b' DDEAUTO c:\\\\windows\\\\system32\\\\cmd.exe "/k calc.exe" </w:instrText></w:r>'
            b'<w:r><w:fldChar w:fldCharType="end"/></w:r>')


def _patch(doc: bytes, changes: dict[str, bytes | None],
           edit: tuple[str, bytes, bytes] | None = None) -> bytes:
    """Rewrite a zip-based document: add/replace parts, or replace bytes inside one part."""
    src = zipfile.ZipFile(io.BytesIO(doc))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for item in src.infolist():
            data = src.read(item)
            if edit and item.filename == edit[0]:
                data = data.replace(edit[1], edit[2], 1)
            if item.filename not in changes:
                z.writestr(item, data)
        for name, value in changes.items():
            if value is not None:
                z.writestr(name, value)
    return out.getvalue()


def test_plain_docx_has_no_findings() -> None:
    result = scan(japanese_docx())
    assert result.container == "ooxml" and result.findings == ()


def test_dde_field_in_docx_is_found() -> None:
    doc = _patch(japanese_docx(), {}, ("word/document.xml", b"<w:body>", b"<w:body><w:p>"
                                       + DDE_RUNS + b"</w:p>"))
    assert "office:dde" in scan(doc).findings


def test_remote_template_is_found_and_a_hyperlink_is_not() -> None:
    rels = (b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            b'package/2006/relationships"><Relationship Id="rT" Type="http://schemas.'
            b'openxmlformats.org/officeDocument/2006/relationships/attachedTemplate" '
            b'Target="http://203.0.113.9/t.dotm" TargetMode="External"/></Relationships>')
    doc = _patch(japanese_docx(), {"word/_rels/settings.xml.rels": rels})
    assert scan(doc).findings == ("office:remote-template",)
    link = rels.replace(b"attachedTemplate", b"hyperlink")
    assert scan(_patch(japanese_docx(), {"word/_rels/settings.xml.rels": link})).findings == ()


def test_xlsx_external_link_is_found() -> None:
    wb = openpyxl.Workbook()
    buf = io.BytesIO()
    wb.save(buf)
    part = (b'<externalLink xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            b'<ddeLink ddeService="cmd" ddeTopic="/c calc"/></externalLink>')
    found = scan(_patch(buf.getvalue(), {"xl/externalLinks/externalLink1.xml": part})).findings
    assert found == ("office:dde", "office:external-link")


def test_vba_in_docm_and_in_a_bare_ole_project_is_found() -> None:
    assert "office:vba-macro" in scan(docm_with_vba()).findings
    assert scan(vba_project_bin()).findings == ("office:vba-macro",)


def test_odf_with_basic_macros_is_found_and_encrypted_odf_is_held() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        z.writestr("META-INF/manifest.xml", "<manifest/>")
        z.writestr("Basic/Standard/Module1.xml", "<module/>")
    assert scan(buf.getvalue()).findings == ("office:odf-macro",)
    enc = _patch(buf.getvalue(), {"META-INF/manifest.xml": b"<manifest:encryption-data/>"})
    with pytest.raises(errors.Encrypted):
        scan(enc)


def test_rtf_object_dde_and_link_are_found() -> None:
    rtf = (b"{\\rtf1{\\field{\\*\\fldinst DDEAUTO cmd \"/c calc\"}}"
           b"{\\object\\objautlink{\\*\\objdata 0105}}}")
    assert scan(rtf).findings == ("office:dde", "office:external-link", "office:ole-object")


def test_a_zip_that_is_really_an_office_document_is_recognised() -> None:
    """libmagic needs [Content_Types].xml first; a reordered docx must still be a document."""
    from converters.registry import refine_zip_type

    src = zipfile.ZipFile(io.BytesIO(japanese_docx()))
    reordered = io.BytesIO()
    with zipfile.ZipFile(reordered, "w") as z:
        for item in reversed(src.infolist()):
            z.writestr(item, src.read(item))
    assert refine_zip_type(reordered.getvalue()) == (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("word/readme.txt", "not a document")
    assert refine_zip_type(plain.getvalue()) is None


def test_declared_mime_lists_are_lower_case_like_the_registry_lookup() -> None:
    from converters.registry import ARCHIVE_TYPES, OFFICE_TYPES, OUTLOOK_TYPES

    for types in (OFFICE_TYPES, ARCHIVE_TYPES, OUTLOOK_TYPES):
        assert all(t == t.lower() for t in types)
