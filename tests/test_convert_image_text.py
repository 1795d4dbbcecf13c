"""Images re-encoded without metadata under a pixel cap; text and CSV delivered as UTF-8."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from converters.errors import Bomb, Corrupt
from converters.image import ImageConverter
from converters.limits import ConversionPolicy
from converters.text import TextConverter, inert_cell
from tests.convert_helpers import animated_gif, photo_jpeg, pixel_flood_png, render

POLICY = ConversionPolicy()


def test_pixel_flood_png_is_refused_before_decoding() -> None:
    with pytest.raises(Bomb):
        render(ImageConverter(), pixel_flood_png(), "flood.png", POLICY)


def test_truncated_jpeg_is_refused_as_corrupt() -> None:
    data = photo_jpeg()
    with pytest.raises(Corrupt):
        render(ImageConverter(), data[: len(data) // 2], "cut.jpg", POLICY)


def test_photo_is_reencoded_as_jpeg_without_exif_or_comment() -> None:
    data = photo_jpeg()
    assert b"SecretCam" in data and b"secret comment" in data
    conv = render(ImageConverter(), data, "写真.jpeg", POLICY)
    (out,) = conv.outputs
    assert out.filename == "写真.jpg" and out.content_type == "image/jpeg"
    assert b"SecretCam" not in out.data and b"secret comment" not in out.data
    img = Image.open(io.BytesIO(out.data))
    assert img.size == (640, 480)
    assert not img.getexif() and "comment" not in img.info


def test_trailing_data_after_the_image_is_not_delivered() -> None:
    data = photo_jpeg(exif=False) + b"PK\x03\x04 hidden zip payload"
    (out,) = render(ImageConverter(), data, "a.jpg", POLICY).outputs
    assert b"hidden zip payload" not in out.data


def test_flat_png_stays_lossless_png() -> None:
    img = Image.new("RGB", (300, 200), "white")
    img.paste((200, 0, 0), (50, 50, 150, 100))
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=None)
    (out,) = render(ImageConverter(), buf.getvalue(), "chart.png", POLICY).outputs
    assert out.content_type == "image/png"
    back = Image.open(io.BytesIO(out.data)).convert("RGB")
    assert back.getpixel((100, 75)) == (200, 0, 0) and back.getpixel((5, 5)) == (255, 255, 255)


def test_animated_gif_delivers_the_first_frame_and_says_so() -> None:
    conv = render(ImageConverter(), animated_gif(5), "anim.gif", POLICY)
    assert len(conv.outputs) == 1
    assert conv.notes == ("GIF with 5 frames: 1 delivered",)
    assert Image.open(io.BytesIO(conv.outputs[0].data)).convert("L").getpixel((0, 0)) == 0


def test_multipage_tiff_delivers_every_page() -> None:
    pages = [Image.new("L", (100, 100), v) for v in (0, 128, 255)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    conv = render(ImageConverter(), buf.getvalue(), "fax.tif", POLICY)
    assert [r.filename for r in conv.outputs] == ["fax_p001.png", "fax_p002.png", "fax_p003.png"]


def test_other_image_formats_are_not_opened() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "ICO")
    with pytest.raises(Corrupt):
        render(ImageConverter(), buf.getvalue(), "a.png", POLICY)


# --- text -------------------------------------------------------------------------------

def test_shift_jis_text_is_delivered_as_utf8() -> None:
    data = "お知らせ：①髙橋様の件\r\n".encode("cp932")
    (out,) = TextConverter().convert(data, "memo.txt", POLICY).outputs
    assert out.filename == "memo.txt"
    assert out.data.decode("utf-8") == "お知らせ：①髙橋様の件\r\n"


def test_csv_with_formulas_is_made_inert_and_readable_in_excel() -> None:
    rows = ('氏名,金額,備考\r\n山田,-1200,"=HYPERLINK(""http://evil"",""click"")"\r\n'
            '佐藤,+81,@SUM(A1:A2)\r\n鈴木,3.5,"\tcmd|\' /C calc\'!A0"\r\n田中,=1+1,－2\r\n'
            'お問い合わせ,0,よろしくお願いします\r\n')
    conv = TextConverter().convert(rows.encode("cp932"), "名簿.csv", POLICY)
    (out,) = conv.outputs
    assert out.filename == "名簿.csv" and out.content_type == "text/csv"
    assert out.data.startswith(b"\xef\xbb\xbf")  # BOM: Japanese Excel reads UTF-8
    text = out.data.decode("utf-8-sig")
    assert "'=HYPERLINK" in text and "'@SUM(A1:A2)" in text and "'\tcmd" in text
    assert "'=1+1" in text and "'－2" in text
    assert "山田,-1200," in text and "佐藤,+81," in text  # plain numbers untouched
    assert conv.notes == ("decoded as cp932", "5 spreadsheet formula cells made inert")


def test_cp932_roster_of_kanji_names_is_decoded() -> None:
    data = "氏名,金額\r\n山田,1200\r\n佐藤,800\r\n鈴木,300\r\n".encode("cp932")
    (out,) = TextConverter().convert(data, "名簿.csv", POLICY).outputs
    assert "山田" in out.data.decode("utf-8-sig")


def test_tsv_cells_are_made_inert_too() -> None:
    (out,) = TextConverter().convert(b"a\t=cmd()\n", "x.tsv", POLICY).outputs
    assert out.data.decode("utf-8-sig") == "a\t'=cmd()\r\n"


@pytest.mark.parametrize(("cell", "changed"), [
    ("=1+1", True), ("+cmd", True), ("-cmd", True), ("@x", True), ("\tx", True),
    ("\rx", True), ("  =x", True), ("-5", False), ("+81", False), ("1,234", False),
    ("abc", False), ("", False),
])
def test_inert_cell(cell: str, changed: bool) -> None:
    assert inert_cell(cell)[1] is changed
