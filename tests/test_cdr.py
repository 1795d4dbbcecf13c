"""Clean-and-keep-editable (issue 20): what the recipient gets, what oletools and our own
scanners say about it, what LibreOffice makes of it, and what a hijacked cleaner can do.

Real files: the oletools and ClamAV test files in tests/data/cdr (PROVENANCE.md) and the
sample corpus's Office and PDF attachments, through the real sandbox.
"""

from __future__ import annotations

import email
import email.policy
import io
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from oletools import mraptor, oleobj
from oletools.olevba import VBA_Parser

from converters.base import Conversion, Rendering
from converters.limits import ConversionPolicy
from converters.pdfscan import active_features
from converters.registry import CONVERTERS, Registration, Registry
from gateway.loadtest.samples import write_corpus
from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.message import Sanitized
from gateway.pipeline.notice import render_notice
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.report import ActionKind
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.convert_helpers import mail, pdf_with_javascript
from tests.office_helpers import docm_with_vba

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "cdr"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("var"), treatment_office="cdr",
                    treatment_pdf="cdr")


@pytest.fixture(scope="module")
def ctx(settings: Settings) -> Iterator[AttachmentContext]:
    with AttachmentContext.from_settings(settings) as context:
        yield context


def mail_with(data: bytes, filename: str) -> bytes:
    return mail([(filename, "application/octet-stream", data)])


def attachments(out: Sanitized, settings: Settings) -> dict[str, bytes]:
    delivered = email.message_from_bytes(rebuild(out, settings), policy=email.policy.default)
    return {str(p.get_filename()): p.get_payload(decode=True) for p in delivered.iter_attachments()}


def scans_clean(name: str, data: bytes) -> list[str]:
    """What olevba, mraptor, oleobj (OOXML) or our PDF scanner still find: [] is clean."""
    if name.endswith(".pdf"):
        return list(active_features(data))
    found = []
    parser = VBA_Parser(name, data=data)
    try:
        if parser.detect_vba_macros() or parser.detect_xlm_macros():
            found.append("olevba")
            raptor = mraptor.MacroRaptor(parser.get_vba_code_all_modules() or "")
            raptor.scan()
            found += ["mraptor"] if raptor.suspicious else []
    finally:
        parser.close()
    with tempfile.NamedTemporaryFile(suffix=".zip") as scratch:
        scratch.write(data)
        scratch.flush()
        xml = oleobj.XmlParser(scratch.name)
        found += [f"oleobj:{kind}" for kind, target in oleobj.find_external_relationships(xml)
                  if kind != "hyperlink" or not str(target).startswith(("hxxp", "about:"))]
        found += ["oleobj:customUI" for _ in oleobj.find_customUI(xml)]
        found += ["oleobj:ole" for ole in oleobj.find_ole(scratch.name, data, xml) if ole]
    return found


def test_a_macro_document_arrives_editable_without_its_macro(
        settings: Settings, ctx: AttachmentContext) -> None:
    out = sanitize(mail_with(docm_with_vba(), "申請書.docm"), "C1", settings, ctx)
    [action] = [a for a in out.report.actions if a.filename == "申請書.docm"]
    assert action.action is ActionKind.CONVERTED and action.code == "cdr"
    assert "cdr_removed=vba-macro:1" in action.notes
    files = attachments(out, settings)
    assert set(files) == {"申請書.docx"}
    with zipfile.ZipFile(io.BytesIO(files["申請書.docx"])) as z:
        assert not any("vba" in n.lower() for n in z.namelist())
        assert "マクロ付き文書".encode() in z.read("word/document.xml")
        assert b"macroEnabled" not in z.read("[Content_Types].xml")
    assert scans_clean("申請書.docx", files["申請書.docx"]) == []
    notice = render_notice(out.report, settings)
    assert "編集できる形式のまま届けました" in notice and "マクロ（VBA）を削除しました" in notice
    assert [h.filename for h in out.held] == ["申請書.docm"]  # the original is kept


def test_both_delivers_the_cleaned_file_and_the_page_images(
        settings: Settings, ctx: AttachmentContext) -> None:
    both = settings.model_copy(update={"treatment_office": "both"})
    out = sanitize(mail_with(docm_with_vba(), "申請書.docm"), "C2", both, ctx)
    [action] = [a for a in out.report.actions if a.filename == "申請書.docm"]
    assert action.code == "cdr_both" and action.pages >= 1
    assert set(attachments(out, both)) - {"申請書.txt"} == {"申請書.docx", "申請書.pdf"}
    assert "画像で届けました" in render_notice(out.report, both)


def test_a_pdf_loses_its_scripts_and_keeps_its_text(
        settings: Settings, ctx: AttachmentContext) -> None:
    out = sanitize(mail_with(pdf_with_javascript(), "見積.pdf"), "C3", settings, ctx)
    [action] = [a for a in out.report.actions if a.filename == "見積.pdf"]
    assert action.code == "cdr", action
    cleaned = attachments(out, settings)["見積.pdf"]
    assert active_features(pdf_with_javascript()) and active_features(cleaned) == ()
    assert any(n.startswith("cdr_removed=javascript") or n.startswith("cdr_removed=open-action")
               for n in action.notes)


