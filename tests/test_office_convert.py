"""Office documents become page images through the warm, sandboxed LibreOffice pool."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pptx
import pytest
from msoffcrypto.format.ooxml import OOXMLFile
from PIL import Image, ImageChops
from pptx.util import Inches

from converters import errors
from converters.base import Conversion
from converters.limits import ConversionPolicy, Limits
from converters.office import OfficeConverter
from converters.office_pool import OfficeConfig, OfficePool
from tests.convert_helpers import render
from tests.office_helpers import docm_with_vba, japanese_docx

pytestmark = pytest.mark.slow
PNG = ConversionPolicy(pdf_output="png", dpi=100)


@pytest.fixture(scope="module")
def pool() -> Iterator[OfficePool]:
    with OfficePool(OfficeConfig(timeout_seconds=20)) as p:
        yield p


@pytest.fixture
def office(pool: OfficePool) -> OfficeConverter:
    return OfficeConverter(pool)


def _pixels(conv: Conversion) -> Image.Image:
    return Image.open(io.BytesIO(conv.outputs[0].data)).convert("L")


def _xlsx_two_sheets(hidden: str = "") -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "予算"
    ws["A1"], ws["B1"] = "項目", "金額"
    wb.create_sheet("実績")["A1"] = "実績額"
    if hidden:
        sheet = wb.create_sheet(hidden)
        sheet["A1"] = "secret"
        sheet.sheet_state = "hidden"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_japanese_docx_renders_real_glyphs_not_tofu(office: OfficeConverter) -> None:
    """Two texts of different kanji must render differently; missing fonts draw the same boxes."""
    a = render(office, japanese_docx("永永永永永 東京都庁"), "a.docx", PNG)
    b = render(office, japanese_docx("国国国国国 大阪府庁"), "b.docx", PNG)
    assert a.pages == 1 and a.outputs[0].content_type == "image/png"
    text = next(o for o in a.outputs if o.filename.endswith(".txt")).data.decode()
    assert "永永永永永 東京都庁" in text
    img_a, img_b = _pixels(a), _pixels(b)
    ink = img_a.histogram()[:128]
    assert sum(ink) > 500  # the page is not blank
    diff = ImageChops.difference(img_a, img_b).getbbox()
    assert diff is not None  # tofu boxes would be pixel-identical for both texts


def test_xlsx_renders_every_sheet_and_names_them(office: OfficeConverter) -> None:
    conv = render(office, _xlsx_two_sheets(), "予算.xlsx", ConversionPolicy())
    assert conv.notes[0] == "sheets: 予算, 実績"
    assert conv.pages == 2
    assert conv.outputs[0].filename == "予算.pdf" and conv.outputs[0].data.startswith(b"%PDF")


def test_hidden_sheets_are_named_in_the_notes(office: OfficeConverter) -> None:
    conv = render(office, _xlsx_two_sheets(hidden="裏"), "a.xlsx", ConversionPolicy())
    assert conv.notes[:2] == ("sheets: 予算, 実績", "hidden sheets not rendered: 裏")
    assert conv.pages == 2


def test_page_cap_is_stated_in_the_notes(office: OfficeConverter) -> None:
    one_page = ConversionPolicy(limits=Limits(max_pages=1))
    conv = render(office, _xlsx_two_sheets(), "a.xlsx", one_page)
    assert conv.pages == 1
    assert "pages after 1 not rendered" in conv.notes


def test_pptx_renders_one_image_per_slide(office: OfficeConverter) -> None:
    deck = pptx.Presentation()
    for title in ("第1回 会議", "第2回 会議", "まとめ"):
        slide = deck.slides.add_slide(deck.slide_layouts[5])
        slide.shapes.title.text = title
        slide.shapes.add_textbox(Inches(1), Inches(2), Inches(4), Inches(1)).text = title
    buf = io.BytesIO()
    deck.save(buf)
    conv = render(office, buf.getvalue(), "会議.pptx", PNG)
    images = [o for o in conv.outputs if o.content_type == "image/png"]
    assert conv.pages == 3 and len(images) == 3
    assert [o.filename for o in images] == ["会議_p001.png", "会議_p002.png", "会議_p003.png"]


def test_docm_with_vba_project_is_rendered_and_the_macro_recorded(office: OfficeConverter) -> None:
    conv = render(office, docm_with_vba(), "macro.docm", ConversionPolicy())
    assert "office:vba-macro" in conv.findings
    assert conv.pages == 1


def test_rtf_with_embedded_object_is_rendered_and_the_object_recorded(
    office: OfficeConverter,
) -> None:
    objdata = ("0105000002000000080000005061636b61676500000000000000000010000000"
               + "48656c6c6f2c206f626a6563742100" + "0105000000000000")
    rtf = ("{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Arial;}}\\f0 Report with an object\\par "
           "{\\object\\objemb\\objw2000\\objh500{\\*\\objclass Package}"
           "{\\*\\objdata " + objdata + "}}\\par}").encode()
    conv = render(office, rtf, "report.rtf", ConversionPolicy())
    assert "office:ole-object" in conv.findings
    assert conv.pages == 1
    assert any(b"Report with an object" in o.data for o in conv.outputs)


def test_encrypted_xlsx_is_held_for_release(office: OfficeConverter, tmp_path: Path) -> None:
    plain = tmp_path / "plain.xlsx"
    plain.write_bytes(_xlsx_two_sheets())
    encrypted = io.BytesIO()
    with plain.open("rb") as f:
        OOXMLFile(f).encrypt("himitsu", encrypted)
    with pytest.raises(errors.Encrypted) as exc:
        render(office, encrypted.getvalue(), "secret.xlsx", ConversionPolicy())
    assert exc.value.holdable


def test_garbage_with_an_office_name_is_corrupt_and_the_pool_survives(
    office: OfficeConverter,
) -> None:
    with pytest.raises(errors.ConversionError):
        render(office, b"PK\x03\x04 not really a docx" * 10, "x.docx", ConversionPolicy())
    assert render(office, japanese_docx(), "ok.docx", ConversionPolicy()).pages == 1


def _soffice_pids(root: int) -> list[int]:
    """soffice.bin processes below `root` (the bwrap process), found through /proc."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents[int(entry)], names[int(entry)] = ppid, name
    found = []
    for pid, name in names.items():
        walk = pid
        while walk in parents and walk != root and walk > 1:
            walk = parents[walk]
        if walk == root and name.startswith("soffice"):
            found.append(pid)
    return found


