"""The fixed OCR set: Japanese pages the tests draw themselves with the shipped fonts.

A4 at 150 DPI (1240 × 1754 pixels), like a scanner's economy setting and the gateway's
own rendering DPI: a horizontal page (Mincho body text with English words and numbers),
a vertical page (Mincho, right to left), and a table (Gothic, ruled cells). Each page
comes with the text drawn on it, so the character error rate can be measured against it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

IPAEX_MINCHO = "/usr/share/fonts/opentype/ipaexfont-mincho/ipaexm.ttf"
IPAEX_GOTHIC = "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"
DPI = 150
A4 = (1240, 1754)
#: 10.5 pt, the usual size of a Japanese official letter, at 150 DPI.
BODY_PX = round(10.5 * DPI / 72)

HORIZONTAL = (
    "令和六年四月一日",
    "市民課長　様",
    "住民基本台帳の写しの交付について（依頼）",
    "標記の件について、下記のとおり依頼します。",
    "申請者の氏名、住所及び生年月日を確認のうえ、",
    "写し二通を交付してください。手数料は三百円です。",
    "問い合わせ先は総務部情報政策課、電話番号は",
    "03-1234-5678、メールは info@example.lg.jp です。",
    "The sanitized copy is delivered to the LGWAN side.",
)
VERTICAL = (
    "国民健康保険税の納付について",
    "今年度の税額を通知します。",
    "納期限までに金融機関で納めてください。",
    "口座振替を御利用ください。",
)
TABLE = (
    ("項目", "金額", "備考"),
    ("人件費", "1,200,000円", "四月分"),
    ("物件費", "350,000円", "消耗品"),
    ("委託料", "980,000円", "保守"),
    ("合計", "2,530,000円", "税込"),
)


@dataclass(frozen=True)
class Sample:
    name: str
    image: Image.Image
    #: What is drawn, line by line (a table: cells in reading order, one row a line).
    truth: str


def horizontal_page() -> Sample:
    img = Image.new("L", A4, 255)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(IPAEX_MINCHO, BODY_PX)
    for n, line in enumerate(HORIZONTAL):
        draw.text((150, 150 + n * BODY_PX * 2), line, font=font, fill=0)
    return Sample("horizontal", img, "\n".join(HORIZONTAL))


def vertical_page() -> Sample:
    """Columns from the right, each character below the previous one (縦書き)."""
    img = Image.new("L", A4, 255)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(IPAEX_MINCHO, BODY_PX * 2)
    step = BODY_PX * 2
    for col, line in enumerate(VERTICAL):
        x = A4[0] - 200 - col * step * 2
        for row, char in enumerate(line):
            draw.text((x, 150 + row * round(step * 1.1)), char, font=font, fill=0)
    return Sample("vertical", img, "\n".join(VERTICAL))


def table_page() -> Sample:
    img = Image.new("L", A4, 255)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(IPAEX_GOTHIC, BODY_PX)
    widths, height, left, top = (220, 320, 220), BODY_PX * 3, 150, 200
    for r, row in enumerate(TABLE):
        x = left
        for width, cell in zip(widths, row, strict=True):
            y = top + r * height
            draw.rectangle((x, y, x + width, y + height), outline=0, width=2)
            draw.text((x + 14, y + BODY_PX), cell, font=font, fill=0)
            x += width
    return Sample("table", img, "\n".join(" ".join(row) for row in TABLE))


def samples() -> list[Sample]:
    return [horizontal_page(), vertical_page(), table_page()]


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", dpi=(DPI, DPI))
    return out.getvalue()


def scanned_pdf(images: list[Image.Image]) -> bytes:
    """A PDF of page images only, as a scanner makes it: no text layer at all."""
    out = io.BytesIO()
    first, *rest = [im.convert("L") for im in images]
    first.save(out, "PDF", resolution=float(DPI), save_all=True, append_images=rest)
    return out.getvalue()


def cer(truth: str, got: str) -> float:
    """Character error rate: edit distance / length of the truth, blanks ignored (the
    layout decides where tesseract puts spaces and line breaks, not the reading)."""
    a = "".join(truth.split())
    b = "".join(got.split())
    return levenshtein(a, b) / max(1, len(a))


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
