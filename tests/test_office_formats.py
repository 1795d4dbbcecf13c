"""Every format on the list converts, and the LibreOffice sandbox really is one."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx
import openpyxl
import pptx
import pytest
from docx.shared import Inches
from PIL import Image

from converters.limits import ConversionPolicy
from converters.office import OfficeConverter
from converters.office_pool import OfficeConfig, OfficePool, launch, stop
from tests.convert_helpers import render
from tests.office_helpers import japanese_docx

pytestmark = pytest.mark.slow

#: (source made by python-docx/openpyxl/python-pptx, LibreOffice target format)
TARGETS = {
    "doc": ("docx", "doc:MS Word 97"),
    "odt": ("docx", "odt"),
    "rtf": ("docx", "rtf"),
    "xls": ("xlsx", "xls:MS Excel 97"),
    "ods": ("xlsx", "ods"),
    "ppt": ("pptx", "ppt:MS PowerPoint 97"),
    "odp": ("pptx", "odp"),
}


def _sources() -> dict[str, bytes]:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "集計"
    ws["A1"] = "合計"
    xlsx = io.BytesIO()
    wb.save(xlsx)
    deck = pptx.Presentation()
    deck.slides.add_slide(deck.slide_layouts[0]).shapes.title.text = "説明会"
    pptx_buf = io.BytesIO()
    deck.save(pptx_buf)
    return {"docx": japanese_docx(), "xlsx": xlsx.getvalue(), "pptx": pptx_buf.getvalue()}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The legacy and ODF formats, written by LibreOffice itself (cold, once per module)."""
    work = tmp_path_factory.mktemp("legacy")
    for ext, data in _sources().items():
        (work / f"src.{ext}").write_bytes(data)
    out: dict[str, bytes] = {}
    for ext, (src, target) in TARGETS.items():
        subprocess.run(
            ["soffice", f"-env:UserInstallation=file://{work}/profile", "--headless",
             "--norestore", "--convert-to", target, "--outdir", str(work / ext),
             str(work / f"src.{src}")],
            check=True, capture_output=True, timeout=120,
        )
        out[ext] = (work / ext / f"src.{ext}").read_bytes()
    return out


@pytest.fixture(scope="module")
def office() -> Iterator[OfficeConverter]:
    with OfficePool(OfficeConfig(timeout_seconds=30)) as pool:
        yield OfficeConverter(pool)


@pytest.mark.parametrize("ext", sorted(TARGETS))
def test_legacy_and_odf_formats_render(ext: str, legacy: dict[str, bytes],
                                       office: OfficeConverter) -> None:
    conv = render(office, legacy[ext], f"file.{ext}", ConversionPolicy())
    assert conv.pages >= 1
    assert conv.outputs[0].data.startswith(b"%PDF")
    if ext in ("xls", "ods"):
        assert conv.notes[0] == "sheets: 集計"


def test_sandbox_has_no_network_a_read_only_root_and_no_host_data() -> None:
    probe = (
        "import socket, pathlib\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=3); print('net')\n"
        "except OSError: print('no-net')\n"
        "try:\n"
        "    pathlib.Path('/etc/mugaika-probe').write_text('x'); print('rw')\n"
        "except OSError: print('ro')\n"
        f"print('sees-project' if pathlib.Path('{Path(__file__).parent}').exists() else 'no-project')\n"
        "print('sees-shadow' if pathlib.Path('/etc/shadow').exists() else 'no-shadow')\n"
    )
    proc = launch(OfficeConfig(), ["/usr/bin/python3", "-c", probe])
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert out.decode().split() == ["no-net", "ro", "no-project", "no-shadow"]


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory outside /tmp (which the sandbox replaces anyway), like the data dir."""
    path = Path(tempfile.mkdtemp(prefix="mugaika-host-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_linked_host_image_is_not_rendered(host_dir: Path, office: OfficeConverter) -> None:
    """A docx may link an image by file:// URL; the sandbox must not see the host's files."""
    secret = host_dir / "secret.png"
    Image.new("RGB", (400, 200), (255, 0, 0)).save(secret)
    document = docx.Document()
    document.add_paragraph("linked image below")
    document.add_picture(str(secret), width=Inches(3))
    buf = io.BytesIO()
    document.save(buf)
    linked = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(linked, "w") as out:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "word/_rels/document.xml.rels":
                data = re.sub(rb'Target="media/image1.png"', f'Target="file://{secret}" '
                              'TargetMode="External"'.encode(), data)
            elif item.filename == "word/document.xml":
                data = data.replace(b"r:embed=", b"r:link=")
            elif item.filename.startswith("word/media/"):
                continue
            out.writestr(item, data)
    conv = render(office, linked.getvalue(), "linked.docx", ConversionPolicy(pdf_output="png"))
    assert "office:external-link" in conv.findings
    page = Image.open(io.BytesIO(conv.outputs[0].data)).convert("RGB")
    red = sum(1 for r, g, b in page.get_flattened_data() if r > 200 and g < 60 and b < 60)
    assert red == 0
