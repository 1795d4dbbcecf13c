"""PDF → image-only PDF (or page images) + text layer; caps, encryption, damage, findings."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageChops

from converters import pdf as pdf_module
from converters.errors import Corrupt, Encrypted, SandboxFailure
from converters.limits import ConversionPolicy, Limits
from converters.pdf import PdfConverter
from converters.pixels import Pixels
from tests.convert_helpers import (
    corrupt_pdf,
    encrypted_pdf,
    huge_page_pdf,
    japanese_pdf,
    pdf_with_javascript,
    render,
)

POLICY = ConversionPolicy()


@pytest.fixture(scope="module")
def japanese() -> bytes:
    return japanese_pdf(3)


def _page_image(pdf: bytes, index: int, dpi: int = 150) -> Image.Image:
    return pdfium.PdfDocument(pdf)[index].render(scale=dpi / 72).to_pil().convert("L")


def _ink(img: Image.Image) -> float:
    """Fraction of clearly dark pixels."""
    hist = img.histogram()
    return sum(hist[:128]) / (img.width * img.height)


def test_japanese_pdf_becomes_image_only_pdf_with_readable_pages(japanese: bytes) -> None:
    conv = render(PdfConverter(), japanese, "お知らせ.pdf", POLICY)
    assert [r.filename for r in conv.outputs] == ["お知らせ.pdf", "お知らせ.txt"]
    assert conv.pages == 3
    out = conv.outputs[0].data
    doc = pdfium.PdfDocument(out)
    assert len(doc) == 3
    assert doc[0].get_size() == pytest.approx((595.27, 841.89), abs=0.5)  # A4 kept
    # Only pixels: no fonts, no text layer, no actions in the rendering.
    assert b"/Font" not in out and b"/JavaScript" not in out and b"/OpenAction" not in out
    assert doc[0].get_textpage().count_chars() == 0
    for page in range(3):
        assert 0.005 < _ink(_page_image(out, page)) < 0.3  # not blank, not a black page


def test_japanese_glyphs_are_drawn_not_tofu(japanese: bytes) -> None:
    """無, 害 and 化 drawn 1 inch wide from x=1in: three different shapes, not three boxes."""
    out = render(PdfConverter(), japanese, "a.pdf", POLICY).outputs[0].data
    page = _page_image(out, 0, dpi=72)
    top = 842 - 700 - 62  # 72 pt glyphs above the baseline at y=700
    cells = [page.crop((72 + 72 * i, top, 72 + 72 * (i + 1), top + 72)) for i in range(3)]
    for cell in cells:
        assert _ink(cell) > 0.05
    for a, b in ((0, 1), (1, 2), (0, 2)):
        diff = ImageChops.difference(cells[a], cells[b])
        assert sum(diff.histogram()[64:]) > 200  # clearly different shapes


def test_text_layer_is_delivered_as_utf8_with_japanese(japanese: bytes) -> None:
    conv = render(PdfConverter(), japanese, "a.pdf", POLICY)
    text = conv.outputs[1].data.decode("utf-8")
    assert conv.outputs[1].content_type == "text/plain"
    assert "第2頁 市役所からのお知らせ 行5" in text
    assert "--- page 3 ---" in text


def test_page_cap_renders_the_first_pages_and_says_so() -> None:
    policy = ConversionPolicy(limits=Limits(max_pages=2))
    conv = render(PdfConverter(), japanese_pdf(5), "a.pdf", policy)
    assert conv.pages == 2
    assert len(pdfium.PdfDocument(conv.outputs[0].data)) == 2
    assert conv.notes == ("pages 3-5 of 5 not rendered (page cap 2)",)
    assert conv.extra["total_pages"] == "5"


def test_per_page_png_output_policy(japanese: bytes) -> None:
    policy = ConversionPolicy(pdf_output="png", extract_text=False)
    conv = render(PdfConverter(), japanese, "doc.pdf", policy)
    assert [r.filename for r in conv.outputs] == ["doc_p001.png", "doc_p002.png", "doc_p003.png"]
    img = Image.open(io.BytesIO(conv.outputs[0].data))
    assert img.format == "PNG"
    assert img.size[0] == pytest.approx(1240, abs=1) and img.size[1] == pytest.approx(1754, abs=1)
    assert img.mode == "P"  # a text page: palette, not 24-bit colour


def test_per_page_jpeg_output_policy(japanese: bytes) -> None:
    policy = ConversionPolicy(pdf_output="jpeg", dpi=100)
    conv = render(PdfConverter(), japanese, "doc.pdf", policy)
    assert [r.content_type for r in conv.outputs] == ["image/jpeg"] * 3 + ["text/plain"]
    width, height = Image.open(io.BytesIO(conv.outputs[0].data)).size
    assert width == pytest.approx(827, abs=1) and height == pytest.approx(1169, abs=1)


def test_javascript_and_openaction_are_reported_and_gone() -> None:
    conv = render(PdfConverter(), pdf_with_javascript(), "a.pdf", POLICY)
    assert {"pdf:JavaScript", "pdf:OpenAction", "pdf:AA"} <= set(conv.findings)
    out = conv.outputs[0].data
    assert b"JavaScript" not in out and b"/AA" not in out and b"app.alert" not in out


def test_escaped_names_are_still_found() -> None:
    data = pdf_with_javascript().replace(b"/OpenAction", b"/Open#41ction")
    assert "pdf:OpenAction" in render(PdfConverter(), data, "a.pdf", POLICY).findings


def test_encrypted_pdf_is_refused_as_encrypted() -> None:
    with pytest.raises(Encrypted) as info:
        render(PdfConverter(), encrypted_pdf(), "a.pdf", POLICY)
    assert info.value.holdable


def test_corrupt_pdf_is_refused_as_corrupt() -> None:
    with pytest.raises(Corrupt):
        render(PdfConverter(), corrupt_pdf(), "a.pdf", POLICY)


def test_giant_page_is_rendered_within_the_pixel_cap() -> None:
    policy = ConversionPolicy(limits=Limits(max_page_pixels=4_000_000), extract_text=False)
    conv = render(PdfConverter(), huge_page_pdf(), "a.pdf", policy)
    found = re.search(rb"/Width (\d+) /Height (\d+)", conv.outputs[0].data)
    assert found is not None
    assert int(found[1]) * int(found[2]) <= 4_000_000
    img_doc = pdfium.PdfDocument(conv.outputs[0].data)
    width, height = img_doc[0].get_size()
    assert (width, height) == pytest.approx((14400, 14400))
    assert "reduced resolution" in conv.notes[0]
    assert len(conv.outputs[0].data) < 1_000_000


def _colour_pdf() -> bytes:
    """Page 1: flat colours (a red box, blue text); page 2: a photo; page 3: grey photo."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    noise = Image.effect_noise((400, 300), 80)
    photo = Image.merge("RGB", (noise, noise.rotate(180), noise.transpose(
        Image.Transpose.FLIP_LEFT_RIGHT)))
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.setFillColorRGB(0.8, 0.1, 0.1)
    pdf.rect(100, 500, 200, 100, fill=1, stroke=0)
    pdf.setFillColorRGB(0.1, 0.2, 0.8)
    pdf.setFont("Helvetica", 30)
    pdf.drawString(100, 400, "Blue heading")
    pdf.showPage()
    pdf.drawImage(ImageReader(photo), 100, 300, width=400, height=300)
    pdf.showPage()
    pdf.drawImage(ImageReader(noise.convert("RGB")), 100, 300, width=400, height=300)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def test_colour_and_photo_pages_keep_their_colours() -> None:
    """Palette (Indexed) and JPEG pages in the image-only PDF show what the original showed."""
    original = _colour_pdf()
    out = render(PdfConverter(), original, "c.pdf", POLICY).outputs[0].data
    assert b"/Indexed" in out and b"/DCTDecode" in out
    for page in range(3):
        before = pdfium.PdfDocument(original)[page].render(scale=1).to_pil().convert("RGB")
        after = pdfium.PdfDocument(out)[page].render(scale=1).to_pil().convert("RGB")
        assert before.size == after.size
        diff = ImageChops.difference(before, after).convert("L")
        mean = sum(i * n for i, n in enumerate(diff.histogram())) / (diff.width * diff.height)
        assert mean < 12, (page, mean)
    flat = pdfium.PdfDocument(out)[0].render(scale=1).to_pil().convert("RGB")
    red = flat.getpixel((200, 842 - 550))
    assert red[0] > 170 and red[1] < 60 and red[2] < 60


