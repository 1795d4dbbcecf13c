"""Office, archives, Outlook and forwarded mail through the whole pipeline to delivery."""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import openpyxl
import pytest

from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.report import ActionKind
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.archive_helpers import RawEntry, build_zip
from tests.office_helpers import docm_with_vba, japanese_docx
from tests.outlook_helpers import build_tnef

pytestmark = pytest.mark.slow
EXE = b"MZ\x90\x00" + bytes(100)


def _xlsx() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "予算"
    wb.create_sheet("実績")
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _mail() -> bytes:
    inner = EmailMessage()
    inner["From"] = "x@example.com"
    inner["Subject"] = "転送元"
    inner.set_content("転送元の本文")
    inner.add_attachment(EXE, maintype="application", subtype="octet-stream",
                         filename="tool.exe")
    archive = build_zip([RawEntry("見積/見積書.docx".encode("cp932"), japanese_docx(), method=8),
                         RawEntry(b"setup.exe", EXE),
                         RawEntry("予算.xlsx".encode("cp932"), _xlsx(), method=8)])
    m = EmailMessage()
    m["From"] = "sender@example.com"
    m["To"] = "staff@example.lg.jp"
    m["Subject"] = "資料送付"
    m.set_content("資料を送付します。")
    for data, name in ((archive, "資料.zip"), (docm_with_vba(), "マクロ.docm"),
                       (build_tnef("会議", "本文", [("議事.docx", japanese_docx())]),
                        "winmail.dat"),
                       (inner.as_bytes(), "fw.eml")):
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="module")
def ctx(settings: Settings) -> Iterator[AttachmentContext]:
    with AttachmentContext.from_settings(settings) as context:
        yield context


def test_every_container_kind_is_opened_and_every_member_judged(
    settings: Settings, ctx: AttachmentContext,
) -> None:
    out = sanitize(_mail(), "Q1", settings, ctx)
    by_part = {a.part: a for a in out.report.actions}
    assert by_part["2/見積/見積書.docx"].action is ActionKind.CONVERTED
    assert by_part["2/setup.exe"].code == "blocked_type"
    assert by_part["2/予算.xlsx"].notes[0] == "sheets: 予算, 実績"
    assert by_part["3"].findings == ("office:vba-macro",)
    assert by_part["4/議事.docx"].action is ActionKind.CONVERTED
    assert by_part["5"].outputs == ("fw.eml",)
    assert by_part["5/2"].code == "blocked_type"
    delivered_bytes = rebuild(out, settings)
    assert b"MZ\x90" not in delivered_bytes
    delivered = email.message_from_bytes(delivered_bytes, policy=email.policy.default)
    names = [p.get_filename() for p in delivered.iter_attachments()]
    # Members keep their archive folder in the name ("見積/見積書.docx" → "見積_見積書.pdf").
    assert {"見積_見積書.pdf", "予算.pdf", "マクロ.pdf", "winmail.txt", "議事.pdf",
            "fw.eml"} <= set(names)
    forwarded = next(p for p in delivered.iter_attachments() if p.get_filename() == "fw.eml")
    assert forwarded.get_content_type() == "message/rfc822"
    assert forwarded["Content-Transfer-Encoding"] != "base64"  # RFC 2046 5.2.1


def test_archive_output_zip_packs_the_renderings_into_one_attachment(tmp_path: Path) -> None:
    zipped = Settings(data_dir=tmp_path, archive_output="zip")
    archive = build_zip([RawEntry("見積書.docx".encode("cp932"), japanese_docx(), method=8),
                         RawEntry(b"setup.exe", EXE)])
    m = EmailMessage()
    m["Subject"] = "zip"
    m.set_content("x")
    m.add_attachment(archive, maintype="application", subtype="zip", filename="資料.zip")
    with AttachmentContext.from_settings(zipped) as own:
        out = sanitize(m.as_bytes(), "Q2", zipped, own)
    (packed,) = out.outputs
    assert packed.filename == "資料.zip" and packed.content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(packed.data)) as z:
        assert sorted(z.namelist()) == ["見積書.pdf", "見積書.txt"]
    delivered = email.message_from_bytes(rebuild(out, zipped), policy=email.policy.default)
    assert [p.get_filename() for p in delivered.iter_attachments()] == ["資料.zip"]
