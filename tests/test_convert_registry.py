"""Type detection by content, block lists and deceptive names: decided before any conversion."""

from __future__ import annotations

import io
import zipfile

import pytest

from converters.names import clean_name, name_trick
from converters.registry import Registration, Registry, detect_type
from tests.convert_helpers import japanese_pdf, pe_bytes, photo_jpeg

REGISTRY = Registry()


def test_pe_named_invoice_pdf_is_blocked_by_content_and_mismatch_recorded() -> None:
    """The name and declared type say PDF; the bytes are an executable, and they decide."""
    found = REGISTRY.classify(pe_bytes(), "invoice.pdf", "application/pdf")
    assert found.detected_type == "application/x-dosexec"
    assert found.refusal is not None and found.refusal.code == "blocked_type"
    assert found.converter is None
    assert any("declared type application/pdf" in n for n in found.notes)
    assert any("ends in .pdf" in n for n in found.notes)


def test_pdf_named_as_image_is_converted_as_pdf() -> None:
    found = REGISTRY.classify(japanese_pdf(1), "photo.jpg", "image/jpeg")
    assert found.converter == "pdf"
    assert found.refusal is None
    assert found.notes  # the mismatch is recorded


@pytest.mark.parametrize("name", [
    "invoice\u202efdp.exe",  # shows as invoiceexe.pdf
    "請求書\u202ecod.scr",
    "report\u2066.pdf",
    "a.pdf.exe",
    "見積書.PDF.js",
    "photo.jpg\u3000\u3000\u3000\u3000.exe",
    "invoice.pdf          .cmd",
])
def test_names_that_trick_the_eye_are_refused_whatever_the_content(name: str) -> None:
    found = REGISTRY.classify(b"plain harmless text\n", name, "text/plain")
    assert found.refusal is not None and found.refusal.code == "deceptive_name"
    assert "\u202e" not in found.clean_name


@pytest.mark.parametrize("name", ["report.2024.pdf", "議事録_第3回.docx", "a.b.c.txt", None])
def test_ordinary_names_are_not_tricks(name: str | None) -> None:
    assert name_trick(name) is None


@pytest.mark.parametrize(("data", "name"), [
    (b"#!/bin/sh\nrm -rf ~\n", "setup.txt"),
    (b"<html><body><script>location='x'</script></body></html>", "letter.txt"),
    (b"@echo off\r\ndel /q *\r\n", "notes.txt"),
    (b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46",
     "shortcut"),
    (b"\x00" * 0x8001 + b"CD001\x01" + b"\x00" * 2048, "disk"),
    (bytes.fromhex("E4525C7B8CD8A74DAEB15378D02996D3") + b"\x00" * 64, "notes"),
])
def test_blocked_kinds_are_detected_by_content(data: bytes, name: str) -> None:
    found = REGISTRY.classify(data, name, "application/octet-stream")
    assert found.refusal is not None and found.refusal.code == "blocked_type", found


def test_jar_is_blocked_although_it_is_a_zip() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nMain-Class: A\n")
        jar.writestr("A.class", b"\xca\xfe\xba\xbe")
    assert detect_type(buf.getvalue()) == "application/java-archive"
    assert REGISTRY.classify(buf.getvalue(), "tool.zip", "application/zip").refusal is not None


@pytest.mark.parametrize("name", ["run.vbs", "x.ps1", "y.js", "z.hta", "a.lnk", "b.iso",
                                  "c.msi", "d.one", "e.html", "f.url", "g.apk"])
def test_blocked_extensions_are_refused_even_as_plain_text(name: str) -> None:
    found = REGISTRY.classify(b"just some words\n", name, "text/plain")
    assert found.refusal is not None and found.refusal.code == "blocked_type"


def test_unknown_binary_is_refused_as_unsupported_and_releasable() -> None:
    found = REGISTRY.classify(bytes(range(256)) * 64, "drawing.dwg", "application/acad")
    assert found.refusal is not None and found.refusal.code == "unsupported_type"
    assert found.refusal.holdable


def test_dispatch_exact_type_then_main_type_then_refuse() -> None:
    assert REGISTRY.converter_for("image/png") == "image"
    assert REGISTRY.converter_for("text/x-c") == "text"  # main type
    assert REGISTRY.converter_for("image/x-icon") is None  # no image/* entry: refused
    extra = Registry((Registration("first", "m:A", ("text/plain",)), *REGISTRY.registrations))
    assert extra.converter_for("text/plain") == "first"  # the first registration wins


def test_detection_reads_content_not_names() -> None:
    assert detect_type(photo_jpeg(exif=False)) == "image/jpeg"
    assert detect_type(japanese_pdf(1)) == "application/pdf"


@pytest.mark.parametrize(("raw", "clean"), [
    ("報告書.pdf", "報告書.pdf"),
    ("..\\..\\windows\\evil.pdf", "_.._windows_evil.pdf"),
    ("a/b:c*d?.txt", "a_b_c_d_.txt"),
    ("line\r\nbreak.txt", "linebreak.txt"),
    ("inv\u202efdp.exe", "invfdp.exe"),
    ("", "attachment"),
    (None, "attachment"),
    ("   ...   ", "attachment"),
])
def test_clean_names(raw: str | None, clean: str) -> None:
    assert clean_name(raw) == clean


def test_long_names_keep_their_extension() -> None:
    cleaned = clean_name("長い" * 200 + ".xlsx")
    assert cleaned.endswith(".xlsx") and len(cleaned) <= 120
