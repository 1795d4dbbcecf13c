"""Every format on the list converts, and the LibreOffice sandbox really is one."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pptx
import pytest

from converters.limits import ConversionPolicy
from converters.office import OfficeConverter
from converters.office_pool import JOB_DIR_INSIDE, OfficeConfig, OfficePool, sandbox_args
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
    conv = office.convert(legacy[ext], f"file.{ext}", ConversionPolicy())
    assert conv.pages >= 1
    assert conv.outputs[0].data.startswith(b"%PDF")
    if ext in ("xls", "ods"):
        assert conv.notes[0] == "sheets: 集計"


def test_sandbox_has_no_network_and_a_read_only_root(tmp_path: Path) -> None:
    probe = (
        "import socket, pathlib\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=3); print('net')\n"
        "except OSError: print('no-net')\n"
        "try:\n"
        "    pathlib.Path('/etc/mugaika-probe').write_text('x'); print('rw')\n"
        "except OSError: print('ro')\n"
        f"pathlib.Path('{JOB_DIR_INSIDE}/ok').write_text('job dir writable')\n"
    )
    result = subprocess.run(
        [*sandbox_args(tmp_path, OfficeConfig()), "/usr/bin/python3", "-c", probe],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stdout.split() == ["no-net", "ro"]
    assert (tmp_path / "ok").read_text() == "job dir writable"
