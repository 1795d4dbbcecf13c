"""Benign documents with Japanese text, built by the libraries real senders' tools resemble.

The texts are what a municipality receives every day (budget requests, meeting minutes),
so a rendering that shows tofu or mojibake is obvious to a reviewer.
"""

from __future__ import annotations

import io
import random
import re
import zipfile
from pathlib import Path

IPAEX_GOTHIC = Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf")

PARAGRAPHS = (
    "令和7年度の予算要求について、各課からの資料を取りまとめました。",
    "会議は第①会議室で午後2時から行います。出席者は㈱山田商事の担当者を含め12名です。",
    "高齢者福祉、子育て支援、防災対策の三つを重点項目とします。",
    "本資料の内容は、住民の皆様への説明会でも使用する予定です。",
)


def japanese_pdf(pages: int = 5) -> bytes:
    """A multi-page A4 PDF in IPAex Gothic (embedded subset), one heading per page."""
    from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
    from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]
    from reportlab.pdfgen import canvas  # type: ignore[import-untyped]

    pdfmetrics.registerFont(TTFont("IPAexGothic", str(IPAEX_GOTHIC)))
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=True)
    width, height = A4
    for page in range(1, pages + 1):
        pdf.setFont("IPAexGothic", 20)
        pdf.drawString(72, height - 90, f"予算要求資料 第{page}章")
        pdf.setFont("IPAexGothic", 11)
        y = height - 130
        for line in PARAGRAPHS * 3:
            pdf.drawString(72, y, line)
            y -= 22
        pdf.rect(72, 120, width - 144, 160)
        pdf.drawString(84, 260, f"頁 {page} / {pages}")
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def photo_jpeg(size: int, seed: int) -> bytes:
    """A noisy (incompressible) JPEG of roughly `size` bytes, deterministic per seed."""
    from PIL import Image

    side = max(64, int((size / 1.18) ** 0.5))  # q95 noise costs about 1.18 bytes per pixel
    rng = random.Random(seed)  # noqa: S311 (noise, not secrets)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def photo_pdf(jpeg: bytes, title: str) -> bytes:
    """A one-page PDF holding a photo and a Japanese caption (a scanned-report stand-in)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader  # type: ignore[import-untyped]
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(TTFont("IPAexGothic", str(IPAEX_GOTHIC)))
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=True)
    pdf.setFont("IPAexGothic", 16)
    pdf.drawString(72, A4[1] - 72, title)
    pdf.drawImage(ImageReader(io.BytesIO(jpeg)), 72, 200, width=450, height=450)
    pdf.showPage()
    pdf.save()
    return out.getvalue()


_W3CDTF = re.compile(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)")


def reproducible_ooxml(data: bytes) -> bytes:
    """Re-pack an OOXML file with fixed entry dates and core-property times.

    The libraries stamp the current time into both; a corpus whose hashes change every run
    cannot be compared across machines.
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            body = source.read(item.filename)
            if item.filename == "docProps/core.xml":
                body = _W3CDTF.sub(rb"\g<1>2025-04-01T00:00:00Z\g<2>", body)
            info = zipfile.ZipInfo(item.filename, date_time=(2025, 4, 1, 9, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, body)
    return out.getvalue()


def japanese_docx() -> bytes:
    from docx import Document

    document = Document()
    document.add_heading("令和7年度 予算要求書", level=1)
    for text in PARAGRAPHS:
        document.add_paragraph(text)
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate((("項目", "要求額", "前年度"), ("福祉", "1,200万円", "1,100万円"),
                             ("防災", "800万円", "650万円"))):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return reproducible_ooxml(out.getvalue())


def japanese_xlsx() -> bytes:
    """Two sheets with Japanese names: the notice must list both."""
    from openpyxl import Workbook  # type: ignore[import-untyped]

    book = Workbook()
    budget = book.active
    assert budget is not None
    budget.title = "予算"
    budget.append(["項目", "金額（千円）"])
    for item, amount in (("福祉", 12000), ("防災", 8000), ("教育", 9500)):
        budget.append([item, amount])
    budget.append(["合計", "=SUM(B2:B4)"])
    actual = book.create_sheet("実績")
    actual.append(["月", "支出（千円）"])
    for month in range(4, 10):
        actual.append([f"{month}月", month * 800])
    out = io.BytesIO()
    book.save(out)
    return reproducible_ooxml(out.getvalue())


def japanese_pptx() -> bytes:
    from pptx import Presentation

    deck = Presentation()
    for number, text in enumerate(PARAGRAPHS, 1):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"説明会資料 {number}"
        slide.placeholders[1].text = text
    out = io.BytesIO()
    deck.save(out)
    return reproducible_ooxml(out.getvalue())


def _rtf_text(text: str) -> str:
    """Non-ASCII as CP932 `\\'xx` escapes, as Japanese Word writes RTF."""
    return "".join(ch if ord(ch) < 0x80 else "".join(f"\\'{b:02x}" for b in ch.encode("cp932"))
                   for ch in text)


def _ole1_package(name: str, data: bytes) -> bytes:
    """An OLE1 'Package' object (what Word embeds for a dragged-in file) carrying `data`."""
    path = f"C:\\Users\\sample\\{name}".encode("cp932") + b"\0"
    native = (b"\x02\x00" + name.encode("cp932") + b"\0" + path + b"\x00\x00\x03\x00"
              + len(path).to_bytes(4, "little") + path + len(data).to_bytes(4, "little")
              + data + b"\0\0")
    classname = b"Package\0"
    return (b"\x01\x05\x00\x00" + b"\x02\x00\x00\x00" + len(classname).to_bytes(4, "little")
            + classname + b"\0" * 8 + len(native).to_bytes(4, "little") + native)


def rtf_with_object(name: str, data: bytes) -> bytes:
    """An RTF document with Japanese text and an embedded OLE Package object."""
    body = _rtf_text("添付のオブジェクトを開いて内容を確認してください。")
    objdata = _ole1_package(name, data).hex()
    lines = "\n".join(objdata[i:i + 128] for i in range(0, len(objdata), 128))
    return (
        "{\\rtf1\\ansi\\ansicpg932\\deff0{\\fonttbl{\\f0\\fnil\\fcharset128 MS Mincho;}}\n"
        f"{{\\pard\\f0 {body}\\par}}\n"
        "{\\object\\objemb\\objw2000\\objh600{\\*\\objclass Package}{\\*\\objdata\n"
        f"{lines}\n}}{{\\result{{\\pard {name}\\par}}}}}}\n}}\n"
    ).encode("ascii")