def test_a_legacy_document_is_saved_as_ooxml_then_cleaned(
        settings: Settings, ctx: AttachmentContext) -> None:
    """RTF (like .doc, .xls, .ppt and OpenDocument): LibreOffice saves it as OOXML in its
    sandbox, then both keys run on that file."""
    rtf = rb"{\rtf1\ansi {\fonttbl{\f0 Arial;}} \f0 legacy document\par}"
    out = sanitize(mail_with(rtf, "旧形式.rtf"), "C4", settings, ctx)
    [action] = [a for a in out.report.actions if a.filename == "旧形式.rtf"]
    assert action.code == "cdr" and "cdr_resaved" in action.notes, action
    files = attachments(out, settings)
    assert set(files) == {"旧形式.docx"}
    with zipfile.ZipFile(io.BytesIO(files["旧形式.docx"])) as z:
        assert b"legacy document" in z.read("word/document.xml")
    assert scans_clean("旧形式.docx", files["旧形式.docx"]) == []
    assert "新しい形式（Office Open XML）に保存し直してから" in render_notice(out.report, settings)


REAL_FILES = sorted(p for p in DATA.iterdir() if p.suffix != ".md")
#: rtfobj's issue 251: a malformed RTF exploit sample that LibreOffice cannot open either.
UNREADABLE = {"oletools-rtfobj-issue_251.rtf"}


@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_every_real_file_delivered_editable_scans_clean_and_opens(
        path: Path, settings: Settings, ctx: AttachmentContext) -> None:
    """oletools' and ClamAV's test files: what `cdr` delivers scans clean (olevba, mraptor,
    oleobj; our PDF scanner) and LibreOffice renders it (the `render` treatment of the
    cleaned file gives pages, no error)."""
    out = sanitize(mail_with(path.read_bytes(), path.name), "R1", settings, ctx)
    [action] = [a for a in out.report.actions if a.filename == path.name]
    if path.name in UNREADABLE:  # neither LibreOffice nor the cleaner opens it: removed
        assert action.code == "corrupt" and attachments(out, settings) == {}
        return
    assert action.code == "cdr", (action.code, action.notes)
    [(name, data)] = attachments(out, settings).items()
    assert scans_clean(name, data) == [], name
    render = settings.model_copy(update={"treatment_office": "render", "treatment_pdf": "render"})
    again = sanitize(mail_with(data, name), "R2", render, ctx)
    [rendered] = [a for a in again.report.actions if a.filename == name]
    assert rendered.action is ActionKind.CONVERTED and rendered.pages >= 1, rendered


# --- a hijacked cleaner -------------------------------------------------------------------

class LyingCleaner:
    """Key one taken over by the original: hands the original back as "cleaned", with a
    made-up report, and claims it removed nothing."""

    name = "cdr"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        return Conversion(outputs=(Rendering("cleaned", DOCX, untrusted),),
                          findings=("cdr:nothing=0", "<b>injected</b>"))


class ExecutableCleaner:
    """Key one returning a program under a type the gateway does not deliver."""

    name = "cdr"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        return Conversion(outputs=(Rendering("x.exe", "application/x-msdownload",
                                             b"MZ" + bytes(64)),))


@pytest.mark.parametrize("cleaner", ["LyingCleaner", "ExecutableCleaner"])
def test_a_hijacked_cleaner_gets_nothing_editable_delivered(
        settings: Settings, cleaner: str) -> None:
    hostile = Registration("cdr", f"tests.test_cdr:{cleaner}", ())
    registry = Registry((*(r for r in CONVERTERS if r.name != "cdr"), hostile))
    with AttachmentContext.from_settings(settings, registry=registry) as own:
        out = sanitize(mail_with(docm_with_vba(), "申請書.docm"), "H1", settings, own)
    [action] = [a for a in out.report.actions if a.filename == "申請書.docm"]
    assert action.code == "" and action.pages >= 1  # page images, as if `render`
    assert any(n.startswith("cdr_fallback=") for n in action.notes)
    files = attachments(out, settings)
    assert set(files) - {"申請書.txt"} == {"申請書.pdf"}
    assert b"vbaProject" not in b"".join(files.values()) and b"MZ" != files["申請書.pdf"][:2]
    assert "injected" not in render_notice(out.report, settings)


CORPUS = ("pdf-javascript", "pdf-japanese-5p", "docx-japanese", "xlsx-two-sheets",
          "pptx-japanese", "docm-macro", "rtf-object")


def test_the_sample_corpus_documents_arrive_editable_and_clean(
        tmp_path: Path, settings: Settings, ctx: AttachmentContext) -> None:
    """The `mugaika samples` mails with Office and PDF attachments, whole, under `cdr`:
    each document arrives editable, scans clean and renders in LibreOffice again."""
    manifest = write_corpus(tmp_path, set(CORPUS))
    render = settings.model_copy(update={"treatment_office": "render", "treatment_pdf": "render"})
    delivered = {}
    for entry in manifest["samples"]:
        out = sanitize((tmp_path / entry["file"]).read_bytes(), "S1", settings, ctx)
        assert [a.code for a in out.report.actions if a.filename] == ["cdr"], entry["name"]
        delivered.update(attachments(out, settings))
    assert len(delivered) == len(CORPUS)
    for name, data in delivered.items():
        assert scans_clean(name, data) == [], name
        [again] = [a for a in sanitize(mail_with(data, name), "S2", render, ctx).report.actions
                   if a.filename == name]
        assert again.action is ActionKind.CONVERTED and again.pages >= 1, (name, again)