def _live_soffice(pool: OfficePool) -> list[int]:
    pool.warm_up()
    (instance,) = pool.instances()
    pids = _soffice_pids(instance.pid)
    assert pids, "no soffice process found in the sandbox"
    return pids


def test_crashed_libreoffice_is_restarted_and_the_document_converted(
    pool: OfficePool, office: OfficeConverter,
) -> None:
    for pid in _live_soffice(pool):
        os.kill(pid, signal.SIGKILL)
    before = pool.restarts
    conv = render(office, japanese_docx(), "after-crash.docx", ConversionPolicy())
    assert conv.pages == 1
    assert pool.restarts == before + 1


def test_hung_libreoffice_is_killed_after_the_timeout_and_the_document_converted() -> None:
    with OfficePool(OfficeConfig(timeout_seconds=4)) as short:
        for pid in _live_soffice(short):
            os.kill(pid, signal.SIGSTOP)
        conv = render(OfficeConverter(short), japanese_docx(), "after-hang.docx",
                                              ConversionPolicy())
        assert conv.pages == 1
        assert short.restarts == 1


def test_an_instance_that_cannot_start_fails_closed_quickly() -> None:
    """Under a 96 MiB address-space cap soffice cannot even start: a reason, not a hang."""
    config = OfficeConfig(memory_bytes=96 * 1024 * 1024, start_timeout_seconds=20)
    with OfficePool(config) as starved:
        with pytest.raises(errors.SandboxFailure):
            render(OfficeConverter(starved), japanese_docx(), "a.docx", ConversionPolicy())
        assert starved.instances() == []


def test_scan_and_render_steps_can_be_run_elsewhere(pool: OfficePool) -> None:
    """The gateway runs oletools and the PDF renderer in the converter sandbox: the seams."""
    from converters.base import Rendering
    from converters.office_scan import OfficeScanConverter, ScanResult, scan_result_from

    seen: list[bytes] = []

    def scanner(data: bytes) -> ScanResult:
        return scan_result_from(OfficeScanConverter().convert(data, "x", ConversionPolicy()))

    def renderer(pdf: bytes, name: str, policy: ConversionPolicy) -> Conversion:
        seen.append(pdf)
        return Conversion(outputs=(Rendering("r.pdf", "application/pdf", b"%PDF-"),), pages=7)

    office = OfficeConverter(pool, scanner=scanner, renderer=renderer)
    conv = office.convert(docm_with_vba(), "m.docm", ConversionPolicy())
    assert seen and seen[0].startswith(b"%PDF")
    assert conv.pages == 7 and conv.findings == ("office:vba-macro",)


def test_docx_inside_a_cp932_zip_renders_under_its_japanese_name(office: OfficeConverter) -> None:
    """The common case end to end: Japanese Windows zips a Word file, we render the member."""
    from converters.archive import ArchiveConverter
    from tests.archive_helpers import RawEntry, build_zip

    archive = build_zip([RawEntry("提出書類/見積書.docx".encode("cp932"), japanese_docx(),
                                  method=8)])
    (member,) = ArchiveConverter().convert(archive, "資料.zip", ConversionPolicy()).members
    assert member.path == "提出書類/見積書.docx"
    conv = render(office, member.data, member.path, ConversionPolicy())
    assert conv.outputs[0].filename == "見積書.pdf" and conv.pages == 1


def test_unsandboxed_pool_when_allowed_converts_and_leaves_no_process_behind() -> None:
    """For hosts without bubblewrap (operator's explicit choice): own profile, own pipe."""
    with OfficePool(OfficeConfig(sandboxed=False, timeout_seconds=20)) as plain:
        conv = render(OfficeConverter(plain), japanese_docx(), "a.docx", ConversionPolicy())
        assert conv.pages == 1
        (instance,) = plain.instances()
        pids = _soffice_pids(instance.pid)
        assert pids
    deadline = time.monotonic() + 5  # SIGKILLed processes outside a PID namespace take a
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):  # moment
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
