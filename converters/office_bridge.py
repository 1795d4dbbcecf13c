"""LibreOffice behind a pipe: run by Debian's /usr/bin/python3 inside bubblewrap.

python3-uno binds to Debian's interpreter, not the project's venv, so this file is a
standalone script (stdlib + uno only, never `converters`). `converters.office_pool` starts
it inside the same bwrap as soffice and speaks frames over stdin/stdout: a 4-byte
big-endian length, a JSON header of that length, then `size` raw bytes.

    request : {"suffix": ".docx", "max_pages": 50, "size": N} + the document
    response: {"ok": true, "kind": "calc", "sheets": ["予算", "実績"], "hidden_sheets": [],
               "size": M} + the PDF
              {"ok": false, "error": "corrupt" | "encrypted", "size": 0}

The first frame it writes is {"ready": true, "pid": N} once soffice answers. Files exist
only in a fresh scratch directory per document inside the sandbox's private /tmp, removed
after the document: the gateway shares no directory with the sandbox. Documents are
loaded Hidden (the only way xlsx loads reliably, see MEASURED.md), read-only, with macro
execution NEVER and link updates NO_UPDATE; the profile also disables macros outright.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import BinaryIO

import uno
from com.sun.star.beans import PropertyValue

# Inside bwrap /tmp is a private tmpfs and these defaults are safe; unsandboxed (only when
# the operator allowed it) the pool passes a per-instance profile dir and pipe name.
PROFILE_DIR = os.environ.get("MUGAIKA_OFFICE_PROFILE", "/tmp/lo-profile")  # noqa: S108
PIPE_NAME = os.environ.get("MUGAIKA_OFFICE_PIPE", "mugaika_office")
CONNECT_SECONDS = 30.0
FRAME_PREFIX = struct.Struct(">I")

# MacroSecurityLevel 3 = "very high" (only trusted locations, of which there are none);
# DisableMacrosExecution removes the macro engine entirely. Link update mode 2 = never.
_SETTINGS = (
    ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "3"),
    ("/org.openoffice.Office.Common/Security/Scripting", "DisableMacrosExecution", "true"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "2"),
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "2"),
    ("/org.openoffice.Office.Common/Misc", "UseOpenCL", "false"),
    ("/org.openoffice.Office.Common/Misc", "FirstRun", "false"),
)
PROFILE_XCU = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
    'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
    + "".join(
        f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse">'
        f"<value>{value}</value></prop></item>\n"
        for path, name, value in _SETTINGS
    )
    + "</oor:items>\n"
)

# com.sun.star.document.MacroExecMode.NEVER_EXECUTE and UpdateDocMode.NO_UPDATE
NEVER_EXECUTE = 0
NO_UPDATE = 0

EXPORT_FILTERS = (
    ("com.sun.star.sheet.SpreadsheetDocument", "calc", "calc_pdf_Export"),
    ("com.sun.star.presentation.PresentationDocument", "impress", "impress_pdf_Export"),
    ("com.sun.star.drawing.DrawingDocument", "draw", "draw_pdf_Export"),
    ("com.sun.star.text.TextDocument", "writer", "writer_pdf_Export"),
)

#: Clean-and-keep-editable (issue 20): legacy and OpenDocument files are first saved as
#: OOXML by LibreOffice, then cleaned like any OOXML file (converters/cdr_ooxml.py).
OOXML_FILTERS = {"writer": "MS Word 2007 XML", "calc": "Calc MS Excel 2007 XML",
                 "impress": "Impress MS PowerPoint 2007 XML"}


def _props(**values: object) -> tuple[PropertyValue, ...]:
    return tuple(PropertyValue(Name=k, Value=v) for k, v in values.items())


def _write_profile() -> None:
    user = os.path.join(PROFILE_DIR, "user")
    os.makedirs(user, exist_ok=True)
    with open(os.path.join(user, "registrymodifications.xcu"), "w", encoding="utf-8") as f:
        f.write(PROFILE_XCU)


def _start_soffice() -> subprocess.Popen[bytes]:
    _write_profile()
    return subprocess.Popen(
        [
            # oosplash, not soffice.bin: it restarts soffice on exit 81 (fresh profile)
            "/usr/lib/libreoffice/program/soffice",
            "--headless", "--invisible", "--norestore", "--nologo", "--nodefault",
            "--nolockcheck", "--nofirststartwizard",
            f"-env:UserInstallation=file://{PROFILE_DIR}",
            f"--accept=pipe,name={PIPE_NAME};urp;StarOffice.ComponentContext",
        ],
        # stdout is the protocol channel: soffice must never write to it.
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("MUGAIKA_OFFICE_DEBUG") else subprocess.DEVNULL,
    )


def _connect(proc: subprocess.Popen[bytes]) -> object:
    local = uno.getComponentContext()
    resolver = local.ServiceManager.createInstanceWithContext(
        "com.sun.star.bridge.UnoUrlResolver", local)
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            ctx = resolver.resolve(
                f"uno:pipe,name={PIPE_NAME};urp;StarOffice.ComponentContext")
            return ctx.ServiceManager.createInstanceWithContext(
                "com.sun.star.frame.Desktop", ctx)
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _kind(doc: object) -> tuple[str, str]:
    for service, kind, export in EXPORT_FILTERS:
        if doc.supportsService(service):  # type: ignore[attr-defined]
            return kind, export
    raise ValueError("unknown document kind")


def _sheets(doc: object) -> tuple[list[str], list[str]]:
    """Visible and hidden sheet names: hidden sheets are not printed, so staff must know."""
    visible: list[str] = []
    hidden: list[str] = []
    sheets = doc.Sheets  # type: ignore[attr-defined]
    for name in sheets.ElementNames:
        (visible if sheets.getByName(name).IsVisible else hidden).append(name)
    return visible, hidden


class OfficeGone(Exception):
    """soffice died under us: the bridge exits so that the pool restarts the instance."""


def _check_alive(proc: subprocess.Popen[bytes], exc: Exception) -> None:
    if proc.poll() is not None or type(exc).__name__ in ("DisposedException", "RuntimeException"):
        raise OfficeGone from exc


def convert(proc: subprocess.Popen[bytes], desktop: object, src_path: str, dst_path: str,
            max_pages: int, target: str = "pdf") -> dict[str, object]:
    src = uno.systemPathToFileUrl(src_path)
    dst = uno.systemPathToFileUrl(dst_path)
    load = _props(Hidden=True, ReadOnly=True, MacroExecutionMode=NEVER_EXECUTE,
                  UpdateDocMode=NO_UPDATE, Silent=True)
    try:
        doc = desktop.loadComponentFromURL(src, "_blank", 0, load)  # type: ignore[attr-defined]
    except Exception as exc:
        _check_alive(proc, exc)
        text = str(exc).lower()
        return {"ok": False, "error": "encrypted" if "password" in text else "corrupt"}
    if doc is None:
        return {"ok": False, "error": "corrupt"}
    try:
        kind, export = _kind(doc)
        sheets, hidden = _sheets(doc) if kind == "calc" else ([], [])
        if target == "ooxml":
            if kind not in OOXML_FILTERS:
                return {"ok": False, "error": "unsupported"}
            doc.storeToURL(dst, _props(FilterName=OOXML_FILTERS[kind]))
            return {"ok": True, "kind": kind, "sheets": sheets, "hidden_sheets": hidden}
        filter_data = uno.Any("[]com.sun.star.beans.PropertyValue", _props(
            # One page more than is rendered: its presence tells the caller "there is more".
            PageRange=f"1-{max_pages + 1}", ExportNotes=False, ExportLinksRelativeFsys=False,
            ExportFormFields=False, EmbedStandardFonts=True))
        doc.storeToURL(dst, _props(FilterName=export, FilterData=filter_data))
        return {"ok": True, "kind": kind, "sheets": sheets, "hidden_sheets": hidden}
    except Exception as exc:
        _check_alive(proc, exc)
        return {"ok": False, "error": "corrupt"}
    finally:
        with contextlib.suppress(Exception):  # already closed by a crash: nothing to free
            doc.close(True)


def convert_document(proc: subprocess.Popen[bytes], desktop: object,
                     request: dict[str, object], document: bytes) -> tuple[dict[str, object], bytes]:
    """The reply and the PDF for one document, converted in a scratch directory of its own."""
    # The gateway sends a suffix from its allow-list; anything else is dropped, not joined.
    suffix = str(request.get("suffix", ""))
    suffix = suffix if re.fullmatch(r"\.[a-z]{1,5}", suffix) else ""
    scratch = tempfile.mkdtemp(prefix="doc-")  # $TMPDIR: the sandbox's private tmpfs
    try:
        src, dst = os.path.join(scratch, "in" + suffix), os.path.join(scratch, "out.pdf")
        with open(src, "wb") as f:
            f.write(document)
        pages = request.get("max_pages")
        max_pages = pages if isinstance(pages, int) else 50
        target = "ooxml" if request.get("target") == "ooxml" else "pdf"
        reply = convert(proc, desktop, src, dst, max_pages, target)
        if not reply["ok"]:
            return reply, b""
        if not os.path.isfile(dst):
            return {"ok": False, "error": "corrupt"}, b""
        with open(dst, "rb") as f:
            return reply, f.read()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_request(stdin: BinaryIO) -> tuple[dict[str, object], bytes] | None:
    """The next request and its document, or None when the gateway closed the pipe."""
    prefix = stdin.read(FRAME_PREFIX.size)
    if len(prefix) < FRAME_PREFIX.size:
        return None
    header = json.loads(stdin.read(FRAME_PREFIX.unpack(prefix)[0]))
    size = int(header["size"])
    document = stdin.read(size)
    return (header, document) if len(document) == size else None


def write_frame(stdout: BinaryIO, header: dict[str, object], body: bytes = b"") -> None:
    encoded = json.dumps({**header, "size": len(body)}, ensure_ascii=False).encode()
    stdout.write(FRAME_PREFIX.pack(len(encoded)) + encoded)
    stdout.write(body)
    stdout.flush()


def main() -> int:
    proc = _start_soffice()
    try:
        desktop = _connect(proc)
    except Exception:
        proc.kill()
        return 2
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_frame(stdout, {"ready": True, "pid": proc.pid})
    while (request := read_request(stdin)) is not None:
        try:
            reply, pdf = convert_document(proc, desktop, *request)
        except OfficeGone:
            proc.kill()
            return 3
        write_frame(stdout, reply, pdf)
    with contextlib.suppress(Exception):  # shutting down anyway
        desktop.terminate()  # type: ignore[attr-defined]
    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
