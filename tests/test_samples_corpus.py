"""The sample corpus: every mail parses, the manifest is complete and true to the files,
and each hostile stand-in really has the shape a detector looks for."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import magic
import olefile
import pytest
from PIL import Image

from gateway.loadtest.corpus.catalogue import catalogue
from gateway.loadtest.samples import MANIFEST, load_manifest, main, write_corpus
from gateway.pipeline.parse import Leaf, parse
from gateway.settings import Settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("corpus")
    assert main(["--out", str(out)]) == 0
    manifest = load_manifest(out)
    assert manifest is not None
    return out, manifest


def _all_leaves(raw: bytes) -> list[Leaf]:
    """Leaves of a mail and of the mails attached to it (forwarded message/rfc822)."""
    leaves = list(parse(raw).leaves)
    for leaf in list(leaves):
        if leaf.content_type == "message/rfc822":
            leaves += _all_leaves(leaf.payload)
    return leaves


def _entry(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in manifest["samples"] if e["name"] == name)


def _leaves(corpus: tuple[Path, dict[str, Any]], name: str) -> tuple[Leaf, ...]:
    directory, manifest = corpus
    return parse((directory / _entry(manifest, name)["file"]).read_bytes()).leaves


def _attachment(corpus: tuple[Path, dict[str, Any]], name: str, filename: str) -> bytes:
    return next(leaf.payload for leaf in _leaves(corpus, name) if leaf.filename == filename)


def test_manifest_lists_every_file_with_its_true_hash(corpus):
    directory, manifest = corpus
    files = {p.name for p in directory.glob("*.eml")}
    assert files == {e["file"] for e in manifest["samples"]}
    assert len(files) == len(catalogue())
    for entry in manifest["samples"]:
        data = (directory / entry["file"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["exercises"]
        assert entry["expect"]["smtp"] in (250, 550)
        assert set(entry["expect"]["verdicts"]) <= {"clean", "sanitized", "quarantined"}
        for att in entry["expect"]["attachments"]:
            assert att["action"] in ("converted", "removed")


def test_issue_list_is_covered(corpus):
    names = {e["name"] for e in corpus[1]["samples"]}
    assert names >= {
        "iso2022jp-nec", "shift-jis-cp932", "euc-jp", "html-newsletter", "pdf-javascript",
        "pdf-japanese-5p", "docx-japanese", "xlsx-two-sheets", "pptx-japanese", "docm-macro",
        "rtf-object", "zip-ppap-aes", "zip-cp932-names", "nested-archive", "zip-bomb",
        "pixel-flood", "exe-as-pdf", "rtlo-name", "html-attachment", "forwarded-exe",
        "duplicate-content-type", "broken-base64", "large-20mb",
    }


def test_every_sample_parses_and_names_its_attachments(corpus):
    directory, manifest = corpus
    for entry in manifest["samples"]:
        parsed = parse((directory / entry["file"]).read_bytes())
        if entry["expect"]["verdicts"] == ["quarantined"]:
            assert parsed.too_complex, entry["name"]
        if parsed.too_complex:  # the parser refuses it whole: the manifest must allow that
            assert "quarantined" in entry["expect"]["verdicts"], entry["name"]
            continue
        assert parsed.leaves, entry["name"]
        assert parsed.header("Message-ID"), entry["name"]
        names = {leaf.filename for leaf in _all_leaves((directory / entry["file"]).read_bytes())}
        for att in entry["expect"]["attachments"]:
            assert att["filename"] in names, (entry["name"], att["filename"])


def test_building_is_deterministic(tmp_path):
    first = write_corpus(tmp_path / "a", {"docx-japanese", "zip-cp932-names", "pdf-javascript"})
    second = write_corpus(tmp_path / "b", {"docx-japanese", "zip-cp932-names", "pdf-javascript"})
    assert [e["sha256"] for e in first["samples"]] == [e["sha256"] for e in second["samples"]]
    assert json.loads((tmp_path / "a" / MANIFEST).read_text(encoding="utf-8")) == first


def test_iso2022jp_sample_carries_nec_row13_as_jis(corpus):
    directory, manifest = corpus
    raw = (directory / _entry(manifest, "iso2022jp-nec")["file"]).read_bytes()
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert b"\x1b$B" in body and max(body) < 0x80
    assert b"-!" in body  # ① is JIS 0x2D21 (NEC row 13), which the stdlib codec rejects
    with pytest.raises(UnicodeDecodeError):
        body.decode("iso2022_jp")


def test_shift_jis_sample_needs_cp932(corpus):
    payload = _leaves(corpus, "shift-jis-cp932")[0].payload
    assert "髙橋" in payload.decode("cp932")
    with pytest.raises(UnicodeDecodeError):
        payload.decode("shift_jis")


def test_pdf_javascript_is_real_and_only_alerts(corpus):
    import pypdfium2 as pdfium

    data = _attachment(corpus, "pdf-javascript", "見積書.pdf")
    assert b"/OpenAction" in data and b"/JavaScript" in data and b"app.alert" in data
    assert len(pdfium.PdfDocument(data)) == 1


def test_japanese_pdf_has_five_pages_of_japanese_text(corpus):
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(_attachment(corpus, "pdf-japanese-5p", "予算要求資料.pdf"))
    assert len(doc) == 5
    assert "予算要求資料" in doc[2].get_textpage().get_text_range()


def test_docm_carries_an_autoopen_macro_that_olevba_finds(corpus):
    from oletools.olevba import VBA_Parser

    data = _attachment(corpus, "docm-macro", "請求書.docm")
    parser = VBA_Parser("請求書.docm", data=data)
    assert parser.detect_vba_macros()
    code = "".join(src for _, _, _, src in parser.extract_macros())
    assert "Sub AutoOpen()" in code
    assert ("AutoExec", "AutoOpen") in {(k, w) for k, w, _ in parser.analyze_macros()}
    assert "Shell" not in code and "CreateObject" not in code  # it does nothing


def test_rtf_embeds_an_ole_package(corpus):
    from oletools import rtfobj

    data = _attachment(corpus, "rtf-object", "資料.rtf")
    parser = rtfobj.RtfObjParser(data)
    parser.parse()
    assert [o.class_name for o in parser.objects] == [b"Package"]
    assert parser.objects[0].olepkgdata == b"harmless\r\n"


def test_zip_member_names_are_cp932_without_utf8_flag(corpus):
    archive = zipfile.ZipFile(io.BytesIO(_attachment(corpus, "zip-cp932-names", "資料一式.zip")))
    for info in archive.infolist():
        assert not info.flag_bits & 0x800
    names = [i.filename.encode("cp437").decode("cp932") for i in archive.infolist()]
    assert names == ["予算資料/見積書.txt", "議事録.txt"]


def test_ppap_zip_is_encrypted_and_opens_with_the_password(corpus):
    import pyzipper

    data = _attachment(corpus, "zip-ppap-aes", "見積書.zip")
    with pytest.raises(RuntimeError):
        zipfile.ZipFile(io.BytesIO(data)).read("見積書.docx")
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        archive.setpassword(b"Mugaika2025")
        assert archive.read("見積書.docx")[:2] == b"PK"


def test_bombs_are_small_on_disk_and_huge_unpacked(corpus):
    bomb = zipfile.ZipFile(io.BytesIO(_attachment(corpus, "zip-bomb", "data.zip")))
    assert sum(i.file_size for i in bomb.infolist()) >= 256 * 2**20
    overlap_data = _attachment(corpus, "zip-overlap-bomb", "overlap.zip")
    overlap = zipfile.ZipFile(io.BytesIO(overlap_data))
    assert len(overlap_data) < 100_000
    assert sum(i.file_size for i in overlap.infolist()) >= 10**9
    assert len(overlap.read("f0100.bin")) > 4 * 2**20  # a valid member, CRC checked
    png = _attachment(corpus, "pixel-flood", "photo.png")
    assert len(png) < 200_000
    assert struct.unpack(">II", png[16:24]) == (30_000, 30_000)  # IHDR width, height
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png))


def test_executables_are_detected_by_content(corpus):
    for name, filename in (("exe-as-pdf", "請求書.pdf"), ("rtlo-name", "invoice_\u202efdp.exe")):
        assert "executable" in magic.from_buffer(_attachment(corpus, name, filename))
    assert b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE" in _attachment(corpus, "eicar", "eicar.com")


def test_forwarded_mail_hides_an_executable_one_level_down(corpus):
    forwarded = next(leaf for leaf in _leaves(corpus, "forwarded-exe")
                     if leaf.content_type == "message/rfc822")
    assert forwarded.filename == "forwarded.eml"
    exe = next(leaf for leaf in parse(forwarded.payload).leaves if leaf.filename == "setup.exe")
    assert "executable" in magic.from_buffer(exe.payload)


def test_large_mail_is_twenty_megabytes_with_ten_attachments(corpus):
    entry = _entry(corpus[1], "large-20mb")
    assert 19_000_000 <= entry["size"] <= 21_000_000
    assert entry["size"] < Settings().max_message_bytes
    assert len(entry["expect"]["attachments"]) == 10
    assert len([leaf for leaf in _leaves(corpus, "large-20mb") if leaf.filename]) == 10


def test_office_documents_open_in_their_libraries(corpus):
    import docx
    import openpyxl
    import pptx

    document = docx.Document(io.BytesIO(_attachment(corpus, "docx-japanese", "予算要求書.docx")))
    assert document.paragraphs[0].text == "令和7年度 予算要求書"
    book = openpyxl.load_workbook(io.BytesIO(
        _attachment(corpus, "xlsx-two-sheets", "集計表.xlsx")))
    assert book.sheetnames == ["予算", "実績"]
    deck = pptx.Presentation(io.BytesIO(_attachment(corpus, "pptx-japanese", "説明会資料.pptx")))
    assert len(deck.slides) == 4


def test_vba_project_is_a_valid_compound_file(corpus):
    from gateway.loadtest.corpus.vba import vba_project_bin

    ole = olefile.OleFileIO(io.BytesIO(vba_project_bin()))
    assert ole.exists("VBA/dir") and ole.exists("PROJECT")
    assert ole.openstream("VBA/_VBA_PROJECT").read()[:2] == b"\xcc\x61"


def test_unknown_sample_name_is_a_usage_error(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--only", "no-such-sample"]) == 2
    assert "no-such-sample" in capsys.readouterr().err