def test_grey_photo_page_is_jpeg_and_text_page_is_palette_png() -> None:
    out = render(PdfConverter(), _colour_pdf(), "c.pdf", ConversionPolicy(pdf_output="png"))
    kinds = [Image.open(io.BytesIO(r.data)).mode for r in out.outputs[:3]]
    assert kinds == ["P", "RGB", "L"]  # flat colour → palette; photos keep every tone
    text = render(PdfConverter(), japanese_pdf(1), "t.pdf", ConversionPolicy(pdf_output="png"))
    page = Image.open(io.BytesIO(text.outputs[0].data))
    assert page.mode == "P" and len(page.getcolors() or []) <= 16  # 16 grey levels


def test_link_targets_are_listed_in_the_text_file() -> None:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.drawString(72, 720, "Click here")
    pdf.linkURL("https://www.city.example.lg.jp/kurashi/", (72, 710, 200, 735))
    pdf.showPage()
    pdf.save()
    conv = render(PdfConverter(), buf.getvalue(), "l.pdf", POLICY)
    text = conv.outputs[1].data.decode()
    assert "Click here" in text
    assert "[links]\nhttps://www.city.example.lg.jp/kurashi/" in text
    assert b"/URI" not in conv.outputs[0].data  # the rendering itself has no links


def test_text_page_keeps_every_mark_up_to_the_margins() -> None:
    """Grey pages are stored cropped to their ink: a heading, a tiny page number in the
    corner and a hairline at the edge stay where they were; a blank page stays blank."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.drawString(72, 720, "Heading")
    pdf.setFont("Helvetica", 6)
    pdf.drawString(575, 8, "12")
    pdf.line(3, 3, 3, 80)
    pdf.showPage()
    pdf.showPage()
    pdf.save()
    original = buf.getvalue()
    out = render(PdfConverter(), original, "t.pdf", POLICY).outputs[0].data
    for page in range(2):
        before, after = _page_image(original, page), _page_image(out, page)
        assert ImageChops.invert(after).getbbox() == ImageChops.invert(before).getbbox()
        assert _ink(after) == pytest.approx(_ink(before), rel=0.1, abs=1e-6)
    corner = _page_image(out, 0).crop((1190, 1725, 1241, 1754))  # the page number
    assert _ink(corner) > 0.02


def _children() -> set[str]:
    return set(Path(f"/proc/self/task/{os.getpid()}/children").read_text().split())


@pytest.mark.parametrize(("bad_page", "error"), [(0, SandboxFailure), (1, SandboxFailure)])
def test_a_page_failing_in_any_renderer_fails_the_pdf_and_leaves_no_process(
        monkeypatch: pytest.MonkeyPatch, bad_page: int, error: type[Exception]) -> None:
    """Pages are shared between forked renderers (0, 2, ... and 1, 3, ...): a failure in
    either fails the conversion, and no renderer is left behind."""
    real = pdf_module.render_page

    def failing(doc: pdfium.PdfDocument, index: int, policy: ConversionPolicy) -> Pixels:
        if index == bad_page:
            raise Corrupt("bad page")
        return real(doc, index, policy)

    monkeypatch.setattr(pdf_module, "render_page", failing)
    monkeypatch.setattr(pdf_module, "free_cpus", lambda: 2)
    before = _children()
    with pytest.raises(error):
        render(PdfConverter(), japanese_pdf(4), "a.pdf", POLICY)
    assert _children() == before


def test_active_feature_names_match_whole_names_in_any_escape() -> None:
    from converters.pdfscan import active_features

    assert active_features(b"<< /S /J#61#76aScript /J#53 (x) /AA<<>> >>") == (
        "pdf:AA", "pdf:JavaScript")
    assert active_features(b"<< /JSON 1 /AAB 2 /OpenActions 3 /Launch#58 4 >>") == ()
